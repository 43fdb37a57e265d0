"""How the job is really run: the wheel entry point as Databricks calls it, two tasks at once on one output
directory, and `make submit` from a clone without anything activated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from py4j.protocol import Py4JError

import jester_als.tune
from helpers import EXCERPT, PIPELINE_TOP_N, WHITELIST_ERROR, job_argv, sets
from jester_als.cli import main

ROOT = Path(__file__).resolve().parents[1]


def call_wheel_entry_point(monkeypatch, parameters: list[str]):
    """What a Databricks python_wheel_task does (databricks/cli, bundle/trampoline/python_wheel.go): find the
    entry point in the installed distribution's metadata, put the parameters in sys.argv after the package
    name, call it with no arguments and ignore what it returns. Returns the SystemExit status, or None when
    the call returned normally."""
    entry = [ep for ep in metadata.distribution("jester_als").entry_points if ep.name == "jester-als"]
    assert entry, "the jester-als entry point is not in the installed metadata"
    monkeypatch.setattr(sys, "argv", ["jester_als", *parameters])
    try:
        entry[0].load()()
    except SystemExit as exc:
        return exc.code
    return None


def test_wheel_entry_point_fails_the_task_on_a_config_error(monkeypatch, tmp_path, capsys):
    status = call_wheel_entry_point(
        monkeypatch,
        job_argv("tune", "tune.grid.rank=five", out=tmp_path),
    )
    assert status == 2
    assert "tune.grid.rank" in capsys.readouterr().err


def test_wheel_entry_point_fails_the_task_on_a_missing_input(monkeypatch, tmp_path, capsys):
    missing = tmp_path / "nowhere.csv"
    status = call_wheel_entry_point(
        monkeypatch,
        job_argv("prepare", path=missing, out=tmp_path),
    )
    assert status == 1
    assert str(missing) in capsys.readouterr().err


def test_wheel_entry_point_fails_the_task_when_als_is_refused(monkeypatch, small_table, tmp_path, capsys):
    def refuse(*args, **kwargs):  # what Databricks shared compute raises (needs a workspace for real)
        raise Py4JError(WHITELIST_ERROR)

    monkeypatch.setattr(jester_als.tune, "ALS", refuse)
    path, _ = small_table
    status = call_wheel_entry_point(
        monkeypatch,
        job_argv("pipeline", path=path, out=tmp_path / "out"),
    )
    assert status == 1
    assert "not whitelisted" in capsys.readouterr().err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_wheel_entry_point_returns_normally_on_success(monkeypatch, spark, small_table, tmp_path):
    path, _ = small_table
    out = tmp_path / "out"
    status = call_wheel_entry_point(
        monkeypatch,
        job_argv("prepare", path=path, out=out),
    )
    assert status is None
    assert json.loads((out / "metrics.json").read_text())["data"]["ratings"] > 0
    assert spark.range(3).count() == 3  # the session the job joined is still usable: the job did not stop it


def test_console_script_exits_with_the_status(tmp_path):
    script = Path(sys.executable).with_name("jester-als")
    result = subprocess.run(
        [str(script), *job_argv("tune", "split.test_fraction=2", conf=str(ROOT / "conf" / "local.yaml"))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "split.test_fraction" in result.stderr


def test_baseline_and_recommend_at_once_on_one_output_dir_keep_both_sections(pipeline_run, tmp_path):
    """Databricks runs both right after tune, on one output.dir: each merges its sections into metrics.json
    under the directory's lock, so neither section is lost and report.md shows both. Starts from a copy of the
    shared pipeline run with the two jobs' sections taken out."""
    import shutil

    done, _, argv = pipeline_run
    out = tmp_path / "out"
    shutil.copytree(done, out)
    metrics = json.loads((out / "metrics.json").read_text())
    for section in ("numpy_als", "baselines", "recommendations"):
        del metrics[section]
    (out / "metrics.json").write_text(json.dumps(metrics))
    shutil.rmtree(out / "recommendations")
    (out / "report.md").unlink()
    common = [*argv[1:], "--set", f"output.dir={out}", "--set", "tracking.mlflow=false"]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    jobs = {
        job: subprocess.Popen(
            [sys.executable, "-m", "jester_als.cli", job, *common, "--set", "spark.conf={spark.ui.enabled: false}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for job in ("baseline", "recommend")
    }
    for job, process in jobs.items():
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, f"{job}:\n{output[-3000:]}"
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"data", "spark_als", "numpy_als", "baselines", "recommendations"} <= set(metrics)
    assert metrics["recommendations"]["top_n"] == PIPELINE_TOP_N
    assert metrics["numpy_als"]["rows"] > 0
    report = (out / "report.md").read_text()
    assert "## Engines on the same held-out ratings" in report and "Recommendations" in report
    assert not [p for p in os.listdir(out) if p.startswith(".staging-")]


@pytest.mark.cluster
def test_make_submit_works_from_a_clone_without_activating_anything(small_table, tmp_path):
    path, params = small_table
    out = tmp_path / "out"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "SPARK_HOME")
    }
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(str(ROOT / ".venv")))
    # prepare, the cheapest job: what is under test is the packaging and spark-submit's environment (the
    # pipeline through spark-submit runs in tests/test_everywhere.py, on a standalone cluster).
    args = " ".join(f"'{a}'" for a in ["--set", f"input.path={path}", "--set", f"output.dir={out}"])
    result = subprocess.run(
        ["make", "--no-print-directory", "submit", "MASTER=local[2]", "JOB=prepare", f"ARGS={args}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["master"] == "local[2]" and metrics["run"]["job"] == "prepare"
    assert metrics["data"]["users"] == params.users and (out / "ratings").is_dir()


def test_every_registered_job_has_its_entry_script_and_nothing_else_does():
    from jester_als.registry import JOBS

    scripts = {path.stem: path.read_text() for path in (ROOT / "jobs").glob("*.py")}
    assert set(scripts) == set(JOBS)
    for name, text in scripts.items():
        assert f'main(["{name}", *sys.argv[1:]])' in text, name


def test_every_job_in_the_table_names_a_function_that_exists_and_what_it_reports_is_a_section():
    """The CLI runs whatever the table names: a misspelt target would fail only when that job is run."""
    import importlib
    import inspect

    from jester_als.registry import JOBS

    arguments = {(False, True): 1, (True, False): 2, (True, True): 3}  # (spark, staged) -> run's arguments
    for job in JOBS.values():
        module, _, name = job.target.partition(":")
        function = getattr(importlib.import_module(module), name)
        assert len(inspect.signature(function).parameters.values()) >= arguments[job.spark, job.staged], job.name
        assert set(job.reports) <= {"als_engine", "spark_als", "baselines", "recommendations", "foldin"}, job.name


@pytest.mark.parametrize(
    "job,missing",
    [
        ("tune", "ratings/ (written by prepare)"),
        ("recommend", "model/ (written by tune)"),
        ("baseline", "ratings/ (written by prepare), model/ (written by tune)"),
    ],
)
def test_a_job_run_before_the_one_it_needs_says_so_once_before_spark_starts(job, missing, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "jester_als.cli", *job_argv(job, out=tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.count(missing) == 1, result.stderr
    assert "Exception" not in result.stderr and "Traceback" not in result.stderr
    assert "Spark" not in result.stderr  # refused before a session was started


def test_checkpoint_dirs_the_job_creates_are_removed_on_success_and_failure(quiet_prepare, tmp_path):
    _, stderr, scratch = quiet_prepare  # a successful prepare with TMPDIR=scratch
    assert f"checkpoint dir {scratch}/jester-als-checkpoint-" in stderr  # made there ...
    assert not list(scratch.glob("jester-als-checkpoint-*"))  # ... and removed
    failed = subprocess.run(
        [
            sys.executable,
            "-m",
            "jester_als.cli",
            *job_argv("prepare", "input.path=/nowhere/jester.csv", out=tmp_path / "bad"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(scratch)},
        timeout=300,
    )
    assert failed.returncode == 1 and "/nowhere/jester.csv" in failed.stderr, failed.stderr[-2000:]
    assert f"checkpoint dir {scratch}/jester-als-checkpoint-" in failed.stderr
    assert not list(scratch.glob("jester-als-checkpoint-*"))


def test_version_is_the_package_version(capsys):
    import jester_als

    assert main(["--version"]) == 0
    assert (
        capsys.readouterr().out.strip()
        == f"jester-als {jester_als.__version__}"
        == f"jester-als {metadata.version('jester-als')}"
    )


def test_check_job_validates_config_and_header_without_running_anything(spark, small_table, tmp_path, capsys):
    path, params = small_table
    out = tmp_path / "out"
    assert main(job_argv("check", conf=None, path=path, out=out)) == 0
    said = capsys.readouterr().out
    assert f"jokes {params.jokes}" in said and "is valid" in said
    assert not out.exists()  # nothing written

    bad = tmp_path / "bad.csv"
    bad.write_text("User,1,two,3\n1,2.5,3.0,4.0\n")
    assert main(job_argv("check", conf=None, path=bad, out=out)) == 1
    assert "joke column(s) ['two'] are not integer joke ids" in capsys.readouterr().err
    assert main(job_argv("check", "split.test_fraction=2", conf=None, path=bad)) == 2
    assert "split.test_fraction" in capsys.readouterr().err


def test_progress_logs_the_step_a_heartbeat_and_the_end():
    import logging
    import time

    from jester_als.progress import step

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("jester_als.progress")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with step(2, 4, "tune: 9 grid points", heartbeat=0.05):
            deadline = time.monotonic() + 30
            while sum("so far" in r for r in records) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        logger.removeHandler(handler)
    assert records[0] == "step 2/4: tune: 9 grid points"
    assert sum(r.startswith("step 2/4: tune: 9 grid points, ") and r.endswith(" s so far") for r in records) >= 2
    assert records[-1].startswith("step 2/4: tune: 9 grid points done in ")


def test_job_logging_leaves_the_hosts_root_logger_alone(tmp_path, capsys):
    import logging

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.name)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        assert (
            main(
                job_argv(
                    "generate", "generate.users=30", f"generate.path={tmp_path / 'g.csv'}", "log_level=DEBUG", conf=None
                )
            )
            == 0
        )
    finally:
        root.removeHandler(handler)
    assert not [name for name in seen if name.startswith("jester_als")]
    assert "INFO jester_als: generate: 30 users x 100 jokes" in capsys.readouterr().err  # the job's own lines
    assert logging.getLogger().level == logging.WARNING  # the host's level, untouched


def test_a_local_run_names_its_spark_ui_and_it_answers(tmp_path):
    """The job logs the UI's address for a session it starts on this machine, and the address is the UI's
    (Spark moves to another port when 4040 is taken, so the port is chosen up front): fetched while the
    session is up, in a fresh process. The driver JVM it starts runs with ``spark.local_java_options`` (read
    from the JVM's own command line) and the local page size."""
    script = (
        "import io, logging, os, re, subprocess, urllib.request\n"
        "from jester_als.config import SparkConfig\n"
        "from jester_als.session import build_session, release_session\n"
        "buffer = io.StringIO()\n"
        "handler = logging.StreamHandler(buffer)\n"
        "log = logging.getLogger('jester_als'); log.addHandler(handler); log.setLevel(logging.INFO)\n"
        "options = ['-XX:+UseParallelGC', '-XX:FreqInlineSize=90']\n"
        "cfg = SparkConfig(app_name='ui-test', log_level='WARN', local_java_options=options)\n"
        "spark, created = build_session(cfg, master='local[1]')\n"
        "try:\n"
        "    url = re.search(r'Spark UI: (http://\\S+)', buffer.getvalue()).group(1)\n"
        "    page = urllib.request.urlopen(url + '/jobs/', timeout=30).read().decode()\n"
        "    table = subprocess.run(['ps', '-A', '-ww', '-o', 'ppid=,args='], capture_output=True, text=True)\n"
        "    rows = [line.split(None, 1) for line in table.stdout.splitlines() if line.strip()]\n"
        "    java = [row[1].split() for row in rows if len(row) == 2 and row[0] == str(os.getpid())]\n"
        "    given = any('-XX:FreqInlineSize=90' in argv and '-XX:+UseParallelGC' in argv for argv in java)\n"
        "    print(url, 'ui-test' in page, given, spark.conf.get('spark.buffer.pageSize'))\n"
        "finally:\n"
        "    release_session(spark, created)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    url, found, given, page_size = done.stdout.split()[-4:]
    assert url.startswith("http://localhost:") and found == "True", done.stdout
    assert given == "True", done.stdout  # the driver JVM's own argv holds the configured options
    assert page_size == "2m"


DEPRECATED = "The SQL config 'spark.sql.execution.arrow.enabled' has been deprecated"


def _prepare_excerpt(cwd, out, *flags, env=None) -> str:
    """``prepare`` of the real excerpt in a fresh process from ``cwd`` (no conf/ there: the packaged default),
    setting a deprecated SQL option, which Spark warns about every time it is set; returns its stderr."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jester_als.cli",
            "prepare",
            *flags,
            "--set",
            f"input.path={EXCERPT}",
            "--set",
            f"output.dir={out}",
            "--set",
            "spark.conf={spark.sql.execution.arrow.enabled: true}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr


@pytest.fixture(scope="module")
def quiet_prepare(tmp_path_factory):
    """One default (not verbose) prepare with its own TMPDIR: (its output dir, stderr, the TMPDIR)."""
    where = tmp_path_factory.mktemp("quiet")
    scratch = where / "tmp"
    scratch.mkdir()
    stderr = _prepare_excerpt(where, where / "out", env={**os.environ, "TMPDIR": str(scratch)})
    return where / "out", stderr, scratch


def test_spark_warnings_go_to_a_log_file_unless_verbose(quiet_prepare, tmp_path):
    """A local run keeps Spark's own warnings out of the console and in output.dir/spark.log; with -v the
    console shows them too."""
    out, quiet, _ = quiet_prepare
    assert DEPRECATED not in quiet and f"Spark's own warnings: {out / 'spark.log'}" in quiet
    assert DEPRECATED in (out / "spark.log").read_text()
    assert DEPRECATED in _prepare_excerpt(tmp_path, tmp_path / "verbose", "-v")


def test_without_java_the_job_says_what_spark_needs_and_leaves_nothing(tmp_path):
    """pip installs the package on a machine without Java: Spark's launcher fails before Spark exists. The job
    says so in a line (exit 1, no traceback) and leaves no checkpoint directory behind."""
    no_java = tmp_path / "bin"
    no_java.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):  # every command this machine has but java
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if name != "java" and not os.path.lexists(no_java / name):
                    (no_java / name).symlink_to(Path(folder) / name)
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env.update(PATH=str(no_java), TMPDIR=str(tmp_path))
    argv = [
        sys.executable,
        "-m",
        "jester_als.cli",
        "prepare",
        *sets(f"input.path={EXCERPT}", f"output.dir={tmp_path}/out"),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1, done.stderr
    assert (
        "jester-als prepare: Spark could not start its Java process: no java on the PATH and no JAVA_HOME. "
        "Spark 4 needs Java 17 or 21." in done.stderr
    )
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.glob("jester-als-checkpoint-*"))
    env["JAVA_HOME"] = str(tmp_path / "jdk")
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1 and f"JAVA_HOME is {tmp_path / 'jdk'}, which has no bin/java." in done.stderr
