"""The scaling study on a tiny grid: every output and field, the budget stop, and the cost model's fit."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from jester_als.cli import main
from jester_als.scale.costmodel import ENGINES, fit_cost_model, predict_point

TINY = ["--set", "scale.users_axis=[300, 600, 1200]", "--set", "scale.jokes_axis=[40]",
        "--set", "scale.jokes_axis_users=300", "--set", "scale.jokes_axis_ratings_per_user=20",
        "--set", "scale.maxIter=3", "--set", "scale.rank=3", "--set", "scale.repeats=2",
        "--set", "scale.spark_driver_memory=1g", "--set", "generate.min_ratings=20",
        "--set", "generate.mean_ratings=30"]


def run_scale(tmp_path, *extra):
    out = tmp_path / "scale"
    assert main(["scale", "--conf", "conf/scale.yaml", "--set", f"output.dir={out}",
                 "--set", f"scale.work_dir={tmp_path}", *TINY, *extra]) == 0
    return out, json.loads((out / "scale.json").read_text())


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """The study on the tiny grid, run once for this module: its output dir, scale.json, and what it logged
    (with the heartbeat shortened from the study's 20 s to 1 s)."""
    import contextlib
    import io

    import jester_als.scale.runner

    logged = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(logged):
        patch.setattr(jester_als.scale.runner, "HEARTBEAT_SECONDS", 1.0)
        out, study = run_scale(tmp_path_factory.mktemp("tiny"))
    return out, study, logged.getvalue()


def test_tiny_grid_writes_json_markdown_and_plot(tiny_study):
    out, study, logged = tiny_study
    # a running worker is never silent: its time and memory so far, every heartbeat (a Spark worker takes > 2 s)
    assert "spark worker (users-300x100): 1 s so far" in logged
    assert [(p["axis"], p["users"], p["jokes"]) for p in study["points"]] == [
        ("users", 300, 100), ("users", 600, 100), ("users", 1200, 100), ("jokes", 300, 40)]
    point_noise = 4.4  # the generator's default noise, which the scale study keeps
    for point in study["points"]:
        assert point["train_ratings"] + point["test_ratings"] == point["ratings"] > 0
        for engine in ENGINES:
            result = point["engines"][engine]
            assert result["completed"], result
            # fit time inside the worker's wall time; a worker process holds at least an interpreter (50 MB)
            assert 0 < result["fit_seconds"] < result["wall_seconds"]
            assert result["peak_rss_mb"] > 50 and 0 < result["rmse"] < 3 * point_noise
            assert result["log"].startswith(str(out / "worker-logs")) and (out / "worker-logs").is_dir()
    # every worker's log is kept; a Spark worker's holds its JVM's own lines
    assert "WARNING: Using incubator modules" in open(study["points"][0]["engines"]["spark"]["log"]).read()
    assert len(study["points"][0]["engines"]["numpy"]["seconds"]) == 2  # repeated where cheap
    assert set(study["cost_model"]["engines"]) == set(ENGINES)
    assert [p["name"] for p in study["predictions"]][0] == "real Jester (dataset 1)"
    markdown = (out / "scale.md").read_text()
    assert "| users | 1,200 | 100 |" in markdown and "Crossover on the users axis" in markdown
    assert "## Cost model" in markdown and "## Predictions" in markdown
    assert (out / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_budget_stop_records_the_limit_instead_of_crashing(tmp_path):
    _, study = run_scale(tmp_path, "--set", "scale.memory_budget_mb=40")
    first, later = study["points"][0], study["points"][1:]
    for engine in ENGINES:
        assert not first["engines"][engine]["completed"]
        assert first["engines"][engine]["limit"].startswith("memory: ")
        for point in later:
            if point["axis"] == "users":
                assert point["engines"][engine]["skipped"]
                assert "at a smaller size" in point["engines"][engine]["limit"]


def test_without_matplotlib_the_plot_is_skipped_and_said(tiny_study, tmp_path, monkeypatch):
    """The job's last step, writing the study, on the tiny study's results with matplotlib missing."""
    from jester_als.scale.study import write_study

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    study = json.loads((tiny_study[0] / "scale.json").read_text())
    out = tmp_path / "no-plot"
    write_study(study, str(out))
    assert study["plot"] is False and not (out / "scale.png").exists()
    assert json.loads((out / "scale.json").read_text())["plot"] is False
    assert "The plot was skipped: matplotlib is not installed." in (out / "scale.md").read_text()


def test_cost_model_reproduces_the_points_it_was_fitted_on():
    """Points made from known coefficients are recovered within 1%, and the held-out point is predicted."""
    rank, iterations = 10, 10
    truth = {"time": [0.3, 2e-9, 1e-8, 3e-10], "memory": [900.0, 4e-5, 2e-3, 1.5e-5]}
    points = []
    for users, jokes in ((25_000, 100), (60_000, 100), (100_000, 100), (250_000, 100), (25_000, 3_000),
                         (50_000, 3_000), (1_000_000, 100)):
        nnz = users * 58
        seconds = (truth["time"][0] + truth["time"][1] * nnz * rank ** 2
                   + truth["time"][2] * (users + jokes) * rank ** 3) * iterations
        memory = truth["memory"][0] + truth["memory"][1] * nnz + truth["memory"][2] * (users + jokes) * rank
        dense = jokes == 100  # the sparse 3,000-joke point takes the sparse path
        numpy_result = {"completed": True, "path": "dense" if dense else "sparse",
                        "fit_seconds": seconds + dense * truth["time"][3] * users * jokes * rank ** 2 * iterations,
                        "peak_rss_mb": memory + dense * truth["memory"][3] * users * jokes}
        spark_result = {"completed": True, "fit_seconds": seconds, "peak_rss_mb": memory}
        points.append({"users": users, "jokes": jokes, "train_ratings": nnz,
                       "engines": {"numpy": numpy_result, "spark": spark_result}})
    model = fit_cost_model(points, rank, iterations)
    for engine in ENGINES:
        entry = model["engines"][engine]
        assert entry["points_used"] == 6
        assert entry["time"]["max_relative_error_on_fitted"] < 0.01
        assert entry["memory"]["max_relative_error_on_fitted"] < 0.01
        held = entry["holdout"]
        assert held["predicted_seconds"] == pytest.approx(held["measured_seconds"], rel=0.02)
        assert held["predicted_memory_mb"] == pytest.approx(held["measured_memory_mb"], rel=0.02)
        again = predict_point(entry, engine, 50_000_000, 10_000, 4e9, rank, iterations)
        assert np.isfinite(again["seconds"]) and again["memory_mb"] > 0


def _point(axis, users, jokes, ratings, numpy_r, spark_r):
    return {"axis": axis, "users": users, "jokes": jokes, "train_ratings": ratings,
            "engines": {"numpy": numpy_r, "spark": spark_r}}


def test_crossover_is_the_first_size_where_spark_runs_and_numpy_does_not_or_spark_is_faster():
    from jester_als.scale.render import crossover

    fast = lambda s: {"completed": True, "fit_seconds": s}
    stopped = {"completed": False, "limit": "memory: 21,000 MB > budget 20,000 MB"}
    points = [_point("users", 10, 100, 700, fast(1.0), fast(5.0)),
              _point("users", 20, 100, 1400, stopped, fast(9.0)),
              _point("users", 40, 100, 2800, stopped, fast(20.0)),
              _point("jokes", 10, 1000, 500, fast(2.0), fast(1.5))]
    assert crossover(points, "users") == {"train_ratings": 1400, "users": 20, "jokes": 100,
                                          "why": "NumPy stopped: memory: 21,000 MB > budget 20,000 MB"}
    assert crossover(points, "jokes")["why"] == "Spark fitted faster"
    assert crossover(points[:1], "users") is None  # NumPy ran and was faster everywhere


def test_single_machine_limit_solves_the_memory_model_for_the_machine():
    from jester_als.scale.render import single_machine_limit

    # peak MB = 500 + 1e-4 x nnz + 1e-3 x (users + jokes) x rank, 50 ratings per user, rank 10:
    # 0.005 + 0.01 = 0.015 MB per user; a 16 GB machine holds (16384 - 500 - 1) / 0.015 users.
    study = {"points": [_point("users", 1000, 100, 50_000, {}, {})], "machine": {"memory_gb": 16},
             "cost_model": {"rank": 10, "engines": {"numpy": {"fitted": True,
                                                              "memory": {"coefficients": [500, 1e-4, 1e-3]}}}}}
    limit = single_machine_limit(study, "numpy")
    assert limit["users"] == pytest.approx((16 * 1024 - 500 - 1e-3 * 100 * 10) / 0.015)
    assert limit["train_ratings"] == pytest.approx(limit["users"] * 50)
    assert single_machine_limit(study, "spark") is None  # no fitted model, no limit
