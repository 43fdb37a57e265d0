"""The driver-side comparison: deterministic sampling, and Spark ALS and NumPy ALS agreeing."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import functions as F

from jester_als.baseline import collect_sample, sample_users
from jester_als.numpy_als import RatingMatrix, fit_numpy_als, rmse_mae
from jester_als.tune import fit_als, make_als, split_ratings


@pytest.fixture(scope="module")
def ratings(small_ratings):
    return small_ratings[0]


def test_spark_and_numpy_als_reach_the_same_test_rmse(ratings):
    train, test = split_ratings(ratings, test_fraction=0.2, seed=42)
    params = {"rank": 3, "regParam": 0.1, "maxIter": 10}
    spark_model, _ = fit_als(train, make_als(seed=3, blocks=2), params)
    spark_pred = spark_model.transform(test).select("rating", "prediction").toArrow()
    spark_rmse = rmse_mae(spark_pred.column("rating").to_numpy(), spark_pred.column("prediction").to_numpy())["rmse"]

    train_np = train.toArrow()
    data = RatingMatrix.from_ids(
        train_np.column("user").to_numpy(), train_np.column("joke").to_numpy(), train_np.column("rating").to_numpy()
    )
    model = fit_numpy_als(data, rank=3, reg_param=0.1, max_iter=10, seed=3)
    test_np = test.toArrow()
    numpy_rmse = rmse_mae(
        test_np.column("rating").to_numpy(),
        model.predict(test_np.column("user").to_numpy(), test_np.column("joke").to_numpy()),
    )["rmse"]
    assert abs(numpy_rmse - spark_rmse) / spark_rmse < 0.02, (numpy_rmse, spark_rmse)


def test_sampling_is_deterministic_and_keeps_users_whole(ratings):
    first = {r["user"] for r in sample_users(ratings, max_users=50, fraction=0.5, seed=9).collect()}
    again = {r["user"] for r in sample_users(ratings.repartition(5), max_users=50, fraction=0.5, seed=9).collect()}
    other = {r["user"] for r in sample_users(ratings, max_users=50, fraction=0.5, seed=10).collect()}
    assert len(first) == 50 and first == again and first != other

    sample = collect_sample(ratings, test_fraction=0.2, split_seed=42, max_users=50, fraction=0.5, sample_seed=9)
    assert sample.users == 50
    assert set(sample.train.user_ids) | set(sample.test_users.tolist()) == first
    # every rating of every sampled user came along, on the side of the split that tune uses
    _, test = split_ratings(ratings, test_fraction=0.2, seed=42)
    sampled_ratings = ratings.where(F.col("user").isin(list(first)))
    assert sample.train.nnz + sample.test_ratings.size == sampled_ratings.count()
    expected_test = {(r["user"], r["joke"]) for r in test.where(F.col("user").isin(list(first))).collect()}
    assert set(zip(sample.test_users.tolist(), sample.test_jokes.tolist())) == expected_test
    assert np.all(np.isin(sample.test_users, sample.train.user_ids))
