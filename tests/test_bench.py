"""The bench job on a tiny table: every engine runs in its own process on the same hash-split ratings and
the job writes their times, peak memory and errors. (Timings are the benchmark's business, not a unit test's:
nothing here asserts a duration.)"""

from __future__ import annotations

import json

from helpers import job_argv, png_size
from jester_als.cli import main

TINY = [
    "bench.users=300",
    "bench.jokes=30",
    "generate.min_ratings=10",
    "generate.mean_ratings=20",
    "generate.gauge_jokes=5",
    "bench.rank=3",
    "bench.maxIter=5",
]


def test_bench_writes_json_and_markdown_for_every_engine(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = job_argv(
        "bench",
        *TINY,
        "bench.numpy_repeats=2",
        "bench.spark_repeats=1",
        "bench.loop_repeats=1",
        conf="conf/bench.yaml",
        out=out,
    )
    assert main(argv) == 0
    result = json.loads((out / "bench.json").read_text())
    engines = result["engines"]
    assert set(engines) == {"numpy_als", "spark_als", "seed_loop"}
    assert len(engines["numpy_als"]["seconds"]) == 2
    # the loop optimizes the same objective from the same start: the same model
    assert abs(engines["seed_loop"]["rmse"] - engines["numpy_als"]["rmse"]) < 1e-3
    data = result["data"]
    assert engines["spark_als"]["rows"] == engines["numpy_als"]["rows"] == data["test_ratings"] > 0
    assert data["train_ratings"] + data["test_ratings"] > 5000
    # Peak memory is each engine's own process: at least the Python interpreter with NumPy and the ratings it
    # read, and for Spark a JVM on top of a Python driver, far above the NumPy process.
    ratings_mb = data["train_ratings"] * 12 / 2**20
    assert 30 + ratings_mb < engines["numpy_als"]["peak_mb"] < engines["spark_als"]["peak_mb"] < 20_000
    assert engines["spark_als"]["driver_heap_mb"] == 4096  # the smallest heap the bench gives Spark
    markdown = (out / "bench.md").read_text()
    assert "| NumPy ALS (vectorized) |" in markdown and "| Spark ALS |" in markdown and "peak (MB)" in markdown
    assert "| NumPy ALS (vectorized) |" in capsys.readouterr().out
    assert not list(out.glob("*worker.log"))  # logs are kept only for a worker that failed
    # The bar chart: a PNG of the size drawn (11 x 3.8 in at 100 dpi), linked from bench.md
    assert result["plot"] == "bench.png" and png_size(out / "bench.png") == (1100, 380)
    assert "](bench.png)" in markdown


def test_bench_refuses_a_size_spark_cannot_fit_before_generating_anything(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = job_argv(
        "bench",
        "bench.users=5000000",
        "bench.memory_budget_mb=8000",
        f"bench.work_dir={tmp_path}",
        conf="conf/bench.yaml",
        out=out,
    )
    assert main(argv) == 1
    message = capsys.readouterr().err
    assert "bench.users=5,000,000 gives about 290,400,000 training ratings" in message
    assert "bench.memory_budget_mb=8,000" in message and "bench.spark_repeats=0" in message
    assert list(tmp_path.iterdir()) == []  # no table generated in bench.work_dir, no output written


def test_bench_keeps_the_log_of_a_worker_that_failed(tmp_path, capsys):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "bench.json").write_text("a previous run's")
    argv = job_argv(
        "bench", *TINY, "bench.spark_driver_memory=1m", "bench.loop_repeats=0", conf="conf/bench.yaml", out=out
    )
    assert main(argv) == 1
    message = capsys.readouterr().err
    assert "spark_als did not complete" in message and "worker log:" in message
    logs = list(out.glob("*-spark-worker.log"))
    assert len(logs) == 1 and logs[0].stat().st_size > 0
    # the outputs are staged: a failed run replaces nothing and leaves no staging directory
    assert (out / "bench.json").read_text() == "a previous run's" and not list(out.glob(".staging-*"))
    assert main([*argv, "--set", "output.mode=error"]) == 1
    assert "already holds ['bench.json'] and output.mode is 'error'" in capsys.readouterr().err


def test_spark_heap_need_is_the_scaling_studys_cached_bytes():
    """bench refuses a size by the heap Spark's cached blocks need, with the bytes a rating the scaling study
    measured (docs/scale.json): a rerun of the study that moves the figure makes this test name the constant to
    change. The study's largest Spark fit (232 M training ratings in a 16g heap) is not refused by the rule."""
    import json
    from pathlib import Path

    from jester_als.bench import SPARK_CACHED_BYTES_PER_RATING, spark_heap_need_mb

    study = json.loads((Path(__file__).resolve().parents[1] / "docs" / "scale.json").read_text())
    measured = study["limits"]["spark"]["in_memory"]["storage_model"]["bytes_per_rating"]
    assert SPARK_CACHED_BYTES_PER_RATING == round(measured), "update bench.SPARK_CACHED_BYTES_PER_RATING"
    largest = study["limits"]["spark"]["largest_fitted"]
    assert spark_heap_need_mb(largest["train_ratings"]) <= 16 * 1024
