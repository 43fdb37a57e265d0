"""The study: the points along each axis, each engine run on each, and the job that writes the results."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from jester_als.config import GenerateConfig, JesterConfig, ScaleConfig, size_mb
from jester_als.generate import GeneratorParams
from jester_als.numpy_als import engine_threads, last_level_cache_bytes
from jester_als.outputs import now_iso, staged_outputs, write_text_atomic
from jester_als.scale.costmodel import (
    ENGINES,
    SPARK_MEMORY_FRACTION,
    SPARK_RESERVED_MB,
    fit_cost_model,
    predict,
    predicted_limit,
)
from jester_als.scale.data import split_counts, write_split_parquet
from jester_als.scale.render import plot, render_scale
from jester_als.scale.runner import machine_memory_gb, run_worker
from jester_als.scale.worker import WorkerSpec

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


def users_point(users: int, probe: str | None = None) -> dict:
    """A users-axis point: Jester's shape (100 jokes, 72.6 ratings per user); ``probe`` names the one engine a
    limit probe runs."""
    return {
        "axis": "users",
        "users": users,
        "jokes": 100,
        "mean_ratings": 72.6,
        "min_ratings": 36,
        "gauge_jokes": 30,
        **({"probe": probe} if probe else {}),
    }


def probe_target(limit: dict, engine: str) -> dict | None:
    """The size an engine's limit probes are multiples of: where its memory model reaches the budget; for Spark
    local mode, whose resident memory stops at its heap (so that model's budget point says nothing of its limit),
    where its cached blocks fill the heap's unified memory, when its points recorded them, and none if some
    already went to disk on the axis (that limit is measured there)."""
    held = limit.get("in_memory")
    if engine == "spark" and held:
        model = held.get("storage_model")
        return None if held["first_on_disk"] or not model else model["fills_at"]
    return limit["predicted"]


def limit_probes(points: list[dict], scale: ScaleConfig) -> list[dict]:
    """Users-axis points past the listed sizes, so that a limit the listed sizes did not reach is measured, not
    only modelled: for each engine that fitted every users-axis size so far, the multiples ``scale.limit_probes``
    of its :func:`probe_target` (from models fitted on the points so far, all of them), rounded to two significant
    figures, each size once, above the largest users-axis size run and at most ten times it (a model
    extrapolated further is not worth a run of that size). Each probe runs that engine only, for
    ``scale.limit_probe_iterations`` iterations: NumPy ALS allocates everything it holds (the ratings, the blocks'
    buffers, the factors) and Spark ALS caches its blocks before the first iteration ends, so more iterations add
    time but no memory; the probes' times are for those iterations and stay out of the cost model. A failed probe
    stops the larger ones, as on the axis."""
    if not scale.limit_probes:
        return []
    found = limits(points, fit_cost_model(points, scale.rank, scale.maxIter, holdout=False), scale)
    largest = max((p["users"] for p in points if p["axis"] == "users"), default=0)
    probes = []
    for engine in ENGINES:
        target = probe_target(found[engine], engine)
        if found[engine]["first_not_fitted"] or not target:
            continue
        for factor in scale.limit_probes:
            probe = users_point(int(float(f"{target['users'] * factor:.2g}")), probe=engine)
            if largest < probe["users"] <= 10 * largest and probe not in probes:
                probes.append(probe)
    return sorted(probes, key=lambda p: p["users"])


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
    work = Path(tempfile.mkdtemp(prefix="jester-als-scale-", dir=scale.work_dir))
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
            from jester_als.scale.cluster import measure_cluster

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


def storage_model(found: dict) -> dict | None:
    """Spark's line through its cached bytes, where the study could fit one."""
    return ((found.get("spark") or {}).get("in_memory") or {}).get("storage_model")


def timed_ratings(points: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """Per engine, (jokes, training ratings) of every size it fitted in full (limit probes run two iterations
    and stay out of the time model)."""
    return {
        engine: [
            (p["jokes"], float(p["train_ratings"]))
            for p in points
            if not p.get("probe") and p["engines"].get(engine, {}).get("completed")
        ]
        for engine in ENGINES
    }


def in_memory(fitted: list[dict], engine: str, heap: str) -> dict | None:
    """Where Spark's heap stops holding what it caches, measured and modelled from its own REST API: the largest
    fitted size below the first with a cached block on disk or a spill, that first size, and a line through the
    peaks of cached bytes (``MB = fixed + per rating x training ratings``, least squares on relative error) with
    the size at which it fills the unified memory of ``heap`` (points of studies before these signals were
    recorded give None)."""
    signals = [(p, p["engines"][engine].get("spark_memory")) for p in fitted]
    if not signals or any(s is None for _, s in signals):
        return None

    def size(point, s):
        return {
            "users": point["users"],
            "train_ratings": point["train_ratings"],
            "disk_mb": s["storage_disk_peak_mb"],
            "spilled_mb": s["spilled_mb"],
            "storage_memory_mb": s["storage_memory_peak_mb"],
            "gc_share": s["gc_share"],
        }

    on_disk = [i for i, (_, s) in enumerate(signals) if s["storage_disk_peak_mb"] > 0 or s["spilled_mb"] > 0]
    first = on_disk[0] if on_disk else len(signals)
    out = {
        "largest_held": size(*signals[first - 1]) if first else None,
        "first_on_disk": size(*signals[first]) if on_disk else None,
    }
    held = signals[:first]
    if len(held) >= 2:
        ratings = np.array([p["train_ratings"] for p, _ in held], dtype=float)
        cached = np.array([s["storage_memory_peak_mb"] for _, s in held])
        a = np.column_stack([np.ones_like(ratings), ratings]) / cached[:, None]
        (fixed, per_rating), *_ = np.linalg.lstsq(a, np.ones_like(cached), rcond=None)
        # the block manager's own figure where the points recorded it (studies before it: the same rule, computed)
        reported = held[-1][1].get("storage_max_mb")
        unified = reported or (size_mb(heap) - SPARK_RESERVED_MB) * SPARK_MEMORY_FRACTION
        limit = (unified - fixed) / per_rating if per_rating > 0 else None
        per_user = held[-1][0]["train_ratings"] / held[-1][0]["users"]
        out["storage_model"] = {
            "fixed_mb": float(fixed),
            "bytes_per_rating": float(per_rating * 2**20),
            "max_relative_error": float(np.max(np.abs((fixed + per_rating * ratings) / cached - 1))),
            "unified_memory_mb": unified,
            "unified_memory_from": "Spark's maxMemory" if reported else "computed",
            "heap": heap,
            "fills_at": {"train_ratings": float(limit), "users": float(limit / per_user)} if limit else None,
        }
    return out


def limits(points: list[dict], model: dict, scale: ScaleConfig) -> dict:
    """Per engine, along the users axis: the largest size measured to fit, the first size that did not (and
    why), and the size at which the memory model reaches the study's memory budget (the line a run is stopped
    at, so that the prediction and the measurement answer the same question)."""
    users_points = [p for p in points if p["axis"] == "users"]
    out = {}
    for engine in ENGINES:
        mine = [p for p in users_points if p.get("probe", engine) == engine]  # not the other engine's probes
        fitted = [p for p in mine if p["engines"][engine].get("completed")]
        stopped = [p for p in mine if not p["engines"][engine].get("completed")]
        largest = fitted[-1] if fitted else None
        per_user = (
            (largest or users_points[-1])["train_ratings"] / (largest or users_points[-1])["users"]
            if users_points
            else 0.0
        )
        out[engine] = {
            "largest_fitted": {
                "users": largest["users"],
                "jokes": largest["jokes"],
                "train_ratings": largest["train_ratings"],
                "peak_mb": largest["engines"][engine]["peak_rss_mb"],
                **({"probe_iterations": largest["iterations"]} if "probe" in largest else {}),
            }
            if largest
            else None,
            "first_not_fitted": {
                "users": stopped[0]["users"],
                "train_ratings": stopped[0]["train_ratings"],
                "why": stopped[0]["engines"][engine]["limit"],
            }
            if stopped
            else None,
            # Spark's own account of where its heap stopped holding the data (absent from older studies)
            **(
                {"in_memory": held}
                if engine == "spark" and (held := in_memory(fitted, engine, scale.spark_driver_memory))
                else {}
            ),
            "predicted": predicted_limit(
                model.get(engine, {}),
                engine,
                per_user=per_user,
                jokes=100,
                rank=model["rank"],
                machine_mb=scale.memory_budget_mb,
                dense_budget_mb=scale.numpy_dense_budget_mb,
            )
            if users_points
            else None,
        }
    return out


def refit(study: dict, scale: ScaleConfig, why: str) -> dict:
    """The cost model, limits and predictions recomputed from a study's measured points (and its cluster
    measurements) by this version's model, with the study's own rank, iterations and budgets; the measurements
    are not touched, and ``refit`` in the result says when and why."""
    params, budgets = study["params"], study["budgets"]
    scale = scale.model_copy(
        update={
            **params,
            "memory_budget_mb": budgets["memory_mb"],
            "spark_driver_memory": budgets["spark_driver_memory"],
        }
    )
    model = fit_cost_model(study["points"], params["rank"], params["maxIter"], machine=study.get("machine"))
    cluster = study.get("cluster")
    if cluster:
        from jester_als.scale.cluster import fit_cluster_model

        cluster = {**cluster, "model": fit_cluster_model(cluster["measurements"], params["rank"])}
    found = limits(study["points"], model, scale)
    return {
        **study,
        "cost_model": model,
        "limits": found,
        "cluster": cluster,
        "predictions": predict(model, scale, cluster, storage_model(found), timed_ratings(study["points"])),
        "refit": {"when": now_iso(), "why": why},
    }


def scale_job(cfg: JesterConfig) -> str:
    """The ``scale`` job: scale.json, scale.md and scale.png in ``output.dir``; prints scale.md, returns the line
    that says it is done."""
    from jester_als.registry import JOBS

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
