"""The README's generated sections are what the project makes of its own sources and recorded runs: each is
regenerated here and compared, so a figure in them cannot drift from docs/ or from the config models."""

from __future__ import annotations

from pathlib import Path

import pytest

from jester_als import readme

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(readme.SECTIONS))
def test_readme_section_is_generated(name):
    text = (ROOT / "README.md").read_text()
    start, end = readme.markers(name)
    assert start in text and end in text, f"README.md lacks the {name} markers"
    assert readme.current(text, name) == readme.expected(name, ROOT), f"README's {name} is stale: {readme.COMMAND}"


def test_update_refuses_a_readme_without_the_markers(tmp_path):
    """A README that lost a section's markers is an error, not a section silently never written."""
    copy = tmp_path / "README.md"
    copy.write_text((ROOT / "README.md").read_text().replace(readme.markers("benchmark")[0], ""))
    for folder in ("docs", "conf"):
        (tmp_path / folder).symlink_to(ROOT / folder)
    with pytest.raises(ValueError, match="the markers of the benchmark are missing"):
        readme.update(copy)
