"""New users: the foldin job on a saved model (bad input accounted for, both engines agree), and the evaluation on
users held out whole (how many ratings a new user needs)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from pyspark.ml.evaluation import RankingEvaluator

from helpers import job_argv
from jester_als.cli import main
from jester_als.config import NewUsersConfig
from jester_als.generate import GAUGE_JOKES, GeneratorParams, generate_chunks
from jester_als.hashsplit import is_test
from jester_als.newusers import evaluate_new_users, held_out_users, ndcg_at_k, reveal_gauge, reveal_random
from jester_als.outputs import metrics_json
from jester_als.report import new_users_section


def test_ndcg_matches_sparks_ranking_evaluator(spark):
    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(1, 41), 12)
    jokes = np.tile(np.arange(1, 13), 40)
    truth = rng.uniform(-10, 10, users.size)
    scores = truth + rng.normal(0, 6, users.size)
    ours = ndcg_at_k(users, jokes, truth, scores, 5, 5.0)
    rows = []
    for user in np.unique(users):
        mine = users == user
        order = np.lexsort((jokes[mine], -scores[mine]))
        relevant = [float(j) for j in jokes[mine][truth[mine] >= 5.0]]
        if relevant:
            rows.append(([float(j) for j in jokes[mine][order]], relevant))
    frame = spark.createDataFrame(rows, "prediction array<double>, label array<double>")
    spark_ndcg = RankingEvaluator(metricName="ndcgAtK", k=5).evaluate(frame)
    assert ours == pytest.approx(spark_ndcg, rel=1e-9)


def test_reveals_are_k_per_user_or_the_gauge_jokes_and_deterministic():
    users = np.repeat([1, 2, 3], [12, 3, 30])
    jokes = np.concatenate([np.arange(1, 13), [5, 7, 40], np.arange(1, 31)])
    revealed, eligible = reveal_random(users, jokes, 5, seed=1)
    assert np.bincount(users[revealed]).tolist() == [0, 5, 0, 5]  # user 2 has 3 ratings: nothing left to score
    assert not eligible[users == 2].any()
    again, _ = reveal_random(users, jokes, 5, seed=1)
    assert np.array_equal(revealed, again)
    gauge, _ = reveal_gauge(users, jokes)
    assert set(jokes[gauge]) <= set(GAUGE_JOKES) and gauge[users == 3].sum() == 10
    # user 2 rated gauge jokes 5 and 7 and joke 40: shows two, keeps one to score
    gauge2, eligible2 = reveal_gauge(np.array([2, 2, 2]), np.array([5, 7, 40]))
    assert gauge2.tolist() == [True, True, False] and eligible2.all()


def _long(params: GeneratorParams):
    """The generated table's users, jokes and ratings as long arrays."""
    return (np.concatenate(p) for p in zip(*(c.long() for c in generate_chunks(params))))


def _evaluate(users, jokes, values, new: NewUsersConfig, rank: int = 5, max_iter: int = 5) -> dict:
    """The pipeline's new-users evaluation with its 0.2 test split (seed 42), Jester's scale and k = 10."""
    test = is_test(users.astype(np.int32), jokes.astype(np.int32), test_fraction=0.2, seed=42)
    return evaluate_new_users(
        users,
        jokes,
        values,
        test,
        params={"rank": rank, "regParam": 0.3, "maxIter": max_iter, "biases": True},
        bias_reg=10.0,
        new_users=new,
        k=10,
        threshold=5.0,
        rating_range=(-10, 10),
        seed=1,
    )


