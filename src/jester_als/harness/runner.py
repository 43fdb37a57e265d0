"""Runs a worker for one engine and point: samples the resident memory of its whole process tree, stops it at
the time or memory budget, and reads back its result."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from jester_als.harness.worker import WorkerSpec
from jester_als.progress import HEARTBEAT_SECONDS

log = logging.getLogger("jester_als.scale")


def run_worker(
    spec: WorkerSpec,
    *,
    memory_budget_mb: float,
    time_budget_seconds: float,
    keep_log_in: Path | None = None,
    keep_all_logs: bool = False,
    name: str | None = None,
) -> dict:
    """Run one engine on one point in a fresh process; sample the tree's RSS; enforce the budgets; every
    ``HEARTBEAT_SECONDS`` log the time so far and the memory now. The worker's log is copied into
    ``keep_log_in`` (the job's output directory) and named in the result when it fails, or always with
    ``keep_all_logs``. ``name`` tells apart several runs of one engine on one point (default: point-engine)."""
    data_dir = Path(spec.data_dir)
    label = name or f"{data_dir.name}-{spec.engine}"
    spec_file = data_dir / f"{label}-spec.json"
    result_file = Path(spec.result_file)
    spec.write(spec_file)
    args = [sys.executable, "-m", "jester_als.harness.worker", str(spec_file)]
    env = dict(os.environ, SPARK_LOCAL_IP=os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"))
    started = time.perf_counter()
    log_path = data_dir / f"{label}-worker.log"
    with open(log_path, "wb") as log_file:  # a file, not a pipe: a chatty worker must never block on it
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log_file, env=env)
    watch = _Watch(
        process, started, memory_budget_mb, time_budget_seconds, f"{spec.engine} worker ({name or data_dir.name})"
    )
    limit = watch.until_done()
    wall = time.perf_counter() - started
    failed_run = bool(limit or process.returncode != 0 or not result_file.exists())
    kept = None
    if keep_log_in is not None and (failed_run or keep_all_logs):
        keep_log_in.mkdir(parents=True, exist_ok=True)
        kept = keep_log_in / f"{label}-worker.log"
        shutil.copyfile(log_path, kept)
    if failed_run:
        limit = limit or failure(process.returncode, log_path.read_text(errors="replace"))
        result = {"completed": False, "limit": limit, "peak_rss_mb": watch.peak / 2**20, "wall_seconds": wall}
    else:
        result = json.loads(result_file.read_text())
        result.update(completed=True, peak_rss_mb=watch.peak / 2**20, wall_seconds=wall)
        if result.get("seconds"):
            result["fit_seconds"] = float(np.median(result["seconds"]))
    if kept is not None:
        result["log"] = str(kept)
    return result


class _Watch:
    """A worker's process tree watched every 0.1 s: its peak resident memory, a heartbeat line every
    ``HEARTBEAT_SECONDS``, and the tree killed at the first budget it exceeds."""

    def __init__(
        self, process: subprocess.Popen, started: float, memory_budget_mb: float, time_budget_seconds: float, label: str
    ):
        import psutil

        self.process, self.root, self.started, self.label = process, psutil.Process(process.pid), started, label
        self.memory_budget_mb, self.time_budget_seconds = memory_budget_mb, time_budget_seconds
        self.peak = 0

    def rss(self) -> int:
        import psutil

        try:
            return sum(p.memory_info().rss for p in self.tree() if p.is_running())
        except psutil.Error:
            return 0

    def tree(self) -> list:
        return [self.root] + self.root.children(recursive=True)

    def until_done(self) -> str | None:
        """Wait for the worker; the budget it exceeded (it is killed then), or None."""
        next_beat = HEARTBEAT_SECONDS
        while self.process.poll() is None:
            rss = self.rss()
            self.peak = max(self.peak, rss)
            elapsed = time.perf_counter() - self.started
            if elapsed >= next_beat:
                log.info(
                    "    %s: %.0f s so far, %s MB now, peak %s MB",
                    self.label,
                    elapsed,
                    f"{rss / 2**20:,.0f}",
                    f"{self.peak / 2**20:,.0f}",
                )
                next_beat += HEARTBEAT_SECONDS
            limit = self.exceeded(rss, elapsed)
            if limit:
                self.kill()
                return limit
            time.sleep(0.1)
        return None

    def exceeded(self, rss: int, elapsed: float) -> str | None:
        if rss > self.memory_budget_mb * 2**20:
            return f"memory: {rss / 2**20:,.0f} MB > budget {self.memory_budget_mb:,} MB"
        if elapsed > self.time_budget_seconds:
            return f"time: {elapsed:,.0f} s > budget {self.time_budget_seconds:,} s"
        return None

    def kill(self) -> None:
        import psutil

        for p in reversed(self.tree()):
            try:
                p.kill()
            except psutil.Error:
                pass
        self.process.wait()


def failure(returncode: int, log: str) -> str:
    """Why a worker failed, from its log: out of memory names the first line that says which memory ran out
    ("java.lang.OutOfMemoryError: Java heap space"; the end of a Spark worker's log is py4j losing its JVM,
    which says nothing of why); any other failure quotes the log's end."""
    said = next((line.strip() for line in log.splitlines() if "OutOfMemory" in line or "MemoryError" in line), None)
    return (
        f"out of memory: exit {returncode}: {said[-300:]}"
        if said
        else f"failed: exit {returncode}: {log.strip()[-300:]}"
    )


def machine_memory_gb() -> float:
    import psutil

    return psutil.virtual_memory().total / 2**30
