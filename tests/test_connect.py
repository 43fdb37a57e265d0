"""Spark Connect as users meet it: a server the job cannot configure, a server that dies mid-job, and the
local server pyspark starts for SPARK_REMOTE=local[...]. Every server here is real, started by the project."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import job_argv, sets
from jester_als.cli import main
from jester_als.localcluster import child_env, connect_server
from jester_als.session import ITERATIONS_WITHOUT_CHECKPOINTS

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.cluster
# A lost server must end the job within this bound (the issue's: "say two minutes").
LOST_SERVER_BOUND_SECONDS = 120


def job(*args: str, remote: str | None = None, **kwargs) -> subprocess.CompletedProcess:
    """`jester-als *args` in a process of its own; ``remote``: its SPARK_REMOTE (``local[2]``: pyspark starts a
    Connect server in that process)."""
    env = {**child_env(), **({"SPARK_REMOTE": remote} if remote else {})}
    return subprocess.run(
        [sys.executable, "-m", "jester_als.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
        **kwargs,
    )


def test_server_without_checkpoints_refuses_40_iterations_and_runs_what_is_safe(small_table, tmp_path, monkeypatch):
    path, params = small_table
    # The safe number of iterations is a stack depth: the server runs as a user's would, with the JVM's own
    # compilers (C1-only frames, which conftest.py gives the tests' JVMs, are larger and overflowed at it).
    monkeypatch.delenv("JAVA_TOOL_OPTIONS", raising=False)
    common = [
        "--conf",
        "conf/local.yaml",
        *sets(f"input.path={path}", "recommend.top_n=3", "tune.grid={rank: [3], regParam: [0.1], maxIter: [6]}"),
    ]
    with connect_server(tmp_path / "server", checkpoints=False) as url:
        started = time.monotonic()
        refused = job(
            "pipeline",
            *common,
            "--remote",
            url,
            "--set",
            f"output.dir={tmp_path / 'refused'}",
            "--set",
            "tune.refit_max_iter=40",
        )
        refused_seconds = time.monotonic() - started
        safe = job(
            "pipeline",
            *common,
            "--remote",
            url,
            "--set",
            f"output.dir={tmp_path / 'safe'}",
            "--set",
            f"tune.refit_max_iter={ITERATIONS_WITHOUT_CHECKPOINTS}",
        )
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert "tune.refit_max_iter=40" in refused.stderr and "spark.checkpoint.dir" in refused.stderr
    assert f"at most {ITERATIONS_WITHOUT_CHECKPOINTS}" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "refused" / "metrics.json").exists()
    assert refused_seconds < 60  # refused before any Spark work (session start only)
    assert safe.returncode == 0, safe.stderr[-3000:]
    metrics = json.loads((tmp_path / "safe" / "metrics.json").read_text())
    assert metrics["spark_als"]["model_params"]["maxIter"] == ITERATIONS_WITHOUT_CHECKPOINTS
    assert metrics["spark_als"]["test_rmse"] < 1.3 * params.noise


def test_job_fails_within_a_bound_when_the_server_dies_mid_fit(spark, tmp_path):
    from jester_als.generate import GeneratorParams, write_wide_csv

    table = tmp_path / "jester.csv"
    write_wide_csv(GeneratorParams(users=3000), str(table))
    out = tmp_path / "out"
    assert main(job_argv("prepare", path=table, out=out)) == 0
    before = (out / "metrics.json").read_text()
    server: list = []
    with connect_server(tmp_path / "server", server=server) as url:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jester_als.cli",
                *job_argv("tune", "tune.grid={rank: [5, 8], regParam: [0.1, 0.3], maxIter: [15]}", out=out),
                "--remote",
                url,
            ],
            cwd=ROOT,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: list[str] = []
        fitting = threading.Event()

        def read():
            for line in process.stdout:
                lines.append(line)
                if "grid points, trainRatio" in line:  # Spark's TVS or the job's loop (pyspark 4.0) has started
                    fitting.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert fitting.wait(timeout=300), "".join(lines)[-3000:]  # the job is tuning: an observable state
        os.killpg(server[0].pid, signal.SIGKILL)
        killed = time.monotonic()
        try:
            status = process.wait(timeout=LOST_SERVER_BOUND_SECONDS + 60)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail(f"the job was still running {LOST_SERVER_BOUND_SECONDS + 60} s after its server died")
        seconds = time.monotonic() - killed
        reader.join(timeout=10)
    output = "".join(lines)
    print(f"the job exited with {status} {seconds:.1f} s after its Connect server was killed")
    assert status == 1, output[-3000:]
    assert seconds < LOST_SERVER_BOUND_SECONDS, f"took {seconds:.0f} s"
    assert "lost the Spark Connect server" in output
    assert (out / "metrics.json").read_text() == before  # nothing was replaced
    assert not (out / "model").exists()


def test_local_remote_gets_its_launch_settings(small_table, tmp_path):
    """SPARK_REMOTE=local[2]: pyspark starts the server in the job's process; the checkpoint directory and
    the other launch-time settings reach it, and nothing is refused with a server stack trace."""
    path, _ = small_table
    checkpoints = tmp_path / "checkpoints"
    result = job(
        *job_argv(
            "pipeline",
            f"spark.checkpoint_dir={checkpoints}",
            "tune.grid={rank: [3], regParam: [0.1], maxIter: [6]}",
            "tune.refit_max_iter=25",
            path=path,
            out=tmp_path / "out",
        ),
        remote="local[2]",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["run"]["spark_mode"] == "connect"
    assert metrics["spark_als"]["model_params"]["maxIter"] == 25  # past the no-checkpoint limit: it had one
    assert checkpoints.exists() and any(checkpoints.iterdir())
    assert "CANNOT_MODIFY_CONFIG" not in result.stderr


def test_prepare_over_spark_connect_counts_as_in_classic_mode(spark, tmp_path):
    """The one pass's observed metrics reach a Connect client (a Spark Connect 4.0 server reported them empty
    for a plan whose columns had been asked for): the counts, ratings and refused cells match a classic
    session's, on a table with refused cells and a sentinel spelt two ways (the second pass runs)."""
    path = tmp_path / "table.csv"
    path.write_text("User,Number of Jokes Rated,1,2,3\n1,3,1.5,99,abc\n2,2, 99,-2,\n3,2,11,,4\n")
    runs = {}
    for mode in ("connect", "classic"):
        out = tmp_path / mode
        argv = job_argv("prepare", path=path, out=out)
        if mode == "connect":
            done = job(*argv, remote="local[2]")
            assert done.returncode == 0, done.stderr[-3000:]
        else:
            assert main(argv) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        data = {k: v for k, v in metrics["data"].items() if k not in ("timing_seconds", "rating_mean", "rating_std")}
        rows = {
            name: sorted(str(tuple(r)) for r in spark.read.parquet(str(out / name)).collect())
            for name in ("ratings", "rejected")
        }
        runs[mode] = metrics["run"]["spark_mode"], data, rows
    assert runs["connect"][0] == "connect" and runs["classic"][0] == "classic"
    assert runs["connect"][1:] == runs["classic"][1:]
    data = runs["connect"][1]
    assert data["one_pass"] and data["cells"]["missing"] == {"blank": 2, "sentinel": 2}
    assert data["cells"]["rejected"] == {"not_a_number": 1, "out_of_range": 1} and data["ratings"] == 3


