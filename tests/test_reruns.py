"""Reruns give the same results, long runs do not overflow the stack, interrupts leave nothing half-written,
and a job survives losing its executor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import assert_frames_equal, assert_same_results, sets, without_volatile
from jester_als.config import load_config
from jester_als.prepare import prepare_ratings
from jester_als.tune import fit_als, make_als, split_ratings

ROOT = Path(__file__).resolve().parents[1]


# Spark sums in the order its tasks finish, so a rerun's metrics may differ in their last bits (seen: a rerun
# on a busy machine differed from the first run past the 12th digit). What Spark does guarantee is compared
# exactly; floating metrics to this relative tolerance.
RERUN_TOLERANCE = 1e-6


def test_rerunning_the_pipeline_gives_the_same_results(spark, pipeline_run, small_table, tmp_path):
    """The rerun is a fresh process, with a CPU-bound process beside it, so task timing differs from the first
    run (the session's shared pipeline run)."""
    first_out, _, argv = pipeline_run
    second_out = tmp_path / "second"
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        rerun = subprocess.run(
            [
                sys.executable,
                "-m",
                "jester_als.cli",
                *argv,
                "--set",
                f"output.dir={second_out}",
                "--set",
                "tracking.mlflow=false",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=600,
        )
    finally:
        burner.kill()
        burner.wait()
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    first, second = (json.loads((out / "metrics.json").read_text()) for out in (first_out, second_out))
    for key in ("ratings_hash", "ratings", "train_ratings", "test_ratings", "users", "input"):
        assert second["data"][key] == first["data"][key], key  # the same data and the same split
    assert second["spark_als"]["best_params"] == first["spark_als"]["best_params"]
    assert_same_results(without_volatile(second), without_volatile(first), rel=RERUN_TOLERANCE)
    assert first["run"]["run_id"] != second["run"]["run_id"]
    manifest = first["run"]
    assert manifest["config"]["input"]["path"] == str(small_table[0])
    assert set(manifest["versions"]) == {"jester_als", "python", "spark", "numpy"}
    assert manifest["started"] <= manifest["finished"]
    assert first["data"]["input"]["rows"] == 400 and len(first["data"]["input"]["content_hash"]) == 16
    assert_frames_equal(spark.read.parquet(str(second_out / "ratings")), spark.read.parquet(str(first_out / "ratings")))
    recommendations = [spark.read.parquet(str(out / "recommendations")) for out in (second_out, first_out)]
    assert_frames_equal(*(r.select("user", "rank", "joke") for r in recommendations))
    assert_frames_equal(*recommendations, precision=1e-4)


def _checkpoint_files(spark) -> set[str]:
    """The RDD checkpoints under the session's checkpoint directory (ALS writes its factors there every
    checkpointInterval iterations and keeps the latest)."""
    root = spark.conf.get("spark.checkpoint.dir").removeprefix("file:")
    return {os.path.join(d, name) for d, dirs, _ in os.walk(root) for name in dirs if name.startswith("rdd-")}


def test_fifty_iterations_do_not_overflow_the_stack(spark, small_table):
    """Fifty iterations fit because ALS truncates its lineage with checkpoints: the control fit, with
    checkpoints off, writes none, and the fifty-iteration fit writes some (so this test fails with
    checkpointing broken, not only with the stack overflowing)."""
    path, params = small_table
    cfg = load_config(None, [f"input.path={path}", "output.dir=/tmp/unused"])
    prepared = prepare_ratings(spark, cfg.input)
    train, _ = split_ratings(prepared.ratings, test_fraction=0.2, seed=1)
    before = _checkpoint_files(spark)
    fit_als(train, make_als(seed=1, blocks=2, checkpoint_interval=-1), {"rank": 3, "regParam": 0.1, "maxIter": 12})
    assert _checkpoint_files(spark) - before == set(), "the control fit has checkpoints off"
    model, _ = fit_als(
        train, make_als(seed=1, blocks=2, checkpoint_interval=10), {"rank": 3, "regParam": 0.1, "maxIter": 50}
    )
    assert model.userFactors.count() == params.users
    assert _checkpoint_files(spark) - before, "ALS wrote no checkpoint in fifty iterations"
    prepared.release()


def pipeline_writing(command: list[str], out: Path, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """A long pipeline (30 iterations) started with ``command``, once it is writing its staged outputs into
    ``out``: the process and its staging directory's name."""
    job = subprocess.Popen(
        command + ["--set", "tune.grid.maxIter=[30]"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # wait until the run is writing its staged outputs
        staging = [p for p in os.listdir(out) if p.startswith(".staging-")]
        if staging and (out / staging[0] / "ratings").exists():
            return job, staging[0]
        time.sleep(0.2)
    job.kill()
    pytest.fail("the pipeline never started writing")


def shared_run_command(job: str, argv: list[str], out) -> list[str]:
    """``job`` with the shared run's settings (``argv``) in a fresh process, writing to ``out``, in local mode
    without MLflow tracking."""
    settings = sets(f"output.dir={out}", "spark.master=local[2]", "tracking.mlflow=false")
    return [sys.executable, "-m", "jester_als.cli", job, *argv[1:], *settings]


def test_sigterm_stops_cleanly_and_keeps_the_previous_outputs(pipeline_run, tmp_path):
    """SIGTERM while a pipeline writes its staged outputs over a previous run's (a copy of the shared run)."""
    import shutil

    done, _, argv = pipeline_run
    out = tmp_path / "out"
    shutil.copytree(done, out)
    before = (out / "metrics.json").read_bytes()
    ratings_before = sorted(os.listdir(out / "ratings"))
    model_before = sorted(p.relative_to(out) for p in (out / "model").rglob("*"))

    job, _ = pipeline_writing(shared_run_command("pipeline", argv, out), out)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 143, err[-2000:]
    assert "terminated; nothing was replaced" in err
    assert not [p for p in os.listdir(out) if p.startswith(".staging-")]
    assert (out / "metrics.json").read_bytes() == before
    assert sorted(os.listdir(out / "ratings")) == ratings_before
    assert sorted(p.relative_to(out) for p in (out / "model").rglob("*")) == model_before


def test_a_killed_runs_staging_and_checkpoint_directories_are_removed_by_the_next_run(pipeline_run, tmp_path):
    """SIGKILL leaves a run's staging directory in output.dir and its checkpoint directory in the temp dir (no
    handler runs); the next run on the same directory removes both, says so, and never touches a live run's."""
    import shutil

    done, _, argv = pipeline_run
    out = tmp_path / "out"
    shutil.copytree(done, out)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    job, staging = pipeline_writing(shared_run_command("pipeline", argv, out), out, env)
    checkpoints = [p for p in os.listdir(scratch) if p.startswith("jester-als-checkpoint-")]
    job.kill()
    job.communicate(timeout=60)
    assert (out / staging).exists() and checkpoints and (scratch / checkpoints[0]).exists()  # left behind
    # a live run's staging directory (its owner lock held by this process) must survive the sweep
    from jester_als import owner

    live = out / ".staging-live"
    live.mkdir()
    owner.claim(str(live))
    try:
        after = subprocess.run(
            shared_run_command("prepare", argv, out), capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
        )
    finally:
        owner.release(str(live))
    assert after.returncode == 0, after.stderr[-2000:]
    assert not (out / staging).exists() and not (scratch / checkpoints[0]).exists()
    assert live.exists()
    assert "left by runs that no longer run" in after.stderr and staging in after.stderr
    manifest = json.loads((out / "metrics.json").read_text())["run"]
    assert manifest["removed_stale_staging"] == [str(out / staging)]
