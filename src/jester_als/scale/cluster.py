"""The cluster side, measured: Spark ALS on the project's real standalone cluster with 1, 2 and 4 one-core
executors at a few sizes. One application per executor count fits every size in turn, smallest first. Spark's own
REST API (``/api/v1/applications/<id>/stages`` and ``/executors``, served by the driver's UI) gives the shuffle
bytes each stage wrote and read and each executor's peak memory during a size's stages; the bytes of one ALS
iteration are the difference between a long and a short fit on the same data (the ratings' partitioning into
blocks, which every fit does once, cancels). The cluster model's shuffle and per-executor memory terms are fitted
to these measurements and checked on the largest size, left out of the fit.

Wall-clock speed-up is not measured: executors on a 2-core machine share its cores."""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from pathlib import Path

import numpy as np

from jester_als.config import JesterConfig
from jester_als.peakmem import Sampler
from jester_als.scale.costmodel import CHECK_TARGET, shuffle_bytes_per_iteration

log = logging.getLogger("jester_als.scale")

# The two fits whose difference is the shuffle of (LONG - SHORT) iterations: ALS shuffles the same blocks every
# iteration, so two iterations of difference measure it as well as more would, and the fits stay short.
SHORT_ITERATIONS, LONG_ITERATIONS = 1, 3
# Executor memory metrics travel with heartbeats; the defaults (10 s) would miss a short fit's peak.
METRICS_CONF = {
    "spark.executor.heartbeatInterval": "1s",
    "spark.executor.metrics.pollingInterval": "100ms",
    "spark.executor.processTreeMetrics.enabled": "true",
}


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
    return {
        "write": sum(s.get("shuffleWriteBytes", 0) for s in stages.values()),
        "read": sum(s.get("shuffleReadBytes", 0) for s in stages.values()),
        "stages": sorted(stages),
        "seconds": seconds,
    }


def memory_mb(metrics: dict) -> float:
    """An executor's memory as Spark reports it: the resident set of its process tree where Spark can read it
    (procfs, spark.executor.processTreeMetrics.enabled), else heap plus off-heap."""
    value = metrics.get("ProcessTreeJVMRSSMemory") or (
        metrics.get("JVMHeapMemory", 0) + metrics.get("JVMOffHeapMemory", 0)
    )
    return value / 2**20


def executor_peaks_mb(ui: str, app: str, stage_ids: set[int], executors: int, timeout: float = 60) -> list[float]:
    """Each executor's peak memory during the stages ``stage_ids``: the stage-level peaks the live status
    listener keeps per executor (AppStatusListener.updateStageLevelPeakExecutorMetrics, Spark 3.1+), served in a
    stage's ``executorSummary`` with ``details=true``. Waits until every executor has reported one; an executor
    that ran none of the stages' tasks reports none."""
    deadline = time.monotonic() + timeout
    while True:
        peaks: dict[str, float] = {}
        for stage in rest(ui, f"/applications/{app}/stages?status=complete&details=true"):
            if stage["stageId"] not in stage_ids:
                continue
            for executor, summary in (stage.get("executorSummary") or {}).items():
                value = memory_mb(summary.get("peakMemoryMetrics") or {})
                if executor != "driver" and value:
                    peaks[executor] = max(peaks.get(executor, 0.0), value)
        if len(peaks) >= executors or time.monotonic() > deadline:
            return sorted(peaks.values())
        time.sleep(0.5)


class StoragePeaks(Sampler):
    """The peak memory and disk that cached blocks held while it ran, per Spark's block managers
    (``/executors``: memoryUsed, diskUsed), read at the start and then every ``interval`` seconds: a cached block
    on disk means the heap did not hold what Spark wanted to keep in memory (ALS persists MEMORY_AND_DISK)."""

    def __init__(self, ui: str, app: str, interval: float = 1.0):
        super().__init__(interval, "storage-peaks")
        self.ui, self.app = ui, app
        self.memory_mb = self.disk_mb = 0.0
        self.read()

    def read(self) -> None:
        try:
            executors = rest(self.ui, f"/applications/{self.app}/executors", timeout=5)
        except (OSError, ValueError):
            return  # a busy driver; the next poll reads it
        self.memory_mb = max(self.memory_mb, sum(e.get("memoryUsed", 0) for e in executors) / 2**20)
        self.disk_mb = max(self.disk_mb, sum(e.get("diskUsed", 0) for e in executors) / 2**20)


