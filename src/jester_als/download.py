"""Download the official Jester archives and unpack their Excel files (``make download-jester``).

Each archive is fetched to a temporary file, checked (its SHA-256 where one is known, then that it is a whole
zip archive) and only then unpacked: its ``.xls``/``.xlsx`` members go into the target directory, and nothing of an
archive that fails a check is left there. ``input.format: xls`` with ``input.path`` set to that directory reads
them (``conf/jester.yaml``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import urllib.request
import zipfile

from jester_als.errors import JobError
from jester_als.excel import EXTENSIONS

# Dataset 1 (three .xls files) and dataset 3 (one 150-joke sheet), as linked from the data set's page
# (eigentaste.berkeley.edu/dataset); the SHA-256 of each archive as recorded by public loaders of the same files.
SITE = "https://eigentaste.berkeley.edu/dataset/"
ARCHIVES = {
    f"{SITE}archive/jester_dataset_1_1.zip": "cb7841756ded125b15f3d95c9f8241224065e96354c132a46ae4214deeab7615",
    f"{SITE}archive/jester_dataset_1_2.zip": "4d312fd824d8c8cb2c9c952a7b1fb7c00d1f5fd3ece370f7285aa701d371748b",
    f"{SITE}archive/jester_dataset_1_3.zip": "7f548d3762d3506cf7cd37d8cb9e3adb67984a7da7aa2d2096d5e0b1b884758d",
}
DATASET_3 = {f"{SITE}JesterDataset3.zip": "0987d0d892f833ce9f889addb18c1960cb086658362a77a27216327ffb91614f"}
TIMEOUT_SECONDS = 60


class DownloadError(JobError):
    """An archive that could not be fetched, failed its checksum, or is not a whole zip archive."""


def fetch(url: str, into: str) -> str:
    """Download ``url`` into the directory ``into``; the file's path."""
    path = os.path.join(into, os.path.basename(url.split("?", 1)[0]) or "archive.zip")
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response, open(path, "wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as exc:
        raise DownloadError(f"{url}: cannot be downloaded ({exc})") from None
    return path


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unpack(archive: str, into: str, source: str) -> list[str]:
    """The Excel members of ``archive``, extracted flat into ``into`` (after the whole archive was checked)."""
    if not zipfile.is_zipfile(archive):
        raise DownloadError(
            f"{source}: not a zip archive ({os.path.getsize(archive):,} bytes); the download may "
            f"be an error page or cut short: try again"
        )
    try:
        with zipfile.ZipFile(archive) as zipped:
            broken = zipped.testzip()
            if broken is not None:
                raise DownloadError(f"{source}: the archive is corrupt (member {broken!r} fails its CRC); try again")
            members = [
                info for info in zipped.infolist() if info.filename.lower().endswith(EXTENSIONS) and not info.is_dir()
            ]
            if not members:
                raise DownloadError(
                    f"{source}: no Excel file (.xls, .xlsx) in the archive "
                    f"({[i.filename for i in zipped.infolist()][:5]})"
                )
            written = []
            for info in members:
                target = os.path.join(into, os.path.basename(info.filename))
                with zipped.open(info) as member, open(target, "wb") as out:
                    shutil.copyfileobj(member, out)
                written.append(target)
            return written
    except (zipfile.BadZipFile, EOFError) as exc:
        raise DownloadError(f"{source}: the archive is corrupt ({exc}); try again") from None


def download(urls: dict[str, str | None], into: str) -> list[str]:
    """Fetch, check and unpack every archive; the Excel files now in ``into``. All or nothing: the files are
    moved into ``into`` only once every archive passed its checks."""
    os.makedirs(into, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=into) as work:
        staged = os.path.join(work, "files")
        os.makedirs(staged)
        for url, expected in urls.items():
            archive = fetch(url, work)
            if expected and sha256(archive) != expected:
                raise DownloadError(
                    f"{url}: SHA-256 {sha256(archive)} is not the published archive's {expected}; "
                    f"the file changed or the download is corrupt"
                )
            unpack(archive, staged, url)
        files = []
        for name in sorted(os.listdir(staged)):
            os.replace(os.path.join(staged, name), os.path.join(into, name))
            files.append(os.path.join(into, name))
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jester_als.download", description=__doc__.splitlines()[0])
    parser.add_argument("--into", default="data/jester", help="directory for the Excel files (default: %(default)s)")
    parser.add_argument(
        "--dataset",
        choices=("1", "3"),
        default="1",
        help="1: dataset 1's three 100-joke files; 3: dataset 3's 150-joke sheet (read them apart: "
        "files read together must rate the same jokes)",
    )
    parser.add_argument("urls", nargs="*", help="archives to fetch instead of the official ones (no checksum)")
    args = parser.parse_args(argv)
    urls = {url: None for url in args.urls} if args.urls else (ARCHIVES if args.dataset == "1" else DATASET_3)
    try:
        files = download(urls, args.into)
    except DownloadError as exc:
        print(f"jester-als download: {exc}", file=sys.stderr)
        return 1
    print("\n".join(["jester-als download: wrote", *(f"  {path}" for path in files)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
