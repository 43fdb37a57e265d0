"""Databricks: the bundle's job validates offline, its task parameters parse with the real CLI, and the
Py4J whitelisting failure is explained (or, when asked, answered with the NumPy engine)."""

from __future__ import annotations

import copy
import glob
import json
import re
from pathlib import Path

import pytest
import yaml
from databricks.bundles.jobs import Job
from py4j.protocol import Py4JError
from pyspark.sql import functions as F

import jester_als.tune
from jester_als.cli import build_parser, main
from jester_als.config import load_config

ROOT = Path(__file__).resolve().parents[1]
WHITELIST_ERROR = ("An error occurred while calling None.org.apache.spark.ml.recommendation.ALS. Trace:\n"
                   "py4j.security.Py4JSecurityException: Constructor public "
                   "org.apache.spark.ml.recommendation.ALS(java.lang.String) is not whitelisted.")


def bundle() -> dict:
    root = yaml.safe_load((ROOT / "databricks.yml").read_text())
    jobs = {}
    for pattern in root["include"]:
        for path in sorted(glob.glob(str(ROOT / pattern))):
            jobs.update(yaml.safe_load(Path(path).read_text())["resources"]["jobs"])
    return root, jobs


def merge_job(base: dict, override: dict) -> dict:
    """How a bundle target overrides a job: tasks merge by task_key, other keys are set."""
    job = copy.deepcopy(base)
    for key, value in override.items():
        if key == "tasks":
            by_key = {task["task_key"]: task for task in job["tasks"]}
            for task in value:
                by_key[task["task_key"]].update(task)
        else:
            job[key] = value
    return job


def resolve(value, variables: dict):
    text = json.dumps(value)
    for _ in range(3):
        text = re.sub(r"\$\{var\.([a-z_]+)\}", lambda m: variables[m.group(1)], text)
    text = text.replace("${workspace.file_path}", "/Workspace/Users/someone/.bundle/jester-als/files")
    assert "${" not in text, f"unresolved reference in {text[:200]}"
    return json.loads(text)


def target_jobs():
    root, jobs = bundle()
    variables = {name: spec["default"] for name, spec in root["variables"].items()}
    for target, spec in root["targets"].items():
        overrides = spec.get("resources", {}).get("jobs", {})
        for name, base in jobs.items():
            yield target, name, resolve(merge_job(base, overrides.get(name, {})), variables)


def test_bundle_has_a_dedicated_and_a_serverless_target():
    root, jobs = bundle()
    assert set(root["targets"]) == {"dedicated", "serverless"}
    assert root["variables"]["catalog_table"]["default"] == "workspace.default.jester_data_1"
    assert list(jobs) == ["jester_als"]


@pytest.mark.parametrize("target,name,job", list(target_jobs()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_job_spec_validates_and_its_parameters_parse(target, name, job):
    parsed = Job.from_dict(job)  # rejects unknown and missing fields
    assert [t.task_key for t in parsed.tasks] == ["prepare", "tune", "baseline", "recommend"]
    for task in job["tasks"]:
        wheel = task["python_wheel_task"]
        assert wheel["package_name"] == "jester_als" and wheel["entry_point"] == "jester-als"
        args = build_parser().parse_args(wheel["parameters"])
        assert args.job == task["task_key"]
        conf = ROOT / "conf" / Path(args.conf).name
        cfg = load_config(str(conf), args.overrides)
        assert cfg["output"]["dir"].startswith("/Volumes/")
        if target == "dedicated":
            assert task["job_cluster_key"] == "main" and task["libraries"] == [{"whl": "./dist/*.whl"}]
        else:
            assert task["environment_key"] == "default" and "job_cluster_key" not in task
    if target == "dedicated":
        assert job["job_clusters"][0]["new_cluster"]["data_security_mode"] == "SINGLE_USER"
    else:
        assert int(job["environments"][0]["spec"]["environment_version"]) >= 4
    prepare = next(t for t in job["tasks"] if t["task_key"] == "prepare")
    cfg = load_config(str(ROOT / "conf" / "databricks.yaml"), build_parser().parse_args(
        prepare["python_wheel_task"]["parameters"]).overrides)
    assert cfg["input"]["format"] == "table" and cfg["input"]["table"] == "workspace.default.jester_data_1"


@pytest.fixture
def als_not_whitelisted(monkeypatch):
    """Stand-in for the ALS constructor raising what Databricks shared compute raises (the real error needs a
    Databricks workspace)."""
    def refuse(*args, **kwargs):
        raise Py4JError(WHITELIST_ERROR)

    monkeypatch.setattr(jester_als.tune, "ALS", refuse)


def test_whitelisting_error_stops_with_the_ways_out(als_not_whitelisted, small_table, tmp_path, capsys):
    path, _ = small_table
    code = main(["pipeline", "--conf", "conf/local.yaml", "--set", f"input.path={path}",
                 "--set", f"output.dir={tmp_path / 'out'}"])
    assert code == 1
    err = capsys.readouterr().err
    assert "not whitelisted" in err
    assert "dedicated (single-user) access mode" in err and "Runtime 17" in err and "environment version 4" in err
    assert "als.fallback: numpy" in err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_whitelisting_error_with_numpy_fallback_runs_on_the_driver(als_not_whitelisted, spark, small_table,
                                                                   tmp_path, capsys):
    path, params = small_table
    out = tmp_path / "out"
    code = main(["pipeline", "--conf", "conf/local.yaml", "--set", f"input.path={path}", "--set", f"output.dir={out}",
                 "--set", "als.fallback=numpy", "--set", "tune.grid={rank: [1, 3], regParam: [0.05], maxIter: [10]}",
                 "--set", "recommend.top_n=4"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["als_engine"].startswith("numpy (fallback")
    assert "spark_als" not in metrics
    fallback = metrics["numpy_als"]
    assert "not whitelisted" in fallback["fallback_reason"]
    assert len(fallback["validation"]) == 2 and fallback["params"]["rank"] == 3
    assert fallback["test_rmse"] < 1.3 * params.noise
    recs = spark.read.parquet(str(out / "recommendations"))
    ratings = spark.read.parquet(str(out / "ratings"))
    assert recs.join(ratings, ["user", "joke"]).count() == 0
    assert recs.groupBy("user").count().where(F.col("count") != 4).count() == 0
    assert "numpy (fallback" in (out / "report.md").read_text()
    assert "numpy (fallback" in capsys.readouterr().out
