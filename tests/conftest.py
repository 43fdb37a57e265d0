"""One local SparkSession for the whole test session, and small generated tables."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
# Every JVM the tests start (sessions, spark-submit, the standalone cluster's daemons and executors, Connect
# servers) lives for seconds on a few MB, where C2's optimizing compiler burns CPU it never earns back, so they
# run C1 only. C1's frames are larger
# than C2's, and deserializing ALS's lineage of ten iterations (the checkpoint interval) overflowed a task
# thread's default 1 MB stack in the shared session (a StackOverflowError in a task ends a local-mode JVM), so
# threads get 4 MB. The parallel collector is the one local jobs choose (spark.local_java_options); a second,
# different one would stop the JVM. Jobs and benchmarks outside the tests keep their own JVM settings.
os.environ.setdefault("JAVA_TOOL_OPTIONS", "-XX:TieredStopAtLevel=1 -XX:+UseParallelGC -Xss4m")

from helpers import EXCERPT, PIPELINE_TOP_N, SHARED_EXCERPT, job_argv, small_params  # noqa: E402 - after the JVM options


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    scratch = tempfile.mkdtemp(prefix="jester-als-tests-")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Python workers run the tests' environment
    session = (
        SparkSession.builder.master("local[2]")
        .appName("jester-als-tests")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.local.dir", os.path.join(scratch, "local"))
        .config("spark.checkpoint.dir", os.path.join(scratch, "checkpoints"))
        .config("spark.log.level", "ERROR")
        .getOrCreate()
    )
    yield session
    session.stop()
    shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="session")
def excerpt_path() -> Path:
    if not EXCERPT.exists():
        pytest.fail(f"the real Jester excerpt is missing: {EXCERPT}")
    if SHARED_EXCERPT.exists():
        assert SHARED_EXCERPT.read_bytes() == EXCERPT.read_bytes(), "tests/data excerpt differs from shared/"
    return EXCERPT


@pytest.fixture(scope="session")
def small_table(tmp_path_factory):
    """Path of a small generated wide CSV, and its parameters."""
    from jester_als.generate import write_wide_csv

    params = small_params()
    path = tmp_path_factory.mktemp("small") / "jester_small.csv"
    write_wide_csv(params, str(path))
    return path, params


@pytest.fixture(scope="session")
def small_ratings(spark, small_table):
    """The small table prepared into long ratings (persisted), and its generator parameters."""
    from jester_als.config import load_config
    from jester_als.prepare import prepare_ratings

    path, params = small_table
    cfg = load_config(None, [f"input.path={path}", "output.dir=/tmp/unused"])
    prepared = prepare_ratings(spark, cfg.input)
    ratings = prepared.ratings.persist()
    ratings.count()
    prepared.release()
    yield ratings, params
    ratings.unpersist()


@pytest.fixture(scope="session")
def pipeline_run(spark, small_table, tmp_path_factory):
    """One pipeline run on the small table through the entry point (tuned, tracked in MLflow), shared by the
    tests that read its outputs (they must not change them): its output dir, the table's parameters, its argv."""
    from jester_als.cli import main

    path, params = small_table
    out = tmp_path_factory.mktemp("pipeline") / "out"
    argv = job_argv(
        "pipeline",
        "tune.grid={rank: [2, 3], regParam: [0.1], maxIter: [8]}",
        "tune.refit_max_iter=12",
        f"recommend.top_n={PIPELINE_TOP_N}",
        "evaluate.relevance_threshold=3.0",
        "tracking.mlflow=true",
        path=path,
        out=out,
    )
    assert main(argv) == 0
    return out, params, argv
