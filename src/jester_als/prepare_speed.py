"""How long ``prepare`` takes against the least work any prepare must do: the plain read-melt-write of the same
input that the job times beside it (``input.reference_scan``). Read three ways, from the job's own function
(:func:`jester_als.jobs.run_prepare`) run again and again in fresh processes, each process its own JVM:

- **in the job**: prepare's first run in its session against the scan repeated after it (the ratio the job
  reports). The repeated scan runs code the session has already compiled; prepare compiles its own while it runs.
- **each alone, in a fresh session**: prepare as the session's first job (no scan before it) against the scan as
  the session's first job, in other processes: what a user waits for either one on its own.
- **warm**: each run again in the same session, after its first run there (the JIT may still be compiling: the
  study's later runs are faster than its second).

And the job's own reading again on a larger table (``--larger``: that many times the users of the generated table
the config reads), in processes taking turns with the others: how prepare's time and the scan's grow with the input.

``python -m jester_als.prepare_speed`` (``make prepare-speed-docs``) writes ``prepare-speed.json`` (every run's
figures and the machine's load) and ``prepare-speed.md`` (medians, and ratios of medians from the same study; and,
for each reading, prepare's time by part where it went in one pass: the pass, the written ratings counted, the
refused cells, the rest).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from jester_als.outputs import RunOutputs, now_iso, write_text_atomic
from jester_als.report import ONE_PASS_PARTS
from jester_als.speed import machine, run_and_write_study, run_command

# A process whose session runs prepare first (no scan before it), and one whose session runs the scan first:
# the study alternates them.
ORDERS = ("prepare_first", "scan_first")


def session_runs(spark, cfg, work_dir: str, runs: int, order: str) -> list[dict]:
    """``run_prepare`` ``runs`` times in one session, writing under ``work_dir``; each run's timing (its
    ``data.timing_seconds``). With ``order`` ``prepare_first`` the first run has no scan before or after it."""
    from jester_als.jobs import run_prepare  # pyspark: only the worker process loads it

    out = RunOutputs(work_dir, "overwrite", ["ratings", "rejected"])
    out.check()
    timings = []
    try:
        for index in range(runs):
            scans = order == "scan_first" or index > 0
            run_cfg = cfg.model_copy(update={"input": cfg.input.model_copy(update={"reference_scan": scans})})
            timings.append(run_prepare(spark, run_cfg, out)[0]["data"]["timing_seconds"])
    finally:
        out.abort()
    return timings


def _worker(conf: str, settings: list[str], runs: int, order: str, result_file: str) -> None:
    """One process of the study: a session as the job starts one, :func:`session_runs`, the timings to
    ``result_file``."""
    from jester_als.config import load_config
    from jester_als.jobs import load_average
    from jester_als.session import build_session, release_session

    cfg = load_config(conf, settings)
    work_dir = os.path.dirname(result_file)
    load = load_average()
    spark, created = build_session(cfg.spark, spark_log=os.path.join(work_dir, "spark.log"))
    try:
        timings = session_runs(spark, cfg, os.path.join(work_dir, "out"), runs, order)
    finally:
        release_session(spark, created)
    record = {"order": order, "runs": timings, "load_average_1min": [load, load_average()]}
    write_text_atomic(result_file, json.dumps(record) + "\n")


def larger_table(conf: str, settings: list[str], factor: int, path: str) -> dict | None:
    """The table ``generate`` writes for the config, with ``factor`` times its users, written to ``path``: its
    users, ratings and bytes. None where the config's input is not the generated table (its settings need not read
    a generated one)."""
    from jester_als.config import load_config
    from jester_als.generate import GeneratorParams, write_wide_csv

    cfg = load_config(conf, settings)
    if not cfg.reads_generated_table:
        return None
    stats = write_wide_csv(GeneratorParams.from_config(cfg.generate, users=cfg.generate.users * factor), path)
    return {"factor": factor, "users": stats["users"], "ratings": stats["ratings"], "bytes": os.path.getsize(path)}


def run_in_new_process(conf: str, settings: list[str], runs: int, order: str, result_file: str) -> dict:
    """One process of the study (its own JVM, as a user's run starts one); its record."""
    command = [sys.executable, "-m", "jester_als.prepare_speed", "--conf", conf, "--runs", str(runs)]
    for setting in settings:
        command += ["--set", setting]
    run_command([*command, "--worker", order, result_file])
    with open(result_file, encoding="utf-8") as handle:
        return json.load(handle)


def study(
    conf: str,
    work_dir: str,
    *,
    processes: int,
    runs: int,
    settings: Sequence[str] = (),
    larger: int = 0,
    run: Callable[[str, list[str], int, str, str], dict] = run_in_new_process,
    make_table: Callable[[str, list[str], int, str], dict | None] = larger_table,
) -> dict:
    """``processes`` processes of each order, the orders taking turns, each running prepare ``runs`` times; with
    ``larger``, a process more in each round that runs the job's prepare once on a table of ``larger`` times the
    generated table's users (:func:`larger_table`). Each process's outputs are removed once its record is read, the
    larger table with the work dir."""
    started = time.perf_counter()
    table = os.path.join(work_dir, "larger.csv")
    bigger = make_table(conf, list(settings), larger, table) if larger > 1 else None
    if larger > 1 and bigger is None:
        print("no larger table: the config's input is not the table `generate` writes", file=sys.stderr)
    records = []
    # each process of a round: its order, settings, runs, the records it joins and how the progress line names it
    rounds = [(order, list(settings), runs, records, order) for order in ORDERS]
    if bigger:
        bigger["processes_run"] = []
        rounds.append(
            ("scan_first", [*settings, f"input.path={table}"], 1, bigger["processes_run"], f"{larger}x the users")
        )
    for round_number in range(processes):
        for index, (order, process_settings, process_runs, kept, name) in enumerate(rounds):
            process_dir = os.path.join(work_dir, f"process-{round_number}-{index}")
            os.makedirs(process_dir)
            kept.append(run(conf, process_settings, process_runs, order, os.path.join(process_dir, "result.json")))
            shutil.rmtree(process_dir, ignore_errors=True)
            first = kept[-1]["runs"][0]
            print(
                f"process {round_number * len(rounds) + index + 1}/{processes * len(rounds)} ({name}): "
                f"prepare {first['prepare']:.1f} s"
                + (f", scan {first['reference_scan_first']:.1f} s" if "reference_scan_first" in first else ""),
                file=sys.stderr,
                flush=True,
            )
    return {
        "written": now_iso(),
        "seconds": round(time.perf_counter() - started),
        "config": conf,
        "settings": list(settings),
        "processes": processes,
        "runs": runs,
        "machine": machine(),
        "processes_run": records,
        "larger": bigger,
    }


def _scans(record: dict) -> list[float]:
    """A process's scans in the order they ran (before and after each prepare that had them)."""
    steps = [
        seconds for run in record["runs"] for seconds in (run.get("reference_scan_first"), run.get("reference_scan"))
    ]
    return [seconds for seconds in steps if seconds is not None]


def _reading_runs(result: dict) -> dict:
    """Each reading's prepare runs (the records ``run_prepare`` gave) and scan seconds. In the job: the first run of
    the processes that scan first (prepare, then the scan after it). Alone: prepare's first run where it is the
    session's first job, against the scan's where it is. Warm: every prepare and scan that ran before in its
    session."""
    first = {order: [r["runs"][0] for r in result["processes_run"] if r["order"] == order] for order in ORDERS}
    # (a run whose scan could not read the input has no scan figures: run_prepare leaves the input to prepare)
    scanned = [run for run in first["scan_first"] if "reference_scan" in run]
    return {
        "in_the_job": (scanned, [run["reference_scan"] for run in scanned]),
        "alone": (first["prepare_first"], [run["reference_scan_first"] for run in scanned]),
        "warm": (
            [run for record in result["processes_run"] for run in record["runs"][1:]],
            [seconds for record in result["processes_run"] for seconds in _scans(record)[1:]],
        ),
    }


def summary(result: dict) -> dict:
    """The three readings (see :func:`_reading_runs`): medians (seconds) and each reading's ratio (prepare's median
    over the scan's, both from this study)."""

    def reading(prepares: list[dict], scan: list[float]) -> dict | None:
        if not prepares or not scan:
            return None
        p, s = statistics.median(run["prepare"] for run in prepares), statistics.median(scan)
        return {"prepare": p, "scan": s, "ratio": p / s, "prepare_runs": len(prepares), "scan_runs": len(scan)}

    return {key: reading(*runs) for key, runs in _reading_runs(result).items()}


# prepare's parts in one pass (OnePass.parts, named as the job's report names them), and what the rest of its time is
PARTS = (
    ("pass", "the pass: read, melt, classify and write the ratings, the input's rows counted as they stream past"),
    *[(part, ONE_PASS_PARTS[part]) for part in ("written_counts", "unique_users", "refused")],
    ("rest", "the rest: the input's header read and the queries planned (a fresh session's first Spark job)"),
)


def parts_summary(result: dict) -> dict:
    """Per reading, the median seconds of each of prepare's parts (:data:`PARTS`; ``rest`` is a run's prepare less
    its parts) and of the whole (``prepare``) over that reading's prepare runs that went in one pass; None for a
    reading without such runs."""
    medians = {}
    for key, (prepares, _) in _reading_runs(result).items():
        parted = [run for run in prepares if run.get("one_pass_parts")]
        if not parted:
            medians[key] = None
            continue
        rest = [run["prepare"] - sum(run["one_pass_parts"].values()) for run in parted]
        medians[key] = {
            name: statistics.median(
                rest if name == "rest" else [run["one_pass_parts"].get(name, 0.0) for run in parted]
            )
            for name, _ in PARTS
        } | {"prepare": statistics.median(run["prepare"] for run in parted), "runs": len(parted)}
    return medians


READINGS = (
    (
        "in_the_job",
        "in the job",
        "prepare's first run in its session against the scan repeated after it, as the job reports it",
    ),
    (
        "alone",
        "each alone, in a fresh session",
        "prepare as its session's first job against the scan as its session's first job (other processes)",
    ),
    ("warm", "warm", "each run again in the same session (every prepare and scan but its session's first)"),
)


def render(result: dict) -> str:
    readings = summary(result)
    machine = result["machine"]
    loads = [load for r in result["processes_run"] for load in (r["load_average_1min"] or []) if load is not None]
    lines = [
        "# Prepare against a plain read-melt-write",
        "",
        f"Written by `python -m jester_als.prepare_speed` (`make prepare-speed-docs`) on {result['written']}, in "
        f"{result['seconds']} s: `prepare` on `{result['config']}`"
        + (f" with {', '.join(f'`{s}`' for s in result['settings'])}" if result["settings"] else "")
        + f", {result['processes']} fresh process(es) of each order, the orders taking turns, prepare run "
        f"{result['runs']} times in each. {machine['cpus']} cores, Python {machine['python']}, pyspark "
        f"{machine['pyspark']}; the 1-minute load average at the processes' starts and ends ranged "
        f"{min(loads, default=0):.2f} to {max(loads, default=0):.2f}.",
        "",
        "The scan is the least work any prepare must do: one read of the input, melted, its non-blank cells "
        "written as Parquet, without checks or counts (`jester_als.prepare.reference_scan`). Prepare is the job's "
        "own step (`jester_als.jobs.run_prepare`), which also classifies every cell, counts and checks them and "
        "writes the refused ones. Medians over the runs; a ratio is prepare's median over the scan's.",
        "",
        "| reading | what is compared | prepare (s) | scan (s) | ratio | runs (prepare / scan) |",
        "|---|---|---|---|---|---|",
    ]
    for key, name, what in READINGS:
        row = readings[key]
        if row is None:
            lines.append(f"| {name} | {what} | | | | none |")
            continue
        lines.append(
            f"| {name} | {what} | {row['prepare']:.2f} | {row['scan']:.2f} | {row['ratio']:.2f}x | "
            f"{row['prepare_runs']} / {row['scan_runs']} |"
        )
    lines += [
        "",
        "Prepare's first run in a session compiles its own code (Spark's generated classes for its queries, and "
        "the JIT's compilation of them) while it runs, which on a few cores takes time from its tasks; the scan "
        "repeated after it compiles nothing. The job's own ratio holds the first against the second; the other "
        "two readings compare like with like. Warm runs go on getting faster for a few runs (the JIT keeps "
        "compiling what runs most), so the warm medians include some of that in the second runs.",
    ]
    lines += _parts_lines(result, readings)
    lines += _larger_lines(result)
    return "\n".join(lines) + "\n"


def _larger_lines(result: dict) -> list[str]:
    """The job's reading on the study's input and on the larger table, side by side; nothing without one."""
    bigger = result.get("larger")
    if not bigger:
        return []
    rows = [("the input", result), (f"{bigger['factor']}x its users", bigger)]
    figures = {}
    for name, study_part in rows:
        job, parts = summary(study_part)["in_the_job"], parts_summary(study_part)["in_the_job"]
        if job is None:
            return []
        figures[name] = {**job, "pass": parts and parts["pass"], "counts": parts and parts["written_counts"]}
    lines = [
        "",
        "## On a larger table",
        "",
        f"The job's own reading again, on a table generated as `generate` writes the input, with {bigger['factor']}x "
        f"its users ({bigger['users']:,} users, {bigger['ratings']:,} ratings, {bigger['bytes'] / 1e6:.1f} MB): in "
        "processes of their own that took turns with the ones above, each running prepare once between two scans, "
        "as the job does. Medians; the parts as above.",
        "",
        "| table | prepare (s) | scan (s) | ratio | the pass (s) | the written ratings counted (s) | runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, _ in rows:
        row = figures[name]
        parts = [f"{row[part]:.2f}" if row[part] is not None else "" for part in ("pass", "counts")]
        lines.append(
            f"| {name} | {row['prepare']:.2f} | {row['scan']:.2f} | {row['ratio']:.2f}x | "
            + " | ".join(parts)
            + f" | {row['prepare_runs']} |"
        )
    small, large = figures["the input"], figures[rows[1][0]]
    lines += [
        "",
        f"With {bigger['factor']}x the users, the scan took {large['scan'] / small['scan']:.1f}x as long and prepare "
        f"{large['prepare'] / small['prepare']:.1f}x; prepare took {large['prepare'] - large['scan']:.2f} s more "
        f"than the scan, against {small['prepare'] - small['scan']:.2f} s more on the input.",
    ]
    return lines


def _parts_lines(result: dict, readings: dict) -> list[str]:
    """The table of prepare's parts per reading (:func:`parts_summary`), and the pass against the scan in the job;
    nothing when no run went in one pass."""
    parts = parts_summary(result)
    if not any(parts.values()):
        return []
    lines = [
        "",
        "## Where prepare's time went",
        "",
        "Prepare in one pass, by part: the median of each part over the same prepare runs as the readings above "
        "(the medians of the parts need not add up to the median of the whole).",
        "",
        "| part | " + " | ".join(name for key, name, _ in READINGS) + " |",
        "|---|" + "---|" * len(READINGS),
    ]
    for part, what in PARTS:
        cells = [f"{parts[key][part]:.2f}" if parts[key] else "" for key, _, _ in READINGS]
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    cells = [f"{parts[key]['prepare']:.2f}" if parts[key] else "" for key, _, _ in READINGS]
    lines.append("| prepare, whole | " + " | ".join(cells) + " |")
    job, scan = parts["in_the_job"], readings["in_the_job"]
    if job and scan:
        lines += [
            "",
            f"In the job, prepare's pass alone took {job['pass'] / scan['scan']:.2f}x the repeated scan "
            f"({job['pass']:.2f} s against {scan['scan']:.2f} s); counting what it wrote took "
            f"{job['written_counts']:.2f} s more, the other parts the rest.",
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jester_als.prepare_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", default="conf/local.yaml", help="the config every process starts from")
    parser.add_argument("--out", default="output/prepare-speed", help="where prepare-speed.json and .md go")
    parser.add_argument("--processes", type=int, default=3, help="fresh processes of each order")
    parser.add_argument("--runs", type=int, default=4, help="prepare runs in each process (the first is cold)")
    parser.add_argument("--set", action="append", default=[], help="a setting under every run's (key=value)")
    parser.add_argument(
        "--larger",
        type=int,
        default=10,
        help="also the job's reading on a table of this many times the generated table's users (0: not)",
    )
    parser.add_argument("--worker", nargs=2, metavar=("ORDER", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:  # (the larger table's processes run prepare once)
        order, result_file = args.worker
        if order not in ORDERS:
            parser.error(f"--worker: the order is one of {list(ORDERS)}")
        if args.runs < 1:
            parser.error("--runs must be at least 1")
        _worker(args.conf, args.set, args.runs, order, result_file)
        return 0
    if args.processes < 1 or args.runs < 2:
        parser.error("--processes must be at least 1 and --runs at least 2 (the runs after the first are warm)")
    if args.larger < 0 or args.larger == 1:
        parser.error("--larger must be 0 (no larger table) or at least 2")
    run_and_write_study(
        args.out,
        "prepare-speed",
        lambda work_dir: study(
            args.conf, work_dir, processes=args.processes, runs=args.runs, settings=args.set, larger=args.larger
        ),
        render,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
