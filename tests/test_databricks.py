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
from helpers import WHITELIST_ERROR, job_argv
from jester_als.cli import als_iterations, build_parser, main
from jester_als.config import load_config
from jester_als.session import ITERATIONS_WITHOUT_CHECKPOINTS

ROOT = Path(__file__).resolve().parents[1]

USER = "someone@example.com"
WORKSPACE = {
    "workspace.current_user.userName": USER,
    "workspace.current_user.short_name": "someone",
    "workspace.file_path": f"/Workspace/Users/{USER}/.bundle/jester-als/TARGET/files",
    "bundle.name": "jester-als",
}
# Sequences in a job that the CLI merges by key after a target is merged in (databricks/cli,
# bundle/config/mutator/merge_job_*.go); other sequences are appended, mappings merged key by key.
MERGE_KEYS = {
    "tasks": "task_key",
    "job_clusters": "job_cluster_key",
    "environments": "environment_key",
    "parameters": "name",
}


def bundle() -> dict:
    """databricks.yml with its included resource files merged in, as the CLI loads it."""
    root = yaml.safe_load((ROOT / "databricks.yml").read_text())
    for pattern in root["include"]:
        for path in sorted(glob.glob(str(ROOT / pattern))):
            root = merge(root, yaml.safe_load(Path(path).read_text()))
    return root


def merge(base, override):
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(override, list):
        return copy.deepcopy(base) + copy.deepcopy(override)
    return copy.deepcopy(override)


# Each job of the bundle: its tasks in order and its parameters' defaults.
JOB_TASKS = {
    "jester_als": (
        ["prepare", "tune", "baseline", "recommend"],
        {
            "catalog_table": "workspace.default.jester_data_1",
            "output_dir": "/Volumes/workspace/default/jester_als/output",
        },
    ),
    "jester_als_new_users": (
        ["foldin"],
        {
            "output_dir": "/Volumes/workspace/default/jester_als/output",
            "new_users_path": "/Volumes/workspace/default/jester_als/new_users.csv",
        },
    ),
}


def merge_by_key(job: dict) -> dict:
    for field, key in MERGE_KEYS.items():
        if field in job:
            merged: dict = {}
            for item in job[field]:
                merged[item[key]] = merge(merged[item[key]], item) if item[key] in merged else item
            job[field] = list(merged.values())
    return job


def resolve(value, variables: dict, target: str):
    """Substitute ${var.*}, ${workspace.*} and ${bundle.*}; a value that is exactly one complex variable
    becomes that variable's value."""
    lookup = {
        **{f"var.{k}": v for k, v in variables.items()},
        **{k: v.replace("TARGET", target) for k, v in WORKSPACE.items()},
        "bundle.target": target,
    }
    if isinstance(value, dict):
        return {k: resolve(v, variables, target) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, variables, target) for v in value]
    if not isinstance(value, str):
        return value
    whole = re.fullmatch(r"\$\{([a-z_.A-Z]+)\}", value)
    if whole and not isinstance(lookup[whole.group(1)], str):
        return resolve(lookup[whole.group(1)], variables, target)
    for _ in range(5):
        value = re.sub(r"\$\{([a-z_.A-Z]+)\}", lambda m: str(lookup[m.group(1)]), value)
    assert "${" not in value, f"unresolved reference in {value}"
    return value


def targets():
    """Each target as the CLI sees it after `bundle validate -t TARGET`: (target, mode, workspace, jobs)."""
    root = bundle()
    variables = {name: spec["default"] for name, spec in root["variables"].items()}
    for target, spec in root["targets"].items():
        merged = merge(
            {k: v for k, v in root.items() if k != "targets"},
            {k: v for k, v in spec.items() if k in ("resources", "workspace")},
        )
        jobs = {
            name: merge_by_key(resolve(job, variables, target)) for name, job in merged["resources"]["jobs"].items()
        }
        yield target, spec.get("mode"), resolve(merged.get("workspace", {}), variables, target), jobs


def test_bundle_has_a_dedicated_and_a_serverless_target():
    root = bundle()
    assert set(root["targets"]) == {"dedicated", "serverless"}
    assert root["variables"]["catalog_table"]["default"] == "workspace.default.jester_data_1"
    assert sorted(root["resources"]["jobs"]) == sorted(JOB_TASKS)


@pytest.mark.parametrize("target,mode,workspace", [t[:3] for t in targets()], ids=lambda v: str(v))
def test_each_target_meets_its_modes_rules(target, mode, workspace):
    """The CLI's rules (databricks/cli, bundle/config/mutator/validate_target_mode.go): production needs an
    explicit workspace.root_path in the target (an error for a person deploying); development needs every
    workspace path it sets to contain the user name so that each developer gets their own copy."""
    assert mode in ("development", "production")
    if mode == "production":
        assert workspace.get("root_path"), "mode: production must set workspace.root_path in the target"
        assert workspace["root_path"].startswith("/Workspace/")
    for key in ("root_path", "file_path", "artifact_path", "state_path", "resource_path"):
        if mode == "development" and workspace.get(key):
            assert USER in workspace[key] or "someone" in workspace[key], key


