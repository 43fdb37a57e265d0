"""Fold-in: a user folded in from the ratings it was trained on gets the factors (and offset) the fit gave it, in
both engines, and the Spark path (inside tasks) agrees with the driver's."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from helpers import small_params
from jester_als.biased import fit_biased_als
from jester_als.foldin import fold_in, fold_in_spark, from_numpy_model, from_spark_model, top_n
from jester_als.generate import generate_chunks
from jester_als.numpy_als import RatingMatrix, fit_numpy_als
from jester_als.tune import make_als

# Spark keeps factors as float32 and solves in float64: one more user half-step reproduces them to about 1e-6
# relative; 1e-4 is the bound the fold-in is held to.
TOLERANCE = 1e-4
PARAMS = dict(rank=3, reg_param=0.1)


@pytest.fixture(scope="module")
def ratings():
    params = small_params(
        users=300, jokes=30, min_ratings=10, mean_ratings=18, gauge_jokes=5, user_bias=1.5, joke_bias=1.0
    )
    return tuple(np.concatenate(parts) for parts in zip(*(c.long() for c in generate_chunks(params))))


def assert_factors(got: np.ndarray, want: np.ndarray) -> None:
    scale = np.abs(want).max()
    assert np.max(np.abs(got - want)) <= TOLERANCE * scale, np.max(np.abs(got - want)) / scale


@pytest.mark.parametrize("biases", [False, True])
def test_numpy_fold_in_of_training_users_gives_their_fitted_factors(ratings, biases):
    users, jokes, values = ratings
    model = fit_numpy_als(
        RatingMatrix.from_ids(users, jokes, values), max_iter=8, seed=3, biases=biases, bias_reg=5.0, **PARAMS
    )
    folded = fold_in(from_numpy_model(model, PARAMS["reg_param"]), users, jokes, values)
    assert np.array_equal(folded.user_ids, model.user_ids)
    assert_factors(folded.factors, model.user_factors)
    if biases:
        assert np.allclose(folded.offsets, model.biases.mean + model.biases.user, atol=1e-9)


@pytest.fixture(scope="module")
def spark_ratings(spark, ratings):
    users, jokes, values = ratings
    table = pa.table({"user": users.astype(np.int32), "joke": jokes.astype(np.int32), "rating": values})
    frame = spark.createDataFrame(table).persist()
    yield frame
    frame.unpersist()


def spark_user_factors(model) -> tuple[np.ndarray, np.ndarray]:
    rows = model.userFactors.orderBy("id").collect()
    return np.array([r["id"] for r in rows]), np.array([r["features"] for r in rows], dtype=np.float64)


@pytest.mark.parametrize("biases", [False, True])
def test_spark_fold_in_of_training_users_gives_their_fitted_factors(spark, ratings, spark_ratings, biases):
    users, jokes, values = ratings
    als = make_als(seed=1, blocks=2).setRank(PARAMS["rank"]).setRegParam(PARAMS["reg_param"]).setMaxIter(6)
    model = fit_biased_als(spark_ratings, als, bias_reg=5.0) if biases else als.fit(spark_ratings)
    foldable = from_spark_model(model, PARAMS["reg_param"])
    folded = fold_in(foldable, users, jokes, values)
    ids, factors = spark_user_factors(model)
    assert np.array_equal(folded.user_ids, ids)
    assert_factors(folded.factors, factors)
    if biases:
        offsets = {r["user"]: r["user_bias"] for r in model.biases.user.collect()}
        want = model.biases.mean + np.array([offsets[u] for u in ids])
        assert np.allclose(folded.offsets, want, atol=1e-6)


def test_the_spark_path_agrees_with_the_driver_and_recommends_unrated_jokes(spark, ratings, spark_ratings):
    users, jokes, values = ratings
    als = make_als(seed=1, blocks=2).setRank(PARAMS["rank"]).setRegParam(PARAMS["reg_param"]).setMaxIter(6)
    model = fit_biased_als(spark_ratings, als, bias_reg=5.0)
    foldable = from_spark_model(model, PARAMS["reg_param"])
    on_driver = fold_in(foldable, users, jokes, values)
    folded = fold_in_spark(foldable, spark_ratings, 4, (-10.0, 10.0))
    factors, recommendations = folded.factors, folded.recommendations
    rows = factors.orderBy("user").collect()
    assert [r["user"] for r in rows] == on_driver.user_ids.tolist()
    assert_factors(np.array([r["features"] for r in rows]), on_driver.factors)
    assert np.allclose([r["offset"] for r in rows], on_driver.offsets, atol=1e-9)
    best = top_n(foldable, on_driver, 4, (-10.0, 10.0))
    got = sorted((r["user"], r["rank"], r["joke"]) for r in recommendations.collect())
    assert got == sorted(zip(best["user"].tolist(), best["rank"].tolist(), best["joke"].tolist()))
    rated = set(zip(users.tolist(), jokes.tolist()))
    assert not [(u, j) for u, _, j in got if (u, j) in rated]
    folded.release()
