"""Faults as production meets them: a failure ends with one line naming the cause a person can act on, the trace
kept in spark.log; tested with a real file system that fills up mid-write."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import job_argv
from jester_als.errors import actionable_cause, first_line
from jester_als.generate import GeneratorParams, write_wide_csv

ROOT = Path(__file__).resolve().parents[1]


def test_causes_are_named_from_python_and_java_errors():
    full = OSError(errno.ENOSPC, "No space left on device", "/data/out/ratings/part-0.parquet")
    assert actionable_cause(full) == "no space left on device: /data/out/ratings/part-0.parquet"
    java = RuntimeError(
        "An error occurred while calling o619.parquet.\n: org.apache.spark.SparkException: Job "
        "aborted.\n\tat org.apache...\nCaused by: java.io.FileNotFoundException: "
        "/mnt/out/.staging-1/ratings/_temporary/0 (Permission denied)\n\tat java.io..."
    )
    assert actionable_cause(java) == "permission denied: /mnt/out/.staging-1/ratings/_temporary/0"
    lost = RuntimeError(
        "Job aborted due to stage failure: ExecutorLostFailure (executor 1 exited caused by one of "
        "the running tasks) Reason: Remote RPC client disassociated."
    )
    assert actionable_cause(lost).startswith("a Spark executor was lost")
    assert actionable_cause(ValueError("something else entirely")) is None


def test_a_failure_is_told_by_sparks_own_line_not_py4js_wrapper():
    java = RuntimeError(
        "An error occurred while calling o49.parquet.\n: org.apache.spark.SparkException: "
        "[FAILED_READ_FILE.NO_HINT] Encountered error while reading file file:/x/part-0.txt.  SQLSTATE: KD001\n"
        "\tat org.apache.spark..."
    )
    assert first_line(java) == (
        "[FAILED_READ_FILE.NO_HINT] Encountered error while reading file file:/x/part-0.txt.  SQLSTATE: KD001"
    )
    # a Connect client's error is Spark's line already; an empty one is named by its type
    assert first_line(ValueError("[PATH_NOT_FOUND] Path does not exist: file:/x.")) == (
        "[PATH_NOT_FOUND] Path does not exist: file:/x."
    )
    assert first_line(KeyError()) == "KeyError"


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs, the output directory's file system, that fills up mid-write."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI and the project's machines run as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_ends_with_one_line_naming_it(small_disk, tmp_path):
    table = tmp_path / "jester.csv"
    write_wide_csv(GeneratorParams(users=10_000), str(table))
    out = small_disk / "out"
    run = subprocess.run(
        [sys.executable, "-m", "jester_als.cli", *job_argv("prepare", path=table, out=out), "--master", "local[2]"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert run.returncode == 1, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("jester-als prepare: failed: no space left on device"), run.stderr[-3000:]
    assert f"{out}/.staging-" in last and "nothing was replaced" in last  # the path being written
    # Spark's errors show a line or two each on the console; their causes and traces stay in spark.log
    assert "Traceback" not in run.stderr and "Caused by" not in run.stderr
    assert len(run.stderr.splitlines()) < 60, run.stderr[-3000:]
    assert not [p for p in os.listdir(out) if p.startswith(".staging-")]  # nothing half-written left


def test_a_job_without_spark_that_cannot_write_its_path_says_which_in_one_line(tmp_path, capsys):
    """generate (bench and scale alike) meets an I/O error as a Spark job does: exit 1, one line naming the path,
    the trace only with -v."""
    from jester_als.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    target = blocker / "jester.csv"
    assert main(["generate", "--set", f"generate.path={target}", "--set", "generate.users=20"]) == 1
    err = capsys.readouterr().err
    # (os.makedirs meets the file where a directory should be: "File exists")
    assert err.strip().splitlines()[-1] == f"jester-als generate: failed: file exists: {blocker}", err
    assert "Traceback" not in err
    assert not target.exists()