def test_a_table_too_small_to_hold_users_out_says_so_instead_of_scoring_nan():
    users, jokes, values = _long(GeneratorParams(users=12))
    new = NewUsersConfig(holdout_fraction=0.01, reveal=[1, 5], seed=7)
    assert held_out_users(users, new.holdout_fraction, new.seed, new.max_users).size == 0  # the case under test
    result = _evaluate(users, jokes, values, new)
    assert result == {
        "users": 0,
        "k": 10,
        "skipped": "none of the 12 sampled users fell in the share held out whole (new_users.holdout_fraction "
        "0.01), so fold-in has no one to be scored on; more users or a larger share give it some",
    }
    lines = new_users_section({"new_users": result})
    assert lines[2] == f"Not scored: {result['skipped']}."
    # every user held out: nothing to fit on
    result = _evaluate(users, jokes, values, NewUsersConfig(holdout_fraction=0.9, seed=7))
    assert result["users"] == 12 and result["skipped"] == (
        "the share held out whole (new_users.holdout_fraction 0.9) took 12 of the 12 sampled users and left no "
        "training rating to fit the model on; a smaller share leaves some"
    )
    # shown more ratings than any held-out user has: that count has no figures, not NaN
    new = NewUsersConfig(holdout_fraction=0.5, reveal=[1, 100], seed=7)
    result = _evaluate(users, jokes, values, new)
    assert result["users"] > 0 and result["random"]["100"]["users"] == 0
    assert result["random"]["100"]["model"] == {"rmse": None, "mae": None, "nmae": None, "ndcg_at_k": None, "rows": 0}
    assert result["random"]["1"]["model"]["rmse"] > 0
    report = "\n".join(new_users_section({"new_users": result}))
    assert "| 100 random | 0 | 0.0 | n/a | n/a | n/a |" in report and "nan" not in report
    # a NaN from anywhere else is null in metrics.json, which a strict reader accepts
    text = metrics_json({"new_users": result, "spark_als": {"test_rmse": float("nan")}})
    strict = json.loads(text, parse_constant=lambda name: pytest.fail(f"metrics.json holds {name}"))
    assert strict["spark_als"]["test_rmse"] is None and strict["new_users"] == result
    # and report.md, rendered from the same figures, shows n/a where the file holds null
    result["random"]["1"]["model"]["rmse"] = float("nan")
    report = "\n".join(new_users_section({"new_users": result}))
    assert "| 1 random | " in report and "nan" not in report


def test_on_jester_like_users_more_ratings_shown_means_better_predictions():
    users, jokes, values = _long(GeneratorParams(users=3000))
    new = NewUsersConfig(holdout_fraction=0.15, reveal=[1, 5, 20], max_users=1000, seed=7)
    result = _evaluate(users, jokes, values, new, rank=10, max_iter=10)
    random = result["random"]
    assert 300 < result["users"] < 600 and result["fitted_on_users"] == 3000 - result["users"]
    assert random["20"]["model"]["rmse"] < random["5"]["model"]["rmse"] < random["1"]["model"]["rmse"]
    assert random["20"]["model"]["rmse"] < random["20"]["popularity"]["rmse"] - 0.2
    # fold-in is a user half-step of the refit: with many users fitted, the two nearly agree
    assert random["20"]["model"]["rmse"] == pytest.approx(random["20"]["refit"]["rmse"], rel=0.02)
    assert result["gauge"]["revealed_per_user"] == pytest.approx(10, abs=0.1)
    assert result["gauge"]["model"]["rmse"] < result["gauge"]["popularity"]["rmse"]


def test_gauge_jokes_that_are_no_gauge_in_the_data_are_not_scored_as_one():
    # no nearly universal jokes: jokes 5, 7, 8, ... are rated by some users only, as items in another data set
    users, jokes, values = _long(GeneratorParams(users=600, gauge_jokes=0))
    new = NewUsersConfig(holdout_fraction=0.2, reveal=[1, 5], seed=7)
    result = _evaluate(users, jokes, values, new)
    assert "gauge" not in result and sorted(result["random"]) == ["1", "5"]
    shares = {j: np.count_nonzero(jokes == j) / 600 for j in GAUGE_JOKES}
    least = min(shares, key=shares.get)
    assert result["gauge_skipped"] == (
        f"joke {least} of new_users.gauge_jokes was rated by {shares[least]:.1%} of the 600 sampled users; every "
        "new user is shown the gauge jokes, so they are scored only where each was rated by at least 90% (set "
        "new_users.gauge_jokes to this data's nearly universal jokes, or [] to leave them out)"
    )
    report = "\n".join(new_users_section({"new_users": result}))
    assert "gauge jokes |" not in report and f"The gauge jokes are not scored: {result['gauge_skipped']}." in report
    assert result["serve_seconds"]["1"] > 0  # timed on 10 ratings of a user instead
    # the jokes this table's users nearly all rated, named as its gauge, are scored
    dense = [j for j in np.unique(jokes) if np.count_nonzero(jokes == j) >= 0.9 * 600]
    assert dense
    named = _evaluate(users, jokes, values, new.model_copy(update={"gauge_jokes": dense}))
    assert "gauge_skipped" not in named and named["gauge"]["revealed_per_user"] > 0
    # [] leaves the row out and says so
    empty = _evaluate(users, jokes, values, new.model_copy(update={"gauge_jokes": []}))
    assert "gauge" not in empty and empty["gauge_skipped"] == "new_users.gauge_jokes is empty"


