"""Every model kind is logged to MLflow as a pyfunc model with a signature and an input example, which
``mlflow.pyfunc.load_model`` loads without Spark and which recommends what the job recommended; with
``tracking.registered_model`` it is registered and the alias points at the new version."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from helpers import job_argv
from jester_als.cli import main

mlflow = pytest.importorskip("mlflow")


def _logged_model(out):
    """(the client, the parent run, the pyfunc model loaded from it) of the run tracked under ``out``."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{out / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("jester-als")
    parent = next(r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" not in r.data.tags)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        return client, parent, mlflow.pyfunc.load_model(f"runs:/{parent.info.run_id}/model")
    finally:
        mlflow.set_tracking_uri(previous)


def _same_as_the_job(out, loaded, top_n):
    """The loaded model's top-N for every user the job recommended to equals the job's recommendations: the
    same jokes in the same order, scores to 1e-6 (float32 factors, summed in another order)."""
    job = pq.read_table(out / "recommendations").to_pandas().sort_values(["user", "rank"]).reset_index(drop=True)
    got = loaded.predict(pd.DataFrame({"user": job["user"].unique().astype("int32")}), params={"n": top_n})
    got = got.sort_values(["user", "rank"]).reset_index(drop=True)
    assert list(got.columns) == ["user", "rank", "joke", "score"]
    keys = ["user", "rank", "joke"]
    assert got[keys].equals(job[keys].astype(got[keys].dtypes))
    np.testing.assert_allclose(got["score"], job["score"], rtol=1e-6, atol=1e-6)


def test_the_plain_model_is_a_pyfunc_model_that_recommends_as_the_job(pipeline_run):
    out, _, argv = pipeline_run
    top_n = json.loads((out / "metrics.json").read_text())["run"]["config"]["recommend"]["top_n"]
    client, parent, loaded = _logged_model(out)
    meta = loaded.metadata
    assert [c.name for c in meta.get_input_schema().inputs] == ["user"]
    assert [c.name for c in meta.get_output_schema().inputs] == ["user", "rank", "joke", "score"]
    assert meta.get_params_schema().params[0].name == "n"
    assert meta.saved_input_example_info["artifact_path"] == "input_example.json"
    # the saved directory too, for jester_als.load_model
    assert "saved_model" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    _same_as_the_job(out, loaded, top_n)
    # an unknown user gets nothing, not an error
    assert loaded.predict(pd.DataFrame({"user": np.array([10**8], dtype="int32")})).empty


def test_the_biased_model_is_logged_and_registered_with_its_alias(small_table, tmp_path):
    path, _ = small_table
    out = tmp_path / "out"
    assert (
        main(
            job_argv(
                "pipeline",
                "tune.grid={rank: [3], regParam: [0.1], maxIter: [6], biases: [true]}",
                "tune.refit_max_iter=6",
                "recommend.top_n=4",
                "new_users.evaluate=false",
                "tracking.mlflow=true",
                "tracking.registered_model=jester",
                "tracking.model_alias=champion",
                conf=None,
                path=path,
                out=out,
            )
        )
        == 0
    )
    client, parent, loaded = _logged_model(out)
    _same_as_the_job(out, loaded, 4)
    # the job's own loop timed its one grid point: the nested run has its seconds beside its validation RMSE
    (point,) = json.loads((out / "metrics.json").read_text())["spark_als"]["validation"]
    experiment = client.get_experiment_by_name("jester-als")
    (child,) = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    ]
    assert point["seconds"] > 0 and child.data.metrics["seconds"] == pytest.approx(point["seconds"])
    assert child.data.metrics["validation_rmse"] == pytest.approx(point["validation_rmse"])
    version = client.get_model_version_by_alias("jester", "champion")
    assert str(version.version) == "1"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    try:
        by_alias = mlflow.pyfunc.load_model("models:/jester@champion")
    finally:
        mlflow.set_tracking_uri(previous)
    users = pd.DataFrame({"user": np.array([1, 2], dtype="int32")})
    assert by_alias.predict(users).equals(loaded.predict(users))


@pytest.mark.parametrize("biases", [False, True])
def test_the_numpy_engines_model_recommends_its_best_unrated_jokes(tmp_path, biases):
    """A NumPy model (what a fallback run saves) exported and loaded recommends, for each user, the jokes it did
    not rate in the order of the model's own predictions, scores clipped to the rating range."""
    import pyarrow as pa

    from jester_als.mlflow_model import Recommender, export_saved
    from jester_als.numpy_als import RatingMatrix, fit_numpy_als

    rng = np.random.default_rng(3)
    users, jokes = np.repeat(np.arange(1, 61), 12), np.tile(np.arange(1, 13), 60)
    keep = rng.random(users.size) < 0.6
    ratings = rng.uniform(-10, 10, keep.sum())
    model = fit_numpy_als(
        RatingMatrix.from_ids(users[keep], jokes[keep], ratings), rank=3, reg_param=0.1, max_iter=5, biases=biases
    )
    model.save(str(tmp_path / "model"))
    (tmp_path / "ratings").mkdir()
    pq.write_table(
        pa.table({"user": users[keep].astype("int32"), "joke": jokes[keep].astype("int32"), "rating": ratings}),
        tmp_path / "ratings" / "part-0.parquet",
    )
    arrays = export_saved(
        str(tmp_path / "model"), str(tmp_path / "ratings"), str(tmp_path / "export"), rating_range=[-2.0, 2.0], top=3
    )
    got = Recommender(arrays).recommend([5, 6, 999])
    assert set(got["user"]) == {5, 6}  # 999 is unknown
    for user in (5, 6):
        unrated = np.setdiff1d(np.arange(1, 13), jokes[keep][users[keep] == user])
        predicted = model.predict(np.full(unrated.size, user), unrated)
        best = unrated[np.argsort(-predicted, kind="stable")[:3]]
        mine = got["user"] == user
        assert got["joke"][mine].tolist() == best.tolist()
        np.testing.assert_allclose(got["score"][mine], np.clip(np.sort(predicted)[::-1][:3], -2, 2), rtol=1e-9)


def test_a_registry_that_refuses_the_model_is_one_warning_and_the_job_stays_green(pipeline_run, tmp_path, capsys):
    """The local registry refuses a name with '/': the job exits 0 with its outputs committed, the run and its
    model stay logged, and one warning names the model and the registry's reason."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(pipeline_run[0], out)
    assert (
        main(job_argv("recommend", "tracking.mlflow=true", "tracking.registered_model=team/jester", conf=None, out=out))
        == 0
    )
    warnings = [line for line in capsys.readouterr().err.splitlines() if "registry refused" in line]
    assert len(warnings) == 1 and "team/jester" in warnings[0] and "cannot contain '/'" in warnings[0]
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("jester-als")
    runs = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("jester_als.job") == "recommend" and "mlflow.parentRunId" not in r.data.tags
    ]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert client.search_logged_models(
        [experiment.experiment_id], filter_string=f"source_run_id = '{runs[0].info.run_id}'"
    )
    assert client.search_registered_models() == []
    assert (out / "recommendations").is_dir()
