"""What each setting that shortens a run saves: the pipeline run as a user runs it, in a fresh process and JVM
each time, once as configured and once per variant, the variants interleaved so that the machine's load falls
on all of them alike.

``python -m jester_als.speed`` (``make speed-docs``) writes ``speed.json`` (every run's steps, chosen point and
the machine's load) and ``speed.md`` (the median steps of each variant and its saving against the configured
run's median in the same study). It times only: what a variant costs in accuracy is a validation figure, in
defaults.md (every grid point's validation RMSE, and the final refit's at several iteration counts). The test
ratings decide nothing here either; the table leaves them out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from jester_als.outputs import now_iso, scratch_dir, write_text_atomic

STEPS = ("prepare", "tune", "baseline", "recommend", "new_users")


@dataclass(frozen=True)
class Variant:
    name: str
    settings: tuple[str, ...]  # `--set` values on top of the config
    gives_up: str


# The settings docs/run.md lists under "Making a run faster", each alone; the cheapest run that keeps the grid
# the defaults were chosen with; that run with half the grid's points; and two that undo a local-mode default
# (their negative saving is what the default saves).
VARIANTS: tuple[Variant, ...] = (
    Variant("as configured", (), "nothing"),
    Variant(
        "the JVM's own inlining",
        ('spark.local_java_options=["-XX:+UseParallelGC"]',),
        "nothing: it undoes the local default of smaller C2 inlining budgets",
    ),
    Variant(
        "64 MB pages",
        ('spark.conf={"spark.buffer.pageSize": "64m"}',),
        "nothing: the page size Spark picks for a 4 GB driver on 2 cores instead of the local default's 2 MB",
    ),
    Variant(
        "no reference scan",
        ("input.reference_scan=false",),
        "the report's prepare-against-scan figures; prepare then pays the session's warm-up itself",
    ),
    Variant("final fit of 10 iterations", ("tune.refit_max_iter=10",), "a less converged final model"),
    Variant("no new-user evaluation", ("new_users.evaluate=false",), "the report's new-user section"),
    Variant("ranks 5 and 10", ("tune.grid.rank=[5, 10]",), "the rank-20 points"),
    Variant("biased points only", ("tune.grid.biases=[true]",), "the plain model's points"),
    Variant(
        "the grid kept, the rest cut",
        ("input.reference_scan=false", "tune.refit_max_iter=10", "new_users.evaluate=false"),
        "all three above that leave the grid alone",
    ),
    Variant(
        "biased points, the rest cut",
        ("tune.grid.biases=[true]", "input.reference_scan=false", "tune.refit_max_iter=10", "new_users.evaluate=false"),
        "the plain model's points and all three that leave the grid alone",
    ),
)


def variants_named(names: list[str] | None) -> list[Variant]:
    if not names:
        return list(VARIANTS)
    known = {variant.name: variant for variant in VARIANTS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; the variants are {list(known)}")
    return [known[name] for name in names]


def pipeline_argv(conf: str, out_dir: str, settings: list[str]) -> list[str]:
    """The command line of one run: the pipeline job, as `make run` calls it, writing to ``out_dir``."""
    argv = ["pipeline", "--conf", conf, "--set", f"output.dir={out_dir}"]
    for setting in settings:
        argv += ["--set", setting]
    return argv


def run_in_new_process(argv: list[str]) -> None:
    """One run in a process of its own, so that each run starts its own JVM, as a user's does."""
    run_command([sys.executable, "-m", "jester_als.cli", *argv])


def run_command(command: list[str]) -> None:
    """``command`` in a process of its own; a RuntimeError with the end of its stderr when it fails."""
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{tail}")


