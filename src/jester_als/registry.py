"""The job table: every job stated once, with its name, help, the outputs it owns, what it needs from earlier
jobs, whether it runs on Spark, and the function that runs it. The CLI parses the command, loads the config and
calls the job's :meth:`Job.run`; the spark-submit entry scripts (``jobs/*.py``) and the Databricks tasks name
the same jobs (tests hold them to this table).

A job runs in one of three ways, by what it needs:

- ``Job(spark=False)``: ``run(cfg) -> str``, no Spark (generate, bench, scale); the text is what it prints.
- ``Job(staged=False)``: ``run(spark, cfg) -> str``, Spark but no outputs (check).
- otherwise ``run(spark, cfg, out) -> dict``: the ``metrics.json`` sections it produced, its files written
  through ``out`` (:class:`~jester_als.outputs.RunOutputs`), which commits them all or none.

The functions are named as ``"module:function"`` and imported when the job runs, so that parsing a command needs
no pyspark.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

from jester_als.errors import JobError


@dataclass(frozen=True)
class Job:
    name: str
    help: str
    target: str  # "module:function" that runs the job (see the module's docstring for its arguments)
    spark: bool = True  # builds a SparkSession (and takes --master / --remote)
    staged: bool = True  # writes its outputs through RunOutputs and metrics.json
    outputs: tuple[str, ...] = ()  # directories or files under output.dir it replaces (checked against output.mode)
    needs: tuple[str, ...] = ()  # directories under output.dir an earlier job must have written
    reports: tuple[str, ...] = ()  # the metrics.json sections its summary shows (besides data)
    tunes: bool = False  # fits ALS over tune.grid (its iterations are checked before Spark starts work)
    whole: bool = False  # runs every step and numbers them; its metrics.json replaces the directory's
    reads_input: bool = False  # reads input.path (the others read what earlier jobs wrote)

    def run(self, *args):
        module, _, function = self.target.partition(":")
        return getattr(importlib.import_module(module), function)(*args)


JOBS: dict[str, Job] = {
    job.name: job
    for job in (
        Job(
            "check",
            "validate the config and the input's header, with no Spark work beyond reading the header; "
            "exit 0 (fine), 1 (input problem) or 2 (config problem)",
            "jester_als.prepare:check_job",
            staged=False,
            reads_input=True,
        ),
        Job(
            "generate",
            "write a synthetic Jester-shaped wide CSV with a planted structure (no Spark)",
            "jester_als.generate:generate_job",
            spark=False,
        ),
        Job(
            "prepare",
            "read the Jester table, melt it to (user, joke, rating), write ratings/ and rejected/",
            "jester_als.jobs:prepare_job",
            outputs=("ratings", "rejected", "user_ids", "user_files"),
            reads_input=True,
        ),
        Job(
            "tune",
            "split the ratings, tune ALS with TrainValidationSplit, evaluate on test, save model/",
            "jester_als.jobs:tune_job",
            outputs=("model",),
            needs=("ratings",),
            reports=("als_engine", "spark_als"),
            tunes=True,
        ),
        Job(
            "recommend",
            "top-N unrated jokes per user from the saved model into recommendations/",
            "jester_als.jobs:run_recommend",
            outputs=("recommendations",),
            needs=("ratings", "model"),
            reports=("recommendations",),
        ),
        Job(
            "baseline",
            "NumPy ALS and simple baselines on a collected sample, against Spark ALS on the same rows",
            "jester_als.jobs:run_baseline",
            needs=("ratings", "model"),
            reports=("baselines",),
        ),
        Job(
            "foldin",
            "recommendations for new users from their ratings (new_users.path) and the saved model, without a refit",
            "jester_als.jobs:run_foldin",
            outputs=("new_user_recommendations", "new_user_factors", "new_user_rejected"),
            needs=("model",),
            reports=("foldin",),
        ),
        Job(
            "pipeline",
            "prepare, tune, baseline and recommend in one run, with metrics.json and report.md",
            "jester_als.jobs:run_pipeline",
            outputs=("ratings", "rejected", "user_ids", "user_files", "model", "recommendations"),
            reports=("als_engine", "spark_als", "baselines", "recommendations"),
            tunes=True,
            whole=True,
            reads_input=True,
        ),
        Job(
            "bench",
            "time NumPy ALS, Spark ALS and the seed's loop on the same ratings, each in its own process; "
            "bench.json, bench.md",
            "jester_als.bench:bench_job",
            spark=False,
            outputs=("bench.json", "bench.md", "bench.png"),
        ),
        Job(
            "scale",
            "scaling study: both engines along users, density and jokes axes; scale.json, scale.md, scale.png",
            "jester_als.scale:scale_job",
            spark=False,
            outputs=("scale.json", "scale.md", "scale.png"),
        ),
    )
}

PRODUCED_BY = {"ratings": "prepare", "model": "tune"}


class MissingInputError(JobError):
    """A job was asked to run before the job it depends on."""


def check_generated_input(job: str, cfg) -> None:
    """Refuse, before Spark starts, a job that would read the generated table
    (:attr:`~jester_als.config.JesterConfig.reads_generated_table`) before it was generated, saying how to make
    it."""
    if JOBS[job].reads_input and cfg.reads_generated_table and not os.path.exists(cfg.input.path):
        raise MissingInputError(
            f"csv file {cfg.input.path}: does not exist; it is the generated table the config reads, which "
            f"`jester-als generate` writes (with the same --conf and --set), or set input.path to your own table"
        )


def check_needs(job: str, output_dir: str) -> None:
    """Refuse, before Spark starts, a job whose inputs from earlier jobs are not in ``output_dir``."""
    if "://" in output_dir and not output_dir.startswith("file://"):
        return  # RunOutputs refuses such a directory with its own message
    base = os.path.abspath(output_dir.removeprefix("file://"))
    missing = [item for item in JOBS[job].needs if not os.path.isdir(os.path.join(base, item))]
    if missing:
        first = ", ".join(f"{item}/ (written by {PRODUCED_BY[item]})" for item in missing)
        raise MissingInputError(
            f"output.dir {base} has no {first}; run "
            f"{' and '.join(dict.fromkeys(PRODUCED_BY[i] for i in missing))} with the same "
            f"output.dir first, or the pipeline job"
        )
