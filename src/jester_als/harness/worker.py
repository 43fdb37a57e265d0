"""One engine on one point of the study, in a process of its own (``python -m jester_als.harness.worker SPEC``),
so that its peak memory is its own and a budget can stop it."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from jester_als.harness.data import read_ratings


@dataclass
class WorkerSpec:
    """What one worker run is asked to do; written as JSON for the worker process to read."""

    engine: str  # "numpy", "spark", "loop" (the seed notebook's per-user loop, bench only) or "spark-cluster"
    data_dir: str  # holds train.parquet and test.parquet
    rank: int
    reg_param: float
    max_iter: int
    repeats: int
    result_file: str  # where the worker writes {"seconds": [...], "rmse": ..., ...}
    spark_driver_memory: str = "4g"
    dense_budget_mb: float = 512.0
    seed: int = 1
    max_user: int | None = None  # fit the table's users up to this id only (a limit probe on a larger table)
    # One untimed one-iteration fit on the same ratings before the timed ones: a fresh process's first fit also
    # pays for loading and compiling code (the JVM's JIT for Spark), which a size timed once would otherwise
    # include and a median of repeats leaves out; with it, both kinds of size time the same thing.
    warmup: bool = False
    # engine "spark-cluster": master, executors, ui_port, executor_memory and sizes ([{users, train}], data_dir
    # holding their directories)
    cluster: dict | None = None

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, path: str | Path) -> WorkerSpec:
        return cls(**json.loads(Path(path).read_text()))


def users_up_to(frame, max_user: int | None):
    return frame if max_user is None else frame.where(frame["user"] <= max_user)


def run(spec: WorkerSpec) -> int:
    """Fit ``spec.engine`` ``spec.repeats`` times on the point's training ratings, score the test ratings,
    write the result file."""
    data_dir = Path(spec.data_dir)
    if spec.engine == "spark-cluster":
        from jester_als.harness.cluster_worker import run_cluster_worker

        run_cluster_worker(
            {
                **spec.cluster,
                "rank": spec.rank,
                "reg_param": spec.reg_param,
                "checkpoint_dir": str(data_dir / "checkpoints"),
            },
            Path(spec.result_file),
        )
        return 0
    seconds, score = (_run_numpy if spec.engine in ("numpy", "loop") else _run_spark)(spec, data_dir)
    Path(spec.result_file).write_text(json.dumps({"seconds": seconds, **score}))
    return 0


def _run_numpy(spec: WorkerSpec, data_dir: Path) -> tuple[list[float], dict]:
    """NumPy ALS (``numpy``) or the seed's per-user loop (``loop``): the fits' seconds and the test scores."""
    # Each engine imports what it needs here: a NumPy worker never loads pyspark, so its peak memory is its own.
    from jester_als.numpy_als import RatingMatrix, fit_loop_als, fit_numpy_als, rmse_mae

    started = time.perf_counter()
    train = RatingMatrix.from_ids(*read_ratings(data_dir / "train.parquet", spec.max_user))
    load_seconds = time.perf_counter() - started
    fit = fit_numpy_als if spec.engine == "numpy" else fit_loop_als
    extra = {"dense_budget_mb": spec.dense_budget_mb} if spec.engine == "numpy" else {}
    warmup_seconds = None
    if spec.warmup:
        started = time.perf_counter()
        fit(train, rank=spec.rank, reg_param=spec.reg_param, max_iter=1, seed=spec.seed, **extra)
        warmup_seconds = time.perf_counter() - started
    seconds = []
    for _ in range(spec.repeats):
        started = time.perf_counter()
        model = fit(train, rank=spec.rank, reg_param=spec.reg_param, max_iter=spec.max_iter, seed=spec.seed, **extra)
        seconds.append(time.perf_counter() - started)
    del train
    users, jokes, ratings = read_ratings(data_dir / "test.parquet", spec.max_user)
    return seconds, {
        **rmse_mae(ratings, model.predict(users, jokes)),
        "path": model.layout,
        "blocks": model.blocks,
        "load_seconds": load_seconds,
        "warmup_seconds": warmup_seconds,
    }


def _run_spark(spec: WorkerSpec, data_dir: Path) -> tuple[list[float], dict]:
    """Spark ALS in local mode, its UI on so that its REST API says whether the heap held the data: the fits'
    seconds, the test scores and Spark's memory readings."""
    from pyspark.sql import SparkSession

    from jester_als.harness.sparkrest import StoragePeaks, spark_memory_signals
    from jester_als.localcluster import free_port
    from jester_als.session import als_blocks
    from jester_als.tune import fit_als, make_als, regression_metrics

    ui_port = free_port()
    spark = (
        SparkSession.builder.master("local[*]")
        .appName("jester-als-worker")
        .config("spark.driver.memory", spec.spark_driver_memory)
        .config("spark.ui.enabled", "true")
        .config("spark.ui.port", str(ui_port))
        .config("spark.port.maxRetries", "0")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(os.cpu_count() or 2))
        # inside the point's directory, which the study removes when it ends (also on failure)
        .config("spark.checkpoint.dir", str(data_dir / "checkpoints"))
        .config("spark.log.level", "ERROR")
        .getOrCreate()
    )
    ui, app = f"http://127.0.0.1:{ui_port}", spark.conf.get("spark.app.id")
    params = {"rank": spec.rank, "regParam": spec.reg_param}
    seconds = []
    with StoragePeaks(ui, app) as storage:
        started = time.perf_counter()
        train = users_up_to(spark.read.parquet(str(data_dir / "train.parquet")), spec.max_user).persist()
        train.count()
        load_seconds = time.perf_counter() - started
        als = make_als(seed=spec.seed, blocks=als_blocks(spark, "auto"))
        warmup_seconds = None
        if spec.warmup:
            _, warmup_seconds = fit_als(train, als, {**params, "maxIter": 1})
        for _ in range(spec.repeats):
            model, fit_seconds = fit_als(train, als, {**params, "maxIter": spec.max_iter})
            seconds.append(fit_seconds)
    test = users_up_to(spark.read.parquet(str(data_dir / "test.parquet")), spec.max_user)
    scores = regression_metrics(model.transform(test))
    score = {
        "rmse": scores["rmse"],
        "mae": scores["mae"],
        "rows": scores["rows"],
        "load_seconds": load_seconds,
        "warmup_seconds": warmup_seconds,
        "spark_memory": spark_memory_signals(ui, app, storage),
    }
    spark.stop()
    return seconds, score


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(
            "usage: python -m jester_als.harness.worker SPEC.json (run the study with `jester-als scale`)",
            file=sys.stderr,
        )
        sys.exit(2)
    sys.exit(run(WorkerSpec.read(sys.argv[1])))
