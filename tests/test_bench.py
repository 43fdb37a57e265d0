"""The bench job on a tiny table: it runs every engine on the same ratings and writes its figures.
(Timings are the benchmark's business, not a unit test's: nothing here asserts a duration.)"""

from __future__ import annotations

import json

import pytest

from jester_als.cli import main


def test_bench_writes_json_and_markdown_for_every_engine(spark, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--conf", "conf/bench.yaml", "--set", f"output.dir={out}",
            "--set", "bench.users=300", "--set", "bench.jokes=30", "--set", "generate.min_ratings=10",
            "--set", "generate.mean_ratings=20", "--set", "generate.gauge_jokes=5",
            "--set", "bench.rank=3", "--set", "bench.maxIter=5", "--set", "bench.numpy_repeats=2",
            "--set", "bench.spark_repeats=1", "--set", "bench.loop_repeats=1"]
    assert main(argv) == 0
    result = json.loads((out / "bench.json").read_text())
    assert set(result["engines"]) == {"numpy_als", "spark_als", "seed_loop"}
    assert len(result["engines"]["numpy_als"]["seconds"]) == 2
    # the loop optimizes the same objective from the same start: the same model
    assert abs(result["engines"]["seed_loop"]["rmse"] - result["engines"]["numpy_als"]["rmse"]) < 1e-3
    assert result["engines"]["spark_als"]["rows"] == result["data"]["test_ratings"] > 0
    engines = result["engines"]
    assert result["speedup_vs_numpy"]["spark_als"] == pytest.approx(
        engines["spark_als"]["median_seconds"] / engines["numpy_als"]["median_seconds"])
    assert engines["numpy_als"]["median_seconds"] == pytest.approx(sum(engines["numpy_als"]["seconds"]) / 2)
    assert result["data"]["train_ratings"] + result["data"]["test_ratings"] > 5000
    markdown = (out / "bench.md").read_text()
    assert "| NumPy ALS (vectorized) |" in markdown and "| Spark ALS |" in markdown
    assert "| NumPy ALS (vectorized) |" in capsys.readouterr().out
