"""The study: the points along each axis, each engine run on each, and the job that writes the results."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from jester_als.config import GenerateConfig, JesterConfig, ScaleConfig
from jester_als.generate import GeneratorParams
from jester_als.harness.data import split_counts, write_split_parquet
from jester_als.harness.runner import machine_memory_gb, run_worker
from jester_als.harness.worker import WorkerSpec
from jester_als.numpy_als import engine_threads, last_level_cache_bytes
from jester_als.outputs import now_iso, scratch_dir, staged_outputs, write_text_atomic
from jester_als.registry import JOBS
from jester_als.scale.analysis import limit_probes, limits, storage_model, timed_ratings, users_point
from jester_als.scale.cluster import measure_cluster
from jester_als.scale.costmodel import (
    ENGINES,
    fit_cost_model,
    predict,
)
from jester_als.scale.render import plot, render_scale

log = logging.getLogger("jester_als.scale")


def axis_points(scale: ScaleConfig) -> list[dict]:
    """The study's design: three axes, so that ratings, rows (users + jokes) and dense cells (users x jokes)
    vary independently. Users axis: Jester's shape (100 jokes, 72.6 ratings per user) with ever more users;
    density axis: fixed users and jokes, ratings per user from few to many; jokes axis: fixed users, ever more
    jokes, up to a Netflix-shaped table (17,770 items)."""
    points = [users_point(n) for n in scale.users_axis]
    density_jokes = scale.density_axis_jokes
    points += [
        {
            "axis": "density",
            "users": scale.density_axis_users,
            "jokes": density_jokes,
            "mean_ratings": float(r),
            "min_ratings": max(1, int(r) // 2),
            "gauge_jokes": min(5, max(1, int(r) // 4)),
        }
        for r in scale.density_axis
    ]
    per_user = scale.jokes_axis_ratings_per_user
    points += [
        {
            "axis": "jokes",
            "users": scale.jokes_axis_users,
            "jokes": j,
            "mean_ratings": min(float(per_user), 0.726 * j),
            "min_ratings": min(15, j),
            "gauge_jokes": min(10, j),
        }
        for j in scale.jokes_axis
    ]
    return points


def _progress(index: int, specs: list[dict], seconds: list[float], started: float) -> str:
    """``point 3/15 (users axis, 250,000 x 100); 2.1 min so far, about 20 min left``. Time left: each point
    done so far took ``a + b x planned ratings`` (fitted to the points done; planned ratings are users x mean
    ratings per user), applied to the points left; from two points on."""
    spec = specs[index]
    planned = np.array([s["users"] * s["mean_ratings"] for s in specs], dtype=float)
    elapsed = time.monotonic() - started
    left = "time left known after two points"
    if "probe" in spec:  # one engine for a few iterations: the axes' time per rating says nothing of it
        left = f"a limit probe of {spec['probe']}, its time not estimated"
    elif index >= 2:
        from scipy.optimize import nnls

        coef, _ = nnls(np.column_stack([np.ones(index), planned[:index]]), np.array(seconds[:index]))
        left = f"about {(coef[0] * (len(specs) - index) + coef[1] * planned[index:].sum()) / 60:.0f} min left"
    return (
        f"point {index + 1}/{len(specs)} ({spec['axis']} axis, {spec['users']:,} x {spec['jokes']:,}); "
        f"{elapsed / 60:.1f} min so far, {left}"
    )


def _point_data(
    spec: dict, specs: list[dict], work: Path, gen_cfg: GenerateConfig, scale: ScaleConfig
) -> tuple[dict, Path, int | None]:
    """A point's table, generated and split unless it is there already; the point's record so far, where its
    table is, and the largest user id it fits (a limit probe's share of the probes' table; None: all)."""
    # the limit probes share one table, the largest probe's: a smaller probe fits its first users
    table = max((s for s in specs if "probe" in s), key=lambda s: s["users"]) if "probe" in spec else spec
    max_user = spec["users"] if table["users"] > spec["users"] else None
    data_dir = work / (
        f"{table['axis']}-{table['users']}x{table['jokes']}"
        + (f"-{table['mean_ratings']:g}per" if table["axis"] == "density" else "")
    )
    started = time.perf_counter()
    if not (data_dir / "train.parquet").exists():
        params = GeneratorParams.from_config(
            gen_cfg,
            users=table["users"],
            jokes=table["jokes"],
            mean_ratings=table["mean_ratings"],
            min_ratings=table["min_ratings"],
            gauge_jokes=table["gauge_jokes"],
        )
        if table is not spec:
            log.info("  generating %s users once for the limit probes", f"{table['users']:,}")
        write_split_parquet(params, data_dir, scale.test_fraction, scale.seed)
    sizes = split_counts(data_dir, max_user)
    point = {
        **spec,
        **sizes,
        "ratings": sizes["train_ratings"] + sizes["test_ratings"],
        "generate_seconds": time.perf_counter() - started,
        "engines": {},
        # a limit probe measures memory, which the first iteration has already reached
        "iterations": scale.limit_probe_iterations if "probe" in spec else scale.maxIter,
    }
    log.info("  %s training ratings, generated in %.0f s", f"{sizes['train_ratings']:,}", point["generate_seconds"])
    return point, data_dir, max_user


def _run_engines(
    point: dict, spec: dict, data_dir: Path, max_user: int | None, stopped: dict, scale: ScaleConfig, logs_dir: Path
) -> None:
    """Each engine on the point, in a worker of its own, into ``point["engines"]``; an engine stopped on this
    axis before (``stopped``) or a probe of the other engine's limit is not run, and says why."""
    for engine in ENGINES:
        key = (spec["axis"], engine)
        if key in stopped:
            point["engines"][engine] = {
                "completed": False,
                "skipped": True,
                "limit": f"not run: {stopped[key]} at a smaller size",
            }
            continue
        if spec.get("probe", engine) != engine:
            point["engines"][engine] = {
                "completed": False,
                "skipped": True,
                "limit": f"not run: a probe of {spec['probe']}'s memory limit",
            }
            continue
        repeats = scale.repeats if point["train_ratings"] <= scale.repeat_below_ratings else 1
        worker = WorkerSpec(
            engine=engine,
            data_dir=str(data_dir),
            rank=scale.rank,
            reg_param=scale.regParam,
            max_iter=point["iterations"],
            repeats=repeats,
            result_file=str(data_dir / f"{engine}-result.json"),
            spark_driver_memory=scale.spark_driver_memory,
            dense_budget_mb=scale.numpy_dense_budget_mb,
            max_user=max_user,
            # a probe measures memory, and its fits are what its budget is for
            warmup=repeats == 1 and not spec.get("probe"),
        )
        result = run_worker(
            worker,
            memory_budget_mb=scale.memory_budget_mb,
            time_budget_seconds=scale.time_budget_seconds,
            keep_log_in=logs_dir,
            keep_all_logs=True,
            name=f"{data_dir.name}-{spec['users']}-{engine}" if max_user else None,
        )
        point["engines"][engine] = result
        if not result["completed"]:
            stopped[key] = result["limit"]
        log.info(
            "  %s: %s",
            engine,
            f"{result['fit_seconds']:.2f} s, peak {result['peak_rss_mb']:,.0f} MB, RMSE {result['rmse']:.4f}"
            if result["completed"]
            else result["limit"],
        )


