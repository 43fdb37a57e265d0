"""The generated sections of README.md and docs/ are what the project makes of its own sources and recorded runs:
each is regenerated here and compared, so a figure in them cannot drift from docs/ or from the config models; the
pages a command writes whole are re-rendered from their JSON and compared too."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from jester_als import readme

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(readme.SECTIONS))
def test_section_is_generated(name):
    page = readme.SECTIONS[name][0]
    text = (ROOT / page).read_text()
    start, end = readme.markers(name)
    assert start in text and end in text, f"{page} lacks the {name} markers"
    assert readme.current(text, name) == readme.expected(name, ROOT), f"{page}'s {name} is stale: {readme.COMMAND}"


@pytest.mark.parametrize(
    "page",
    ["docs/bench.md", "docs/scale.md", "docs/defaults.md", "docs/serve.md", "docs/speed.md", "docs/prepare-speed.md"],
)
def test_page_written_by_a_command_matches_its_json(page):
    standing, rendered = readme.rendered_page(ROOT, page)
    assert standing == rendered, f"{page} differs from what its JSON renders to"


def test_update_refuses_a_page_without_the_markers(tmp_path):
    """A page that lost a section's markers is an error, not a section silently never written."""
    for name in ("README.md", "docs", "conf", "src"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, tmp_path / name)
    page = tmp_path / "docs" / "config.md"
    page.write_text(page.read_text().replace(readme.markers("config table")[0], ""))
    with pytest.raises(ValueError, match="config.md: the markers of the config table are missing"):
        readme.update(tmp_path)


def test_update_rewrites_a_stale_section(tmp_path):
    for name in ("README.md", "docs", "conf", "src"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, tmp_path / name)
    start, end = readme.markers("run summary")
    text = (tmp_path / "README.md").read_text()
    (tmp_path / "README.md").write_text(text.replace(readme.current(text, "run summary"), "stale"))
    assert readme.update(tmp_path) == ["run summary"]
    assert (tmp_path / "README.md").read_text() == text


def test_readme_is_short_and_its_links_resolve():
    """The README is the five-minute read; the rest lives in docs/ pages it links to, and every relative link of
    README and docs/ names a file that exists."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to a missing {target}"
