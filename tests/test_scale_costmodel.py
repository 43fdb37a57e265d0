"""The scaling study's models on planted numbers: the cost model and its checks, the cluster model and the shuffle
rule, crossovers, limits and limit probes, and why a check missed; and the published study refits to what it
records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import assert_same_results
from jester_als.config import ScaleConfig
from jester_als.numpy_als import block_rows, engine_threads
from jester_als.scale.costmodel import ENGINES, fit_cost_model, predict_point

TRUTH = {"time": [0.3, 2e-9, 1e-8, 3e-10, 6e-9, 2e-8], "memory": [900.0, 4e-5, 2e-3, 1.5e-5]}


def _planted_points(rank, iterations, noise=0.0, seed=0):
    """Points on three axes made from known coefficients (TRUTH), with multiplicative noise of that size."""
    rng = np.random.default_rng(seed)
    sizes = (
        [("users", u, 100, u * 58) for u in (25_000, 60_000, 100_000, 250_000, 1_000_000)]
        + [("density", 100_000, 1_000, 100_000 * r) for r in (5, 10, 25, 50, 100)]
        + [("jokes", 120_000, j, 120_000 * 150) for j in (1_000, 5_000, 17_770)]
    )
    points = []
    for axis, users, jokes, nnz in sizes:
        seconds = (
            TRUTH["time"][0] + TRUTH["time"][1] * nnz * rank**2 + TRUTH["time"][2] * (users + jokes) * rank**3
        ) * iterations
        memory = TRUTH["memory"][0] + TRUTH["memory"][1] * nnz + TRUTH["memory"][2] * (users + jokes) * rank
        dense = nnz >= 0.1 * users * jokes  # NumPy's rule: dense from 10% of the cells rated
        wobble = lambda: 1 + noise * rng.standard_normal()
        if dense:
            path_seconds = TRUTH["time"][3] * users * jokes * rank**2 * iterations
        else:
            blocks = np.ceil(users / block_rows(rank, users, engine_threads()))
            path_seconds = (TRUTH["time"][4] * nnz + TRUTH["time"][5] * jokes * blocks) * rank**2 * iterations
        numpy_result = {
            "completed": True,
            "path": "dense" if dense else "sparse",
            "fit_seconds": (seconds + path_seconds) * wobble(),
            "peak_rss_mb": (memory + dense * TRUTH["memory"][3] * users * jokes) * wobble(),
        }
        spark_result = {"completed": True, "fit_seconds": seconds * wobble(), "peak_rss_mb": memory * wobble()}
        points.append(
            {
                "axis": axis,
                "users": users,
                "jokes": jokes,
                "train_ratings": nnz,
                "engines": {"numpy": numpy_result, "spark": spark_result},
            }
        )
    return points


def test_cost_model_recovers_planted_coefficients_and_checks_both_ends():
    """Exact points: every coefficient recovered within 1% and both held-out checks on target; the checks
    are the largest point (above the range) and one inside it, neither used to fit."""
    rank, iterations = 10, 10
    model = fit_cost_model(_planted_points(rank, iterations), rank, iterations)
    for engine in ENGINES:
        entry = model[engine]
        assert entry["points_used"] == 11
        for target in ("time", "memory"):
            got = [c["value"] for c in entry["coefficients"][target]]
            assert got == pytest.approx(TRUTH[target][: len(got)], rel=0.01)
            assert [c["term"] for c in entry["coefficients"][target]][:3] == (
                ["fixed", "ratings x k^2", "rows x k^3"] if target == "time" else ["fixed", "ratings", "rows x k"]
            )
        above, inside = entry["checks"]
        assert (above["role"], above["users"], above["jokes"]) == ("above", 1_000_000, 100)
        # inside: the point nearest the log-middle of the rest, 500,000 to 18 M ratings (about 3 M)
        assert (inside["role"], inside["users"], inside["jokes"]) == ("inside", 60_000, 100)
        for check in entry["checks"]:
            assert check["within_target"] and abs(check["seconds_error"]) < 0.01 and abs(check["mb_error"]) < 0.01
        again = predict_point(entry, engine, 50_000_000, 10_000, 4e9, rank, iterations)
        assert np.isfinite(again["seconds"]) and again["memory_mb"] > 0


def test_cost_model_standard_errors_cover_the_planted_coefficients():
    """With 5% noise on every measurement, each coefficient the fit keeps lies within four of its standard
    errors of the planted value, and a check that misses by more than 25% is reported as missing."""
    rank, iterations = 10, 10
    model = fit_cost_model(_planted_points(rank, iterations, noise=0.05, seed=3), rank, iterations)
    for engine in ENGINES:
        for target in ("time", "memory"):
            for c, truth in zip(model[engine]["coefficients"][target], TRUTH[target]):
                if c["stderr"] is not None:
                    assert c["stderr"] > 0 and abs(c["value"] - truth) < 4 * c["stderr"], (engine, target, c)
    points = _planted_points(rank, iterations)
    points[4]["engines"]["spark"]["fit_seconds"] *= 2  # the point held out above the range: now twice as slow
    above = fit_cost_model(points, rank, iterations)["spark"]["checks"][0]
    assert above["role"] == "above" and above["seconds_error"] == pytest.approx(-0.5, abs=0.01)
    assert not above["within_target"]


def test_too_few_points_fit_without_checks_and_say_why():
    rank, iterations = 10, 10
    model = fit_cost_model(_planted_points(rank, iterations)[:5], rank, iterations)
    assert model["spark"]["fitted"] and model["spark"]["checks"] == []
    assert "holding two out would leave fewer than 4" in model["spark"]["checks_skipped"]
    assert fit_cost_model(_planted_points(rank, iterations)[:2], rank, iterations)["numpy"] == {
        "fitted": False,
        "reason": "2 completed points (need 4)",
    }  # one per term dense points exercise


def test_cluster_model_recovers_a_planted_shuffle_factor_and_executor_memory():
    """Measurements made from a shuffle factor of 1.3 over the partitioning rule and 400 MB + 150 MB per million
    ratings per executor are recovered, and the largest size (left out) is predicted; a size that misses is
    reported as missing."""
    from jester_als.scale.costmodel import fit_cluster_model, shuffle_bytes_per_iteration

    measurements = []
    for users in (25_000, 50_000, 100_000):
        for executors in (1, 2, 4):
            nnz = users * 58
            measurements.append(
                {
                    "users": users,
                    "jokes": 100,
                    "train_ratings": nnz,
                    "executors": executors,
                    "shuffle_bytes_per_iteration": 1.3 * shuffle_bytes_per_iteration(users, 100, nnz, 10, executors),
                    "executor_peak_mb": 400 + 150e-6 * nnz / executors,
                }
            )
    model = fit_cluster_model(measurements, 10)
    assert model["shuffle_factor"] == pytest.approx(1.3)
    assert model["executor_memory_mb"]["fixed"] == pytest.approx(400)
    assert model["executor_memory_mb"]["per_rating"] == pytest.approx(150e-6)
    assert [c["executors"] for c in model["checks"]] == [1, 2, 4]
    assert all(c["within_target"] and abs(c["shuffle_error"]) < 1e-9 for c in model["checks"])
    measurements[-1]["executor_peak_mb"] *= 2
    assert not fit_cluster_model(measurements, 10)["checks"][-1]["within_target"]
    assert fit_cluster_model(measurements[:6], 10) == {
        "fitted": False,
        "reason": "2 sizes measured (need 3: two to fit, one to check)",
    }


def test_shuffle_volume_counts_each_factor_copy_once_per_iteration():
    """4 blocks: 1,000 users with 50 ratings each reach all 4 joke blocks; 100 jokes with 500 ratings reach
    all 4 user blocks; rank 10 float32s: (1,000 + 100) x 4 x 10 x 4 bytes; the cluster column uses it as is."""
    from jester_als.scale.costmodel import predict, shuffle_bytes_per_iteration

    assert shuffle_bytes_per_iteration(1_000, 100, 50_000, 10, 4) == (1_000 + 100) * 4 * 10 * 4
    # a joke rated twice is sent to at most two blocks, whatever the number of blocks
    assert shuffle_bytes_per_iteration(0, 100, 200, 10, 8) == 100 * 2 * 10 * 4
    rank, iterations = 10, 10
    model = fit_cost_model(_planted_points(rank, iterations), rank, iterations)
    scale = ScaleConfig(
        machine_memory_gb=24, cluster_executors=8, cores_per_executor=4, test_fraction=0.2, numpy_dense_budget_mb=4096
    )
    netflix = predict(model, scale)[2]
    assert netflix["engines"]["spark"]["cluster"]["shuffle_gb_per_iteration"] == pytest.approx(
        shuffle_bytes_per_iteration(480_189, 17_770, netflix["train_ratings"], rank, 32) / 2**30
    )
    assert netflix["engines"]["spark"]["cluster"]["shuffle_and_memory_from"] == "partitioning rule"


def _point(axis, users, jokes, ratings, numpy_r, spark_r):
    return {
        "axis": axis,
        "users": users,
        "jokes": jokes,
        "train_ratings": ratings,
        "engines": {"numpy": numpy_r, "spark": spark_r},
    }


def test_crossover_is_the_first_size_where_spark_runs_and_numpy_does_not_or_spark_is_faster():
    from jester_als.scale.analysis import crossover

    fast = lambda s: {"completed": True, "fit_seconds": s}
    stopped = {"completed": False, "limit": "memory: 21,000 MB > budget 20,000 MB"}
    points = [
        _point("users", 10, 100, 700, fast(1.0), fast(5.0)),
        _point("users", 20, 100, 1400, stopped, fast(9.0)),
        _point("users", 40, 100, 2800, stopped, fast(20.0)),
        _point("jokes", 10, 1000, 500, fast(2.0), fast(1.5)),
    ]
    assert crossover(points, "users") == {
        "train_ratings": 1400,
        "users": 20,
        "jokes": 100,
        "why": "NumPy stopped: memory: 21,000 MB > budget 20,000 MB",
    }
    assert crossover(points, "jokes")["why"] == "Spark fitted faster"
    assert crossover(points[:1], "users") is None  # NumPy ran and was faster everywhere


def test_predicted_limit_solves_the_memory_model_on_the_path_the_engine_takes():
    from jester_als.scale.costmodel import predicted_limit

    # peak MB = 500 + 1e-4 x nnz + 1e-3 x (users + jokes) x rank, 50 ratings per user, rank 10:
    # 0.005 + 0.01 = 0.015 MB per user; 16 GB hold (16384 - 500 - 1) / 0.015 users.
    memory = [
        {"term": t, "value": v, "stderr": None} for t, v in zip(["fixed", "ratings", "rows x k"], [500, 1e-4, 1e-3])
    ]
    spark = {"fitted": True, "coefficients": {"time": [], "memory": memory}}
    limit = predicted_limit(spark, "spark", per_user=50, jokes=100, rank=10, machine_mb=16 * 1024, dense_budget_mb=0)
    assert limit["users"] == pytest.approx((16 * 1024 - 500 - 1e-3 * 100 * 10) / 0.015, rel=1e-6)
    assert limit["train_ratings"] == pytest.approx(limit["users"] * 50)
    assert (
        predicted_limit({"fitted": False}, "spark", per_user=50, jokes=100, rank=10, machine_mb=1, dense_budget_mb=0)
        is None
    )
    # NumPy: 1e-5 MB per dense cell on the dense path, which a 400 MB budget allows up to 524,288 users x 100
    # jokes (8.9 GB by the model); past it the sparse path, without that term: the limit lies on the sparse side.
    numpy = {
        "fitted": True,
        "coefficients": {"time": [], "memory": memory + [{"term": "dense cells", "value": 1e-5, "stderr": None}]},
    }
    limit = predicted_limit(numpy, "numpy", per_user=50, jokes=100, rank=10, machine_mb=16 * 1024, dense_budget_mb=400)
    assert limit["path"] == "sparse" and limit["users"] == pytest.approx((16 * 1024 - 500 - 1) / 0.015, rel=1e-6)


def test_docs_scale_json_is_a_full_run():
    """docs/scale.json, which docs/scale.md and the README's answer are generated from (tests/test_readme.py
    compares them), holds a full run: all three axes, each engine's model checked on two held-out points, the
    cluster measured. Whether its limits are bracketed is the run's finding, which the answer states from it
    (tests/test_scale_answer.py), not something this test may demand of a rerun."""
    from pathlib import Path

    study = json.loads((Path(__file__).resolve().parents[1] / "docs" / "scale.json").read_text())
    assert {p["axis"] for p in study["points"]} == {"users", "density", "jokes"}
    for engine in ENGINES:
        assert [c["role"] for c in study["cost_model"][engine]["checks"]] == ["above", "inside"]
    assert study["cluster"]["model"]["fitted"]


def test_refit_keeps_the_measurements_and_reproduces_the_recorded_models():
    """docs/scale.json's models are what this version computes from its measurements, and a refit leaves
    every measurement as it was and says why it was made."""
    from pathlib import Path

    from jester_als.config import load_config
    from jester_als.scale.analysis import refit

    root = Path(__file__).resolve().parents[1]
    study = json.loads((root / "docs" / "scale.json").read_text())
    again = refit(study, load_config(str(root / "conf" / "scale.yaml"), []).scale, "checking")
    assert again["points"] == study["points"] and again["cluster"]["measurements"] == study["cluster"]["measurements"]
    assert again["refit"]["why"] == "checking"
    for key in ("cost_model", "limits", "predictions"):
        # BLAS may round differently on another CPU
        assert_same_results(json.loads(json.dumps(again[key])), study[key], rel=1e-6, where=key)


def test_limit_probes_bracket_each_unreached_memory_limit_and_run_one_engine():
    """An engine that fitted every users-axis size gets probes at 0.8x and 1.2x the users at which its memory
    model reaches the budget; an engine already stopped gets none; a probe's point counts for its own engine's
    limit only."""
    from pathlib import Path

    from jester_als.config import load_config
    from jester_als.scale.analysis import limit_probes, limits

    root = Path(__file__).resolve().parents[1]
    scale = load_config(str(root / "conf" / "scale.yaml"), ["scale.memory_budget_mb=100000"]).scale
    rank, iterations = scale.rank, scale.maxIter
    points = _planted_points(rank, iterations)
    predicted = limits(points, fit_cost_model(points, rank, iterations, holdout=False), scale)
    # the planted memory models reach 100,000 MB at about 4.2 M (NumPy) and 4.4 M users (Spark); the axis ends at 1 M
    assert 4.1e6 < predicted["numpy"]["predicted"]["users"] < 4.2e6 < predicted["spark"]["predicted"]["users"] < 4.5e6
    probes = limit_probes(points, scale)
    assert [(p["users"], p["probe"]) for p in probes] == sorted(
        (int(float(f"{predicted[e]['predicted']['users'] * f:.2g}")), e) for e in ENGINES for f in (0.8, 1.2)
    )
    assert all(p["axis"] == "users" and p["jokes"] == 100 and p["users"] > 1_000_000 for p in probes)
    assert limit_probes(points, scale.model_copy(update={"limit_probes": []})) == []
    # the progress line does not extrapolate the axes' time per rating to a one-engine, two-iteration probe
    import time

    from jester_als.scale.study import _progress

    specs = [{"axis": p["axis"], "users": p["users"], "jokes": p["jokes"], "mean_ratings": 58.0} for p in points]
    line = _progress(len(specs), specs + probes, [60.0] * len(specs), time.monotonic())
    assert line.endswith("a limit probe of numpy, its time not estimated") and line.startswith(
        f"point {len(specs) + 1}/{len(specs) + 4} (users axis, {probes[0]['users']:,} x 100)"
    )

    # Spark stopped on the axis: only NumPy is probed
    stopped = json.loads(json.dumps(points))
    largest = max((p for p in stopped if p["axis"] == "users"), key=lambda p: p["users"])
    largest["engines"]["spark"] = {"completed": False, "limit": "time: 600 s > budget 600.0 s"}
    assert {p["probe"] for p in limit_probes(stopped, scale)} == {"numpy"}

    # a NumPy probe that ran out of memory is NumPy's first size that did not fit, not Spark's
    failed = {
        "axis": "users",
        "users": 5_000_000,
        "jokes": 100,
        "train_ratings": 5_000_000 * 58,
        "probe": "numpy",
        "iterations": 2,
        "engines": {
            "numpy": {"completed": False, "limit": "memory: 20,001 MB > budget 20,000 MB"},
            "spark": {"completed": False, "skipped": True, "limit": "not run: a probe of numpy's"},
        },
    }
    found = limits(points + [failed], fit_cost_model(points, rank, iterations, holdout=False), scale)
    assert found["numpy"]["first_not_fitted"]["users"] == 5_000_000
    # a probe that fitted (in fewer iterations) is a limit measurement, not a point of the cost model
    fitted = {
        **failed,
        "engines": {
            **failed["engines"],
            "numpy": {"completed": True, "fit_seconds": 1.0, "peak_rss_mb": 1.0, "path": "sparse"},
        },
    }
    assert fit_cost_model(points + [fitted], rank, iterations) == fit_cost_model(points, rank, iterations)
    largest = limits(points + [fitted], fit_cost_model(points, rank, iterations), scale)["numpy"]["largest_fitted"]
    assert largest["users"] == 5_000_000 and largest["probe_iterations"] == 2  # the answer says it was a probe
    assert found["spark"]["first_not_fitted"] is None and found["spark"]["largest_fitted"]["users"] == 1_000_000


def test_spark_probes_where_its_cached_blocks_fill_its_heap():
    """Spark local mode's resident memory stops at its heap, so its probes are multiples of the size at which its
    cached blocks (by its own figures) fill the unified memory its block manager reports, not of its memory
    model's budget point; none when blocks already went to disk on the axis (that limit is measured there)."""
    from pathlib import Path

    from jester_als.config import load_config
    from jester_als.scale.analysis import limit_probes, limits

    root = Path(__file__).resolve().parents[1]
    scale = load_config(str(root / "conf" / "scale.yaml"), ["scale.memory_budget_mb=100000"]).scale
    rank, iterations = scale.rank, scale.maxIter
    points = _planted_points(rank, iterations)
    for p in points:  # planted: 5 MB + 40 bytes a training rating cached, in 4,000 MB of unified memory
        p["engines"]["spark"]["spark_memory"] = {
            "storage_memory_peak_mb": 5 + 40 * p["train_ratings"] / 2**20,
            "storage_disk_peak_mb": 0.0,
            "spilled_mb": 0.0,
            "gc_share": 0.01,
            "storage_max_mb": 4000.0,
        }
    found = limits(points, fit_cost_model(points, rank, iterations, holdout=False), scale)["spark"]
    model = found["in_memory"]["storage_model"]
    assert model["unified_memory_mb"] == 4000.0 and model["unified_memory_from"] == "Spark's maxMemory"
    fills = (4000 - 5) * 2**20 / 40 / 58  # users (58 training ratings each) whose cached blocks fill it
    assert model["fills_at"]["users"] == pytest.approx(fills, rel=1e-6)
    assert abs(found["predicted"]["users"] - fills) > 1e6  # the memory model's budget point is elsewhere
    spark = [p["users"] for p in limit_probes(points, scale) if p["probe"] == "spark"]
    assert spark == [1_400_000, 2_200_000]  # 0.8 and 1.2 x 1.81 M users, to two significant figures
    # blocks on disk at the axis' largest size: Spark's in-memory limit is measured there, no probe
    largest = max((p for p in points if p["axis"] == "users"), key=lambda p: p["users"])
    largest["engines"]["spark"]["spark_memory"]["storage_disk_peak_mb"] = 100.0
    assert {p["probe"] for p in limit_probes(points, scale)} == {"numpy"}


