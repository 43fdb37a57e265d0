"""Real Spark services on 127.0.0.1, started from the installed pyspark: a standalone master and worker, and a
Spark Connect server. Used by ``make cluster-demo``, ``make connect-server`` and the tests that need them.

The pip package ships no start scripts for the standalone daemons, but ``bin/spark-class`` runs their main
classes; the Connect server is ``spark-submit --class ...SparkConnectServer``. Every process is stopped again
when the context exits, on success or failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct free ports: all bound at once, so the OS cannot hand the same one out twice."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def child_env() -> dict:
    env = dict(os.environ)
    env.setdefault("SPARK_LOCAL_IP", HOST)
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env.pop("SPARK_REMOTE", None)
    return env


def _wait_until(check, *, timeout: float, what: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{what} exited with status {process.returncode}; see {log_path}:\n"
                + log_path.read_text(errors="replace")[-2000:]
            )
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(
        f"{what} not ready after {timeout:.0f} s; see {log_path}:\n" + log_path.read_text(errors="replace")[-2000:]
    )


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _stop(process: subprocess.Popen | None, name: str) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop on SIGTERM; killing it", name)
        process.kill()
        process.wait(timeout=10)


def _start(args: list[str], log_path: Path) -> subprocess.Popen:
    handle = open(log_path, "wb")
    try:
        return subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True)
    finally:
        handle.close()


@contextmanager
def standalone_cluster(workdir: str | Path, *, cores: int = 2, memory: str = "2g", timeout: float = 90):
    """A standalone master and one worker; yields the master URL (``spark://127.0.0.1:PORT``)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    spark_class = str(spark_home() / "bin" / "spark-class")
    port, ui_port, worker_ui = free_ports(3)
    master = worker = None
    try:
        master_log = workdir / "master.log"
        master = _start(
            [
                spark_class,
                "org.apache.spark.deploy.master.Master",
                "--host",
                HOST,
                "--port",
                str(port),
                "--webui-port",
                str(ui_port),
            ],
            master_log,
        )

        url = f"spark://{HOST}:{port}"

        def master_state() -> dict:
            """The master's JSON status; {} until it answers as our master (another service that took the
            port, or a page that is not JSON yet, counts as not ready)."""
            # If the UI port was taken meanwhile, the master moves to the next one and logs where it went.
            found = re.search(r"MasterWebUI.*started at http://[^:/]+:(\d+)", master_log.read_text(errors="replace"))
            port_now = int(found.group(1)) if found else ui_port
            with urllib.request.urlopen(f"http://{HOST}:{port_now}/json/", timeout=2) as response:
                try:
                    state = json.load(response)
                except ValueError:
                    return {}
            return state if state.get("url") == url else {}

        _wait_until(
            lambda: master_state().get("status") == "ALIVE",
            timeout=timeout,
            what="Spark master",
            process=master,
            log_path=master_log,
        )
        worker_log = workdir / "worker.log"
        worker = _start(
            [
                spark_class,
                "org.apache.spark.deploy.worker.Worker",
                url,
                "--host",
                HOST,
                "--cores",
                str(cores),
                "--memory",
                memory,
                "--webui-port",
                str(worker_ui),
                "--work-dir",
                str(workdir / "work"),
            ],
            worker_log,
        )
        _wait_until(
            lambda: any(w.get("state") == "ALIVE" for w in master_state().get("workers", [])),
            timeout=timeout,
            what="Spark worker",
            process=worker,
            log_path=worker_log,
        )
        log.info("standalone cluster up: %s (1 worker, %d cores, %s)", url, cores, memory)
        yield url
    finally:
        _stop(worker, "Spark worker")
        _stop(master, "Spark master")


@contextmanager
def connect_server(
    workdir: str | Path,
    *,
    master: str = "local[2]",
    timeout: float = 120,
    extra_conf: dict | None = None,
    checkpoints: bool = True,
    server: list | None = None,
):
    """A Spark Connect server; yields its URL (``sc://127.0.0.1:PORT``). ``checkpoints=False`` starts it
    without a checkpoint directory, as a server the job cannot configure; ``server``, when given, receives
    the server's process (tests kill it)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = {
        "spark.connect.grpc.binding.port": str(port),
        "spark.connect.grpc.binding.address": HOST,
        "spark.ui.enabled": "false",
        "spark.sql.shuffle.partitions": "4",
        "spark.log.level": "WARN",
    }
    if checkpoints:
        conf["spark.checkpoint.dir"] = str(workdir / "checkpoints")
    conf.update(extra_conf or {})
    args = [
        str(spark_home() / "bin" / "spark-submit"),
        "--master",
        master,
        "--class",
        "org.apache.spark.sql.connect.service.SparkConnectServer",
    ]
    for key, value in conf.items():
        args += ["--conf", f"{key}={value}"]
    args.append("spark-internal")
    server_log = workdir / "connect-server.log"
    process = _start(args, server_log)
    if server is not None:
        server.append(process)
    try:
        _wait_until(
            lambda: _port_open(port), timeout=timeout, what="Spark Connect server", process=process, log_path=server_log
        )
        url = f"sc://{HOST}:{port}"
        log.info("Spark Connect server up: %s (%s)", url, master)
        yield url
    finally:
        _stop(process, "Spark Connect server")


def spark_submit(
    master: str,
    job: str,
    conf_file: str,
    overrides: list[str],
    *,
    dist: str = "dist",
    cwd: str | None = None,
    timeout: float = 900,
    submit_args: tuple[str, ...] = (),
) -> subprocess.CompletedProcess:
    """Run the packaged job (``dist/jobs/<job>.py`` with ``dist/jester_als.zip``) with the real spark-submit,
    shipping the config with ``--files``; ``submit_args`` go to spark-submit itself (``--archives``, ``--conf``)."""
    return subprocess.run(
        submit_command(master, job, conf_file, overrides, dist=dist, submit_args=submit_args),
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=cwd,
        timeout=timeout,
    )


def submit_command(
    master: str,
    job: str,
    conf_file: str,
    overrides: list[str],
    *,
    dist: str = "dist",
    submit_args: tuple[str, ...] = (),
) -> list[str]:
    dist_path = Path(dist).resolve()
    args = [
        str(spark_home() / "bin" / "spark-submit"),
        "--master",
        master,
        "--py-files",
        str(dist_path / "jester_als.zip"),
        "--files",
        str(Path(conf_file).resolve()),
        "--conf",
        "spark.ui.enabled=false",
        *submit_args,
        str(dist_path / "jobs" / f"{job}.py"),
        "--conf",
        conf_file,
    ]
    for item in overrides:
        args += ["--set", item]
    return args


def demo(argv: list[str] | None = None) -> int:
    """Start a standalone cluster, submit the packaged pipeline to it, check the outputs, stop the cluster."""
    parser = argparse.ArgumentParser(prog="python -m jester_als.localcluster demo")
    parser.add_argument("--conf", default="conf/local.yaml")
    parser.add_argument("--dist", default="dist")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--output", default="output/cluster-demo")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    if not (Path(args.dist) / "jester_als.zip").exists():
        print(f"{args.dist}/jester_als.zip is missing: run `make package` first", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="jester-als-cluster-"))
    output = str(Path(args.output).resolve())
    try:
        with standalone_cluster(workdir) as master:
            started = time.perf_counter()
            result = spark_submit(
                master,
                "pipeline",
                args.conf,
                [f"output.dir={output}", f"spark.checkpoint_dir={workdir / 'checkpoints'}"] + args.overrides,
                dist=args.dist,
            )
            seconds = time.perf_counter() - started
            sys.stdout.write(result.stdout)
            if result.returncode != 0:
                sys.stderr.write(result.stderr[-5000:])
                print(f"cluster demo: spark-submit failed with status {result.returncode}", file=sys.stderr)
                return 1
        metrics = json.loads((Path(output) / "metrics.json").read_text())
        if metrics["run"]["master"] != master:
            print(f"cluster demo: the job ran on {metrics['run']['master']}, not {master}", file=sys.stderr)
            return 1
        missing = [
            p
            for p in ("model", "recommendations", "ratings", "rejected", "report.md")
            if not (Path(output) / p).exists()
        ]
        if missing:
            print(f"cluster demo: outputs missing under {output}: {missing}", file=sys.stderr)
            return 1
        print(
            f"cluster demo: pipeline on {master} finished in {seconds:.1f} s (spark-submit wall time); "
            f"test RMSE {metrics['spark_als']['test_rmse']:.4f}; outputs in {output}"
        )
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def serve_connect(argv: list[str] | None = None) -> int:
    """Run a local Spark Connect server in the foreground until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m jester_als.localcluster connect-server")
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    workdir = Path(tempfile.mkdtemp(prefix="jester-als-connect-"))
    try:
        with connect_server(workdir, master=args.master) as url:
            print(f"Spark Connect server at {url}; run jobs with --remote {url}. Ctrl-C stops it.", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    commands = {"demo": demo, "connect-server": serve_connect}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(f"usage: python -m jester_als.localcluster {{{','.join(commands)}}} [options]", file=sys.stderr)
        sys.exit(2)
    sys.exit(commands[sys.argv[1]](sys.argv[2:]))
