"""The cluster side, measured: Spark ALS on the project's real standalone cluster with 1, 2 and 4 one-core
executors at a few sizes. Spark's own REST API (``/api/v1/applications/<id>/stages`` and ``/executors``, served
by the driver's UI) gives the shuffle bytes each stage wrote and read and each executor's peak memory; the
bytes of one ALS iteration are the difference between a long and a short fit on the same data (the ratings'
partitioning into blocks, which every fit does once, cancels). The cluster model's shuffle and per-executor
memory terms are fitted to these measurements and checked on the largest size, left out of the fit.

Wall-clock speed-up is not measured: executors on a 2-core machine share its cores."""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from pathlib import Path

import numpy as np

from jester_als.scale.costmodel import CHECK_TARGET, shuffle_bytes_per_iteration

log = logging.getLogger("jester_als.scale")

# Executor memory metrics travel with heartbeats; the defaults (10 s) would miss a short fit's peak.
METRICS_CONF = {"spark.executor.heartbeatInterval": "1s", "spark.executor.metrics.pollingInterval": "100ms",
                "spark.executor.processTreeMetrics.enabled": "true"}


def rest(ui: str, path: str, *, timeout: float = 120):
    """GET a REST API path; a busy driver can be slow to answer, so a read that times out or is refused is
    retried until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{ui}/api/v1{path}", timeout=30) as response:
                return json.load(response)
        except (OSError, ValueError):  # URLError, a timeout, a page that is not JSON yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def completed_stages(ui: str, app: str) -> dict[int, dict]:
    return {s["stageId"]: s for s in rest(ui, f"/applications/{app}/stages?status=complete")}


def shuffle_of_fit(ui: str, app: str, fit) -> dict:
    """Shuffle bytes written and read by the stages that ``fit()`` ran (those that were not complete before),
    waiting until the stage list has settled (the listener that feeds the REST API runs asynchronously)."""
    before = set(completed_stages(ui, app))
    started = time.perf_counter()
    fit()
    seconds = time.perf_counter() - started
    deadline, last = time.monotonic() + 60, None
    while True:
        stages = {k: v for k, v in completed_stages(ui, app).items() if k not in before}
        if last is not None and set(stages) == set(last) or time.monotonic() > deadline:
            break
        last = stages
        time.sleep(0.5)  # poll until two reads agree: the observable state is the stage list itself
    return {"write": sum(s.get("shuffleWriteBytes", 0) for s in stages.values()),
            "read": sum(s.get("shuffleReadBytes", 0) for s in stages.values()), "stages": len(stages),
            "seconds": seconds}


def executor_peaks_mb(ui: str, app: str, executors: int, timeout: float = 60) -> list[float]:
    """Each executor's peak memory as Spark reports it: the resident set of its process tree where Spark can
    read it (procfs), else heap plus off-heap. Waits until every executor has reported one."""
    deadline = time.monotonic() + timeout
    while True:
        peaks = []
        for e in rest(ui, f"/applications/{app}/executors"):
            if e["id"] == "driver":
                continue
            metrics = e.get("peakMemoryMetrics") or {}
            value = metrics.get("ProcessTreeJVMRSSMemory") or (
                metrics.get("JVMHeapMemory", 0) + metrics.get("JVMOffHeapMemory", 0))
            if value:
                peaks.append(value / 2**20)
        if len(peaks) >= executors or time.monotonic() > deadline:
            return sorted(peaks)
        time.sleep(0.5)


def wait_for_executors(ui: str, app: str, executors: int, timeout: float = 120) -> None:
    """Until the application has its executors (a standalone master grants them asynchronously)."""
    deadline = time.monotonic() + timeout
    while len([e for e in rest(ui, f"/applications/{app}/executors") if e["id"] != "driver"]) < executors:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the cluster granted fewer than {executors} executors within {timeout:.0f} s")
        time.sleep(0.5)


def run_cluster_worker(spec: dict) -> dict:
    """In a worker process: a session on ``spec['master']`` with ``executors`` one-core executors and ALS
    blocks = executors; two fits (``short`` and ``long`` iterations); the measurements."""
    from pyspark.sql import SparkSession

    from jester_als.tune import make_als

    executors = spec["executors"]
    spark = (SparkSession.builder.master(spec["master"]).appName("jester-als-scale-cluster")
             .config("spark.executor.cores", "1").config("spark.cores.max", str(executors))
             .config("spark.executor.memory", spec["executor_memory"])
             .config("spark.driver.memory", "2g").config("spark.ui.enabled", "true")
             .config("spark.ui.port", str(spec["ui_port"])).config("spark.port.maxRetries", "0")
             .config("spark.sql.shuffle.partitions", str(executors))
             .config("spark.checkpoint.dir", spec["checkpoint_dir"])
             .config("spark.log.level", "ERROR").config(map=METRICS_CONF).getOrCreate())
    try:
        app = spark.conf.get("spark.app.id")
        ui = f"http://127.0.0.1:{spec['ui_port']}"
        wait_for_executors(ui, app, executors)
        train = spark.read.parquet(spec["train"]).persist()
        train.count()
        als = make_als(seed=1, blocks=executors).setRank(spec["rank"]).setRegParam(spec["reg_param"])
        fits = {}
        for name in ("short", "long"):
            estimator = als.copy({als.maxIter: spec[name]})
            fits[name] = shuffle_of_fit(ui, app, lambda e=estimator: e.fit(train))
        span = spec["long"] - spec["short"]
        peaks = executor_peaks_mb(ui, app, executors)
        return {"shuffle_write_bytes_per_iteration": (fits["long"]["write"] - fits["short"]["write"]) / span,
                "shuffle_read_bytes_per_iteration": (fits["long"]["read"] - fits["short"]["read"]) / span,
                "fits": fits, "executor_peaks_mb": peaks, "executors_seen": len(peaks),
                "seconds": [fits["long"]["seconds"]]}
    finally:
        spark.stop()


def fit_cluster_model(measurements: list[dict], rank: int) -> dict:
    """Shuffle bytes per iteration = s x the copy count of :func:`shuffle_bytes_per_iteration` (blocks =
    executors); per-executor peak MB = m0 + m1 x training ratings per executor. Fitted by least squares on
    relative error to the measured sizes but the largest, which checks both."""
    done = [m for m in measurements if "shuffle_bytes_per_iteration" in m]
    sizes = sorted({m["train_ratings"] for m in done})
    if len(sizes) < 3:
        return {"fitted": False, "reason": f"{len(sizes)} sizes measured (need 3: two to fit, one to check)"}
    held = [m for m in done if m["train_ratings"] == sizes[-1]]
    used = [m for m in done if m["train_ratings"] != sizes[-1]]

    def copies(m):
        return shuffle_bytes_per_iteration(m["users"], m["jokes"], m["train_ratings"], rank, m["executors"])

    x = np.array([copies(m) for m in used])
    y = np.array([m["shuffle_bytes_per_iteration"] for m in used])
    factor = float(np.sum(x / y) / np.sum((x / y) ** 2))  # least squares of (s x / y - 1)
    a = np.column_stack([np.ones(len(used)), [m["train_ratings"] / m["executors"] for m in used]])
    b = np.array([m["executor_peak_mb"] for m in used])
    weights = 1.0 / b
    memory, *_ = np.linalg.lstsq(a * weights[:, None], b * weights, rcond=None)
    checks = []
    for m in held:
        predicted_bytes = factor * copies(m)
        predicted_mb = float(memory[0] + memory[1] * m["train_ratings"] / m["executors"])
        bytes_error = predicted_bytes / m["shuffle_bytes_per_iteration"] - 1
        mb_error = predicted_mb / m["executor_peak_mb"] - 1
        checks.append({"executors": m["executors"], "train_ratings": m["train_ratings"],
                       "predicted_shuffle_bytes": predicted_bytes,
                       "measured_shuffle_bytes": m["shuffle_bytes_per_iteration"],
                       "predicted_executor_mb": predicted_mb, "measured_executor_mb": m["executor_peak_mb"],
                       "shuffle_error": bytes_error, "memory_error": mb_error,
                       "within_target": abs(bytes_error) <= CHECK_TARGET and abs(mb_error) <= CHECK_TARGET})
    return {"fitted": True, "shuffle_factor": factor,
            "executor_memory_mb": {"fixed": float(memory[0]), "per_rating": float(memory[1])},
            "sizes_used": sizes[:-1], "checks": checks}


def measure_cluster(cfg: dict, work: Path, logs_dir: Path) -> dict:
    """Generate each size's table, start the standalone cluster once, run one worker per (size, executors)."""
    from jester_als.generate import GeneratorParams
    from jester_als.localcluster import free_port, standalone_cluster
    from jester_als.scale.data import write_split_parquet
    from jester_als.scale.runner import run_worker
    from jester_als.scale.worker import WorkerSpec

    scale = cfg["scale"]
    counts = scale["cluster_measure_executors"]
    measurements = []
    with standalone_cluster(work / "cluster", cores=max(counts), memory=scale["cluster_worker_memory"]) as master:
        for users in scale["cluster_measure_users"]:
            params = GeneratorParams.from_config(cfg["generate"], users=users, jokes=100)
            data_dir = work / f"cluster-{users}x100"
            sizes = write_split_parquet(params, data_dir, scale["test_fraction"], scale["seed"])
            for executors in counts:
                log.info("scale cluster: %s users x 100 jokes (%s training ratings), %d executor(s)",
                         f"{users:,}", f"{sizes['train_ratings']:,}", executors)
                spec = WorkerSpec(engine="spark-cluster", data_dir=str(data_dir), rank=scale["rank"],
                                  reg_param=scale["regParam"], max_iter=scale["maxIter"], repeats=1,
                                  result_file=str(data_dir / f"cluster-{executors}-result.json"),
                                  cluster={"master": master, "executors": executors, "ui_port": free_port(),
                                           "executor_memory": scale["cluster_executor_memory"],
                                           "short": 2, "long": 6})
                result = run_worker(spec, memory_budget_mb=scale["memory_budget_mb"],
                                    time_budget_seconds=scale["time_budget_seconds"], keep_log_in=logs_dir,
                                    keep_all_logs=True, name=f"cluster-{users}x100-{executors}")
                row = {"executors": executors, "users": users, "jokes": 100, "train_ratings": sizes["train_ratings"]}
                if result["completed"]:
                    row.update(shuffle_bytes_per_iteration=result["shuffle_write_bytes_per_iteration"],
                               shuffle_read_bytes_per_iteration=result["shuffle_read_bytes_per_iteration"],
                               executor_peak_mb=max(result["executor_peaks_mb"]),
                               executor_peaks_mb=result["executor_peaks_mb"])
                    log.info("  %s bytes shuffled per iteration, executor peak %s MB",
                             f"{row['shuffle_bytes_per_iteration']:,.0f}", f"{row['executor_peak_mb']:,.0f}")
                else:
                    row["limit"] = result["limit"]
                    log.info("  %s", result["limit"])
                measurements.append(row)
            for name in ("train.parquet", "test.parquet"):
                (data_dir / name).unlink(missing_ok=True)
    return {"measurements": measurements, "model": fit_cluster_model(measurements, scale["rank"])}