def test_a_missed_check_says_why_from_the_measurements():
    """scale.md says why a held-out check missed, from the study's own figures: Spark's resident memory at its
    heap, peaks that fell as the ratings grew, executors that peaked unevenly; and says so when it finds none."""
    from jester_als.scale.analysis import uneven, why_missed

    def point(axis, users, ratings, spark_mb, numpy_mb=100.0):
        return {
            "axis": axis,
            "users": users,
            "jokes": 100,
            "train_ratings": ratings,
            "engines": {
                "spark": {"completed": True, "peak_rss_mb": spark_mb},
                "numpy": {"completed": True, "peak_rss_mb": numpy_mb},
            },
        }

    study = {
        "budgets": {"spark_driver_memory": "4g"},
        "cost_model": {"check_target": 0.25},
        "points": [
            point("users", 1_000, 58_000, 900.0),
            point("users", 2_000_000, 116_000_000, 4_300.0),
            point("density", 10_000, 200_000, 1_500.0),
            point("density", 10_000, 400_000, 1_100.0),
        ],
    }
    check = {"axis": "density", "users": 10_000, "train_ratings": 400_000, "mb_error": 0.6, "seconds_error": 0.1}
    said = why_missed(study, "spark", check)
    assert "resident memory reached its 4g heap (4,300 MB at 2,000,000 x 100)" in said
    assert "its peak fell as the ratings grew (1,500 MB at 200,000 ratings and 1,100 MB at 400,000)" in said
    assert "time miss" not in said
    assert why_missed(study, "numpy", check) == "the memory miss has no cause the measurements show"
    assert why_missed(study, "spark", {**check, "mb_error": 0.1, "seconds_error": -0.3}) == (
        "the time miss has no cause the measurements show"
    )
    # a size fitted once is slower by a fresh JVM's first fit, which the sizes fitted three times show
    study["points"][0]["engines"]["spark"]["seconds"] = [8.0, 4.0, 3.0]  # first fit 4 s over the median
    study["points"][2]["engines"]["spark"]["seconds"] = [9.0, 5.0, 5.5]  # 3.5 s over
    study["points"][3]["engines"]["spark"]["seconds"] = [23.75]
    slow = {
        "axis": "density",
        "users": 10_000,
        "train_ratings": 400_000,
        "mb_error": 0.0,
        "seconds_error": -0.3,
        "predicted_seconds": 16.0,
        "measured_seconds": 23.75,
    }
    assert why_missed(study, "spark", slow) == (
        "this size was fitted once, so its time includes the worker's first fit, which at the 2 sizes fitted 3 "
        "times took 3.8 s longer on average than their median (the JVM compiling Spark's code); less that, the "
        "check is -20%"
    )  # 16 / (23.75 - 3.75) - 1
    study["points"][3]["engines"]["spark"]["seconds"] = [23.75, 20.0, 20.0]  # repeated: no such cause
    assert why_missed(study, "spark", slow) == ("the time miss has no cause the measurements show")

    cluster = {
        "measurements": [
            {"executors": 4, "train_ratings": 100, "executor_peaks_mb": [743.0, 900.0, 1360.0]},
            {"executors": 2, "train_ratings": 100, "executor_peaks_mb": [1000.0, 1100.0]},
        ]
    }
    assert uneven(cluster, {"executors": 4, "train_ratings": 100}).startswith(
        "; why: its 3 executors peaked 743 to 1,360 MB (1.8x), not evenly"
    )
    assert uneven(cluster, {"executors": 2, "train_ratings": 100}) == ""  # within a quarter: no such cause