def test_pipeline_reports_new_users_under_the_contract_keys(pipeline_run):
    out, _, _ = pipeline_run
    metrics = json.loads((out / "metrics.json").read_text())
    new = metrics["new_users"]
    for entry in [new["gauge"], *new["random"].values()]:
        for predictor in ("model", "popularity"):
            assert set(entry[predictor]) >= {"rmse", "mae", "nmae", "ndcg_at_k"}
            assert entry[predictor]["nmae"] == pytest.approx(entry[predictor]["mae"] / 20)
    assert sorted(new["random"], key=int) == ["1", "2", "5", "10", "20"]
    assert new["serve_seconds"]["1"] > 0 and metrics["steps_seconds"]["new_users"] > 0
    report = (out / "report.md").read_text()
    assert "## New users: how many ratings a new user needs" in report and "plots/new_users.png" in report


NEW_USERS_CSV = """User,Number of Jokes Rated,1,2,3,999
90001,3,5.5,-2.25,8.0,
90002,2,,3.5,,7.0
90003,0,,,,
90004,1,,,12.0,
{known},2,1.0,2.0,,
"""


@pytest.fixture
def fitted(pipeline_run, tmp_path):
    """A copy of the shared pipeline run's outputs (its model), and a table of new users."""
    out, params, _ = pipeline_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    table = tmp_path / "new_users.csv"
    table.write_text(NEW_USERS_CSV.format(known=1))
    return copy, table, params


def foldin(out, table, *extra) -> int:
    return main([*job_argv("foldin", f"new_users.path={table}", "recommend.top_n=3", out=out), *extra])


def test_foldin_recommends_new_users_and_accounts_for_every_cell(spark, fitted, capsys):
    out, table, params = fitted
    assert foldin(out, table) == 0
    # what it prints says what it did with the new users, and that the data line is the model's
    printed = capsys.readouterr().out
    assert (
        f"  new users: 5 read from csv file {table}, 3 with a rating of a known joke (6 ratings, 2 refused cells) "
        "folded in (spark); top 3 for 3 users" in printed
    )
    assert "  the model was trained on: " in printed and "\n  data: " not in printed
    report = (out / "report.md").read_text()
    assert f"3 of the 5 new users in csv file {table} (6 ratings of jokes the model knows)" in report
    assert "the other 2 had no rating of a known joke" in report
    section = json.loads((out / "metrics.json").read_text())["foldin"]
    assert section["users"] == 3 and section["known_users"] == 1 and section["users_without_ratings"] == 2
    assert section["cells"]["rejected"] == {"out_of_range": 1, "unknown_joke": 1}
    assert section["cells"]["read"] == 20
    rejected = spark.read.parquet(str(out / "new_user_rejected")).collect()
    refused = {(r["user"], r["joke"], r["reason"]) for r in rejected}
    assert refused == {("90002", "999", "unknown_joke"), ("90004", "3", "out_of_range")}
    recs = spark.read.parquet(str(out / "new_user_recommendations")).collect()
    by_user: dict = {}
    for row in recs:
        by_user.setdefault(row["user"], []).append(row)
    assert sorted(by_user) == [1, 90001, 90002]  # 90003 rated nothing, 90004 only an out-of-range cell
    assert all(len(rows) == 3 for rows in by_user.values())
    assert not {r["joke"] for r in by_user[90001]} & {1, 2, 3}
    assert all(-10 <= r["score"] <= 10 for r in recs)


