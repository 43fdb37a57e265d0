"""The scaling study run end to end on a tiny grid: every output and field, the budget stop, a worker that runs out
of heap."""

from __future__ import annotations

import json
import sys

import pytest

from helpers import job_argv
from jester_als.cli import main
from jester_als.scale.costmodel import ENGINES

TINY = [
    "scale.users_axis=[300, 1200]",
    "scale.jokes_axis=[40]",
    "scale.density_axis=[10, 25]",
    "scale.density_axis_users=300",
    "scale.density_axis_jokes=60",
    "scale.cluster_measure_users=[300, 600, 1200]",
    "scale.cluster_measure_executors=[2]",
    "scale.cluster_worker_memory=2g",
    "scale.cluster_executor_memory=512m",
    "scale.jokes_axis_users=300",
    "scale.jokes_axis_ratings_per_user=20",
    "scale.maxIter=3",
    "scale.rank=3",
    "scale.repeats=2",
    "scale.spark_driver_memory=1g",
    "generate.min_ratings=20",
    "generate.mean_ratings=30",
    # no limit probes: at a 20 GB budget they would be millions of users (test_limit_probes_* covers them)
    "scale.limit_probes=[]",
]


def run_scale(tmp_path, *extra):
    out = tmp_path / "scale"
    assert main([*job_argv("scale", f"scale.work_dir={tmp_path}", *TINY, conf="conf/scale.yaml", out=out), *extra]) == 0
    return out, json.loads((out / "scale.json").read_text())


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """The study on the tiny grid, run once for this module: its output dir, scale.json, and what it logged
    (with the heartbeat shortened from the study's 20 s to 1 s)."""
    import contextlib
    import io

    import jester_als.harness.runner

    logged = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(logged):
        patch.setattr(jester_als.harness.runner, "HEARTBEAT_SECONDS", 1.0)
        out, study = run_scale(tmp_path_factory.mktemp("tiny"))
    return out, study, logged.getvalue()


# The tiny study measures the cluster side on a real standalone cluster: every test of it is a cluster test.


@pytest.mark.cluster
def test_the_study_says_where_it_is_while_it_runs(tiny_study):
    _, _, logged = tiny_study
    # a running worker is never silent: its time and memory so far, every heartbeat (a Spark worker takes > 2 s)
    assert "spark worker (users-300x100): 1 s so far" in logged
    # a line per point with its index, the time so far and (after the first) the time left
    assert "scale point 1/5 (users axis, 300 x 100); 0.0 min so far, time left known after two points" in logged
    assert "scale point 5/5 (jokes axis, 300 x 40)" in logged and " min left" in logged


@pytest.mark.cluster
def test_both_engines_fit_every_point_of_every_axis(tiny_study):
    out, study, _ = tiny_study
    assert [(p["axis"], p["users"], p["jokes"]) for p in study["points"]] == [
        ("users", 300, 100),
        ("users", 1200, 100),
        ("density", 300, 60),
        ("density", 300, 60),
        ("jokes", 300, 40),
    ]
    density = [p for p in study["points"] if p["axis"] == "density"]
    assert 8 < density[0]["ratings"] / 300 < 12 and 22 < density[1]["ratings"] / 300 < 28  # ratings per user
    point_noise = 4.4  # the generator's default noise, which the scale study keeps
    for point in study["points"]:
        assert point["train_ratings"] + point["test_ratings"] == point["ratings"] > 0
        for engine in ENGINES:
            result = point["engines"][engine]
            assert result["completed"], result
            # fit time inside the worker's wall time; a worker process holds at least an interpreter (50 MB)
            assert 0 < result["fit_seconds"] < result["wall_seconds"]
            assert result["peak_rss_mb"] > 50 and 0 < result["rmse"] < 3 * point_noise
            assert result["log"].startswith(str(out / "worker-logs")) and (out / "worker-logs").is_dir()
    # every worker's log is kept; a Spark worker's holds its JVM's own lines
    assert "WARNING: Using incubator modules" in open(study["points"][0]["engines"]["spark"]["log"]).read()
    assert len(study["points"][0]["engines"]["numpy"]["seconds"]) == 2  # repeated where cheap


@pytest.mark.cluster
def test_five_points_fit_a_cost_model_and_say_none_is_left_to_check_it(tiny_study):
    _, study, _ = tiny_study
    for engine in ENGINES:
        entry = study["cost_model"][engine]
        assert entry["fitted"] and entry["checks"] == [] and "holding two out" in entry["checks_skipped"]
        limits = study["limits"][engine]
        assert limits["largest_fitted"]["users"] == 1200 and limits["first_not_fitted"] is None


@pytest.mark.cluster
def test_spark_says_its_heap_held_every_cached_block(tiny_study):
    _, study, _ = tiny_study
    # Spark's own account of its memory: the cached training ratings in storage memory, none of it on disk at
    # these sizes, so its heap held everything up to the largest
    for point in study["points"]:
        signals = point["engines"]["spark"]["spark_memory"]
        assert signals["storage_memory_peak_mb"] > 0 and signals["storage_disk_peak_mb"] == 0
        assert signals["spilled_mb"] == 0 and 0 <= signals["gc_share"] < 1
    held = study["limits"]["spark"]["in_memory"]
    assert held["largest_held"]["users"] == 1200 and held["first_on_disk"] is None
    # Spark's own figure (its block manager's maxMemory): UnifiedMemoryManager's (maxMemory of the JVM - 300 MB)
    # x 0.6, at most the rule for the nominal 1g heap; under the tests' ParallelGC the JVM's maxMemory leaves out a
    # survivor space (366 MB here against 434 MB), which is why the study reads the figure from Spark
    assert held["storage_model"]["unified_memory_from"] == "Spark's maxMemory"
    assert 0.75 * (1024 - 300) * 0.6 < held["storage_model"]["unified_memory_mb"] <= (1024 - 300) * 0.6 + 0.01


