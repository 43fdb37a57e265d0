"""Runs a worker for one engine and point: samples the resident memory of its whole process tree, stops it at
the time or memory budget, and reads back its result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from jester_als.scale.worker import WorkerSpec


def run_worker(engine: str, data_dir: Path, cfg: dict, repeats: int) -> dict:
    """Run one engine on one point in a fresh process; sample the tree's RSS; enforce the budgets."""
    import psutil

    scale = cfg["scale"]
    result_file = data_dir / f"{engine}-result.json"
    spec_file = data_dir / f"{engine}-spec.json"
    WorkerSpec(engine=engine, data_dir=str(data_dir), rank=scale["rank"], reg_param=scale["regParam"],
               max_iter=scale["maxIter"], repeats=repeats, result_file=str(result_file),
               spark_driver_memory=scale["spark_driver_memory"],
               dense_budget_mb=scale["numpy_dense_budget_mb"]).write(spec_file)
    args = [sys.executable, "-m", "jester_als.scale.worker", str(spec_file)]
    env = dict(os.environ, SPARK_LOCAL_IP=os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"))
    started = time.perf_counter()
    log_path = data_dir / f"{engine}-worker.log"
    with open(log_path, "wb") as log_file:  # a file, not a pipe: a chatty worker must never block on it
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log_file, env=env)
    root = psutil.Process(process.pid)
    peak, limit = 0, None
    budget_bytes = scale["memory_budget_mb"] * 2**20
    while process.poll() is None:
        try:
            tree = [root] + root.children(recursive=True)
            rss = sum(p.memory_info().rss for p in tree if p.is_running())
        except psutil.Error:
            rss = 0
        peak = max(peak, rss)
        elapsed = time.perf_counter() - started
        if rss > budget_bytes:
            limit = f"memory: {rss / 2**20:,.0f} MB > budget {scale['memory_budget_mb']:,} MB"
        elif elapsed > scale["time_budget_seconds"]:
            limit = f"time: {elapsed:,.0f} s > budget {scale['time_budget_seconds']:,} s"
        if limit:
            for p in reversed([root] + root.children(recursive=True)):
                try:
                    p.kill()
                except psutil.Error:
                    pass
            process.wait()
            break
        time.sleep(0.1)
    stderr = log_path.read_text(errors="replace")
    wall = time.perf_counter() - started
    if limit:
        return {"completed": False, "limit": limit, "peak_rss_mb": peak / 2**20, "wall_seconds": wall}
    if process.returncode != 0 or not result_file.exists():
        reason = "out of memory" if "OutOfMemory" in stderr or "MemoryError" in stderr else "failed"
        return {"completed": False, "limit": f"{reason}: exit {process.returncode}: {stderr.strip()[-300:]}",
                "peak_rss_mb": peak / 2**20, "wall_seconds": wall}
    result = json.loads(result_file.read_text())
    result.update(completed=True, peak_rss_mb=peak / 2**20, wall_seconds=wall,
                  fit_seconds=float(np.median(result["seconds"])))
    return result


def machine_memory_gb() -> float:
    import psutil

    return psutil.virtual_memory().total / 2**30
