"""Run outputs that are never left half-written: staged, then moved into place when the job succeeds.

A job writes each output (``ratings/``, ``model/``, ...) under ``<output.dir>/.staging-<run id>/`` and, only
when it has finished, swaps each one into ``<output.dir>`` and rewrites ``metrics.json`` and ``report.md``.
A failed or killed run leaves the previous outputs as they were; its staging directory is removed (or, after
a kill, left behind under a name that says what it is).
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from jester_als import owner
from jester_als.errors import JobError

if TYPE_CHECKING:  # the config imports this module (through the generator)
    from jester_als.config import OutputConfig

try:  # POSIX only: on Windows the lock is the lock directory below
    import fcntl
except ImportError:
    fcntl = None

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"


class OutputExistsError(JobError):
    """``output.mode: error`` and the outputs this job writes already exist."""


class OutputLocationError(JobError):
    """``output.dir`` cannot be used (not a local or mounted path, or not writable)."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """A temporary path beside ``path`` to write the whole file to; on success it is renamed over ``path`` (a
    reader sees the old file or the new one, never half of one), on failure removed. ``suffix`` keeps an
    extension writers look at (a plot's ``.png``)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = os.path.join(
        os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}{suffix}"
    )
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def metrics_json(metrics: dict) -> str:
    """``metrics.json``'s text, where a figure that could not be computed (NaN, an infinity) is null: JSON has no
    such numbers (RFC 8259, section 6), and strict readers such as JavaScript's ``JSON.parse`` refuse the file."""

    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: finite(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(item) for item in value]
        return value

    return json.dumps(finite(metrics), indent=2, sort_keys=False, allow_nan=False) + "\n"


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a whole text file or nothing (:func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)


def scratch_dir(name: str, parent: str | None = None) -> str:
    """A new directory ``jester-als-<name>-*`` for a study's generated tables and runs (the caller removes it):
    under ``parent`` when a config names one, made if missing as ``output.dir`` is, else in the system's temp
    dir."""
    if parent:
        os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f"jester-als-{name}-", dir=parent)


