"""What a job is, stated once: its name, help, the outputs it owns, what it needs from earlier jobs, and
whether it runs on Spark. The CLI, the spark-submit entry scripts (``jobs/*.py``) and the Databricks tasks
all read this table (tests hold them to it)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from jester_als.errors import JobError


@dataclass(frozen=True)
class Job:
    name: str
    help: str
    spark: bool = True  # builds a SparkSession (and takes --master / --remote)
    outputs: tuple[str, ...] = ()  # directories or files under output.dir it replaces (checked against output.mode)
    needs: tuple[str, ...] = ()  # directories under output.dir an earlier job must have written


JOBS: dict[str, Job] = {job.name: job for job in (
    Job("check", "validate the config and the input's header, with no Spark work beyond reading the header; "
                 "exit 0 (fine), 1 (input problem) or 2 (config problem)"),
    Job("generate", "write a synthetic Jester-shaped wide CSV with a planted structure (no Spark)", spark=False),
    Job("prepare", "read the Jester table, melt it to (user, joke, rating), write ratings/ and rejected/",
        outputs=("ratings", "rejected", "user_ids", "user_files")),
    Job("tune", "split the ratings, tune ALS with TrainValidationSplit, evaluate on test, save model/",
        outputs=("model",), needs=("ratings",)),
    Job("recommend", "top-N unrated jokes per user from the saved model into recommendations/",
        outputs=("recommendations",), needs=("ratings", "model")),
    Job("baseline", "NumPy ALS and simple baselines on a collected sample, against Spark ALS on the same rows",
        needs=("ratings", "model")),
    Job("foldin", "recommendations for new users from their ratings (new_users.path) and the saved model, without a "
                  "refit", outputs=("new_user_recommendations", "new_user_factors", "new_user_rejected"),
        needs=("model",)),
    Job("pipeline", "prepare, tune, baseline and recommend in one run, with metrics.json and report.md",
        outputs=("ratings", "rejected", "user_ids", "user_files", "model", "recommendations")),
    Job("bench", "time NumPy ALS, Spark ALS and the seed's loop on the same ratings, each in its own process; "
                 "bench.json, bench.md", spark=False, outputs=("bench.json", "bench.md", "bench.png")),
    Job("scale", "scaling study: both engines along users, density and jokes axes; scale.json, scale.md, scale.png",
        spark=False, outputs=("scale.json", "scale.md", "scale.png")),
)}

PRODUCED_BY = {"ratings": "prepare", "model": "tune"}


class MissingInputError(JobError):
    """A job was asked to run before the job it depends on."""


def check_needs(job: str, output_dir: str) -> None:
    """Refuse, before Spark starts, a job whose inputs from earlier jobs are not in ``output_dir``."""
    if "://" in output_dir and not output_dir.startswith("file://"):
        return  # RunOutputs refuses such a directory with its own message
    base = os.path.abspath(output_dir.removeprefix("file://"))
    missing = [item for item in JOBS[job].needs if not os.path.isdir(os.path.join(base, item))]
    if missing:
        first = ", ".join(f"{item}/ (written by {PRODUCED_BY[item]})" for item in missing)
        raise MissingInputError(f"output.dir {base} has no {first}; run "
                                f"{' and '.join(dict.fromkeys(PRODUCED_BY[i] for i in missing))} with the same "
                                f"output.dir first, or the pipeline job")
