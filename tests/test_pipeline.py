"""The pipeline job end to end through its entry point, on small generated data: every output checked."""

from __future__ import annotations

import json
import logging
import os

import pytest
from pyspark.ml.recommendation import ALSModel
from pyspark.sql import functions as F

from helpers import PIPELINE_TOP_N as TOP_N
from helpers import assert_same_results, job_argv, png_size, sets, small_params
from jester_als.cli import main
from jester_als.generate import write_wide_csv


@pytest.fixture
def metrics(pipeline_run):
    """The shared run's metrics.json and the small table's parameters."""
    out, params, _ = pipeline_run
    return json.loads((out / "metrics.json").read_text()), params


def test_every_cell_of_the_table_is_accounted_for(metrics):
    metrics, params = metrics
    data = metrics["data"]
    assert data["users"] == params.users and data["items"] == params.jokes
    assert data["train_ratings"] + data["test_ratings"] == data["ratings"]
    assert data["rejected"] == 0
    assert data["cells"]["read"] == params.users * params.jokes == data["ratings"] + data["missing"]
    assert metrics["run"]["job"] == "pipeline"
    assert metrics["run"]["versions"]["spark"].startswith("4.")


def test_spark_als_recovers_the_planted_structure_within_the_runs_own_time(metrics):
    metrics, params = metrics
    spark_als = metrics["spark_als"]
    assert set(spark_als["best_params"]) >= {"rank", "regParam", "maxIter"}
    assert spark_als["model_params"]["maxIter"] == 12
    assert len(spark_als["validation"]) == 2
    assert spark_als["test_rmse"] < 1.3 * params.noise
    assert 0 < spark_als["test_mae"] < spark_als["test_rmse"]
    # The times are the job's own: tuning and the final fit happen inside the run's wall time.
    assert 0 < spark_als["tune_seconds"] + spark_als["fit_seconds"] < metrics["run"]["wall_seconds"]


def test_numpy_als_matches_spark_on_the_same_rows_and_beats_the_baselines(metrics):
    metrics, params = metrics
    spark_als, numpy_als, baselines = metrics["spark_als"], metrics["numpy_als"], metrics["baselines"]
    assert numpy_als["sample_users"] == params.users
    assert numpy_als["params"] == spark_als["model_params"]
    assert numpy_als["rows"] == baselines["rows"] > 0
    assert abs(numpy_als["test_rmse"] - numpy_als["spark_test_rmse_same_rows"]) < 0.02 * numpy_als["test_rmse"]
    assert numpy_als["test_rmse"] < 0.5 * min(baselines["bias"]["test_rmse"], baselines["global_mean"]["test_rmse"])
    assert 0 < numpy_als["fit_seconds"] < metrics["run"]["wall_seconds"]


def test_the_drivers_memory_holds_at_least_what_was_collected(metrics):
    metrics, _ = metrics
    data, numpy_als = metrics["data"], metrics["numpy_als"]
    # 8 bytes a training rating at least (int32 joke, float32 rating) and 12 a test rating for what was collected;
    # the driver's peak while collecting and fitting holds at least that
    memory = numpy_als["memory"]
    assert memory["collected_mb"] * 2**20 >= 8 * data["train_ratings"] + 12 * data["test_ratings"]
    assert memory["driver_peak_mb"] >= memory["collected_mb"] + memory["factors_mb"]
    assert numpy_als["collect_seconds"] + numpy_als["fit_seconds"] == pytest.approx(numpy_als["driver_seconds"])


def test_clipping_to_the_scale_only_shrinks_the_error(metrics):
    metrics, _ = metrics
    spark_als = metrics["spark_als"]
    # every true rating is inside the scale, so clipping a prediction to it can only bring it closer
    clipping = spark_als["clipping"]
    assert clipping["range"] == [-10.0, 10.0] and clipping["predictions_outside"] >= 0
    assert spark_als["test_rmse"] <= clipping["test_rmse_unclipped"]
    assert (spark_als["test_rmse"] < clipping["test_rmse_unclipped"]) == (clipping["predictions_outside"] > 0)


