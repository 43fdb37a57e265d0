"""Spark's own account of a running application, read from its REST API (``/api/v1/applications/<id>/stages`` and
``/executors``, served by the driver's UI): the shuffle bytes each stage wrote and read, each executor's peak memory
during a set of stages, and what the block managers hold (sampled while a fit runs). Read by the workers of the
scaling study and of the cluster measurements."""

from __future__ import annotations

import json
import logging
import time
import urllib.request

from jester_als.peakmem import Sampler

log = logging.getLogger("jester_als.scale")


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