def machine() -> dict:
    """The machine a study ran on, as its page states it."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "pyspark": pyspark_version()}


def run_and_write_study(out_dir: str, name: str, measure: Callable[[str], dict], render: Callable[[dict], str]) -> None:
    """Run ``measure`` on a temporary work dir of its own (its runs' outputs; removed afterwards, whatever
    happens), then write ``name``.json (the study's every figure) and ``name``.md (its page, rendered from that)
    under ``out_dir``; the page is printed too."""
    work_dir = scratch_dir(name)
    try:
        result = measure(work_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    os.makedirs(out_dir, exist_ok=True)
    write_text_atomic(os.path.join(out_dir, f"{name}.json"), json.dumps(result, indent=1) + "\n")
    page = render(result)
    write_text_atomic(os.path.join(out_dir, f"{name}.md"), page)
    print(page)


def record(metrics: dict) -> dict:
    """What the study keeps of one run's metrics.json."""
    als = metrics["spark_als"]
    best = min(als["validation"], key=lambda point: point["validation_rmse"])
    return {
        "steps_seconds": {name: metrics["steps_seconds"][name] for name in STEPS if name in metrics["steps_seconds"]},
        "steps_total": round(sum(metrics["steps_seconds"].values()), 2),
        "grid_points": len(als["validation"]),
        "chosen": als["model_params"],
        "chosen_validation_rmse": best["validation_rmse"],
        "load_average_1min": (metrics["run"].get("machine") or {}).get("load_average_1min"),
    }


def study(
    conf: str,
    work_dir: str,
    *,
    repeats: int,
    variants: list[Variant],
    settings: Sequence[str] = (),
    run: Callable[[list[str]], None] = run_in_new_process,
) -> dict:
    """Run every variant ``repeats`` times, round by round (each round runs every variant once), with
    ``settings`` under every variant's own; each run's outputs are removed once its metrics are read."""
    started = time.perf_counter()
    runs: dict[str, list[dict]] = {variant.name: [] for variant in variants}
    for round_number in range(repeats):
        for index, variant in enumerate(variants):
            out_dir = os.path.join(work_dir, f"run-{round_number}-{index}")
            run(pipeline_argv(conf, out_dir, [*settings, *variant.settings]))
            with open(os.path.join(out_dir, "metrics.json"), encoding="utf-8") as handle:
                runs[variant.name].append(record(json.load(handle)))
            shutil.rmtree(out_dir, ignore_errors=True)
            print(
                f"run {round_number * len(variants) + index + 1}/{repeats * len(variants)}: {variant.name}: "
                f"steps {runs[variant.name][-1]['steps_total']:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    return {
        "written": now_iso(),
        "seconds": round(time.perf_counter() - started),
        "config": conf,
        "settings": list(settings),
        "repeats": repeats,
        "machine": machine(),
        "variants": [
            {"name": v.name, "settings": list(v.settings), "gives_up": v.gives_up, "runs": runs[v.name]}
            for v in variants
        ],
    }


def pyspark_version() -> str | None:
    try:
        import pyspark
    except ImportError:
        return None
    return pyspark.__version__


def summary(result: dict) -> list[dict]:
    """Per variant: the median of its runs' steps (in all and per step), and the seconds it saves against the
    first variant's median (the configured run, measured in the same study)."""
    rows = []
    for variant in result["variants"]:
        runs = variant["runs"]
        rows.append(
            {
                "name": variant["name"],
                "settings": variant["settings"],
                "gives_up": variant["gives_up"],
                "steps_total": statistics.median(run["steps_total"] for run in runs),
                "steps": {
                    name: statistics.median(run["steps_seconds"].get(name, 0.0) for run in runs) for name in STEPS
                },
                "grid_points": runs[0]["grid_points"],
                "chosen": sorted({json.dumps(run["chosen"], sort_keys=True) for run in runs}),
                "chosen_validation_rmse": runs[0]["chosen_validation_rmse"],
            }
        )
    base = rows[0]["steps_total"]
    for row in rows:
        row["saves"] = round(base - row["steps_total"], 2)
    return rows


def _params(text: str) -> str:
    params = json.loads(text)
    return ", ".join(f"{key}={params[key]}" for key in sorted(params))


def render(result: dict) -> str:
    rows = summary(result)
    machine = result["machine"]
    loads = [
        load
        for variant in result["variants"]
        for run in variant["runs"]
        for load in (run["load_average_1min"] or [])
        if load is not None
    ]
    lines = [
        "# What each setting saves in a run",
        "",
        f"Written by `python -m jester_als.speed` (`make speed-docs`) on {result['written']}, "
        f"in {result['seconds']} s: the pipeline on `{result['config']}`"
        + (f" with {', '.join(f'`{s}`' for s in result['settings'])}" if result["settings"] else "")
        + f", {result['repeats']} run(s) of each variant in a fresh process, the variants taking turns. "
        f"{machine['cpus']} cores, Python {machine['python']}, pyspark {machine['pyspark']}; the 1-minute load "
        f"average at the runs' starts and ends ranged {min(loads, default=0):.2f} to {max(loads, default=0):.2f}.",
        "",
        "Medians of the job's steps (reading the input to writing the recommendations: the sum of `steps_seconds` "
        "in each run's metrics.json), and the seconds each variant saves against the first row's median. It times "
        "only: what a variant costs in accuracy is in [defaults.md](defaults.md), on validation ratings (each grid "
        "point's validation RMSE, and the final refit's at 10 to 30 iterations); the chosen point's validation RMSE "
        "here is the grid's, at the grid's iterations, so a variant that changes only the final fit keeps it. A "
        "negative saving is a cost: a variant that undoes a local-mode default shows what that default saves.",
        "",
        "| variant | settings | steps (s) | saves (s) | " + " | ".join(f"{name} (s)" for name in STEPS) + " | grid "
        "points | chosen point | its validation RMSE in the grid | gives up |",
        "|---|---|---|---|" + "---|" * len(STEPS) + "---|---|---|---|",
    ]
    for row in rows:
        settings = ", ".join(f"`{s}`" for s in row["settings"]) or "(none)"
        chosen = "; ".join(_params(text) for text in row["chosen"])
        lines.append(
            f"| {row['name']} | {settings} | {row['steps_total']:.1f} | {row['saves']:.1f} | "
            + " | ".join(f"{row['steps'][name]:.1f}" for name in STEPS)
            + f" | {row['grid_points']} | {chosen} | {row['chosen_validation_rmse']:.4f} | {row['gives_up']} |"
        )
    fastest = min(rows, key=lambda row: row["steps_total"])
    lines += [
        "",
        f"Fastest: {fastest['name']}, {fastest['steps_total']:.1f} s against {rows[0]['steps_total']:.1f} s "
        f"({fastest['steps_total'] / rows[0]['steps_total']:.2f} of it). The steps' times are each run's own; "
        "the table shows medians per step, which need not add up to the median of the totals.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jester_als.speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", default="conf/local.yaml", help="the config every run starts from")
    parser.add_argument("--out", default="output/speed", help="where speed.json and speed.md go")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant (the table gives medians)")
    parser.add_argument("--variant", action="append", help="only this variant (repeatable); default: all")
    parser.add_argument("--set", action="append", default=[], help="a setting under every run's (key=value)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    variants = variants_named(args.variant)
    run_and_write_study(
        args.out,
        "speed",
        lambda work_dir: study(args.conf, work_dir, repeats=args.repeats, variants=variants, settings=args.set),
        render,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
