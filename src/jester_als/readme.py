"""Sections of README.md and of the pages under docs/ generated from what the project itself knows or wrote,
so that no figure in them is typed by hand: the config reference (from the config models), the `make run`
summary and report (from ``docs/run/metrics.json``), the generated table's statistics (``docs/defaults.json``)
and the scaling answer (``docs/scale.json``): the runs ``make run-docs``, ``make defaults-docs`` and ``make
scale-docs`` copied there. Each section sits between a start and an end marker in the page ``PAGES`` names;
``python -m jester_als.readme`` rewrites them all, and tests fail when one is stale. The pages that the
commands write whole (docs/bench.md, scale.md, defaults.md, serve.md, speed.md, prepare-speed.md) are held to
their JSON by :func:`_rendered`."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from jester_als.outputs import write_text_atomic

COMMAND = "python -m jester_als.readme"


def _config_table() -> str:
    from jester_als.config import config_table

    return config_table()


def _section(markdown: str, levels: int) -> str:
    """A page the project renders, as a README section: without its title line, headings ``levels`` down."""
    body = markdown.split("\n", 2)[2].strip()
    return "\n".join("#" * levels + line if line.startswith("## ") else line for line in body.splitlines())


def _docs(root: Path, name: str) -> dict:
    return json.loads((root / "docs" / name).read_text())


def _answer_section(root: Path) -> str:
    """README: the scaling study's answer, derived from its run, and its plot."""
    from jester_als.scale.render import answer

    return (
        answer(_docs(root, "scale.json")) + "\n\n"
        "![NumPy ALS vs Spark ALS: fit time and peak memory against training ratings](docs/scale.png)"
    )


def _printed(metrics: dict) -> str:
    """The summary `make run` prints. The command's own first line also counts starting Spark and writing the
    report; the run records the time of its steps (run.wall_seconds), so that is what this line gives, and says
    so."""
    from jester_als.cli import summary
    from jester_als.registry import JOBS

    printed = summary(JOBS["pipeline"], metrics, metrics["run"]["wall_seconds"])
    return "```\n" + printed.replace(": done in ", ": steps done in ", 1) + "\n```"


def _summary_section(root: Path) -> str:
    """README: what `make run` printed, and which run it was."""
    metrics = _docs(root, "run/metrics.json")
    run = metrics["run"]
    return (
        f"{_printed(metrics)}\n\nRun {run['run_id']} of `{run['job']}`, finished {run['finished']}, "
        f"on generated data; its whole report: [docs/run.md](docs/run.md)."
    )


def _run_section(root: Path) -> str:
    """docs/run.md: the summary `make run` prints and its report's tables (without the plots)."""
    from jester_als.report import render_report

    metrics = _docs(root, "run/metrics.json")
    return f"{_printed(metrics)}\n\n{_section(render_report(metrics).split(chr(10) + '## Plots', 1)[0], 1)}"


def _generated_section(root: Path) -> str:
    from jester_als.defaults import render_statistics

    return render_statistics(_docs(root, "defaults.json")["generated_statistics"])


def _module_map(root: Path) -> str:
    """docs/code.md: every module of the package with the first sentence of its docstring."""
    import ast

    package = root / "src" / "jester_als"
    rows = ["| module | responsibility |", "|---|---|"]
    for path in sorted(package.rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        first = " ".join(doc.split("\n\n", 1)[0].split())
        sentence = re.match(r"(.*?[.!?])(?=\s+[A-Z(`]|$)", first)
        first = sentence.group(1) if sentence else first
        rows.append(f"| `{path.relative_to(package.parent).as_posix()}` | {first.replace('|', '/')} |")
    return "\n".join(rows)


# name -> (the page that holds it, what the section is made from); its markers are derived from the name.
SECTIONS: dict[str, tuple[str, Callable[[Path], str]]] = {
    "run summary": ("README.md", _summary_section),
    "scaling answer": ("README.md", _answer_section),
    "pipeline run": ("docs/run.md", _run_section),
    "config table": ("docs/config.md", lambda root: _config_table()),
    "generated data": ("docs/data.md", _generated_section),
    "module map": ("docs/code.md", _module_map),
}


def _rendered() -> dict[str, tuple[str, Callable[[dict], str]]]:
    """Pages a command writes whole from its JSON: page -> (its JSON, the renderer)."""
    from jester_als.bench import render_bench
    from jester_als.defaults import render as render_defaults
    from jester_als.prepare_speed import render as render_prepare_speed
    from jester_als.scale.render import render_scale
    from jester_als.serve import render as render_serve
    from jester_als.speed import render as render_speed

    return {
        "docs/bench.md": ("docs/bench.json", render_bench),
        "docs/scale.md": ("docs/scale.json", render_scale),
        "docs/defaults.md": ("docs/defaults.json", render_defaults),
        "docs/serve.md": ("docs/serve.json", render_serve),
        "docs/speed.md": ("docs/speed.json", render_speed),
        "docs/prepare-speed.md": ("docs/prepare-speed.json", render_prepare_speed),
    }


def rendered_page(root: Path, page: str) -> tuple[str, str]:
    """(the page as it stands, the page as its renderer writes it from its JSON)."""
    source, render = _rendered()[page]
    return (root / page).read_text(encoding="utf-8"), render(json.loads((root / source).read_text()))


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}: generated by `{COMMAND}` -->", f"<!-- end of {name} -->"


def current(text: str, name: str) -> str:
    """The body of section ``name`` in ``text`` as it stands ('' when its markers are missing)."""
    start, end = markers(name)
    if start not in text or end not in text:
        return ""
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def expected(name: str, root: Path) -> str:
    return SECTIONS[name][1](root).strip()


def update(root: str | os.PathLike = ".") -> list[str]:
    """Rewrite every generated section of the pages under ``root`` (the project root); the names of those that
    changed. A page without a section's markers is an error: the section would silently never be written."""
    root = Path(root)
    changed = []
    for page in sorted({page for page, _ in SECTIONS.values()}):
        path = root / page
        text = path.read_text(encoding="utf-8")
        before = text
        for name, (where, _) in SECTIONS.items():
            if where != page:
                continue
            start, end = markers(name)
            if start not in text or end not in text:
                raise ValueError(f"{path}: the markers of the {name} are missing ({start} ... {end})")
            head, _, rest = text.partition(start)
            _, _, tail = rest.partition(end)
            new = f"{head}{start}\n{expected(name, root)}\n{end}{tail}"
            if new != text:
                changed.append(name)
                text = new
        if text != before:
            write_text_atomic(path, text)
    return changed


if __name__ == "__main__":
    if len(sys.argv) > 2:
        print(f"usage: {COMMAND} [PROJECT_ROOT]", file=sys.stderr)
        sys.exit(2)
    done = update(sys.argv[1] if len(sys.argv) == 2 else ".")
    print(f"updated {', '.join(done)}" if done else "README.md and docs/ are up to date")
