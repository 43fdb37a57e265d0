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
from pathlib import Path

from jester_als.config import JesterConfig
from jester_als.generate import GeneratorParams
from jester_als.harness.cluster_worker import LONG_ITERATIONS, SHORT_ITERATIONS
from jester_als.harness.data import write_split_parquet
from jester_als.harness.runner import run_worker
from jester_als.harness.worker import WorkerSpec
from jester_als.localcluster import free_port, standalone_cluster
from jester_als.scale.costmodel import fit_cluster_model

log = logging.getLogger("jester_als.scale")


def measure_cluster(cfg: JesterConfig, work: Path, logs_dir: Path) -> dict:
    """Generate each size's table, start the standalone cluster once, run one application per executor count
    over all the sizes."""

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
