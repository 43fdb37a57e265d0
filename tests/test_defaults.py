"""The default grid on Jester-shaped data: regParam scaled to the rating scale, the grid's edges named, NMAE, and
the default pipeline beating plain ALS at rank 10 and the bias baseline."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers import job_argv
from jester_als import hashsplit
from jester_als.cli import main
from jester_als.config import ConfigError, load_config
from jester_als.defaults import five_point
from jester_als.generate import GeneratorParams, generate_chunks, write_wide_csv
from jester_als.numpy_als import RatingMatrix, fit_numpy_als
from jester_als.tune import grid_edges, reg_param_factor, scaled_grid, wave_seconds


def long_table(params):
    return (np.concatenate(parts) for parts in zip(*(chunk.long() for chunk in generate_chunks(params))))


def test_reg_param_scales_with_the_rating_span():
    assert reg_param_factor([-10, 10], True) == 1.0
    assert reg_param_factor([1, 5], True) == pytest.approx(0.2)
    assert reg_param_factor([1, 5], False) == 1.0
    assert scaled_grid({"rank": [5], "regParam": [0.3, 0.5]}, 0.2) == {"rank": [5], "regParam": [0.06, 0.1]}


def test_relevance_starts_three_quarters_up_any_rating_scale_unless_given():
    assert load_config("conf/local.yaml", []).relevance_threshold == 5.0  # Jester's customary threshold
    assert load_config("conf/local.yaml", ["input.rating_range=[1, 5]"]).relevance_threshold == 4.0  # four stars
    given = load_config("conf/local.yaml", ["input.rating_range=[1, 5]", "evaluate.relevance_threshold=5"])
    assert given.relevance_threshold == 5.0
    # one no rating reaches, or every rating does, is refused before anything runs
    for off_the_scale in (5.5, 1):
        with pytest.raises(ConfigError, match=r"must lie on input.rating_range, above 1.0 and at most 5.0, got"):
            load_config(
                "conf/local.yaml", ["input.rating_range=[1, 5]", f"evaluate.relevance_threshold={off_the_scale}"]
            )


def test_on_a_1_to_5_table_scaled_reg_param_beats_the_bias_baseline_and_unscaled_does_not():
    """The claim behind ``tune.scale_reg_param``: Jester's regParam values over-regularize a 1-5 scale so much that
    the factors add nothing to the offsets; scaled, the same grid finds structure."""
    cfg = load_config(None)
    users, jokes, ratings = long_table(GeneratorParams(users=3000))
    result = five_point(users, jokes, ratings, cfg)
    scaled, given = result["scaled"]["best"]["validation_rmse"], result["given"]["best"]["validation_rmse"]
    assert scaled < result["bias"] - 0.02
    assert given > result["bias"] - 0.005 and scaled < given - 0.02


def test_grid_edges_name_the_side_of_an_ordered_parameter():
    grid = {"rank": [5, 10, 20], "regParam": [0.3, 0.5], "maxIter": [5], "biases": [False, True]}
    edges = grid_edges(grid, {"rank": 20, "regParam": 0.5, "maxIter": 5, "biases": True})
    assert edges == [
        {"param": "rank", "value": 20, "edge": "largest", "tried": [5, 10, 20]},
        {"param": "regParam", "value": 0.5, "edge": "largest", "tried": [0.3, 0.5]},
    ]
    assert grid_edges(grid, {"rank": 10, "regParam": 0.3, "maxIter": 5})[0]["edge"] == "smallest"
    assert not grid_edges({"rank": [5, 10, 20]}, {"rank": 10})


def test_wave_seconds_end_when_the_last_point_of_a_wave_finishes():
    assert wave_seconds(0.0, [1.0, 2.0, 2.5, 4.0, 5.0], 2) == [2.0, 2.0, 1.0]
    assert wave_seconds(0.0, [], 2) == []


@pytest.fixture(scope="module")
def default_run(spark, tmp_path_factory):
    """The pipeline with the shipped config on a 2,000-user table of the default generator (Jester's
    statistics), reference scan on."""
    base = tmp_path_factory.mktemp("defaults")
    table = base / "jester.csv"
    write_wide_csv(GeneratorParams(users=2000), str(table))
    out = base / "out"
    assert main(job_argv("pipeline", "input.reference_scan=true", path=table, out=out)) == 0
    return out, json.loads((out / "metrics.json").read_text())


def test_default_pipeline_beats_plain_rank_10_and_the_bias_baseline(default_run):
    out, metrics = default_run
    spark_als = metrics["spark_als"]
    assert len(spark_als["validation"]) == 12 and spark_als["model_params"]["maxIter"] == 20
    # plain ALS at rank 10 (the earlier default's kind), fitted on the same training ratings, scored on the same
    # test ratings
    ratings = pq.read_table(out / "ratings")
    users, jokes, values = (ratings[name].to_numpy() for name in ("user", "joke", "rating"))
    test = hashsplit.is_test(users.astype(np.int32), jokes.astype(np.int32), test_fraction=0.2, seed=42)
    plain = fit_numpy_als(
        RatingMatrix.from_ids(users[~test], jokes[~test], values[~test]), rank=10, reg_param=0.3, max_iter=20, seed=42
    )
    predicted = np.clip(plain.predict(users[test], jokes[test]), -10, 10)
    plain_rmse = float(np.sqrt(np.nanmean((predicted - values[test]) ** 2)))
    assert spark_als["test_rmse"] < plain_rmse
    assert spark_als["test_rmse"] < metrics["baselines"]["bias"]["test_rmse"]
    # and the report says by how much on the rows every engine scored
    same, bias = metrics["numpy_als"]["spark_test_rmse_same_rows"], metrics["baselines"]["bias"]["test_rmse"]
    assert (
        f"On these rows the chosen Spark ALS model's RMSE is {bias - same:.4f} below the user + joke bias "
        f"baseline's ({same:.4f} against {bias:.4f})." in (out / "report.md").read_text()
    )


def test_nmae_is_mae_over_the_rating_span(default_run):
    _, metrics = default_run
    spark_als = metrics["spark_als"]
    assert spark_als["test_nmae"] == pytest.approx(spark_als["test_mae"] / 20)
    assert 0.1 < spark_als["test_nmae"] < 0.25  # Jester papers: about 0.20; random guessing 0.33
    assert metrics["numpy_als"]["test_nmae"] == pytest.approx(metrics["numpy_als"]["test_mae"] / 20)


def test_the_run_reports_where_its_time_went(default_run):
    out, metrics = default_run
    timing = metrics["data"]["timing_seconds"]
    assert timing["prepare"] == pytest.approx(timing["read_and_count"] + timing["write"], abs=0.02)
    assert timing["reference_scan"] > 0 and timing["reference_scan_first"] > 0
    assert timing["ratio"] == pytest.approx(timing["prepare"] / timing["reference_scan"], rel=0.02)
    parts = timing["one_pass_parts"]
    assert list(parts) == ["pass", "written_counts", "unique_users", "refused"]
    assert parts["pass"] > 0 and sum(parts.values()) <= timing["prepare"] + 0.05
    waves = metrics["spark_als"]["tune_waves_seconds"]
    assert len(waves) == 6 and sum(waves) <= metrics["spark_als"]["tune_seconds"] + 0.1  # 12 points, 2 at a time
    tune = metrics["spark_als"]["timing_seconds"]
    assert list(tune) == ["split", "folds_and_offsets", "grid", "refit", "evaluate", "save"]
    assert all(seconds > 0 for seconds in tune.values())
    # the parts add up to no more than the tune step; the waves span the grid's part (first start to last end)
    assert sum(tune.values()) <= metrics["steps_seconds"]["tune"] + 0.1
    assert sum(waves) == pytest.approx(tune["grid"], abs=0.1)
    # each point's own time: on the 2 threads, together no more than twice the grid's part
    points = [point["seconds"] for point in metrics["spark_als"]["validation"]]
    assert len(points) == 12 and all(seconds > 0 for seconds in points)
    assert sum(points) <= 2 * tune["grid"] + 0.1
    report = (out / "report.md").read_text()
    assert "test NMAE" in report and "wave(s) of parallel grid points" in report
    assert "| seconds to fit and score |" in report
    assert "tune: split and count" in report and "of which the pass" in report
    assert f"prepare took {timing['ratio']:.1f}x the repeated scan. The repeated scan runs code" in report
    assert "`python -m jester_als.prepare_speed` compares like with like" in report
    machine = metrics["run"]["machine"]  # how quiet the machine was, beside the times
    assert machine["cpus"] >= 1 and all(load >= 0 for load in machine["load_average_1min"])
    assert "1-minute load average" in report
    assert not list(out.rglob(".reference-scan*"))  # the scan's output is not left behind


def test_an_edge_choice_is_said_in_the_report(default_run):
    out, metrics = default_run
    edges = metrics["spark_als"]["grid_edges"]
    best = metrics["spark_als"]["best_params"]
    grid = metrics["run"]["config"]["tune"]["grid"]
    expected = [name for name in ("rank", "regParam") if best[name] in (min(grid[name]), max(grid[name]))]
    assert [edge["param"] for edge in edges if edge["param"] != "maxIter"] == expected
    report = (out / "report.md").read_text()
    for edge in edges:
        assert f"The chosen {edge['param']} ({edge['value']}) is the {edge['edge']} value the grid tried" in report