class RunOutputs:
    """The outputs of one job run under ``out_dir``.

    Parameters
    ----------
    out_dir : str
        ``output.dir``: a local path, or a mounted one such as ``/Volumes/...`` or ``/dbfs/...``.
    mode : {"overwrite", "error"}
        Whether an existing output this job writes may be replaced.
    items : list of str
        The output directories this job writes (checked against ``mode`` before any work starts).
    """

    def __init__(self, out_dir: str, mode: str, items: list[str]):
        if "://" in out_dir and not out_dir.startswith("file://"):
            raise OutputLocationError(
                f"output.dir {out_dir!r}: only local or mounted paths are supported (outputs are staged and "
                f"moved into place from the driver); use a mount such as /Volumes/... or /dbfs/..."
            )
        self.final = os.path.abspath(out_dir.removeprefix("file://"))
        self.mode = mode
        self.items = list(items)
        self.run_id = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        self.stage = os.path.join(self.final, f".staging-{self.run_id}")
        self.committed = False
        self.created = False  # output.dir did not exist before this run
        self.swept: list[str] = []  # staging directories of killed runs this run removed

    def check(self) -> None:
        """Refuse early when ``mode`` is ``error`` and any of this job's outputs exists."""
        if os.path.isfile(self.final):
            raise OutputLocationError(f"output.dir {self.final!r} is a file; expected a directory")
        if self.mode == "error":
            existing = [name for name in self.items if os.path.exists(os.path.join(self.final, name))]
            if existing:
                raise OutputExistsError(
                    f"output.dir {self.final!r} already holds {existing} and output.mode is 'error'; "
                    f"choose another output.dir or set output.mode=overwrite"
                )
        self.created = not os.path.exists(self.final)
        try:
            os.makedirs(self.stage, exist_ok=True)
        except OSError as exc:
            raise OutputLocationError(f"output.dir {self.final!r}: cannot create it ({exc.strerror})") from None
        owner.claim(self.stage)
        self.swept = owner.sweep(os.path.join(glob.escape(self.final), ".staging-*"))

    def path(self, item: str) -> str:
        """Where Spark writes ``item`` during the run (inside the staging directory)."""
        return os.path.join(self.stage, item)

    def final_path(self, item: str) -> str:
        return os.path.join(self.final, item)

    def read_metrics(self) -> dict:
        path = self.final_path(METRICS_FILE)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                return json.load(fh)
        return {}

    def commit(self, update=None) -> dict:
        """Swap every staged item into place, then merge this run's results into metrics.json and rewrite
        report.md, all under the output directory's lock (without ``update``: only the swap, for the jobs
        whose outputs are whole files, such as bench and scale).

        ``update(previous_metrics) -> (metrics, report)`` is called with what ``metrics.json`` holds at that
        moment, so two jobs that finish together on one ``output.dir`` (Databricks runs ``baseline`` and
        ``recommend`` at once) each add their sections to what the other wrote instead of to a stale copy.
        Returns the metrics written.
        """
        with output_lock(self.final):
            for item in self.items:
                staged = self.path(item)
                target = self.final_path(item)
                previous = os.path.join(self.stage, f".previous-{item}")
                # An output this job owns but did not produce this time (user_ids/ when ids needed no
                # re-indexing) must not survive from an earlier run.
                if os.path.exists(target):
                    os.replace(target, previous)
                if os.path.exists(staged):
                    os.replace(staged, target)
            metrics: dict = {}
            if update is not None:
                metrics, report = update(self.read_metrics())
                write_text_atomic(self.final_path(METRICS_FILE), metrics_json(metrics))
                if report is not None:
                    write_text_atomic(self.final_path(REPORT_FILE), report)
        owner.release(self.stage)
        shutil.rmtree(self.stage, ignore_errors=True)
        self.committed = True
        log.info("outputs committed to %s", self.final)
        return metrics

    def abort(self) -> None:
        """Remove this run's staging directory (the previous outputs were never touched), and output.dir
        itself when this run created it and it is left empty."""
        if not self.committed:
            owner.release(self.stage)
            for _ in range(3):  # a task that was being cancelled may still create a file or two
                shutil.rmtree(self.stage, ignore_errors=True)
                if not os.path.exists(self.stage):
                    break
                time.sleep(0.5)
            if self.created:
                try:
                    os.rmdir(self.final)
                except OSError:  # not empty (logs, a lock file, another job's outputs) or already gone
                    pass


@contextmanager
def staged_outputs(output: OutputConfig, items) -> Iterator[RunOutputs]:
    """The staged outputs of a job that writes whole files (``output`` is the config's output section):
    checked against ``output.mode`` first; what the block writes under ``path(item)`` replaces the previous
    run's files together when the block ends, and nothing is replaced when it raises."""
    out = RunOutputs(output.dir, output.mode, list(items))
    out.check()
    try:
        yield out
        out.commit()
    finally:
        out.abort()


LOCK_FILE = ".metrics.lock"


@contextmanager
def output_lock(directory: str, *, timeout: float = 600.0):
    """Exclusive lock on ``directory`` for the read-merge-write of metrics.json.

    ``flock`` on a lock file where the platform and the file system support it (local disks; on Databricks the
    tasks of one job cluster share its driver); otherwise (Windows has no ``fcntl``) an atomically created lock
    directory, taken over when it is older than ``timeout`` (a holder that was killed).
    """
    path = os.path.join(directory, LOCK_FILE)
    if fcntl is None:
        with _lock_directory(path + ".d", timeout):
            yield
        return
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        except OSError as exc:
            log.debug("flock not supported on %s (%s); using a lock directory", directory, exc)
            with _lock_directory(path + ".d", timeout):
                yield
            return
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        handle.close()


@contextmanager
def _lock_directory(path: str, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.mkdir(path)
            break
        except FileExistsError:
            try:
                if time.time() - os.path.getmtime(path) > timeout:
                    log.warning("taking over the stale lock %s", path)
                    os.rmdir(path)
                    continue
            except FileNotFoundError:
                continue
            if time.monotonic() > deadline:
                raise OutputLocationError(f"{path}: held by another job for more than {timeout:.0f} s") from None
            time.sleep(0.2)
    try:
        yield
    finally:
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