def test_the_model_ranks_better_than_its_references_on_the_same_users(metrics):
    metrics, params = metrics
    spark_als, references = metrics["spark_als"], metrics["references"]
    for name in ("random", "popularity"):
        assert references[name]["users"] == spark_als["ranking"]["users"] > 0
        assert set(references[name]) >= {"precision_at_k", "ndcg_at_k", "recall_at_k", "map_at_k"}
        assert spark_als["ndcg_at_10"] > references[name]["ndcg_at_k"]
    recommendations = metrics["recommendations"]
    assert 0 < recommendations["jokes_recommended"] <= params.jokes
    assert recommendations["catalogue_coverage"] == recommendations["jokes_recommended"] / params.jokes


def test_report_shows_the_results(pipeline_run):
    out, _, _ = pipeline_run
    report = (out / "report.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert "## Engines on the same held-out ratings" in report
    for engine in ("| Spark ALS |", "| NumPy ALS (driver) |", "| user + joke bias |", "| global mean |"):
        assert engine in report
    assert f"{metrics['spark_als']['test_rmse']:.4f}" in report
    assert "| random order |" in report and "| joke popularity (mean training rating) |" in report
    assert "collect + fit (s)" in report and "Catalogue coverage" in report
    assert report.count("| maxIter=8, rank=") == 2 and "best" in report


def test_report_embeds_the_plots_drawn_from_the_metrics(pipeline_run, tmp_path, monkeypatch):
    """Each plot is a PNG of the size it is drawn at (width x height in inches at 100 dpi), linked from the
    report; the histogram counts every held-out row each engine scored. Without matplotlib the same metrics
    give no plots and a report that says why."""
    from jester_als.plots import run_plots
    from jester_als.report import render_report

    out, _, _ = pipeline_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["plots"] == {
        "tuning": "plots/tuning.png",
        "engines": "plots/engines.png",
        "errors": "plots/errors.png",
        "new_users": "plots/new_users.png",
    }
    # tuning: 1.2 + 3.6 in per panel (one panel: maxIter=8) x 3.6 in
    assert png_size(out / "plots" / "tuning.png") == (480, 360)
    assert png_size(out / "plots" / "engines.png") == (1100, 380)
    assert png_size(out / "plots" / "errors.png") == (800, 380)
    assert png_size(out / "plots" / "new_users.png") == (900, 360)
    report = (out / "report.md").read_text()
    for name in ("tuning", "engines", "errors", "new_users"):
        assert f"](plots/{name}.png)" in report
    histogram = metrics["baselines"]["error_histogram"]
    assert len(histogram["edges"]) == 41 and histogram["edges"][0] == -20.0
    assert {sum(c) for c in histogram["counts"].values()} == {metrics["baselines"]["rows"]}

    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # as if not installed
    skipped = run_plots(metrics, str(tmp_path))
    assert "skipped" in skipped and "jester-als[plot]" in skipped["skipped"]
    assert not (tmp_path / "plots").exists()
    assert "Plots skipped: matplotlib is not installed" in render_report({**metrics, "plots": skipped})


def test_the_run_is_tracked_in_mlflow(pipeline_run):
    """Read back through the MLflow client from the local store the job chose (SQLite under output.dir): the
    run, its config as params, its versions as tags, its results as metrics, a nested run per grid point, and
    the artifacts."""
    from mlflow import MlflowClient

    out, _, _ = pipeline_run
    metrics = json.loads((out / "metrics.json").read_text())
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("jester-als")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["tune.grid.rank"] == "[2, 3]" and parent.data.params["tracking.mlflow"] == "True"
    assert parent.data.tags["jester_als.job"] == "pipeline"
    # MLflow's standard context tags, and metrics logged at the time they were logged, not at 0
    assert parent.data.tags["mlflow.user"] and parent.data.tags["mlflow.source.name"]
    history = client.get_metric_history(parent.info.run_id, "spark_als.test_rmse")
    assert history and history[0].timestamp >= parent.info.start_time > 0
    assert parent.data.tags["version.spark"] == metrics["run"]["versions"]["spark"]
    assert parent.data.metrics["spark_als.test_rmse"] == pytest.approx(metrics["spark_als"]["test_rmse"])
    assert parent.data.metrics["numpy_als.test_rmse"] == pytest.approx(metrics["numpy_als"]["test_rmse"])
    assert parent.data.metrics["data.ratings"] == metrics["data"]["ratings"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted((r.data.params["rank"], r.data.metrics["validation_rmse"]) for r in children) == sorted(
        (str(p["params"]["rank"]), pytest.approx(p["validation_rmse"])) for p in metrics["spark_als"]["validation"]
    )
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"metrics.json", "report.md", "plots", "saved_model"} <= artifacts
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "plots")} == {
        "plots/tuning.png",
        "plots/engines.png",
        "plots/errors.png",
        "plots/new_users.png",
    }
    assert (out / "mlartifacts").is_dir()  # artifacts stay beside the store, not in the working directory
    # the model as an MLflow model is tests/test_mlflow_model.py's subject