def test_foldin_runs_over_spark_connect_as_in_classic_mode(pipeline_run, tmp_path):
    """New users folded in inside a Connect server's tasks (mapInPandas, no collect of their ratings) get the
    recommendations and factors a classic session gives them."""
    import shutil

    import numpy as np

    done, _, _ = pipeline_run
    table = tmp_path / "new_users.csv"
    table.write_text(
        "User,Number of Jokes Rated,1,2,3,4,5\n70001,3,5.5,-2.25,8.0,,\n70002,2,,3.5,,7.0,\n70003,5,1,2,3,4,5\n"
    )
    outputs = {}
    for mode in ("classic", "connect"):
        outputs[mode] = tmp_path / mode
        shutil.copytree(done, outputs[mode])
    common = [
        "--conf",
        "conf/local.yaml",
        *sets(f"new_users.path={table}", "new_users.engine=spark", "recommend.top_n=3"),
    ]
    classic = job("foldin", *common, "--set", f"output.dir={outputs['classic']}", "--master", "local[2]")
    assert classic.returncode == 0, classic.stderr[-3000:]
    with connect_server(tmp_path / "server") as url:
        remote = job("foldin", *common, "--set", f"output.dir={outputs['connect']}", "--remote", url)
    assert remote.returncode == 0, remote.stderr[-3000:]
    assert json.loads((outputs["connect"] / "metrics.json").read_text())["run"]["spark_mode"] == "connect"
    import pyarrow.parquet as pq

    for name, order in (("new_user_recommendations", ["user", "rank"]), ("new_user_factors", ["user"])):
        a, b = (
            pq.read_table(outputs[mode] / name).to_pandas().sort_values(order).reset_index(drop=True)
            for mode in ("classic", "connect")
        )
        assert a["user"].tolist() == b["user"].tolist() == sorted(a["user"].tolist())
        if name == "new_user_factors":
            assert np.allclose(np.stack(a["features"]), np.stack(b["features"]), rtol=1e-6, atol=1e-9)
        else:
            assert a[["rank", "joke"]].values.tolist() == b[["rank", "joke"]].values.tolist()