def test_spark_in_memory_limit_from_its_own_storage_figures():
    """Spark's resident memory is its heap's size, so its in-memory limit is read from what it says it caches:
    the largest size before the first with blocks on disk, and a line through the cached bytes that finds where
    they fill the unified memory of the heap (UnifiedMemoryManager: (heap - 300 MB) x 0.6)."""
    from jester_als.scale.analysis import in_memory

    def point(users, disk_mb=0.0):
        ratings = users * 58
        cached = 5 + 40 * ratings / 2**20  # planted: 5 MB + 40 bytes a rating
        return {
            "users": users,
            "train_ratings": ratings,
            "engines": {
                "spark": {
                    "completed": True,
                    "spark_memory": {
                        "storage_memory_peak_mb": cached,
                        "storage_disk_peak_mb": disk_mb,
                        "spilled_mb": 0.0,
                        "gc_share": 0.01,
                    },
                }
            },
        }

    found = in_memory([point(10_000), point(100_000), point(1_000_000), point(2_000_000, disk_mb=300.0)], "spark", "4g")
    assert found["largest_held"]["users"] == 1_000_000 and found["first_on_disk"]["users"] == 2_000_000
    model = found["storage_model"]
    assert model["bytes_per_rating"] == pytest.approx(40, rel=1e-6) and model["fixed_mb"] == pytest.approx(5)
    assert model["unified_memory_mb"] == pytest.approx((4096 - 300) * 0.6)
    assert model["fills_at"]["train_ratings"] == pytest.approx((model["unified_memory_mb"] - 5) * 2**20 / 40)
    assert model["fills_at"]["users"] == pytest.approx(model["fills_at"]["train_ratings"] / 58)
    # studies recorded before Spark's own figures were kept: no claim
    old = point(10_000)
    del old["engines"]["spark"]["spark_memory"]
    assert in_memory([old, point(100_000)], "spark", "4g") is None
