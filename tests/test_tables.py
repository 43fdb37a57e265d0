"""Results as catalog tables (Spark's built-in catalog here): a rerun replaces its own rows, never another run's;
a bad table name or a refused table is a clear error, with the files committed."""

from __future__ import annotations

import json
import shutil

import pytest

from helpers import job_argv
from jester_als.cli import main

RECS, METRICS = "jester_als_test_recommendations", "jester_als_test_metrics"


@pytest.fixture
def fitted(spark, pipeline_run, tmp_path):
    out, _, _ = pipeline_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    yield copy
    for table in (RECS, METRICS):
        spark.sql(f"DROP TABLE IF EXISTS {table}")


def recommend(out, *extra) -> int:
    return main(
        [
            *job_argv("recommend", f"output.recommendations_table={RECS}", f"output.metrics_table={METRICS}", out=out),
            *extra,
        ]
    )


def test_a_rerun_replaces_its_own_rows_and_keeps_another_runs(spark, fitted):
    assert recommend(fitted, "--set", "output.run_key=first") == 0
    rows = json.loads((fitted / "metrics.json").read_text())["recommendations"]["rows"]
    counts = lambda: {r["run_key"]: r["count"] for r in spark.table(RECS).groupBy("run_key").count().collect()}
    assert counts() == {"first": rows}
    assert recommend(fitted, "--set", "output.run_key=first") == 0  # the same run again: replaced, not doubled
    assert recommend(fitted, "--set", "output.run_key=second") == 0
    assert counts() == {"first": rows, "second": rows}
    metrics = {r["metric"]: r["value"] for r in spark.table(METRICS).where("run_key = 'second'").collect()}
    assert metrics["recommendations.rows"] == rows and "spark_als.test_rmse" in metrics
    assert spark.table(METRICS).where("run_key = 'first'").count() == len(metrics)
    assert set(spark.table(RECS).columns) == {"user", "rank", "joke", "score", "run_key"}


def test_a_bad_table_name_is_a_config_error(fitted, capsys):
    assert recommend(fitted, "--set", "output.recommendations_table=no such; table") == 2
    assert "output.recommendations_table=no such; table: must be a table name" in capsys.readouterr().err


def test_a_table_the_catalog_refuses_leaves_the_files_committed(fitted, capsys):
    before = json.loads((fitted / "metrics.json").read_text())["run"]["run_id"]
    code = main(job_argv("recommend", "output.recommendations_table=no_such_schema_xyz.recs", out=fitted))
    assert code == 1
    err = capsys.readouterr().err
    assert "recommendations table no_such_schema_xyz.recs: cannot be written" in err and "committed" in err
    after = json.loads((fitted / "metrics.json").read_text())["run"]
    assert after["run_id"] != before and after["job"] == "recommend"  # this run's files are in place
