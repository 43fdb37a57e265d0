"""The wheel as a user installs it: into a fresh environment, with only the `spark` extra (no test tools), the
jobs that import pyarrow, psutil, scipy and threadpoolctl must run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, SMALL_RUN, job_argv, sets

pytestmark = pytest.mark.cluster  # minutes: a venv, a pip install, a Spark job


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, **kwargs)
    assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


def source_tree(target: Path) -> Path:
    """What a clone holds for building the wheel, copied: pip builds in the source tree (build/, *.egg-info), and
    `make submit` in another test clears the checkout's build/ and dist/ while tests run side by side."""
    for name in ("setup.py", "pyproject.toml", "README.md"):
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target / name)
    for name in ("src", "conf"):  # src/jester_als/conf is a link to conf/, as in the repository
        shutil.copytree(
            ROOT / name, target / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    return target


def test_wheel_with_only_the_spark_extra_runs_scale_help_and_baseline(tmp_path, small_table):
    source = source_tree(tmp_path / "source")
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path / "dist"), str(source)])
    wheel = next((tmp_path / "dist").glob("jester_als-*.whl"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    # no byte-compiling of pyspark's thousands of modules up front: what runs compiles what it imports
    _run([str(venv / "bin" / "pip"), "install", "--quiet", "--no-compile", f"{wheel}[spark]"])
    installed = _run([str(venv / "bin" / "pip"), "list", "--format=json"]).stdout
    names = {p["name"].lower() for p in json.loads(installed)}
    assert {"pyspark", "pyarrow", "psutil", "scipy", "threadpoolctl"} <= names
    assert not names & {"pytest", "chispa", "matplotlib", "ruff"}  # nothing of the test extra came along

    cli = str(venv / "bin" / "jester-als")
    assert "scaling study" in _run([cli, "scale", "--help"]).stdout + _run([cli, "--help"]).stdout
    path, _ = small_table
    out = tmp_path / "out"
    common = [*sets(f"input.path={path}", f"output.dir={out}", *SMALL_RUN), "--master", "local[2]"]
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "SPARK_LOCAL_IP": "127.0.0.1",
        "HOME": str(tmp_path),
        "PYSPARK_PYTHON": str(venv / "bin" / "python"),
    }
    # pipeline: prepare, tune, baseline (pyarrow, scipy, threadpoolctl, psutil) and recommend, one Spark start
    _run([cli, "pipeline", *common], env=env, cwd=tmp_path)
    # no conf/ in the user's directory: the packaged default of that name is read
    generated = _run(
        [cli, *job_argv("generate", "generate.users=50", f"generate.path={tmp_path / 'g.csv'}")],
        env=env,
        cwd=tmp_path,
    )
    assert "wrote" in generated.stdout and (tmp_path / "g.csv").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["numpy_als"]["test_rmse"] < 1.5 * metrics["numpy_als"]["spark_test_rmse_same_rows"]
    assert metrics["numpy_als"]["memory"]["driver_peak_mb"] > metrics["numpy_als"]["memory"]["collected_mb"]
    assert Path(out / "report.md").exists()
