"""Split and tuning: a planted rank-3 structure is recovered and every grid point is reported."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from pyspark.ml.evaluation import RankingEvaluator
from pyspark.sql import functions as F

from jester_als.tune import (
    checkpoint_only_when_needed,
    evaluate_model,
    evaluate_predictions,
    fit_als,
    make_als,
    ranking_metrics,
    rankings_metrics,
    reference_rankings,
    split_ratings,
    tune_als,
)


def test_split_is_over_ratings_deterministic_and_disjoint(small_ratings):
    ratings, _ = small_ratings
    train, test = split_ratings(ratings, test_fraction=0.2, seed=42)
    again_train, again_test = split_ratings(ratings.repartition(7), test_fraction=0.2, seed=42)
    keys = lambda df: {(r["user"], r["joke"]) for r in df.select("user", "joke").collect()}
    train_keys, test_keys = keys(train), keys(test)
    assert train_keys.isdisjoint(test_keys)
    assert len(train_keys) + len(test_keys) == ratings.count()
    assert keys(again_test) == test_keys and keys(again_train) == train_keys  # same on any partitioning
    share = len(test_keys) / ratings.count()
    assert 0.18 < share < 0.22
    # Users are not split: almost every user has ratings on both sides.
    users_in_both = train.select("user").distinct().intersect(test.select("user").distinct()).count()
    assert users_in_both >= 0.99 * ratings.select("user").distinct().count()
    other_seed = keys(split_ratings(ratings, test_fraction=0.2, seed=43)[1])
    assert other_seed != test_keys


@pytest.mark.parametrize("k", [1, 3, 8])
def test_ranking_metrics_are_spark_rankingevaluators(spark, k):
    """The one-aggregation metrics give what Spark's RankingEvaluator gives on the same per-user lists: users
    with fewer held-out jokes than k, with more relevant jokes than k, with ties in the score, and one with
    no relevant joke (left out by both)."""
    rng = np.random.default_rng(k)
    rows = []
    for user in range(60):
        jokes = rng.choice(40, size=int(rng.integers(1, 15)), replace=False)
        for joke in jokes:
            rows.append((user, int(joke), float(rng.integers(-10, 11)), float(rng.integers(0, 4))))
    rows += [(99, 1, -5.0, 1.0), (99, 2, -6.0, 2.0)]  # no relevant joke
    frame = spark.createDataFrame(rows, "user int, joke int, rating double, prediction double")
    ours = rankings_metrics(frame, ["prediction"], k=k, threshold=3.0)["prediction"]
    # Spark's evaluator on the same lists, built by Python from the same rows (score descending, then joke)
    lists = []
    for user in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == user]
        relevant = [float(r[1]) for r in mine if r[2] >= 3.0]
        if relevant:
            lists.append(([float(r[1]) for r in sorted(mine, key=lambda r: (-r[3], r[1]))], relevant))
    spark_lists = spark.createDataFrame(lists, "prediction array<double>, label array<double>")
    assert ours["users"] == len(lists) and 40 < len(lists) < 61  # users without a relevant joke left out
    for metric, key in (
        ("precisionAtK", "precision_at_k"),
        ("ndcgAtK", "ndcg_at_k"),
        ("recallAtK", "recall_at_k"),
        ("meanAveragePrecisionAtK", "map_at_k"),
    ):
        expected = RankingEvaluator(metricName=metric, k=k).evaluate(spark_lists)
        assert ours[key] == pytest.approx(expected, rel=1e-12), metric


def test_tuning_recovers_planted_structure_and_reports_every_grid_point(spark, small_ratings):
    ratings, params = small_ratings
    sigma = params.noise
    train, test = split_ratings(ratings, test_fraction=0.2, seed=42)
    train, test = train.persist(), test.persist()
    als = make_als(seed=1, blocks=2)
    grid = {"rank": [1, 3], "regParam": [0.05, 0.5], "maxIter": [10]}
    result = tune_als(train, als, grid, train_ratio=0.8, parallelism=2, seed=1)

    assert len(result.validation) == 4
    # in grid order (the job's own loop too, which fits the costliest first: the test below)
    assert [(p["params"]["rank"], p["params"]["regParam"]) for p in result.validation] == [
        (1, 0.05),
        (1, 0.5),
        (3, 0.05),
        (3, 0.5),
    ]
    assert all(p["validation_rmse"] > 0 for p in result.validation)
    best = min(result.validation, key=lambda p: p["validation_rmse"])
    assert result.best_params == {**best["params"], "biases": False}
    assert result.best_params["rank"] == 3  # the planted rank beats rank 1

    outer = time.perf_counter()
    model, seconds = fit_als(train, als, result.best_params)
    outer = time.perf_counter() - outer
    scores = evaluate_model(model, test, k=5, threshold=3.0)
    global_mean = train.agg(F.avg("rating")).first()[0]
    global_rmse = test.agg(F.sqrt(F.avg((F.col("rating") - global_mean) ** 2))).first()[0]
    assert scores["test_rmse"] < 1.3 * sigma
    assert scores["test_rmse"] < 0.5 * global_rmse
    assert scores["test_mae"] < scores["test_rmse"]
    # Ranking: between ordering each user's held-out jokes by their true rating (best possible) and by its
    # opposite (worst possible), the model's order sits close to the best.
    predictions = model.transform(test)
    best_order = ranking_metrics(predictions.withColumn("prediction", F.col("rating")), k=5, threshold=3.0)
    worst_order = ranking_metrics(predictions.withColumn("prediction", -F.col("rating")), k=5, threshold=3.0)
    # The references rank the same users' same jokes without a model: on a planted structure with no joke
    # effects, popularity knows little more than a random order, and the model beats both.
    references = reference_rankings(predictions, train, k=5, threshold=3.0, seed=42)
    for key in ("precision_at_k", "ndcg_at_k", "recall_at_k", "map_at_k"):
        model_score = scores[key.replace("_k", "_5")]
        print(
            key,
            worst_order[key],
            references["random"][key],
            references["popularity"][key],
            model_score,
            best_order[key],
        )
        assert model_score > worst_order[key] + 0.8 * (best_order[key] - worst_order[key])
        assert model_score > references["popularity"][key] and model_score > references["random"][key]
        assert worst_order[key] < references["random"][key] < best_order[key]
    assert references["random"]["users"] == references["popularity"]["users"] == scores["ranking"]["users"]
    # the job ranks the model's order and both references in one pass: the same figures as one by one
    fused = evaluate_predictions(predictions, k=5, threshold=3.0, references=(train, 42))
    assert fused["ranking"] == pytest.approx(scores["ranking"], rel=1e-9)
    for name in ("random", "popularity"):
        assert fused["references"][name] == pytest.approx(references[name], rel=1e-9)
    assert scores["test_rows_scored"] == test.count()
    assert 0 < seconds <= outer  # the reported fit time is the fit's, inside the call
    train.unpersist()
    test.unpersist()


def test_own_loop_scores_every_grid_point_as_train_validation_split_does(spark, small_ratings):
    """Where Spark's TrainValidationSplit cannot run (pyspark 4.0 over Connect) the job's own loop stands in:
    the same seeded split, fits and evaluator, so the same validation RMSE per grid point (to Spark's float
    summation order) and the same choice."""
    ratings, _ = small_ratings
    train, _ = split_ratings(ratings, test_fraction=0.2, seed=42)
    train = train.persist()
    als = make_als(seed=1, blocks=2)
    grid = {"rank": [1, 3], "regParam": [0.05, 0.5], "maxIter": [8]}
    spark_tvs = tune_als(train, als, grid, train_ratio=0.75, parallelism=2, seed=5, method="tvs")
    own_loop = tune_als(train, als, grid, train_ratio=0.75, parallelism=2, seed=5, method="loop")
    other_seed = tune_als(train, als, grid, train_ratio=0.75, parallelism=2, seed=6, method="loop")
    train.unpersist()
    assert own_loop.best_params == spark_tvs.best_params
    for ours, theirs, elsewhere in zip(own_loop.validation, spark_tvs.validation, other_seed.validation):
        assert ours["params"] == theirs["params"]
        assert ours["validation_rmse"] == pytest.approx(theirs["validation_rmse"], rel=1e-6)
        # A different split gives visibly different numbers: the match above is not a coincidence.
        assert abs(elsewhere["validation_rmse"] - theirs["validation_rmse"]) > 1e-4


def test_numpy_hash_split_is_the_spark_split(spark):
    """bench and scale split generated ratings in NumPy; tune splits in Spark: the same rows go to test."""
    import pyarrow as pa

    from jester_als import hashsplit
    from jester_als.tune import is_test_rating

    rng = np.random.default_rng(5)
    users = np.concatenate([rng.integers(-(2**31), 2**31, 5000), rng.integers(1, 30_000, 15_000)]).astype(np.int32)
    jokes = rng.integers(1, 150, users.size).astype(np.int32)
    rows = spark.createDataFrame(pa.table({"row": np.arange(users.size), "user": users, "joke": jokes}))
    for fraction, seed in ((0.2, 42), (0.5, 7)):
        flagged = rows.select("row", is_test_rating(test_fraction=fraction, seed=seed).alias("t")).toArrow()
        in_spark = np.zeros(users.size, dtype=bool)
        in_spark[flagged.column("row").to_numpy()] = flagged.column("t").to_numpy(zero_copy_only=False)
        in_numpy = hashsplit.is_test(users, jokes, test_fraction=fraction, seed=seed)
        np.testing.assert_array_equal(in_numpy, in_spark)
        assert abs(in_numpy.mean() - fraction) < 0.02


def test_a_fit_no_longer_than_the_checkpoint_interval_writes_no_checkpoint(spark, small_ratings):
    """Spark's explicit ALS checkpoints its item factors at iteration 0 whatever the interval; the jobs' fits of
    at most that many iterations skip it and give the same factors, longer ones keep Spark's checkpoints."""
    ratings, _ = small_ratings
    directory = Path(spark.conf.get("spark.checkpoint.dir").removeprefix("file:"))
    written = lambda: set(directory.rglob("rdd-*"))  # noqa: E731 - one line, read twice
    als = make_als(seed=3, blocks=1, checkpoint_interval=10)
    params = {"rank": 3, "regParam": 0.1, "maxIter": 5}
    before = written()
    ours, _ = fit_als(ratings, als, params)
    assert written() == before
    spark_default = als.copy({als.getParam(name): value for name, value in params.items()}).fit(ratings)
    assert len(written() - before) == 1  # Spark's own fit of 5 iterations left its iteration-0 checkpoint

    def factors(model):
        return {r["id"]: np.array(r["features"]) for r in model.userFactors.collect()}

    mine, theirs = factors(ours), factors(spark_default)
    assert mine.keys() == theirs.keys()
    for user, vector in theirs.items():  # one block per side: the same sums in the same order
        np.testing.assert_allclose(mine[user], vector, rtol=1e-6, atol=1e-7)
    assert checkpoint_only_when_needed(als, [5, 10]).getCheckpointInterval() == -1
    assert checkpoint_only_when_needed(als, [5, 11]).getCheckpointInterval() == 10
    assert checkpoint_only_when_needed(als.copy({als.checkpointInterval: -1}), [50]).getCheckpointInterval() == -1
