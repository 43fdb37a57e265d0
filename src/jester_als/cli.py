"""The ``jester-als`` command: one entry point for every job, under spark-submit, make and Databricks.

``jester-als <job> [--conf FILE] [--set key.path=value ...] [--master URL | --remote sc://HOST:PORT]``

Exit status: 0 success, 1 runtime failure (bad input, refused compute, Spark error, lost Spark Connect server),
2 usage or config error, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).

The console script and the Databricks ``python_wheel_task`` call :func:`run`, which *raises* ``SystemExit``
with that status: a wheel task calls its entry point with no arguments and ignores what it returns (the
Databricks CLI's wheel wrapper, ``bundle/trampoline/python_wheel.go`` in databricks/cli, runs
``entry[0].load()()``), so only an exception can fail the task. :func:`main` returns the status, for tests.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from jester_als import __version__
from jester_als.config import ConfigError, JesterConfig, load_config
from jester_als.errors import JobError, actionable_cause, first_line
from jester_als.registry import JOBS, Job, check_generated_input, check_needs
from jester_als.session import (
    build_session,
    check_iterations,
    connection_lost,
    release_session,
    runs_locally,
    where_to_run,
)

log = logging.getLogger("jester_als")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jester-als", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"jester-als {__version__}")
    jobs = parser.add_subparsers(dest="job", metavar="JOB", required=True)
    for name, job in JOBS.items():
        sub = jobs.add_parser(name, help=job.help, description=job.help)
        sub.add_argument(
            "--conf",
            metavar="FILE",
            help="YAML config (e.g. conf/local.yaml); without it the built-in defaults, which are conf/local.yaml's",
        )
        sub.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY.PATH=VALUE",
            dest="overrides",
            help="override a config key with a YAML-typed value; repeatable "
            "(e.g. --set tune.grid.rank=[5,10] --set output.dir=/tmp/run)",
        )
        sub.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
        if job.spark:
            where = sub.add_mutually_exclusive_group()
            where.add_argument("--master", help="Spark master (default: spark-submit's, or local[*])")
            where.add_argument("--remote", help="Spark Connect URL, e.g. sc://localhost:15002 (default: $SPARK_REMOTE)")
    return parser


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is logged (a host or a test may replace it between
    runs in one process), not to the stream it was when the handler was made."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _setup_logging(level: str) -> None:
    """The job's own lines on stderr: the ``jester_als`` logger gets a handler, the root logger is left alone,
    so a host that configured logging already (a notebook, the Databricks driver) keeps its own setup and
    shows the job's lines without anything else's being turned up."""
    logger = logging.getLogger("jester_als")
    logger.setLevel(getattr(logging, level))
    if not any(getattr(h, "_jester_als", False) for h in logger.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._jester_als = True
        logger.addHandler(handler)
    logger.propagate = False


def summary(job: Job, metrics: dict, seconds: float) -> str:
    """What a finished job prints: its time, then a line per section of ``metrics`` the job reports
    (``metrics.json`` also holds earlier jobs' sections)."""
    lines = [f"jester-als {job.name}: done in {seconds:.1f} s"]
    data = metrics.get("data", {})
    fold = metrics.get("foldin") if "foldin" in job.reports else None
    if "ratings" in data:
        lines.append(
            f"  {'the model was trained on' if fold else 'data'}: {data['ratings']:,} ratings by "
            f"{data['users']:,} users of {data['items']} jokes; {data['missing']:,} missing and "
            f"{data['rejected']:,} rejected cells"
        )
    if fold:
        refused = sum(fold["cells"]["rejected"].values())
        read = fold["users"] + fold["users_without_ratings"]
        lines.append(
            f"  new users: {read:,} read from {fold['source']}, {fold['users']:,} with a rating of a known joke "
            f"({fold['ratings']:,} ratings, {refused:,} refused cells) folded in ({fold['engine']}); top "
            f"{fold['top_n']} for {fold['recommended_users']:,} users"
        )
    if metrics.get("als_engine") and "als_engine" in job.reports:
        fallback = metrics["numpy_als"]
        lines.append(
            f"  {metrics['als_engine']}: {fallback['params']}: test RMSE {fallback['test_rmse']:.4f}, "
            f"MAE {fallback['test_mae']:.4f} (fit {fallback['fit_seconds']:.1f} s on the driver)"
        )
    spark = metrics.get("spark_als")
    if spark and "spark_als" in job.reports:
        params = spark.get("model_params", spark["best_params"])
        nmae = f", NMAE {spark['test_nmae']:.4f}" if spark.get("test_nmae") is not None else ""
        lines.append(
            f"  Spark ALS {params}: test RMSE {spark['test_rmse']:.4f}, "
            f"MAE {spark['test_mae']:.4f}{nmae} (tuning {spark['tune_seconds']:.1f} s over "
            f"{len(spark['validation'])} grid points, final fit {spark['fit_seconds']:.1f} s)"
        )
    numpy_als, baselines = metrics.get("numpy_als"), metrics.get("baselines")
    if numpy_als and baselines and "baselines" in job.reports:
        lines.append(
            f"  same {numpy_als['rows']:,} held-out ratings of {numpy_als['sample_users']:,} sampled users: "
            f"test RMSE Spark ALS {numpy_als['spark_test_rmse_same_rows']:.4f} | NumPy ALS "
            f"{numpy_als['test_rmse']:.4f} (collect {numpy_als['collect_seconds']:.1f} s + fit "
            f"{numpy_als['fit_seconds']:.2f} s on the driver) | user+joke bias "
            f"{baselines['bias']['test_rmse']:.4f} | global mean {baselines['global_mean']['test_rmse']:.4f}"
        )
    recs = metrics.get("recommendations")
    if recs and "recommendations" in job.reports:
        lines.append(f"  recommendations: top {recs['top_n']} for {recs['users']:,} users")
    run = metrics.get("run", {})
    output_dir = run.get("output_dir") or run.get("config", {}).get("output", {}).get("dir", "")
    lines.append(f"  outputs: {output_dir}")
    lines.append(f"  report: {output_dir.rstrip('/')}/report.md")
    return "\n".join(lines)


def run() -> None:
    """The console script and wheel-task entry point: the job's arguments come from ``sys.argv``; returns
    only on success and raises ``SystemExit`` with the status for every failure."""
    status = main()
    if status:
        raise SystemExit(status)


def main(argv: list[str] | None = None) -> int:
    """Run one job; returns the exit status (:func:`run` turns a non-zero one into ``SystemExit``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        cfg = load_config(args.conf, args.overrides)
    except ConfigError as exc:
        return _refused(args.job, exc, 2)
    _setup_logging("DEBUG" if args.verbose else cfg.log_level)
    job = JOBS[args.job]
    if not job.spark:  # generate, and bench and scale, whose engines each run in a worker process of their own
        try:
            print(job.run(cfg))
        except JobError as exc:
            return _refused(job.name, exc, 1)
        except OSError as exc:  # a path it cannot make or write: one line naming it (the trace behind -v)
            cause = actionable_cause(exc) or f"{(exc.strerror or 'I/O error').lower()}: {exc.filename or exc}"
            return _refused(job.name, f"failed: {cause}", 1)
        return 0
    return _run_spark_job(job, args, cfg)


def _refused(job: str, exc: Exception, status: int) -> int:
    """A config or job error: its message on stderr as one line per problem (the trace behind -v); the status."""
    log.debug("%s refused", job, exc_info=True)
    print(f"jester-als {job}: {exc}", file=sys.stderr)
    return status


def als_iterations(job: str, cfg: JesterConfig) -> dict[str, int]:
    """The Spark ALS fits a job asks for, as config key -> maxIter (Spark's default maxIter is 10)."""
    if JOBS[job].tunes:
        grid_max = max(cfg.tune.grid.maxIter or [10])
        return {"tune.grid.maxIter": grid_max, "tune.refit_max_iter": cfg.tune.refit_max_iter or grid_max}
    return {}


def spark_log_path(output_dir: str) -> str | None:
    """Where a local run's Spark log goes: ``spark.log`` in the output directory (a local path only)."""
    if "://" in output_dir and not output_dir.startswith("file://"):
        return None
    return os.path.join(os.path.abspath(output_dir.removeprefix("file://")), "spark.log")


def _run_spark_job(job: Job, args, cfg: JesterConfig) -> int:
    """Run a Spark job. On Ctrl-C (exit 130) or SIGTERM (exit 143) Spark is stopped first, then the staged
    outputs are removed, so nothing half-written is left and the previous outputs stay as they were."""
    from jester_als.jobs import run_spark_job  # pyspark: only Spark jobs load it (generate and --help do not)

    started = time.perf_counter()
    try:
        run = _SparkRun(*_start_spark(job, args, cfg))
    except JobError as exc:
        return _refused(job.name, exc, 1)
    previous = run.catch_sigterm()
    try:
        if not job.staged:
            print(job.run(run.spark, cfg))
            return 0
        metrics = run_spark_job(run.spark, cfg, job, on_start=run.outputs.append)
        metrics.setdefault("run", {})["output_dir"] = cfg.output.dir
        print(summary(job, metrics, time.perf_counter() - started))
        return 0
    except JobError as exc:
        return _refused(job.name, exc, 1)
    except BaseException as exc:
        if run.received or isinstance(exc, KeyboardInterrupt):
            return run.stop(job.name)
        if not isinstance(exc, Exception):
            raise
        return _failed(job.name, exc, run, cfg.output.dir, args.verbose)
    finally:
        run.release(previous)


def no_jvm_message() -> str:
    """Why Spark's JVM did not start, as far as this process can tell, and what it needs."""
    import shutil

    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not java or not os.path.exists(java):
        found = f"JAVA_HOME is {home}, which has no bin/java" if home else "no java on the PATH and no JAVA_HOME"
    else:
        found = f"{java} did not start it (`{java} -version` says which Java it is; Spark's lines above say why)"
    return f"Spark could not start its Java process: {found}. Spark 4 needs Java 17 or 21."


def _start_spark(job: Job, args, cfg: JesterConfig):
    """``(spark, created)`` once the job's inputs from earlier jobs are there and its ALS iterations are safe
    where it runs; a JobError otherwise, with nothing left running."""

    check_needs(job.name, cfg.output.dir)
    if runs_locally(*where_to_run(cfg.spark, args.master, args.remote)):
        # only where input.path is a path on this machine (a cluster's default file system may be another)
        check_generated_input(job.name, cfg)
    try:
        spark, created = build_session(
            cfg.spark,
            master=args.master,
            remote=args.remote,
            spark_log=spark_log_path(cfg.output.dir),
            verbose=args.verbose,
        )
    except Exception as exc:
        # pyspark's launcher (java_gateway.py) raises this when the JVM it started exits before it answers:
        # no Java, or one too old for Spark 4 (its own lines above say which)
        if "JAVA_GATEWAY_EXITED" not in str(exc):
            raise
        raise JobError(no_jvm_message()) from exc
    try:
        check_iterations(spark, als_iterations(job.name, cfg))
    except JobError:
        release_session(spark, created)
        raise
    return spark, created


@dataclass
class _SparkRun:
    """A running Spark job's session, whether this process created it, the outputs it opened and the signals
    it received."""

    spark: Any
    created: bool
    outputs: list = field(default_factory=list)
    received: list[int] = field(default_factory=list)

    def catch_sigterm(self):
        """Handle SIGTERM while the job runs (in the main thread only, where Python delivers signals); the
        previous handler, or None."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def on_sigterm(signum, frame):
            # Raising here would surface inside a py4j call and be reported as a network error; instead stop
            # Spark from another thread, which makes the running action fail, and report the signal after.
            self.received.append(signum)
            threading.Thread(target=_stop_quietly, args=(self.spark, self.created), daemon=True).start()

        return signal.signal(signal.SIGTERM, on_sigterm)

    def stop(self, name: str) -> int:
        """After Ctrl-C or SIGTERM: Spark stopped, then the staged outputs removed; the exit status."""
        code = 143 if self.received else 130
        log.error(
            "%s: Spark stopped, this run's staged outputs removed; earlier outputs are untouched",
            "terminated (SIGTERM)" if self.received else "interrupted",
        )
        _stop_quietly(self.spark, self.created)
        self.created = False
        for outputs in self.outputs:
            outputs.abort()  # after Spark stopped, so no task is still writing into the staging directory
        print(
            f"jester-als {name}: {'terminated' if self.received else 'interrupted'}; nothing was replaced",
            file=sys.stderr,
        )
        return code

    def release(self, previous) -> None:

        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        release_session(self.spark, self.created)


def _failed(name: str, exc: Exception, run: _SparkRun, output_dir: str, verbose: bool) -> int:
    """A job that failed: one line that says why (the cause a user can act on where there is one) and that
    nothing was replaced; the trace goes to spark.log (or the console with -v)."""

    if connection_lost(run.spark, exc):
        run.created = False  # nothing to stop: the server is gone, and asking it would only wait again
        print(
            f"jester-als {name}: lost the Spark Connect server ({first_line(exc)}); nothing was "
            f"replaced in {output_dir}",
            file=sys.stderr,
        )
        return 1
    cause = actionable_cause(exc)
    where = spark_log_path(output_dir)
    keep_trace(exc, where)
    log.debug("failed", exc_info=True)  # -v shows the whole trace here
    said = cause or (f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__)
    print(
        f"jester-als {name}: failed: {said}; nothing was replaced in {output_dir}"
        + ("" if verbose else f" (the trace: {where or 'run with -v'})"),
        file=sys.stderr,
    )
    return 1


def keep_trace(exc: BaseException, spark_log: str | None) -> None:
    """Append the failure's Python trace to ``spark.log`` (beside Spark's own), where the file can be written."""
    import traceback

    if not spark_log:
        return
    try:
        with open(spark_log, "a", encoding="utf-8") as handle:
            handle.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    except OSError:  # the disk that is full, or a directory the job may not write to
        pass


def _stop_quietly(spark, created: bool) -> None:
    try:
        if created:
            spark.stop()
        else:
            spark.interruptAll()
    except Exception as exc:  # the session may already be gone
        log.debug("while stopping Spark: %s", exc)


if __name__ == "__main__":
    run()