def run_study(cfg: JesterConfig) -> dict:
    scale = cfg.scale
    work = Path(scratch_dir("scale", scale.work_dir))
    stopped: dict[tuple[str, str], str] = {}
    points = []
    specs = axis_points(scale)
    study_started = time.monotonic()
    point_seconds: list[float] = []
    try:
        index = 0
        while index < len(specs):
            spec = specs[index]
            log.info("scale %s", _progress(index, specs, point_seconds, study_started))
            point_started = time.monotonic()
            point, data_dir, max_user = _point_data(spec, specs, work, cfg.generate, scale)
            _run_engines(point, spec, data_dir, max_user, stopped, scale, Path(cfg.output.dir) / "worker-logs")
            points.append(point)
            point_seconds.append(time.monotonic() - point_started)
            if max_user is None:  # the table's last point (a probe's shared table ends with its largest probe)
                for name in ("train.parquet", "test.parquet"):
                    (data_dir / name).unlink(missing_ok=True)
            index += 1
            if index == len(specs) and not any("probe" in s for s in specs):
                # after every axis: on the users axis alone ratings, rows and dense cells grow together, and
                # the memory model could not tell its terms apart
                probes = limit_probes(points, scale)
                log.info(
                    "scale: %s",
                    "limit probes at " + ", ".join(f"{p['users']:,} users ({p['probe']})" for p in probes)
                    if probes
                    else "no limit probes",
                )
                specs[index:index] = probes
        cluster = None
        if scale.cluster_measure_users:
            cluster = measure_cluster(cfg, work, Path(cfg.output.dir) / "worker-logs")
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    machine = {
        "cpus": os.cpu_count(),
        "memory_gb": machine_memory_gb(),
        "last_level_cache_bytes": last_level_cache_bytes(),
        "engine_threads": engine_threads(),
    }
    model = fit_cost_model(points, scale.rank, scale.maxIter, machine=machine)
    found = limits(points, model, scale)
    return {
        "when": now_iso(),
        "machine": machine,
        "params": {"rank": scale.rank, "regParam": scale.regParam, "maxIter": scale.maxIter},
        "budgets": {
            "time_seconds": scale.time_budget_seconds,
            "memory_mb": scale.memory_budget_mb,
            "spark_driver_memory": scale.spark_driver_memory,
        },
        "study_minutes": (time.monotonic() - study_started) / 60,
        "points": points,
        "cost_model": model,
        "limits": found,
        "cluster": cluster,
        "predictions": predict(model, scale, cluster, storage_model(found), timed_ratings(points)),
    }


def scale_job(cfg: JesterConfig) -> str:
    """The ``scale`` job: scale.json, scale.md and scale.png in ``output.dir``; prints scale.md, returns the line
    that says it is done."""

    started = time.perf_counter()
    with staged_outputs(cfg.output, JOBS["scale"].outputs) as out:  # mode checked before any work
        study = run_study(cfg)
        write_study(study, out.stage)
    return f"jester-als scale: done in {time.perf_counter() - started:.0f} s; outputs in {cfg.output.dir}"


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