def test_both_engines_fold_in_the_same_users_the_same_way(spark, fitted, tmp_path):
    out, table, _ = fitted
    other = tmp_path / "numpy"
    shutil.copytree(out, other)
    assert foldin(out, table, "--set", "new_users.engine=spark") == 0
    assert foldin(other, table, "--set", "new_users.engine=numpy") == 0
    for name in ("new_user_recommendations", "new_user_factors"):
        a = sorted(spark.read.parquet(str(out / name)).collect(), key=lambda r: (r["user"], r[1] or 0))
        b = sorted(spark.read.parquet(str(other / name)).collect(), key=lambda r: (r["user"], r[1] or 0))
        assert [r["user"] for r in a] == [r["user"] for r in b]
        if name == "new_user_factors":
            for x, y in zip(a, b):
                assert np.allclose(x["features"], y["features"], rtol=1e-6, atol=1e-9)
        else:
            assert [(r["rank"], r["joke"]) for r in a] == [(r["rank"], r["joke"]) for r in b]


def test_known_users_are_matched_by_the_ids_the_inputs_gave_them(spark, fitted, tmp_path):
    """New users whose ids are not integers are re-indexed with a numbering of their own, which overlaps the
    model's ids: only the user the model was fitted on (id 1, as in the training table) is known."""
    out, _, _ = fitted
    table = tmp_path / "named.csv"
    table.write_text(NEW_USERS_CSV.format(known=1).replace("90001,", "ann,").replace("90002,", "bob,"))
    assert foldin(out, table) == 0
    section = json.loads((out / "metrics.json").read_text())["foldin"]
    assert section["users"] == 3 and section["known_users"] == 1
    users = {r["user"] for r in spark.read.parquet(str(out / "new_user_recommendations")).collect()}
    assert users == {"ann", "bob", "1"}  # recommended under the ids they came with


def test_a_long_table_counts_every_new_user_it_read(fitted, tmp_path):
    """The new users of the wide table above in the long layout, and one more whose only rating is of a joke the
    model never saw: every user read is either folded in or counted without a rating."""
    out, _, _ = fitted
    table = tmp_path / "long.csv"
    table.write_text(
        "user,joke,rating\n90001,1,5.5\n90001,2,-2.25\n90001,3,8.0\n90002,2,3.5\n90002,999,7.0\n90003,1,\n"
        "90004,3,12.0\n90005,999,4.0\n1,1,1.0\n1,2,2.0\n"
    )
    assert foldin(out, table, "--set", "new_users.layout=long") == 0
    section = json.loads((out / "metrics.json").read_text())["foldin"]
    assert section["users"] == 3 and section["known_users"] == 1 and section["users_without_ratings"] == 3
    assert section["cells"]["rejected"] == {"out_of_range": 1, "unknown_joke": 2}
    assert "3 of the 6 new users in csv file" in (out / "report.md").read_text()


def test_foldin_refuses_input_without_a_usable_rating_and_a_missing_path(fitted, tmp_path, capsys):
    out, _, _ = fitted
    empty = tmp_path / "empty.csv"
    empty.write_text("User,Number of Jokes Rated,999,1\n7,1,5.0,\n8,0,,\n")
    before = (out / "metrics.json").read_text()
    assert foldin(out, empty) == 1
    err = capsys.readouterr().err
    assert str(empty) in err and "no rating of a joke the model knows" in err and "Traceback" not in err
    assert (out / "metrics.json").read_text() == before and not (out / "new_user_recommendations").exists()
    assert main(job_argv("foldin", out=out)) == 1
    assert "new_users.path is not set" in capsys.readouterr().err
    # a long table that rates one joke twice for a user is refused as prepare refuses it
    twice = tmp_path / "twice.csv"
    twice.write_text("user,joke,rating\nann,5,3.5\nann,7,-2.0\nann,5,8.0\n")
    assert foldin(out, twice, "--set", "new_users.layout=long") == 1
    err = capsys.readouterr().err
    assert f"{twice}: 1 (user, joke) pair(s) rated on more than one row (user ann joke 5 (2 times))" in err
    assert (out / "metrics.json").read_text() == before and not (out / "new_user_recommendations").exists()