def test_a_tracking_failure_warns_and_leaves_the_job_green(small_table, tmp_path, capsys):
    """An MLflow server that does not answer: one warning, exit 0, outputs committed."""
    from jester_als.localcluster import free_ports

    path, _ = small_table
    port = free_ports(1)[0]  # nothing listens there
    assert (
        main(
            job_argv(
                "prepare",
                "tracking.mlflow=true",
                f"tracking.tracking_uri=http://127.0.0.1:{port}",
                conf=None,
                path=path,
                out=tmp_path / "out",
            )
        )
        == 0
    )
    assert (tmp_path / "out" / "ratings").is_dir() and (tmp_path / "out" / "metrics.json").exists()
    failures = [line for line in capsys.readouterr().err.splitlines() if "MLflow tracking failed" in line]
    assert len(failures) == 1 and "results are unaffected" in failures[0]


def test_ratings_model_and_recommendations_are_written(spark, pipeline_run):
    out, params, _ = pipeline_run
    ratings = spark.read.parquet(str(out / "ratings"))
    assert [(f.name, f.dataType.simpleString()) for f in ratings.schema] == [
        ("user", "int"),
        ("joke", "int"),
        ("rating", "double"),
    ]
    metrics = json.loads((out / "metrics.json").read_text())
    assert ratings.count() == metrics["data"]["ratings"]
    assert spark.read.parquet(str(out / "rejected")).columns == ["user", "joke", "value", "reason", "detail"]

    model = ALSModel.load(str(out / "model"))
    assert model.rank == metrics["spark_als"]["model_params"]["rank"]

    recs = spark.read.parquet(str(out / "recommendations"))
    assert recs.columns == ["user", "rank", "joke", "score"]
    per_user = recs.groupBy("user").agg(F.count("*").alias("n"), F.collect_list("rank").alias("ranks"))
    # top N, or every unrated joke of a user who has fewer left
    unrated = ratings.groupBy("user").agg((F.lit(params.jokes) - F.count("*")).alias("unrated"))
    assert per_user.join(unrated, "user").where(F.col("n") != F.least(F.lit(TOP_N), "unrated")).count() == 0
    assert per_user.count() == metrics["recommendations"]["users"]
    # never a joke the user already rated (in train or test)
    assert recs.join(ratings, ["user", "joke"]).count() == 0
    # rank 1 has the highest score
    ordered = recs.groupBy("user").agg(F.sort_array(F.collect_list(F.struct("rank", "score"))).alias("s"))
    for row in ordered.limit(20).collect():
        scores = [s["score"] for s in row["s"]]
        assert scores == sorted(scores, reverse=True)
    # scores are on the rating scale (clipped), as every prediction the job reports
    bounds = recs.agg(F.min("score"), F.max("score")).first()
    assert -10.0 <= bounds[0] <= bounds[1] <= 10.0
    assert not [p for p in os.listdir(out) if p.startswith(".staging")]


def test_output_mode_error_refuses_and_keeps_previous_outputs(pipeline_run, capsys):
    out, _, argv = pipeline_run
    before = (out / "metrics.json").read_bytes()
    assert main(argv + ["--set", "output.mode=error"]) == 1
    assert "already holds" in capsys.readouterr().err
    assert (out / "metrics.json").read_bytes() == before
    assert not [p for p in os.listdir(out) if p.startswith(".staging")]


