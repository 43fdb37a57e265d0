"""What a study's measurements say, as data: the limits each engine reached along the users axis and the probes
past them, Spark's own account of what its heap held, the crossovers, why a cost-model check missed, the first
fit's extra cost, and the refit of a recorded study. ``render`` writes these into scale.md; ``study`` runs the
points they come from."""

from __future__ import annotations

import numpy as np

from jester_als.config import ScaleConfig, size_mb
from jester_als.outputs import now_iso
from jester_als.scale.costmodel import (
    ENGINES,
    SPARK_MEMORY_FRACTION,
    SPARK_RESERVED_MB,
    cost_points,
    fit_cluster_model,
    fit_cost_model,
    predict,
    predicted_limit,
)


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


def storage_model(found: dict) -> dict | None:
    """Spark's line through its cached bytes, where the study could fit one."""
    return ((found.get("spark") or {}).get("in_memory") or {}).get("storage_model")


def timed_ratings(points: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """Per engine, (jokes, training ratings) of every size it fitted in full (limit probes run two iterations
    and stay out of the time model)."""
    return {
        engine: [(p["jokes"], float(p["train_ratings"])) for p in cost_points(points, engine)] for engine in ENGINES
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


def model_rank(study: dict) -> int:
    return study["cost_model"]["rank"]


def crossover(points: list[dict], axis: str) -> dict | None:
    """The first size at which NumPy could not run (budget) while Spark still could, or at which Spark
    became faster."""
    for p in points:
        if p["axis"] != axis or "probe" in p:  # a limit probe runs one engine: the other's "not run" is no stop
            continue
        numpy_r, spark_r = p["engines"].get("numpy", {}), p["engines"].get("spark", {})
        if spark_r.get("completed") and not numpy_r.get("completed"):
            return {
                "train_ratings": p["train_ratings"],
                "users": p["users"],
                "jokes": p["jokes"],
                "why": f"NumPy stopped: {numpy_r.get('limit')}",
            }
        if spark_r.get("completed") and numpy_r.get("completed") and spark_r["fit_seconds"] < numpy_r["fit_seconds"]:
            return {
                "train_ratings": p["train_ratings"],
                "users": p["users"],
                "jokes": p["jokes"],
                "why": "Spark fitted faster",
            }
    return None


def completed(result: dict) -> bool:
    return bool(result.get("completed"))


def _not_monotone(study: dict, engine: str, axis: str) -> list[str]:
    """Pairs of neighbouring sizes on ``axis`` where more training ratings peaked lower by over 10%."""
    done = sorted(
        (p for p in cost_points(study["points"], engine) if p["axis"] == axis), key=lambda p: p["train_ratings"]
    )
    return [
        f"{a['engines'][engine]['peak_rss_mb']:,.0f} MB at {a['train_ratings']:,} ratings and "
        f"{b['engines'][engine]['peak_rss_mb']:,.0f} MB at {b['train_ratings']:,}"
        for a, b in zip(done, done[1:])
        if b["engines"][engine]["peak_rss_mb"] < 0.9 * a["engines"][engine]["peak_rss_mb"]
    ]


def why_missed(study: dict, engine: str, check: dict) -> str:
    """Why a held-out check missed, from what the study measured: for memory, a Spark resident set at its heap
    (the heap the JVM was given, not the fit's need) and peaks that fell as the ratings grew on the check's axis
    (memory set by the runtime, not by the data); said plainly when neither is found."""
    found, target = [], study["cost_model"]["check_target"]
    if abs(check["mb_error"]) > target:
        heap = study["budgets"].get("spark_driver_memory")
        at_heap = (
            [
                p
                for p in cost_points(study["points"], engine)
                if p["engines"][engine]["peak_rss_mb"] >= 0.9 * size_mb(heap)
            ]
            if engine == "spark" and heap
            else []
        )
        if at_heap:
            found.append(
                f"local mode's resident memory reached its {heap} heap ("
                + ", ".join(
                    f"{p['engines'][engine]['peak_rss_mb']:,.0f} MB at {p['users']:,} x {p['jokes']:,}" for p in at_heap
                )
                + "): it is the heap the JVM grew to, not what the fit needs (its cached blocks, under "
                "Single-machine limits)"
            )
        falling = _not_monotone(study, engine, check["axis"])
        if falling:
            found.append(
                f"on the {check['axis']} axis its peak fell as the ratings grew ({'; '.join(falling)}), "
                f"so its memory there is set by the runtime's own sizing more than by the data"
            )
        if not found:
            found.append("the memory miss has no cause the measurements show")
    if abs(check["seconds_error"]) > target:
        found.append(_first_fit(study, engine, check) or "the time miss has no cause the measurements show")
    return "; ".join(found)


def _first_fit(study: dict, engine: str, check: dict) -> str | None:
    """A check measured slower than predicted on a size fitted once (above ``repeat_below_ratings``): its time
    includes a fresh worker's first fit, which the repeated sizes show to be slower than their median (the JVM
    compiling Spark's code); what the check is without that excess."""
    point = next(
        (
            p
            for p in study["points"]
            if "probe" not in p
            and p["axis"] == check["axis"]
            and p["users"] == check["users"]
            and p["train_ratings"] == check["train_ratings"]
        ),
        None,
    )
    if point is None or len(point["engines"][engine].get("seconds", [])) != 1 or check["seconds_error"] >= 0:
        return None
    repeated = _repeated(study, engine)
    excess = first_fit_excess(study, engine)
    if excess is None or point["engines"][engine].get("warmup_seconds") is not None:
        return None
    if excess <= 0 or excess >= check["measured_seconds"]:
        return None
    without = check["predicted_seconds"] / (check["measured_seconds"] - excess) - 1
    warming = "the JVM compiling Spark's code" if engine == "spark" else "a fresh process warming up"
    return (
        f"this size was fitted once, so its time includes the worker's first fit, which at the "
        f"{len(repeated)} sizes fitted {len(repeated[0])} times took {excess:,.1f} s longer on average than "
        f"their median ({warming}); less that, the check is {without:+.0%}"
    )


def fitted_users(study: dict, engine: str) -> float | None:
    limit = (study.get("limits", {}).get(engine) or {}).get("largest_fitted")
    return limit["users"] if limit else None


def _repeated(study: dict, engine: str) -> list[list[float]]:
    """The fit times of every size the engine fitted three times or more."""
    return [r["seconds"] for p in study["points"] if len((r := p["engines"].get(engine, {})).get("seconds", [])) > 2]


def first_fit_excess(study: dict, engine: str) -> float | None:
    """How much longer a fresh worker's first fit took than the median of its repeats, averaged over the sizes
    fitted three times or more (None without such sizes)."""
    repeated = _repeated(study, engine)
    return float(np.mean([s[0] - np.median(s) for s in repeated])) if repeated else None


def warm_seconds(study: dict, point: dict, engine: str) -> tuple[float, bool]:
    """A point's fit time without a fresh process's first-fit cost, and whether it had to be estimated: the
    median of repeats, or a single fit timed after a warm-up fit (``warmup_seconds``), or (studies from before
    the warm-up) a single fit less :func:`first_fit_excess`."""
    result = point["engines"][engine]
    if len(result.get("seconds", [])) != 1 or result.get("warmup_seconds") is not None:
        return result["fit_seconds"], False
    excess = first_fit_excess(study, engine)
    if excess is None or excess <= 0 or excess >= result["fit_seconds"]:
        return result["fit_seconds"], False
    return result["fit_seconds"] - excess, True


def uneven(cluster: dict, check: dict) -> str:
    """Why a cluster check's executor memory missed, when the measurement shows it: executors whose peaks differ
    by over a quarter, where the model takes the largest as an even share of the ratings."""
    peaks = next(
        (
            m.get("executor_peaks_mb")
            for m in cluster["measurements"]
            if m["executors"] == check["executors"] and m["train_ratings"] == check["train_ratings"]
        ),
        None,
    )
    if not peaks or len(peaks) < 2 or max(peaks) < 1.25 * min(peaks):
        return ""
    return (
        f"; why: its {len(peaks)} executors peaked {min(peaks):,.0f} to {max(peaks):,.0f} MB "
        f"({max(peaks) / min(peaks):.1f}x), not evenly: the model takes the largest executor's peak as an "
        f"even share of the ratings, and the cached ratings and ALS blocks are not spread evenly over so few "
        f"small tasks"
    )
