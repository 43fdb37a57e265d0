"""MLflow tracking of a finished job, optional (the ``mlflow`` extra, ``tracking.mlflow: true``).

A job is logged after its outputs are committed, from what it wrote: one run per job run, with the resolved
config as params, the run manifest's versions as tags, the results as metrics, one nested run per tuning grid
point (its params, validation RMSE and seconds), ``metrics.json``, ``report.md`` and the plots as artifacts, and the
model. Tracking can only add: a failure (no MLflow, a server that is down, no permission) is one warning and
the job's results and exit status stay what they were.
"""

from __future__ import annotations

import logging
import os
import time

from jester_als.config import JesterConfig, TrackingConfig
from jester_als.errors import first_line
from jester_als.plots import PLOTS_DIR

log = logging.getLogger(__name__)

# metrics.json values logged as MLflow metrics: (section, dotted key inside it).
METRICS = [
    ("data", "users"),
    ("data", "items"),
    ("data", "ratings"),
    ("data", "train_ratings"),
    ("data", "test_ratings"),
    ("data", "rejected"),
    ("data", "missing"),
    ("spark_als", "test_rmse"),
    ("spark_als", "test_mae"),
    ("spark_als", "test_nmae"),
    ("spark_als", "test_rows_scored"),
    ("new_users", "gauge.model.rmse"),
    ("new_users", "gauge.model.ndcg_at_k"),
    ("new_users", "gauge.popularity.rmse"),
    ("spark_als", "fit_seconds"),
    ("spark_als", "tune_seconds"),
    ("spark_als", "ranking.precision_at_k"),
    ("spark_als", "ranking.recall_at_k"),
    ("spark_als", "ranking.map_at_k"),
    ("spark_als", "ranking.ndcg_at_k"),
    ("spark_als", "clipping.predictions_outside"),
    ("spark_als", "clipping.test_rmse_unclipped"),
    ("references", "random.ndcg_at_k"),
    ("references", "random.precision_at_k"),
    ("references", "popularity.ndcg_at_k"),
    ("references", "popularity.precision_at_k"),
    ("numpy_als", "test_rmse"),
    ("numpy_als", "test_mae"),
    ("numpy_als", "spark_test_rmse_same_rows"),
    ("numpy_als", "fit_seconds"),
    ("numpy_als", "collect_seconds"),
    ("numpy_als", "driver_seconds"),
    ("numpy_als", "memory.driver_peak_mb"),
    ("baselines", "bias.test_rmse"),
    ("baselines", "global_mean.test_rmse"),
    ("recommendations", "users"),
    ("recommendations", "catalogue_coverage"),
    ("run", "wall_seconds"),
]