def test_new_data_or_a_new_model_drops_the_sections_computed_from_the_old(spark, small_table, tmp_path, capsys):
    from conftest import small_params
    from jester_als.generate import write_wide_csv

    path, _ = small_table
    out = tmp_path / "out"
    common = [
        "--conf",
        "conf/local.yaml",
        *sets(f"output.dir={out}", "recommend.top_n=3", "tune.grid={rank: [3], regParam: [0.1], maxIter: [5]}"),
    ]
    metrics = lambda: json.loads((out / "metrics.json").read_text())
    for job in ("prepare", "tune", "recommend"):
        assert main([job, *common, "--set", f"input.path={path}"]) == 0
    assert {"spark_als", "recommendations"} <= set(metrics())
    assert main(["tune", *common, "--set", f"input.path={path}"]) == 0  # a new model
    after_tune = metrics()
    assert "recommendations" not in after_tune and "spark_als" in after_tune
    assert after_tune["stale_sections_dropped"] == {"recommendations": "computed from an earlier model"}
    assert main(["recommend", *common, "--set", f"input.path={path}"]) == 0
    assert "stale_sections_dropped" not in metrics() and "recommendations" in metrics()
    assert main(["prepare", *common, "--set", f"input.path={path}"]) == 0  # the same data: nothing is stale
    assert {"spark_als", "recommendations"} <= set(metrics())
    other = tmp_path / "other.csv"
    write_wide_csv(small_params(seed=99), str(other))
    assert main(["prepare", *common, "--set", f"input.path={other}"]) == 0  # other data
    after_prepare = metrics()
    assert not {"spark_als", "references", "recommendations"} & set(after_prepare)
    assert set(after_prepare["stale_sections_dropped"]) == {"spark_als", "references", "recommendations"}
    assert "train_ratings" not in after_prepare["data"]  # counts of the old split went with the old data
    assert after_prepare["data"]["source"].endswith("other.csv")
    # the old model is not used with the new ratings: recommend and baseline say so until tune has run
    other_input = ["--set", f"input.path={other}"]
    for job in ("recommend", "baseline"):
        assert main([job, *common, *other_input]) == 1
        assert f"model {out / 'model'}: fitted on other ratings than {out / 'ratings'} holds now" in (
            capsys.readouterr().err
        )
    assert metrics() == after_prepare
    assert main(["tune", *common, *other_input]) == 0
    assert main(["recommend", *common, *other_input]) == 0 and "recommendations" in metrics()


def test_reindexed_user_ids_reach_the_recommendations_as_the_original_ids(spark, small_table, tmp_path):
    import csv

    path, _ = small_table
    renamed = tmp_path / "named_users.csv"
    with open(path, newline="") as src, open(renamed, "w", newline="") as dst:
        rows = csv.reader(src)
        writer = csv.writer(dst)
        writer.writerow(next(rows))
        for row in rows:
            writer.writerow([f"user-{row[0]}", *row[1:]])
    out = tmp_path / "out"
    assert (
        main(
            job_argv(
                "pipeline",
                "recommend.top_n=2",
                "tune.grid={rank: [3], regParam: [0.1], maxIter: [5]}",
                path=renamed,
                out=out,
            )
        )
        == 0
    )
    recommendations = spark.read.parquet(str(out / "recommendations"))
    mapping = spark.read.parquet(str(out / "user_ids"))
    assert dict(recommendations.dtypes)["user"] == "string"
    users = {r["user"] for r in recommendations.select("user").distinct().collect()}
    assert users and all(u.startswith("user-") for u in users)
    assert users <= {r["original_user"] for r in mapping.collect()}
    # Each recommended joke is one the user did not rate, checked through the mapping.
    ratings = (
        spark.read.parquet(str(out / "ratings"))
        .join(mapping, "user")
        .select(F.col("original_user").alias("user"), "joke")
    )
    assert recommendations.join(ratings, ["user", "joke"]).count() == 0


