"""What tests share besides fixtures (those are in conftest.py): the repository's paths, the small table's
parameters, the shared runs' settings, and the comparisons (the chispa wrapper with its options fixed, equality
of results with Spark's floating tolerance, a PNG's size). Tests import from here, never from conftest.py or
from each other."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from chispa import assert_approx_df_equality, assert_df_equality

ROOT = Path(__file__).resolve().parents[1]
# The first 10 rows of the seed's real Jester table (../shared/data), kept in the repo so tests run anywhere.
EXCERPT = ROOT / "tests" / "data" / "jester_seed_excerpt.csv"
SHARED_EXCERPT = ROOT.parent / "shared" / "data" / "jester_seed_excerpt.csv"

# The shared pipeline run's top N (conftest.pipeline_run).
PIPELINE_TOP_N = 5
# The biased model (the default's choice) in a small run, for every mode the tests cover: classic, Connect, a
# standalone cluster, the installed wheel.
SMALL_RUN = [
    "tune.grid={rank: [2, 3], regParam: [0.1], maxIter: [6], biases: [true]}",
    "tune.refit_max_iter=8",
    "recommend.top_n=3",
    "evaluate.relevance_threshold=3.0",
]
# What Databricks standard access mode before Runtime 17 answers when ALS is constructed.
WHITELIST_ERROR = (
    "An error occurred while calling None.org.apache.spark.ml.recommendation.ALS. Trace:\n"
    "py4j.security.Py4JSecurityException: Constructor public "
    "org.apache.spark.ml.recommendation.ALS(java.lang.String) is not whitelisted."
)


def sets(*settings) -> list[str]:
    """``--set`` before each of ``settings`` (``key=value``, as on the command line)."""
    return [arg for setting in settings for arg in ("--set", str(setting))]


def job_argv(job: str, *settings, conf="conf/local.yaml", path=None, out=None) -> list[str]:
    """How the tests call a job: ``job --conf conf`` (``conf=None``: the built-in defaults), then ``--set
    input.path=path`` and ``--set output.dir=out`` where given, then ``--set`` before each of ``settings``."""
    given = [f"input.path={path}"] * (path is not None) + [f"output.dir={out}"] * (out is not None)
    return [job, *(["--conf", str(conf)] if conf is not None else []), *sets(*given, *settings)]


def small_params(**overrides):
    """A small Jester-shaped table with a pure planted rank-3 structure (no user or joke effects, which
    would add two ranks ALS has to spend on them) plus noise of standard deviation 1, in rating units (the
    additive model clipped to the scale, three equal factors)."""
    from jester_als.generate import GeneratorParams

    base = dict(
        users=400,
        jokes=40,
        rank=3,
        noise=1.0,
        factor_scale=3.0,
        user_bias=0.0,
        joke_bias=0.0,
        mean=0.0,
        min_ratings=20,
        mean_ratings=30,
        gauge_jokes=10,
        zero_fraction=0.0,
        seed=11,
        marginal="clip",
        spectrum_decay=1.0,
        share_rated_all=0.25,
    )
    base.update(overrides)
    return GeneratorParams(**base)


def png_size(path) -> tuple[int, int]:
    """(width, height) of a PNG file, read from its header; fails on anything that is not a PNG."""
    with open(path, "rb") as handle:
        head = handle.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


# What differs between two correct runs of the same job: times, the run's own record (ids, paths, versions), the
# machine's memory readings and where the input was read from.
VOLATILE = ("run", "memory", "source")


def without_volatile(node, drop: tuple[str, ...] = ()):
    """``node`` (metrics.json or a part of it) less every key that holds a time (its name has "seconds"), the
    :data:`VOLATILE` keys and ``drop``, at any depth."""
    if isinstance(node, dict):
        return {
            k: without_volatile(v, drop)
            for k, v in node.items()
            if "seconds" not in k and k not in VOLATILE and k not in drop
        }
    if isinstance(node, list):
        return [without_volatile(v, drop) for v in node]
    return node


def one_pass_comparable(data: dict) -> dict:
    """prepare's data section less what differs by design between its one pass and its general path: the path
    taken, times, and the last bits of float sums."""
    return {k: v for k, v in data.items() if k not in ("one_pass", "timing_seconds", "rating_mean", "rating_std")}


def assert_frames_equal(actual, expected, *, precision: float | None = None) -> None:
    """Same rows (in any order) and same column names and types, nullability aside."""
    if precision is None:
        assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)
    else:
        assert_approx_df_equality(actual, expected, precision, ignore_row_order=True, ignore_nullable=True)


def assert_same_results(actual, expected, *, rel: float, where: str = "metrics") -> None:
    """Equal structure and values, floats to ``rel`` relative. Spark sums in the order its tasks finish, so two
    correct runs may differ in the last bits of a metric; everything else must match exactly."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        assert set(actual) == set(expected), f"{where}: {sorted(actual)} != {sorted(expected)}"
        for key in expected:
            assert_same_results(actual[key], expected[key], rel=rel, where=f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same_results(a, e, rel=rel, where=f"{where}[{i}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=rel, abs=1e-12), where
    else:
        assert actual == expected, where
