"""The biased model (mu + b_u + b_j + x.y): the same model in both engines, offsets fitted only on the ratings
each fit is given, chosen by tuning when it is better, saved and loaded by a user."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from helpers import job_argv, small_params
from jester_als.biased import BiasedALSModel, fit_biased_als, fit_biases
from jester_als.generate import generate_chunks, write_wide_csv
from jester_als.numpy_als import RatingMatrix, arrow_ratings, fit_numpy_als, rmse_mae
from jester_als.numpy_als import fit_biases as numpy_fit_biases
from jester_als.tune import make_als, regression_metrics, split_ratings, tune_als

# Strong user and joke effects on a rank-2 structure: what Jester has and Spark's plain ALS must spend factors on.
EFFECTS = dict(
    users=900,
    jokes=40,
    rank=2,
    factor_scale=2.0,
    user_bias=3.0,
    joke_bias=2.5,
    noise=1.0,
    min_ratings=15,
    mean_ratings=25,
    gauge_jokes=8,
)


@pytest.fixture(scope="module")
def effect_ratings(spark):
    params = small_params(**EFFECTS)
    users, jokes, values = (np.concatenate(parts) for parts in zip(*(c.long() for c in generate_chunks(params))))
    ratings = spark.createDataFrame(
        pa.table({"user": users.astype(np.int32), "joke": jokes.astype(np.int32), "rating": values.astype(np.float64)})
    ).persist()
    yield ratings, params
    ratings.unpersist()


def _offsets(df, key: str, value: str) -> dict:
    table = df.toArrow()
    return dict(zip(table.column(key).to_pylist(), table.column(value).to_pylist()))


def _matrix(df) -> RatingMatrix:
    return RatingMatrix.from_ids(*arrow_ratings(df.select("user", "joke", "rating").toArrow()))


def test_both_engines_fit_the_same_offsets_and_the_biased_model_beats_plain_als(spark, effect_ratings):
    ratings, params = effect_ratings
    train, test = split_ratings(ratings, test_fraction=0.2, seed=42)
    train, test = train.persist(), test.persist()
    spark_biases = fit_biases(train, reg=5.0)
    local = _matrix(train)
    numpy_biases = numpy_fit_biases(local, reg=5.0)
    # The same closed-form passes in double: equal to Spark's summation order (float32 ratings on the NumPy
    # side round each rating by up to 5e-7 relative).
    assert spark_biases.mean == pytest.approx(numpy_biases.mean, abs=1e-6)
    users, jokes = _offsets(spark_biases.user, "user", "user_bias"), _offsets(spark_biases.joke, "joke", "joke_bias")
    np.testing.assert_allclose([users[int(u)] for u in local.user_ids], numpy_biases.user, atol=1e-5)
    np.testing.assert_allclose([jokes[int(j)] for j in local.joke_ids], numpy_biases.joke, atol=1e-5)

    als = make_als(seed=3, blocks=2).setRank(2).setRegParam(0.1).setMaxIter(12)
    biased = fit_biased_als(train, als, bias_reg=5.0, biases=spark_biases)
    plain = als.fit(train)
    biased_rmse = regression_metrics(biased.transform(test))["rmse"]
    plain_rmse = regression_metrics(plain.transform(test))["rmse"]
    assert biased_rmse < plain_rmse - 0.3, (biased_rmse, plain_rmse)
    # NumPy's biased model on the same training ratings scores the same test rows within 2% (different random
    # starts; the plain engines agree as closely).
    test_users, test_jokes, test_values = arrow_ratings(test.toArrow())
    local_model = fit_numpy_als(local, rank=2, reg_param=0.1, max_iter=12, seed=3, biases=True, bias_reg=5.0)
    numpy_rmse = rmse_mae(test_values, local_model.predict(test_users, test_jokes))["rmse"]
    assert numpy_rmse == pytest.approx(biased_rmse, rel=0.02)
    spark_biases.release()
    train.unpersist()
    test.unpersist()


def test_tuning_fits_the_offsets_on_each_fitting_part_only(spark, effect_ratings):
    """The loop's validation RMSE of the biased point is what fitting offsets and ALS on the fitting part alone
    gives; offsets that had also seen the validation ratings score visibly better (the leak it must not have)."""
    ratings, _ = effect_ratings
    train, _ = split_ratings(ratings, test_fraction=0.2, seed=42)
    train = train.persist()
    als = make_als(seed=3, blocks=2)
    grid = {"rank": [2], "regParam": [0.1], "maxIter": [6], "biases": [False, True]}
    result = tune_als(train, als, grid, train_ratio=0.75, parallelism=2, seed=5, bias_reg=5.0)
    assert result.method.startswith("the job's loop")
    by_flag = {p["params"]["biases"]: p["validation_rmse"] for p in result.validation}
    assert by_flag[True] < by_flag[False] and result.best_params["biases"] is True

    marked = train.select("*", F.rand(5).alias("r"))  # TrainValidationSplit's split of the same DataFrame
    fitting, validation = marked.where(F.col("r") < 0.75).drop("r"), marked.where(F.col("r") >= 0.75).drop("r")
    estimator = als.copy().setRank(2).setRegParam(0.1).setMaxIter(6)
    honest = fit_biased_als(fitting, estimator, bias_reg=5.0)
    assert regression_metrics(honest.transform(validation))["rmse"] == pytest.approx(by_flag[True], rel=1e-6)
    leaked = fit_biased_als(fitting, estimator, bias_reg=5.0, biases=fit_biases(train, reg=5.0))
    leaked_rmse = regression_metrics(leaked.transform(validation))["rmse"]
    assert leaked_rmse < by_flag[True] - 5e-3, (leaked_rmse, by_flag[True])
    train.unpersist()


@pytest.fixture(scope="module")
def biased_run(spark, tmp_path_factory):
    from jester_als.cli import main

    params = small_params(**EFFECTS)
    base = tmp_path_factory.mktemp("biased")
    write_wide_csv(params, str(base / "effects.csv"))
    out = base / "out"
    assert (
        main(
            job_argv(
                "pipeline",
                "tune.grid={rank: [2], regParam: [0.1], maxIter: [6], biases: [false, true]}",
                "tune.refit_max_iter=10",
                "als.bias_reg=5.0",
                "recommend.top_n=3",
                conf=None,
                path=base / "effects.csv",
                out=out,
            )
        )
        == 0
    )
    return out, params


def test_tuning_chooses_the_biased_model_and_a_user_can_load_it(spark, biased_run):
    import jester_als

    out, _ = biased_run
    metrics = json.loads((out / "metrics.json").read_text())
    spark_als = metrics["spark_als"]
    assert spark_als["biases"] is True and spark_als["bias_reg"] == 5.0
    assert [p["params"]["biases"] for p in spark_als["validation"]] == [False, True]
    assert metrics["numpy_als"]["params"]["biases"] is True
    assert metrics["numpy_als"]["test_rmse"] == pytest.approx(
        metrics["numpy_als"]["spark_test_rmse_same_rows"], rel=0.02
    )
    model = jester_als.load_model(str(out), spark)
    assert isinstance(model, BiasedALSModel) and model.rank == 2
    # The loaded model reproduces the run's test RMSE on the same held-out rows.
    ratings = spark.read.parquet(str(out / "ratings"))
    train, test = split_ratings(ratings, test_fraction=0.2, seed=42)
    again = regression_metrics(model.transform(test), rating_range=(-10.0, 10.0))
    assert again["rmse"] == pytest.approx(spark_als["test_rmse"], rel=1e-9)
    # Its offsets are the training ratings' alone: NumPy's fit on exactly those rows, not on all ratings.
    saved = _offsets(model.biases.joke, "joke", "joke_bias")
    on_train, on_all = numpy_fit_biases(_matrix(train), reg=5.0), numpy_fit_biases(_matrix(ratings), reg=5.0)
    ids = on_train.joke_ids
    np.testing.assert_allclose([saved[int(j)] for j in ids], on_train.joke, atol=1e-5)
    assert np.abs(np.array([saved[int(j)] for j in ids]) - on_all.joke).max() > 1e-3


def test_biased_recommendations_rank_by_the_full_score(spark, biased_run):
    """Rank 1 is the unrated joke with the highest mu + b_u + b_j + x.y, computed here from the saved parts."""
    import jester_als

    out, _ = biased_run
    model = jester_als.load_model(str(out), spark)
    user_f = {r["id"]: np.array(r["features"]) for r in model.userFactors.collect()}
    joke_f = {r["id"]: np.array(r["features"]) for r in model.itemFactors.collect()}
    user_b = _offsets(model.biases.user, "user", "user_bias")
    joke_b = _offsets(model.biases.joke, "joke", "joke_bias")
    rated = {}
    for row in spark.read.parquet(str(out / "ratings")).select("user", "joke").collect():
        rated.setdefault(row["user"], set()).add(row["joke"])
    firsts = spark.read.parquet(str(out / "recommendations")).where("rank = 1").orderBy("user").limit(40).collect()
    assert len(firsts) == 40
    for row in firsts:
        u = row["user"]
        scores = {
            j: model.biases.mean + user_b[u] + joke_b[j] + user_f[u] @ f for j, f in joke_f.items() if j not in rated[u]
        }
        best = max(scores, key=scores.get)
        assert row["joke"] == best or scores[row["joke"]] == pytest.approx(scores[best], abs=1e-5)
        assert row["score"] == pytest.approx(min(10.0, max(-10.0, scores[best])), abs=1e-4)