def spark_memory_signals(ui: str, app: str, storage: StoragePeaks) -> dict:
    """What Spark itself says of its memory over an application: bytes spilled by its stages (memory and disk),
    the peaks of cached blocks in memory and on disk, the memory its block managers may cache in, and the share
    of task time spent in garbage collection."""
    stages = rest(ui, f"/applications/{app}/stages?status=complete")
    executors = rest(ui, f"/applications/{app}/executors")
    task_ms = sum(e.get("totalDuration", 0) for e in executors)
    return {
        "spilled_mb": sum(s.get("diskBytesSpilled", 0) for s in stages) / 2**20,
        "spilled_memory_mb": sum(s.get("memoryBytesSpilled", 0) for s in stages) / 2**20,
        "storage_memory_peak_mb": storage.memory_mb,
        "storage_disk_peak_mb": storage.disk_mb,
        # an executor's maxMemory is its block manager's maxOnHeapStorageMemory at registration, which the
        # UnifiedMemoryManager gives as its whole unified region ((the JVM's Runtime.maxMemory - 300 MB) x
        # spark.memory.fraction, less execution memory in use): apache/spark
        # core/src/main/scala/org/apache/spark/memory/UnifiedMemoryManager.scala. Runtime.maxMemory is the -Xmx
        # heap under G1 but leaves out a survivor space under ParallelGC, hence Spark's figure, not the rule.
        "storage_max_mb": sum(e.get("maxMemory", 0) for e in executors) / 2**20,
        "gc_share": sum(e.get("totalGCTime", 0) for e in executors) / task_ms if task_ms else None,
    }


def wait_for_executors(ui: str, app: str, executors: int, timeout: float = 120) -> None:
    """Until the application has its executors (a standalone master grants them asynchronously)."""
    deadline = time.monotonic() + timeout
    while len([e for e in rest(ui, f"/applications/{app}/executors") if e["id"] != "driver"]) < executors:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the cluster granted fewer than {executors} executors within {timeout:.0f} s")
        time.sleep(0.5)


def run_cluster_worker(spec: dict, result_file: Path) -> None:
    """In a worker process: a session on ``spec['master']`` with ``executors`` one-core executors and ALS
    blocks = executors; for each of ``spec['sizes']`` (ascending, so that a size's memory peak is not an earlier,
    larger size's) two fits of ``SHORT_ITERATIONS`` and ``LONG_ITERATIONS`` and their measurements. The result
    file is rewritten after each size, so the sizes measured before a failure are kept."""
    from pyspark.sql import SparkSession

    from jester_als.outputs import write_text_atomic
    from jester_als.tune import make_als

    executors = spec["executors"]
    spark = (
        SparkSession.builder.master(spec["master"])
        .appName("jester-als-scale-cluster")
        .config("spark.executor.cores", "1")
        .config("spark.cores.max", str(executors))
        .config("spark.executor.memory", spec["executor_memory"])
        .config("spark.driver.memory", "2g")
        .config("spark.ui.enabled", "true")
        .config("spark.ui.port", str(spec["ui_port"]))
        .config("spark.port.maxRetries", "0")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(executors))
        .config("spark.checkpoint.dir", spec["checkpoint_dir"])
        .config("spark.log.level", "ERROR")
        .config(map=METRICS_CONF)
        .getOrCreate()
    )
    try:
        app = spark.conf.get("spark.app.id")
        ui = f"http://127.0.0.1:{spec['ui_port']}"
        wait_for_executors(ui, app, executors)
        als = make_als(seed=1, blocks=executors).setRank(spec["rank"]).setRegParam(spec["reg_param"])
        measured = []
        for size in spec["sizes"]:
            train = spark.read.parquet(size["train"]).persist()
            train.count()
            fits = {}
            for name, iterations in (("short", SHORT_ITERATIONS), ("long", LONG_ITERATIONS)):
                estimator = als.copy({als.maxIter: iterations})
                fits[name] = shuffle_of_fit(ui, app, lambda e=estimator, t=train: e.fit(t))
            span = LONG_ITERATIONS - SHORT_ITERATIONS
            peaks = executor_peaks_mb(ui, app, set(fits["short"]["stages"]) | set(fits["long"]["stages"]), executors)
            train.unpersist(blocking=True)
            per_iteration = {way: (fits["long"][way] - fits["short"][way]) / span for way in ("write", "read")}
            measured.append(
                {
                    "users": size["users"],
                    "shuffle_write_bytes_per_iteration": per_iteration["write"],
                    "shuffle_read_bytes_per_iteration": per_iteration["read"],
                    "fit_seconds": {name: fit["seconds"] for name, fit in fits.items()},
                    "executor_peaks_mb": peaks,
                    "executors_seen": len(peaks),
                }
            )
            write_text_atomic(str(result_file), json.dumps({"sizes": measured, "seconds": []}))
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
        checks.append(
            {
                "executors": m["executors"],
                "train_ratings": m["train_ratings"],
                "predicted_shuffle_bytes": predicted_bytes,
                "measured_shuffle_bytes": m["shuffle_bytes_per_iteration"],
                "predicted_executor_mb": predicted_mb,
                "measured_executor_mb": m["executor_peak_mb"],
                "shuffle_error": bytes_error,
                "memory_error": mb_error,
                "within_target": abs(bytes_error) <= CHECK_TARGET and abs(mb_error) <= CHECK_TARGET,
            }
        )
    return {
        "fitted": True,
        "shuffle_factor": factor,
        "executor_memory_mb": {"fixed": float(memory[0]), "per_rating": float(memory[1])},
        "sizes_used": sizes[:-1],
        "checks": checks,
    }