def _get(section: dict, dotted: str):
    value = section
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def flatten(config: dict, prefix: str = "") -> dict:
    """``{"tune": {"grid": {"rank": [5]}}}`` -> ``{"tune.grid.rank": "[5]"}``: the config as MLflow params."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)
    return out


def on_databricks() -> bool:
    return bool(os.environ.get("DATABRICKS_RUNTIME_VERSION"))


def tracking_target(tracking: TrackingConfig, output_dir: str, spark=None) -> tuple[str, str, str | None]:
    """(tracking URI, experiment name, artifact location for a new experiment).

    On Databricks the workspace's tracking server (``databricks``) and, for a name that is not a workspace
    path, an experiment under the user's folder (``/Users/<user>/<name>``: Databricks names experiments by
    workspace path). Elsewhere a SQLite store and an artifact folder under ``output.dir``: MLflow 3 keeps the
    plain-directory store in maintenance mode and refuses it unless told otherwise."""
    name = tracking.experiment
    if tracking.tracking_uri:
        return tracking.tracking_uri, name, None
    if on_databricks():
        if not name.startswith("/") and spark is not None:
            user = spark.sql("SELECT current_user()").first()[0]
            name = f"/Users/{user}/{name}"
        return "databricks", name, None
    base = os.path.abspath(output_dir)
    return f"sqlite:///{os.path.join(base, 'mlflow.db')}", name, os.path.join(base, "mlartifacts")


def track_job(cfg: JesterConfig, job: str, metrics: dict, output_dir: str, spark=None) -> dict | None:
    """Log the committed job to MLflow when ``tracking.mlflow`` is on. Returns what was logged (run id,
    URI, experiment) or why not; never raises."""
    if not cfg.tracking.mlflow:
        return None
    try:
        import mlflow
    except ImportError:
        log.warning(
            "tracking.mlflow is on but MLflow is not installed (pip install 'jester-als[mlflow]'); "
            "this run is not tracked"
        )
        return {"skipped": "mlflow not installed"}
    # MLflow's HTTP client retries a server that does not answer 7 times with exponential backoff (minutes);
    # a job that is done should not wait that long to say tracking failed. A user's own setting wins.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    started = time.perf_counter()
    try:
        logged = _log(mlflow, cfg, job, metrics, output_dir, spark)
        log.info(
            "MLflow: run %s in experiment %s (%s), logged in %.1f s",
            logged["run_id"],
            logged["experiment"],
            logged["tracking_uri"],
            time.perf_counter() - started,
        )
        return logged
    except Exception as exc:  # noqa: BLE001 - tracking never changes the job's outcome
        failed = f"{type(exc).__name__}: {first_line(exc)}"
        log.warning("MLflow tracking failed (%s); the job's results are unaffected", failed)
        return {"failed": failed}


def _log(mlflow, cfg: JesterConfig, job: str, metrics: dict, output_dir: str, spark) -> dict:
    uri, name, artifacts = tracking_target(cfg.tracking, output_dir, spark)
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment(name, artifact_location=artifacts)
    )
    run_meta = metrics.get("run") or {}
    tags = {
        "jester_als.job": job,
        "jester_als.run_id": str(run_meta.get("run_id")),
        "spark_mode": str(run_meta.get("spark_mode")),
        "master": str(run_meta.get("master")),
    }
    tags.update({f"version.{k}": str(v) for k, v in (run_meta.get("versions") or {}).items()})
    # MLflow's own context tags (user, source name and type, and on Databricks the job and its run), as
    # mlflow.start_run would add them: MlflowClient.create_run adds none.
    from mlflow.tracking.context.registry import resolve_tags

    tags = resolve_tags(tags)
    parent = client.create_run(experiment_id, run_name=f"{job} {run_meta.get('run_id', '')}".strip(), tags=tags)
    run_id = parent.info.run_id
    # logged at the time they are logged, never before the run's own start (the store stamps that one)
    now = max(int(time.time() * 1000), parent.info.start_time or 0)
    status = "FAILED"
    try:
        params = flatten(run_meta.get("config") or {})
        items = list(params.items())
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in items[start : start + 100]])
        values = {f"{section}.{key}": _get(metrics.get(section) or {}, key) for section, key in METRICS}
        logged = [
            mlflow.entities.Metric(k, float(v), now, 0)
            for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        if logged:
            client.log_batch(run_id, metrics=logged)
        spark_als = metrics.get("spark_als") or {}
        if "biases" in spark_als:
            client.set_tag(run_id, "model.biases", str(spark_als["biases"]))
        for number, point in enumerate(spark_als.get("validation") or [], start=1):
            child = client.create_run(
                experiment_id,
                run_name=f"grid point {number}",
                tags={"mlflow.parentRunId": run_id, "jester_als.job": job},
            )
            scores = {"validation_rmse": point["validation_rmse"], "seconds": point.get("seconds")}
            client.log_batch(
                child.info.run_id,
                params=[mlflow.entities.Param(k, str(v)) for k, v in point["params"].items()],
                metrics=[mlflow.entities.Metric(k, float(v), now, 0) for k, v in scores.items() if v is not None],
            )
            client.set_terminated(child.info.run_id)
        for item in ("metrics.json", "report.md"):
            path = os.path.join(output_dir, item)
            if os.path.exists(path):
                client.log_artifact(run_id, path)
        plots = os.path.join(output_dir, PLOTS_DIR)
        if os.path.isdir(plots):
            client.log_artifacts(run_id, plots, PLOTS_DIR)
        _log_model(mlflow, client, run_id, cfg, output_dir, spark)
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    return {"run_id": run_id, "experiment": name, "tracking_uri": uri}


def _log_model(mlflow, client, run_id: str, cfg: JesterConfig, output_dir: str, spark) -> None:
    """The saved model, whatever its kind, as an MLflow pyfunc model (:mod:`jester_als.mlflow_model`: it
    recommends without Spark) with a signature and an input example, and the saved directory as it is under
    ``saved_model/`` (what ``jester_als.load_model`` reads). With ``tracking.registered_model`` the model is
    registered and ``tracking.model_alias`` points at the new version; a registry that refuses is a warning, the
    run stays logged."""
    import tempfile

    import pandas as pd
    from mlflow.models import infer_signature

    from jester_als import mlflow_model  # needs MLflow, the optional extra this function runs under

    path = os.path.join(output_dir, "model")
    if not os.path.isdir(path):
        return
    client.log_artifacts(run_id, path, "saved_model")
    tracking, top = cfg.tracking, cfg.recommend.top_n
    with tempfile.TemporaryDirectory() as tmp:
        arrays = mlflow_model.export_saved(
            path, os.path.join(output_dir, "ratings"), tmp, spark=spark, rating_range=cfg.input.rating_range, top=top
        )
        recommender = mlflow_model.Recommender(arrays)
        example = pd.DataFrame({"user": recommender.user_ids[:2].astype("int32")})
        python_model = mlflow_model.JesterRecommender()
        python_model.recommender = recommender
        signature = infer_signature(example, python_model.predict(None, example), params={"n": top})
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(client.tracking_uri)  # the fluent API below logs to the global URI
        try:
            with mlflow.start_run(run_id=run_id):
                del python_model.recommender  # loaded from the artifact, not pickled with the class
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=python_model,
                    artifacts={"recommender": arrays},
                    signature=signature,
                    input_example=example,
                    # the package itself is the model's code, so loading needs its dependencies, not its wheel
                    code_paths=[os.path.dirname(mlflow_model.__file__)],
                    pip_requirements=_requirements(),
                )
            if tracking.registered_model:  # the registry is the tracking URI's (MLflow's default)
                _register(mlflow, client, info.model_uri, tracking.registered_model, tracking.model_alias)
        finally:
            mlflow.set_tracking_uri(previous)


def _requirements() -> list[str]:
    """What loading the pyfunc model imports, pinned to the versions that logged it."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "numpy", "scipy", "pandas", "threadpoolctl")]


def _register(mlflow, client, model_uri: str, name: str, alias: str) -> None:
    try:
        registered = mlflow.register_model(model_uri, name)
        client.set_registered_model_alias(name, alias, registered.version)
        log.info("MLflow: registered %s version %s, alias %s", name, registered.version, alias)
    except Exception as exc:  # noqa: BLE001 - the run and its model stay logged
        log.warning(
            "MLflow: the registry refused model %s (%s); the run and its model are logged",
            name,
            first_line(exc),
        )