@pytest.mark.cluster
def test_scale_md_and_the_plot_are_written(tiny_study):
    out, study, _ = tiny_study
    assert [p["name"] for p in study["predictions"]][0] == "real Jester (dataset 1)"
    markdown = (out / "scale.md").read_text()
    assert "| users | 1,200 | 100 |" in markdown and "Crossover on the density axis" in markdown
    assert "## Cost model" in markdown and "## Predictions" in markdown and "## Single-machine limits" in markdown
    assert "every size on the axis fitted, so the measured limit lies beyond it" in markdown
    assert "its heap held every cached block up to 1,200 users, and nothing spilled" in markdown
    assert "no held-out check: 5 completed points" in markdown
    assert "In the cluster column the time is arithmetic, not measurement" in markdown
    assert "## Measured on a standalone cluster" in markdown
    assert (out / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.cluster
def test_the_cluster_side_is_measured_by_spark_itself(tiny_study):
    out, study, _ = tiny_study
    # the cluster side measured by Spark itself: shuffle bytes per iteration grow with the data, two executors
    # each report a peak, and the model fitted on two sizes is checked on the third
    cluster = study["cluster"]["measurements"]
    assert [(m["users"], m["executors"]) for m in cluster] == [(300, 2), (600, 2), (1200, 2)]
    # one application per executor count fitted every size: one worker log for it, a 3- and a 1-iteration fit
    assert sorted(p.name for p in (out / "worker-logs").glob("cluster-*")) == ["cluster-2-worker.log"]
    assert study["cluster"]["iterations"] == {"short": 1, "long": 3}
    shuffled = [m["shuffle_bytes_per_iteration"] for m in cluster]
    assert 0 < shuffled[0] < shuffled[1] < shuffled[2]
    assert all(len(m["executor_peaks_mb"]) == 2 and min(m["executor_peaks_mb"]) > 50 for m in cluster)
    model = study["cluster"]["model"]
    assert model["fitted"] and model["sizes_used"] == [cluster[0]["train_ratings"], cluster[1]["train_ratings"]]
    assert [c["train_ratings"] for c in model["checks"]] == [cluster[2]["train_ratings"]]


def test_budget_stop_records_the_limit_instead_of_crashing(tmp_path):
    scratch = tmp_path / "scratch" / "not-yet"  # a work_dir that does not exist is made, as output.dir is
    _, study = run_scale(
        tmp_path,
        "--set",
        "scale.memory_budget_mb=40",
        "--set",
        "scale.cluster_measure_users=[]",
        "--set",
        f"scale.work_dir={scratch}",
    )
    assert scratch.is_dir()
    first, later = study["points"][0], study["points"][1:]
    for engine in ENGINES:
        assert not first["engines"][engine]["completed"]
        assert first["engines"][engine]["limit"].startswith("memory: ")
        for point in later:
            if point["axis"] == "users":
                assert point["engines"][engine]["skipped"]
                assert "at a smaller size" in point["engines"][engine]["limit"]
        # the measured limit: nothing fitted, and the first size that did not, with its reason
        limits = study["limits"][engine]
        assert limits["largest_fitted"] is None and limits["first_not_fitted"]["users"] == 300
        assert limits["first_not_fitted"]["why"].startswith("memory: ")


@pytest.mark.cluster
def test_without_matplotlib_the_plot_is_skipped_and_said(tiny_study, tmp_path, monkeypatch):
    """The job's last step, writing the study, on the tiny study's results with matplotlib missing."""
    from jester_als.scale.study import write_study

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    study = json.loads((tiny_study[0] / "scale.json").read_text())
    out = tmp_path / "no-plot"
    write_study(study, str(out))
    assert study["plot"] is False and not (out / "scale.png").exists()
    assert json.loads((out / "scale.json").read_text())["plot"] is False
    assert "The plot was skipped: matplotlib is not installed." in (out / "scale.md").read_text()


# Spark's time uses the first three terms; NumPy's adds dense cells, sparse-path ratings and sparse-path jokes x
# blocks of users (costmodel._features).


def test_a_worker_out_of_its_heap_says_which_memory_ran_out():
    """A Spark worker whose JVM ran out of heap ends its log with py4j's lost connection; the recorded limit
    quotes the line that says why (lines from a 1g-heap Spark probe at 250,000 users on this machine)."""
    from jester_als.harness.runner import failure

    log = "\n".join(
        [
            'Setting Spark log level to "ERROR".',
            "26/11/29 19:51:27 ERROR Executor: Exception in task 0.0 in stage 8.0 (TID 11)",
            "java.lang.OutOfMemoryError: Java heap space",
            "\tat java.base/java.util.Arrays.copyOf(Arrays.java:3541)",
            "py4j.protocol.Py4JNetworkError: Answer from Java side is empty",
            "ConnectionRefusedError: [Errno 111] Connection refused",
        ]
    )
    assert failure(1, log) == "out of memory: exit 1: java.lang.OutOfMemoryError: Java heap space"
    assert failure(1, "Traceback ...\nValueError: bad spec\n") == "failed: exit 1: Traceback ...\nValueError: bad spec"