def test_the_new_user_evaluation_scores_the_sample_the_baseline_collected(spark, pipeline_run):
    """The pipeline hands the baseline's collected sample to the new-user evaluation instead of collecting it
    again: its section is the one a fresh collection of the same sample gives."""
    from jester_als.config import load_config
    from jester_als.jobs import run_new_users

    out, _, argv = pipeline_run
    metrics = json.loads((out / "metrics.json").read_text())
    cfg = load_config(argv[argv.index("--conf") + 1], [a for a in argv[3:] if a != "--set"])
    ratings = spark.read.parquet(str(out / "ratings"))
    fresh = run_new_users(spark, cfg, ratings, metrics["spark_als"])["new_users"]
    timed = ("seconds", "serve_seconds")
    assert metrics["new_users"]["users"] > 0
    assert_same_results(
        {k: v for k, v in fresh.items() if k not in timed},
        {k: v for k, v in metrics["new_users"].items() if k not in timed},
        rel=1e-9,
        where="new_users",
    )


def test_gauge_jokes_few_users_rated_are_not_scored_and_the_log_says_so(spark, pipeline_run, caplog):
    """Named gauge jokes that are not nearly universal in the data (as on another data set) get a warning, and
    the log's new-users line reports the most random ratings shown instead."""
    from jester_als.config import load_config
    from jester_als.jobs import run_new_users

    out, _, argv = pipeline_run
    metrics = json.loads((out / "metrics.json").read_text())
    overrides = [a for a in argv[3:] if a != "--set"] + ["new_users.gauge_jokes=[1, 2, 3]"]
    cfg = load_config(argv[argv.index("--conf") + 1], overrides)
    ratings = spark.read.parquet(str(out / "ratings"))
    with caplog.at_level(logging.INFO, logger="jester_als.jobs"):
        section = run_new_users(spark, cfg, ratings, metrics["spark_als"])["new_users"]
    assert "gauge" not in section and section["gauge_skipped"].startswith("joke ")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [f"new users: the gauge jokes are not scored: {section['gauge_skipped']}"]
    most = max(section["random"], key=int)
    assert any(f"{most} random ratings revealed -> fold-in RMSE" in r.getMessage() for r in caplog.records)


def test_a_model_that_loses_to_the_bias_baseline_is_told_plainly(tmp_path, capsys):
    """On a table with user and joke offsets and noise but no factors, an under-regularized grid's best model fits
    the noise: the run still succeeds, and says in its log and its report that the bias baseline predicts better."""
    table = tmp_path / "offsets_only.csv"
    write_wide_csv(small_params(factor_scale=0.0, user_bias=2.0, joke_bias=2.0, noise=3.0), str(table))
    out = tmp_path / "out"
    grid = "tune.grid={rank: [10], regParam: [0.01], maxIter: [10]}"
    settings = (grid, "tune.refit_max_iter=10", "new_users.evaluate=false", "input.reference_scan=false")
    assert main(job_argv("pipeline", *settings, path=table, out=out)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    spark_rmse = metrics["numpy_als"]["spark_test_rmse_same_rows"]
    bias_rmse = metrics["baselines"]["bias"]["test_rmse"]
    assert spark_rmse > bias_rmse
    err = capsys.readouterr().err
    assert (
        f"the chosen Spark ALS model does not beat the user + joke bias baseline on the same rows (RMSE "
        f"{spark_rmse:.4f} against {bias_rmse:.4f})" in err
    )
    report = (out / "report.md").read_text()
    assert "**The chosen Spark ALS model does not beat the user + joke bias baseline on these rows**" in report


def test_the_report_names_the_config_a_run_read():
    from jester_als.report import render_report

    run = {"run_id": "r1", "job": "pipeline", "finished": "2026-12-05T00:00:00+00:00"}
    assert "config `conf/jester.yaml`." in render_report({"run": {**run, "config_file": "conf/jester.yaml"}})
    # without --conf: not "config `None`"
    assert "config the built-in defaults (`conf/local.yaml`'s)." in render_report({"run": {**run, "config_file": None}})
