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
# servers) lives for seconds on a few MB, where C2's optimizing compiler burns CPU it never earns back: C1 only
# took test_tune.py from 91 to 51 CPU-seconds (50.7 to 36.2 s) on this 2-core machine. C1's frames are larger
# than C2's, and deserializing ALS's lineage of ten iterations (the checkpoint interval) overflowed a task
# thread's default 1 MB stack in the shared session (a StackOverflowError in a task ends a local-mode JVM), so
# threads get 4 MB. The parallel collector is the one local jobs choose (session.local_mode_defaults); a second,
# different one would stop the JVM. Jobs and benchmarks outside the tests keep the JVM's defaults.
os.environ.setdefault("JAVA_TOOL_OPTIONS", "-XX:TieredStopAtLevel=1 -XX:+UseParallelGC -Xss4m")

ROOT = Path(__file__).resolve().parents[1]
# The first 10 rows of the seed's real Jester table (../shared/data), kept in the repo so tests run anywhere.
EXCERPT = ROOT / "tests" / "data" / "jester_seed_excerpt.csv"
SHARED_EXCERPT = ROOT.parent / "shared" / "data" / "jester_seed_excerpt.csv"


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    scratch = tempfile.mkdtemp(prefix="jester-als-tests-")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Python workers run the tests' environment
    session = (SparkSession.builder.master("local[2]").appName("jester-als-tests")
               .config("spark.sql.shuffle.partitions", "2")
               .config("spark.default.parallelism", "2")
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.driver.bindAddress", "127.0.0.1")
               .config("spark.local.dir", os.path.join(scratch, "local"))
               .config("spark.checkpoint.dir", os.path.join(scratch, "checkpoints"))
               .config("spark.log.level", "ERROR")
               .getOrCreate())
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


def small_params(**overrides):
    """A small Jester-shaped table with a pure planted rank-3 structure (no user or joke effects, which
    would add two ranks ALS has to spend on them) plus noise of standard deviation 1, in rating units (the
    additive model clipped to the scale, three equal factors)."""
    from jester_als.generate import GeneratorParams

    base = dict(users=400, jokes=40, rank=3, noise=1.0, factor_scale=3.0, user_bias=0.0, joke_bias=0.0,
                mean=0.0, min_ratings=20, mean_ratings=30, gauge_jokes=10, zero_fraction=0.0, seed=11,
                marginal="clip", spectrum_decay=1.0, share_rated_all=0.25)
    base.update(overrides)
    return GeneratorParams(**base)


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
    prepared = prepare_ratings(spark, cfg["input"])
    ratings = prepared.ratings.persist()
    ratings.count()
    prepared.release()
    yield ratings, params
    ratings.unpersist()


PIPELINE_TOP_N = 5


@pytest.fixture(scope="session")
def pipeline_run(spark, small_table, tmp_path_factory):
    """One pipeline run on the small table through the entry point (tuned, tracked in MLflow), shared by the
    tests that read its outputs (they must not change them): its output dir, the table's parameters, its argv."""
    from jester_als.cli import main

    path, params = small_table
    out = tmp_path_factory.mktemp("pipeline") / "out"
    argv = ["pipeline", "--conf", "conf/local.yaml",
            "--set", f"input.path={path}", "--set", f"output.dir={out}",
            "--set", "tune.grid={rank: [2, 3], regParam: [0.1], maxIter: [8]}",
            "--set", "tune.refit_max_iter=12", "--set", f"recommend.top_n={PIPELINE_TOP_N}",
            "--set", "evaluate.relevance_threshold=3.0", "--set", "tracking.mlflow=true"]
    assert main(argv) == 0
    return out, params, argv


def png_size(path) -> tuple[int, int]:
    """(width, height) of a PNG file, read from its header; fails on anything that is not a PNG."""
    import struct

    with open(path, "rb") as handle:
        head = handle.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])
