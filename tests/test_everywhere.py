"""The same packaged job on a real standalone cluster and over a real Spark Connect server."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from helpers import SMALL_RUN, assert_same_results, job_argv, without_volatile
from jester_als.cli import main
from jester_als.config import load_config
from jester_als.localcluster import connect_server, spark_submit, standalone_cluster

ROOT = Path(__file__).resolve().parents[1]


def comparable(metrics: dict) -> dict:
    """The results of a run, without times, paths and run ids. How the grid was run is not a result either
    (pyspark 4.0 over Connect runs the job's loop where classic runs TVS)."""
    kept = without_volatile(metrics, drop=("tune_method",))
    return {k: kept[k] for k in ("data", "spark_als", "numpy_als", "baselines", "recommendations")}


@pytest.fixture(scope="module")
def classic_outputs(spark, small_table, tmp_path_factory):
    """A classic local pipeline run's output directory (tests copy it before they write into it)."""
    path, _ = small_table
    out = tmp_path_factory.mktemp("classic") / "out"
    assert main(job_argv("pipeline", *SMALL_RUN, path=path, out=out)) == 0
    return out


@pytest.fixture(scope="module")
def classic_run(classic_outputs):
    return json.loads((classic_outputs / "metrics.json").read_text())


@pytest.mark.cluster
def test_pipeline_over_spark_connect_matches_classic(classic_run, small_table, tmp_path):
    path, _ = small_table
    out = tmp_path / "out"
    with connect_server(
        tmp_path / "server", master="local[2]", extra_conf={"spark.sql.shuffle.partitions": "2"}
    ) as url:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "jester_als.cli",
                *job_argv("pipeline", *SMALL_RUN, path=path, out=out),
                "--remote",
                url,
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=600,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["spark_mode"] == "connect"
    assert classic_run["run"]["spark_mode"] == "classic"
    assert_same_results(comparable(metrics), comparable(classic_run), rel=1e-6)


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """What `make package` ships for spark-submit: the library as a zip, the job files, the configs."""
    dist = tmp_path_factory.mktemp("dist")
    with zipfile.ZipFile(dist / "jester_als.zip", "w") as archive:
        for source in (ROOT / "src" / "jester_als").rglob("*.py"):
            archive.write(source, source.relative_to(ROOT / "src"))
    shutil.copytree(ROOT / "jobs", dist / "jobs")
    shutil.copytree(ROOT / "conf", dist / "conf")
    return dist


@pytest.mark.cluster
def test_packaged_pipeline_on_a_standalone_cluster(classic_run, small_table, dist, tmp_path):
    path, _ = small_table
    out = tmp_path / "out"
    # Run from a directory that has no conf/: the config is found as the file shipped with --files would be
    # in cluster deploy mode, by its base name in the driver's working directory.
    driver_dir = tmp_path / "driver"
    driver_dir.mkdir()
    shutil.copy(ROOT / "conf" / "local.yaml", driver_dir / "local.yaml")
    env_pythonpath = os.environ.pop("PYTHONPATH", None)
    try:
        with standalone_cluster(tmp_path / "cluster", cores=2, memory="1g") as master:
            result = spark_submit(
                master,
                "pipeline",
                "conf/local.yaml",
                [
                    f"input.path={path}",
                    f"output.dir={out}",
                    f"spark.checkpoint_dir={tmp_path / 'checkpoints'}",
                    *SMALL_RUN,
                ],
                dist=str(dist),
                cwd=str(driver_dir),
                timeout=600,
            )
    finally:
        if env_pythonpath is not None:
            os.environ["PYTHONPATH"] = env_pythonpath
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["master"] == master
    assert metrics["run"]["config_file"] == "local.yaml"
    # Same data, split and choice; ALS's numbers agree closely but not to the last bit, because
    # TrainValidationSplit's inner random split follows the input's partitioning, which is the cluster's.
    ours, theirs = comparable(metrics), comparable(classic_run)
    assert_same_results(ours["data"], theirs["data"], rel=1e-6)
    assert ours["spark_als"]["best_params"] == theirs["spark_als"]["best_params"]
    assert ours["spark_als"]["test_rmse"] == pytest.approx(theirs["spark_als"]["test_rmse"], rel=0.02)
    assert ours["recommendations"] == theirs["recommendations"]
    for item in ("model", "recommendations", "ratings", "rejected", "report.md"):
        assert (out / item).exists()


def test_config_shipped_with_files_is_found_by_name(tmp_path, monkeypatch):
    (tmp_path / "shipped.yaml").write_text("output: {dir: out}\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config("some/where/else/shipped.yaml")
    assert cfg.source == "shipped.yaml"


def _executors_under(workdir: Path) -> list:
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if "CoarseGrainedExecutorBackend" in " ".join(process.info["cmdline"] or []) and process.cwd().startswith(
                str(workdir)
            ):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _tasks_started(workdir: Path) -> int:
    """Tasks the standalone cluster's executors have started so far (their INFO log, under work/)."""
    return sum(
        path.read_text(errors="replace").count("Running task") for path in (workdir / "work").glob("app-*/*/stderr")
    )


@pytest.mark.cluster
def test_tune_survives_losing_its_executor_mid_fit(spark, dist, tmp_path):
    """Kill the executor JVM while ALS is fitting; the standalone master starts a new one, lost work is
    recomputed, and the job ends with the metrics of an undisturbed run (in this process, on local[2]: two
    cores as on the cluster, so the same two ALS blocks and the same factors up to the order of float sums)."""
    from jester_als.generate import GeneratorParams, write_wide_csv
    from jester_als.localcluster import child_env, submit_command

    table = tmp_path / "jester.csv"
    write_wide_csv(GeneratorParams(users=3000), str(table))
    prepared = tmp_path / "prepared"
    assert main(job_argv("prepare", path=table, out=prepared)) == 0
    tune = ["tune.grid={rank: [5], regParam: [0.3], maxIter: [15]}", "tune.refit_max_iter=15"]
    runs = {}
    calm_out = tmp_path / "undisturbed"
    shutil.copytree(prepared, calm_out)
    assert main(job_argv("tune", *tune, out=calm_out)) == 0
    runs["undisturbed"] = json.loads((calm_out / "metrics.json").read_text())["spark_als"]
    out = tmp_path / "executor_killed"
    shutil.copytree(prepared, out)
    with standalone_cluster(tmp_path / "cluster", cores=2, memory="1g") as master:
        command = submit_command(
            master,
            "tune",
            str(ROOT / "conf" / "local.yaml"),
            [f"output.dir={out}", f"spark.checkpoint_dir={tmp_path / 'ckpt'}", *tune],
            dist=str(dist),
        )
        job = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env(), cwd=tmp_path
        )
        lines = []
        for line in job.stdout:  # wait until tuning has started (TVS or the job's loop: the same words)
            lines.append(line)
            if "grid points, trainRatio" in line:
                break
        # Then until the executor has started ALS's tasks: its log shows them (observable, no sleep).
        started = _tasks_started(tmp_path / "cluster")
        deadline = time.monotonic() + 120
        while _tasks_started(tmp_path / "cluster") < started + 10:
            assert time.monotonic() < deadline, "the executor never started the fit's tasks"
            time.sleep(0.1)
        executors = _executors_under(tmp_path / "cluster")
        assert executors, "no executor process found to kill"
        for process in executors:
            process.kill()
        killed = [p.pid for p in executors]
        output, _ = job.communicate(timeout=600)
        assert job.returncode == 0, output[-3000:]
        assert "Lost executor" in "".join(lines) + output  # the driver saw the loss and carried on
        runs["executor_killed"] = json.loads((out / "metrics.json").read_text())["spark_als"]
        assert not set(killed) & {p.pid for p in _executors_under(tmp_path / "cluster")}
    calm, hit = runs["undisturbed"], runs["executor_killed"]
    assert hit["best_params"] == calm["best_params"]
    # Partitions recomputed after the loss feed ALS's normal equations in another order: the factors after 15
    # iterations agree to float32 rounding, not bit for bit; another model would differ by far more.
    assert hit["test_rmse"] == pytest.approx(calm["test_rmse"], rel=1e-4)
    assert hit["test_mae"] == pytest.approx(calm["test_mae"], rel=1e-4)


NEW_USERS = "User,Number of Jokes Rated,1,2,3,4,5\n70001,3,5.5,-2.25,8.0,,\n70002,2,,3.5,,7.0,\n70003,5,1,2,3,4,5\n"


@pytest.mark.cluster
def test_executors_without_the_jobs_dependencies_run_it_from_the_packed_environment(classic_outputs, dist, tmp_path):
    """`make pack` builds the environment for the nodes. Executors whose Python is a bare interpreter (an empty
    virtual environment) fail a job whose tasks run Python (fold-in inside Spark tasks) with one line naming the
    missing module; given the packed environment with --archives, they run it and recommend what a local run
    does."""
    import venv

    pack = tmp_path / "jester_als_env.tar.gz"
    built = subprocess.run(["make", "pack", f"PACK={pack}"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    bare = tmp_path / "bare"
    venv.EnvBuilder(with_pip=False).create(bare)  # the interpreter alone: no numpy, no pyarrow, no jester_als
    table = tmp_path / "new_users.csv"
    table.write_text(NEW_USERS)
    overrides = [f"new_users.path={table}", "new_users.engine=spark", "recommend.top_n=3"]
    outs = {}
    for name in ("local", "bare", "packed"):
        outs[name] = tmp_path / f"out-{name}"
        shutil.copytree(classic_outputs, outs[name])
    local = subprocess.run(
        [
            sys.executable,
            "-m",
            "jester_als.cli",
            *job_argv("foldin", *overrides, out=outs["local"]),
            "--master",
            "local[2]",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert local.returncode == 0, local.stderr[-3000:]
    driver = ("--conf", f"spark.pyspark.driver.python={sys.executable}")
    with standalone_cluster(tmp_path / "cluster", cores=2, memory="1g") as master:
        without = spark_submit(
            master,
            "foldin",
            "conf/local.yaml",
            [*overrides, f"output.dir={outs['bare']}"],
            dist=str(dist),
            cwd=str(ROOT),
            timeout=600,
            submit_args=(*driver, "--conf", f"spark.pyspark.python={bare / 'bin' / 'python'}"),
        )
        packed = spark_submit(
            master,
            "foldin",
            "conf/local.yaml",
            [*overrides, f"output.dir={outs['packed']}"],
            dist=str(dist),
            cwd=str(ROOT),
            timeout=600,
            submit_args=(
                *driver,
                "--archives",
                f"{pack}#environment",
                "--conf",
                "spark.pyspark.python=./environment/bin/python",
            ),
        )
    assert without.returncode == 1, without.stderr[-3000:]
    # spark-submit's PythonRunner merges the Python driver's stderr into its stdout: the job's last line is there
    last = without.stdout.strip().splitlines()[-1]
    assert last.startswith("jester-als foldin: failed: the executors' Python has no module"), without.stdout[-3000:]
    assert "--archives" in last
    assert re.search(r"no module '(numpy|pyarrow|pandas|jester_als)", last), last
    assert not (outs["bare"] / "new_user_recommendations").exists()  # nothing half-written
    assert packed.returncode == 0, packed.stderr[-3000:]
    import pyarrow.parquet as pq

    got, want = (
        pq.read_table(outs[name] / "new_user_recommendations")
        .to_pandas()
        .sort_values(["user", "rank"])
        .reset_index(drop=True)
        for name in ("packed", "local")
    )
    assert got[["user", "rank", "joke"]].values.tolist() == want[["user", "rank", "joke"]].values.tolist()
    assert got["score"].tolist() == pytest.approx(want["score"].tolist(), rel=1e-6)