def measure_cluster(cfg: JesterConfig, work: Path, logs_dir: Path) -> dict:
    """Generate each size's table, start the standalone cluster once, run one application per executor count
    over all the sizes."""
    from jester_als.generate import GeneratorParams
    from jester_als.localcluster import free_port, standalone_cluster
    from jester_als.scale.data import write_split_parquet
    from jester_als.scale.runner import run_worker
    from jester_als.scale.worker import WorkerSpec

    scale = cfg.scale
    counts = scale.cluster_measure_executors
    sizes = []
    for users in sorted(scale.cluster_measure_users):
        params = GeneratorParams.from_config(cfg.generate, users=users, jokes=100)
        data_dir = work / f"cluster-{users}x100"
        written = write_split_parquet(params, data_dir, scale.test_fraction, scale.seed)
        sizes.append(
            {"users": users, "train": str(data_dir / "train.parquet"), "train_ratings": written["train_ratings"]}
        )
    rows = {}
    with standalone_cluster(work / "cluster", cores=max(counts), memory=scale.cluster_worker_memory) as master:
        for executors in counts:
            log.info(
                "scale cluster: %d executor(s), one application over %s users x 100 jokes (%s training ratings)",
                executors,
                ", ".join(f"{s['users']:,}" for s in sizes),
                ", ".join(f"{s['train_ratings']:,}" for s in sizes),
            )
            result_file = work / f"cluster-{executors}-result.json"
            spec = WorkerSpec(
                engine="spark-cluster",
                data_dir=str(work),
                rank=scale.rank,
                reg_param=scale.regParam,
                max_iter=LONG_ITERATIONS,
                repeats=1,
                result_file=str(result_file),
                cluster={
                    "master": master,
                    "executors": executors,
                    "ui_port": free_port(),
                    "executor_memory": scale.cluster_executor_memory,
                    "sizes": [{"users": s["users"], "train": s["train"]} for s in sizes],
                },
            )
            result = run_worker(
                spec,
                memory_budget_mb=scale.memory_budget_mb,
                time_budget_seconds=scale.time_budget_seconds,
                keep_log_in=logs_dir,
                keep_all_logs=True,
                name=f"cluster-{executors}",
            )
            # a failed application keeps the sizes it measured before it stopped
            measured = {
                m["users"]: m for m in (json.loads(result_file.read_text())["sizes"] if result_file.exists() else [])
            }
            for size in sizes:
                row = {
                    "executors": executors,
                    "users": size["users"],
                    "jokes": 100,
                    "train_ratings": size["train_ratings"],
                }
                m = measured.get(size["users"])
                if m:
                    row.update(
                        shuffle_bytes_per_iteration=m["shuffle_write_bytes_per_iteration"],
                        shuffle_read_bytes_per_iteration=m["shuffle_read_bytes_per_iteration"],
                        executor_peak_mb=max(m["executor_peaks_mb"]),
                        executor_peaks_mb=m["executor_peaks_mb"],
                        fit_seconds=m["fit_seconds"],
                    )
                    log.info(
                        "  %s users: %s bytes shuffled per iteration, executor peaks %s MB",
                        f"{size['users']:,}",
                        f"{row['shuffle_bytes_per_iteration']:,.0f}",
                        ", ".join(f"{v:,.0f}" for v in m["executor_peaks_mb"]),
                    )
                else:
                    row["limit"] = result.get("limit", "not measured")
                    log.info("  %s users: %s", f"{size['users']:,}", row["limit"])
                rows[(size["users"], executors)] = row
    for size in sizes:
        for name in ("train.parquet", "test.parquet"):
            (Path(size["train"]).parent / name).unlink(missing_ok=True)
    measurements = [rows[key] for key in sorted(rows)]
    return {
        "measurements": measurements,
        "iterations": {"short": SHORT_ITERATIONS, "long": LONG_ITERATIONS},
        "model": fit_cluster_model(measurements, scale.rank),
    }
