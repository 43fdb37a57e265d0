"""The study: the points along each axis, each engine run on each, and the job that writes the results."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

from jester_als.generate import GeneratorParams
from jester_als.outputs import now_iso, staged_outputs, write_text_atomic
from jester_als.scale.costmodel import ENGINES, fit_cost_model, predict
from jester_als.scale.data import write_split_parquet
from jester_als.scale.render import plot, render_scale
from jester_als.scale.runner import machine_memory_gb, run_worker
from jester_als.scale.worker import WorkerSpec

log = logging.getLogger("jester_als.scale")


def axis_points(cfg: dict) -> list[dict]:
    scale = cfg["scale"]
    points = [{"axis": "users", "users": n, "jokes": 100, "mean_ratings": 72.6, "min_ratings": 36,
               "gauge_jokes": 30} for n in scale["users_axis"]]
    sparse = scale["jokes_axis_ratings_per_user"]
    points += [{"axis": "jokes", "users": scale["jokes_axis_users"], "jokes": j,
                "mean_ratings": min(float(sparse), 0.726 * j), "min_ratings": min(15, j),
                "gauge_jokes": min(10, j)} for j in scale["jokes_axis"]]
    return points


def run_study(cfg: dict) -> dict:
    scale = cfg["scale"]
    gen_cfg = cfg["generate"]
    work = Path(tempfile.mkdtemp(prefix="jester-als-scale-", dir=scale["work_dir"]))
    stopped: dict[tuple[str, str], str] = {}
    points = []
    try:
        for spec in axis_points(cfg):
            params = GeneratorParams.from_config(gen_cfg, users=spec["users"], jokes=spec["jokes"],
                                                 mean_ratings=spec["mean_ratings"], min_ratings=spec["min_ratings"],
                                                 gauge_jokes=spec["gauge_jokes"])
            data_dir = work / f"{spec['axis']}-{spec['users']}x{spec['jokes']}"
            started = time.perf_counter()
            sizes = write_split_parquet(params, data_dir, scale["test_fraction"], scale["seed"])
            point = {**spec, **sizes, "ratings": sizes["train_ratings"] + sizes["test_ratings"],
                     "generate_seconds": time.perf_counter() - started, "engines": {}}
            log.info("scale point %s: %d users x %d jokes, %d training ratings", spec["axis"], spec["users"],
                     spec["jokes"], sizes["train_ratings"])
            for engine in ENGINES:
                key = (spec["axis"], engine)
                if key in stopped:
                    point["engines"][engine] = {"completed": False, "skipped": True,
                                                "limit": f"not run: {stopped[key]} at a smaller size"}
                    continue
                cheap = sizes["train_ratings"] <= scale["repeat_below_ratings"]
                repeats = scale["repeats"] if cheap else 1
                worker = WorkerSpec(engine=engine, data_dir=str(data_dir), rank=scale["rank"],
                                    reg_param=scale["regParam"], max_iter=scale["maxIter"], repeats=repeats,
                                    result_file=str(data_dir / f"{engine}-result.json"),
                                    spark_driver_memory=scale["spark_driver_memory"],
                                    dense_budget_mb=scale["numpy_dense_budget_mb"])
                result = run_worker(worker, memory_budget_mb=scale["memory_budget_mb"],
                                    time_budget_seconds=scale["time_budget_seconds"],
                                    keep_log_in=Path(cfg["output"]["dir"]) / "worker-logs", keep_all_logs=True)
                point["engines"][engine] = result
                if not result["completed"]:
                    stopped[key] = result["limit"]
                log.info("  %s: %s", engine, f"{result['fit_seconds']:.2f} s, peak {result['peak_rss_mb']:,.0f} MB, "
                         f"RMSE {result['rmse']:.4f}" if result["completed"] else result["limit"])
            points.append(point)
            for name in ("train.parquet", "test.parquet"):
                (data_dir / name).unlink(missing_ok=True)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    model = fit_cost_model(points, scale["rank"], scale["maxIter"])
    return {"when": now_iso(), "machine": {"cpus": os.cpu_count(), "memory_gb": machine_memory_gb()},
            "params": {k: scale[k] for k in ("rank", "regParam", "maxIter")},
            "budgets": {"time_seconds": scale["time_budget_seconds"], "memory_mb": scale["memory_budget_mb"]},
            "points": points, "cost_model": model, "predictions": predict(model, cfg)}


def scale_job(cfg: dict) -> dict:
    from jester_als.registry import JOBS

    with staged_outputs(cfg["output"], JOBS["scale"].outputs) as out:  # mode checked before any work
        study = run_study(cfg)
        write_study(study, out.stage)
    return study


def write_study(study: dict, out_dir: str) -> None:
    """``scale.png`` (when matplotlib is there), ``scale.json`` and ``scale.md`` of a study into ``out_dir`` (the
    job's staging directory); the markdown is printed too."""
    os.makedirs(out_dir, exist_ok=True)
    study["plot"] = plot(study, os.path.join(out_dir, "scale.png"))
    write_text_atomic(os.path.join(out_dir, "scale.json"), json.dumps(study, indent=2) + "\n")
    text = render_scale(study)
    if not study["plot"]:
        text += "\nThe plot was skipped: matplotlib is not installed.\n"
    write_text_atomic(os.path.join(out_dir, "scale.md"), text)
    print(text)