@pytest.mark.parametrize(
    "target,name,job",
    [(t, n, j) for t, _, _, jobs in targets() for n, j in jobs.items()],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_every_job_spec_validates_and_its_parameters_parse(target, name, job):
    parsed = Job.from_dict(job)  # rejects unknown and missing fields
    tasks, expected_parameters = JOB_TASKS[name]
    assert [t.task_key for t in parsed.tasks] == tasks
    assert job["timeout_seconds"] > 0 and job["email_notifications"]["on_failure"] == []
    parameters = {p["name"]: p["default"] for p in job["parameters"]}
    assert parameters == expected_parameters
    checkpoint_dirs = set()
    for task in job["tasks"]:
        wheel = task["python_wheel_task"]
        assert wheel["package_name"] == "jester_als" and wheel["entry_point"] == "jester-als"
        # Per-run values: every {{job.parameters.X}} names a declared job parameter; the platform substitutes
        # them when the run starts, here the defaults.
        used = re.findall(r"\{\{job\.parameters\.([a-z_]+)\}\}", json.dumps(wheel["parameters"]))
        assert used and set(used) <= set(parameters)
        args = build_parser().parse_args(
            [
                re.sub(r"\{\{job\.parameters\.([a-z_]+)\}\}", lambda m: parameters[m.group(1)], p)
                for p in wheel["parameters"]
            ]
        )
        assert args.job == task["task_key"]
        cfg = load_config(str(ROOT / "conf" / Path(args.conf).name), args.overrides)
        assert cfg.output.dir == parameters["output_dir"]
        checkpoint_dirs.add(cfg.spark.checkpoint_dir)
        if task["task_key"] == "prepare":
            assert cfg.input.format == "table" and cfg.input.table == parameters["catalog_table"]
        if task["task_key"] == "foldin":
            assert cfg.new_users.path == parameters["new_users_path"] and cfg.new_users.format == "csv"
        if target == "dedicated":
            assert task["job_cluster_key"] == "main" and task["libraries"][0] == {"whl": "./dist/*.whl"}
        else:
            assert task["environment_key"] == "default" and "job_cluster_key" not in task
    assert checkpoint_dirs == {"/Volumes/workspace/default/jester_als/checkpoints"}
    # Serverless may offer no checkpoint directory: every fit stays within what is safe without one.
    assert max(als_iterations("tune", cfg).values()) <= ITERATIONS_WITHOUT_CHECKPOINTS
    if target == "dedicated":
        cluster = job["job_clusters"][0]["new_cluster"]
        assert cluster["data_security_mode"] == "SINGLE_USER"
        assert cluster["spark_conf"]["spark.checkpoint.dir"] in checkpoint_dirs
    else:
        assert int(job["environments"][0]["spec"]["environment_version"]) >= 4


@pytest.fixture
def als_not_whitelisted(monkeypatch):
    """Stand-in for the ALS constructor raising what Databricks shared compute raises (the real error needs a
    Databricks workspace)."""

    def refuse(*args, **kwargs):
        raise Py4JError(WHITELIST_ERROR)

    monkeypatch.setattr(jester_als.tune, "ALS", refuse)


def test_whitelisting_error_stops_with_the_ways_out(als_not_whitelisted, small_table, tmp_path, capsys):
    path, _ = small_table
    code = main(job_argv("pipeline", path=path, out=tmp_path / "out"))
    assert code == 1
    err = capsys.readouterr().err
    assert "not whitelisted" in err
    assert "dedicated (single-user) access mode" in err and "Runtime 17" in err and "environment version 4" in err
    assert "als.fallback: numpy" in err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_whitelisting_error_with_numpy_fallback_runs_on_the_driver(
    als_not_whitelisted, spark, small_table, tmp_path, capsys
):
    path, params = small_table
    out = tmp_path / "out"
    code = main(
        job_argv(
            "pipeline",
            "als.fallback=numpy",
            "tune.grid={rank: [1, 3], regParam: [0.05], maxIter: [10]}",
            "recommend.top_n=4",
            path=path,
            out=out,
        )
    )
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
    # top 4, or every unrated joke of a user who has fewer left
    unrated = ratings.groupBy("user").agg((F.lit(params.jokes) - F.count("*")).alias("unrated"))
    assert (
        recs.groupBy("user").count().join(unrated, "user").where(F.col("count") != F.least(F.lit(4), "unrated")).count()
        == 0
    )
    assert "numpy (fallback" in (out / "report.md").read_text()
    assert "numpy (fallback" in capsys.readouterr().out


def test_the_wheel_builds_where_python_is_python3_and_dev_deploys_get_their_own_version():
    """`python` is not on PATH on stock macOS and Ubuntu, so the artifact's build line names `python3`; the
    development target versions each deploy's wheel anew (presets.artifacts_dynamic_version)."""
    root = bundle()
    build = root["artifacts"]["jester_als_wheel"]["build"]
    assert build.split()[0] == "python3" and "wheel" in build
    assert root["targets"]["dedicated"]["presets"]["artifacts_dynamic_version"] is True
    assert ".databricks/" in (ROOT / ".gitignore").read_text().splitlines()


# The bundle schema of the Databricks CLI (databricks/cli, bundle/schema/jsonschema.json at commit
# 7bbe2852131bc5c4a6c7bad5f147bc7772eedf9f, v1.13.0-4; re-serialized compactly), vendored so the bundle is validated
# offline as `databricks bundle validate` checks its shape. Its interpolation patterns use RE2's \p{L} and \p{N},
# which Python's re lacks: they are read as the equivalent Python classes.
BUNDLE_SCHEMA = ROOT / "tests" / "data" / "databricks-bundle-schema.json"


def _bundle_validator():
    import jsonschema

    text = BUNDLE_SCHEMA.read_text()
    text = text.replace(r"[\\p{L}\\p{N}]", r"[^\\W_]").replace(r"\\p{L}", r"[^\\W\\d_]")
    schema = json.loads(text)
    return jsonschema.validators.validator_for(schema)(schema)


def _schema_errors(validator, document) -> list[str]:
    from jsonschema.exceptions import best_match

    error = best_match(validator.iter_errors(document))
    return [] if error is None else [f"{'.'.join(map(str, error.absolute_path))}: {error.message[:300]}"]


@pytest.mark.parametrize("name", ["databricks.yml", *sorted(p.name for p in (ROOT / "resources").glob("*.yml"))])
def test_each_bundle_file_validates_against_the_bundle_schema(name):
    path = ROOT / name if name == "databricks.yml" else ROOT / "resources" / name
    assert _schema_errors(_bundle_validator(), yaml.safe_load(path.read_text())) == []


def test_the_schema_refuses_what_the_cli_would():
    """The vendored schema is not vacuous: a volume without its schema and a misspelt task key are refused, each
    named by its path."""
    validator = _bundle_validator()
    storage = yaml.safe_load((ROOT / "resources" / "jester_als.storage.yml").read_text())
    del storage["resources"]["volumes"]["jester_als"]["schema_name"]
    assert _schema_errors(validator, storage) == ["resources.volumes.jester_als: 'schema_name' is a required property"]
    job = yaml.safe_load((ROOT / "resources" / "jester_als.job.yml").read_text())
    job["resources"]["jobs"]["jester_als"]["tasks"][0]["python_wheel_task"]["entry_pont"] = "jester-als"
    assert _schema_errors(validator, job) == [
        "resources.jobs.jester_als.tasks.0.python_wheel_task: Additional properties are not allowed ('entry_pont' "
        "was unexpected)"
    ]


def test_the_volume_and_experiment_are_bundle_resources_the_tasks_use():
    root = bundle()
    variables = {name: spec["default"] for name, spec in root["variables"].items()}
    volume = root["resources"]["volumes"]["jester_als"]
    path = resolve("/Volumes/${var.catalog}/${var.schema}/" + volume["name"], variables, "dedicated")
    assert resolve("${var.volume_path}", variables, "dedicated") == path
    experiment = resolve(root["resources"]["experiments"]["jester_als"]["name"], variables, "dedicated")
    assert experiment == f"/Users/{USER}/jester-als"
    for target, _, _, jobs in targets():
        for name, job in jobs.items():
            for task in job["tasks"]:
                parameters = task["python_wheel_task"]["parameters"]
                assert "output.dir={{job.parameters.output_dir}}" in parameters, (target, name)
                assert f"tracking.experiment={experiment}" in parameters, (target, name, task["task_key"])


def test_the_tracking_client_is_installed_wherever_the_tasks_run():
    """conf/databricks.yaml turns tracking on, so every task's compute installs an MLflow client: a library of
    each task on the job cluster, a dependency of the serverless environment."""
    assert load_config(str(ROOT / "conf" / "databricks.yaml")).tracking.mlflow
    client = bundle()["variables"]["mlflow_client"]["default"]
    assert client.startswith("mlflow")
    for target, _, _, jobs in targets():
        for name, job in jobs.items():
            if target == "serverless":
                for environment in job["environments"]:
                    assert client in environment["spec"]["dependencies"], (name, environment["environment_key"])
            else:
                for task in job["tasks"]:
                    assert {"pypi": {"package": client}} in task["libraries"], (name, task["task_key"])
