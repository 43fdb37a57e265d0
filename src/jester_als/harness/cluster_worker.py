"""The worker of the cluster measurements (engine ``spark-cluster``): in its own process, one application on the
project's standalone cluster fits every size twice, a short and a long fit, and records what Spark's REST API
says of their shuffle and executor memory (:mod:`jester_als.harness.sparkrest`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from jester_als.harness.sparkrest import executor_peaks_mb, shuffle_of_fit, wait_for_executors
from jester_als.outputs import write_text_atomic
from jester_als.tune import make_als

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


def run_cluster_worker(spec: dict, result_file: Path) -> None:
    """In a worker process: a session on ``spec['master']`` with ``executors`` one-core executors and ALS
    blocks = executors; for each of ``spec['sizes']`` (ascending, so that a size's memory peak is not an earlier,
    larger size's) two fits of ``SHORT_ITERATIONS`` and ``LONG_ITERATIONS`` and their measurements. The result
    file is rewritten after each size, so the sizes measured before a failure are kept."""
    from pyspark.sql import SparkSession

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
