"""The cost model: per-iteration time and peak memory of each engine as weighted least-squares fits of named
terms over the measured points, each coefficient with its standard error; checks on points left out of the fit
(one above the measured range, one inside it); Spark's shuffle volume; predictions for sizes this machine
cannot hold."""

from __future__ import annotations

import math

import numpy as np

from jester_als.config import ScaleConfig
from jester_als.numpy_als import block_rows, engine_threads, last_level_cache_bytes, uses_dense_path

ENGINES = ("numpy", "spark")
BYTES_PER_FACTOR = 4  # Spark ships float32 factors in its shuffles
CHECK_TARGET = 0.25  # a held-out check passes when predicted time and memory are within 25% of measured


def terms(engine: str) -> dict[str, list[str]]:
    """The names of each model's terms, in the order of :func:`_features`."""
    time_terms = ["fixed", "ratings x k^2", "rows x k^3"]
    memory = ["fixed", "ratings", "rows x k"]
    if engine == "numpy":
        time_terms += ["dense cells x k^2", "sparse-path ratings x k^2", "sparse-path jokes x blocks x k^2"]
        memory.append("dense cells")
    return {"time": time_terms, "memory": memory}


def block_rule(machine: dict | None = None) -> dict:
    """What NumPy's block size depends on: the last-level cache and the engine's threads, of the machine a study
    ran on (its ``machine`` section) or of this one. A study's predictions are for its own machine, so a refit on
    another machine keeps that machine's rule."""
    machine = machine or {}
    return {
        "cache_bytes": machine.get("last_level_cache_bytes") or last_level_cache_bytes(),
        "threads": machine.get("engine_threads") or engine_threads(),
    }


def _features(
    engine: str,
    users: float,
    jokes: float,
    nnz: float,
    rank: int,
    dense: bool = False,
    blocks: int | None = None,
    rule: dict | None = None,
) -> dict:
    """Each term's size at a point: rows are users + jokes (one normal-equation solve each), dense cells the
    users x jokes pattern NumPy's dense path works on and stores (its sparse path has none); NumPy's sparse
    path pays for its SciPy products per rating, at a cost per rating of its own, and for every block of users
    a dense jokes x k(k+1)/2 product and sum on the jokes' side (``numpy_als.solver._Solver.solve_jokes``), blocks as
    the engine cuts them on this machine's cores (``blocks``: what a measured point recorded; else the engine's
    rule for this machine, ``numpy_als.block_rows``). (A sparse-path cost per row was tried too: this design cannot
    tell it from the shared rows term, and with 5% noise on planted points its standard errors no longer
    covered the truth.)"""
    time_terms = [1.0, nnz * rank**2, (users + jokes) * rank**3]
    memory = [1.0, nnz, (users + jokes) * rank]
    if engine == "numpy":
        time_terms.append(users * jokes * rank**2 if dense else 0.0)
        time_terms.append(0.0 if dense else nnz * rank**2)
        if blocks is None:
            rule = rule or block_rule()
            blocks = np.ceil(users / block_rows(rank, int(users), rule["threads"], rule["cache_bytes"]))
        time_terms.append(0.0 if dense else jokes * blocks * rank**2)
        memory.append(users * jokes if dense else 0.0)
    return {"time": time_terms, "memory": memory}


def shuffle_bytes_per_iteration(users: float, jokes: float, nnz: float, rank: int, blocks: int) -> float:
    """Bytes Spark ALS shuffles in one iteration (both half iterations): each factor goes once to every block
    of the other side that rates it, at most min(blocks, its ratings) copies per user and per joke, each
    ``rank`` float32s. The users half ships joke factors, the jokes half user factors; the sum is the
    iteration."""
    joke_copies = jokes * min(blocks, max(1.0, nnz / max(jokes, 1.0)))
    user_copies = users * min(blocks, max(1.0, nnz / max(users, 1.0)))
    return (joke_copies + user_copies) * rank * BYTES_PER_FACTOR


def weighted_nnls(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Non-negative least squares on relative errors (points span orders of magnitude): the coefficients,
    their standard errors (NaN for a coefficient held at zero, and for all when no degree of freedom is left)
    and the largest relative error on the points fitted. The standard errors are those of the ordinary
    weighted fit restricted to the coefficients that are not at zero: s^2 (A^T A)^-1, with s^2 the residual
    variance on n - p degrees of freedom."""
    from scipy.optimize import nnls

    weights = 1.0 / np.maximum(y, 1e-12)
    a, b = x * weights[:, None], y * weights
    coef, _ = nnls(a, b)
    stderr = np.full(coef.shape, np.nan)
    active = coef > 0
    residual = b - a @ coef
    freedom = len(y) - int(active.sum())
    if freedom > 0 and active.any():
        s2 = float(residual @ residual) / freedom
        gram = a[:, active].T @ a[:, active]
        try:
            stderr[active] = np.sqrt(np.maximum(np.diag(np.linalg.inv(gram)) * s2, 0.0))
        except np.linalg.LinAlgError:
            pass
    fitted = x @ coef
    return coef, stderr, float(np.max(np.abs(fitted - y) / np.maximum(y, 1e-12)))


def _holdouts(rows: list[tuple[dict, dict]], needed: int) -> list[tuple[str, tuple[dict, dict]]]:
    """The points left out of the fit: the largest (above the range the fit sees) and the one nearest the
    middle of the rest on a log scale of training ratings (inside it), when enough points remain to fit
    ``needed`` terms with a degree of freedom to spare."""
    if len(rows) - 2 < needed + 1:
        return []
    ordered = sorted(rows, key=lambda r: (r[0]["train_ratings"], r[0]["users"] + r[0]["jokes"]))
    above, rest = ordered[-1], ordered[:-1]
    logs = np.log([r[0]["train_ratings"] for r in rest])
    middle = (logs.min() + logs.max()) / 2
    candidates = range(1, len(rest) - 1)  # never the smallest or largest left: the check must lie inside
    inside = rest[min(candidates, key=lambda i: abs(logs[i] - middle))]
    return [("above", above), ("inside", inside)]


def _dense(engine: str, result: dict) -> bool:
    return engine == "numpy" and result.get("path") == "dense"


def _measured_features(engine: str, point: dict, result: dict, rank: int) -> dict:
    """The terms at a measured point, with the blocks its fit recorded."""
    return _features(
        engine,
        point["users"],
        point["jokes"],
        point["train_ratings"],
        rank,
        _dense(engine, result),
        result.get("blocks"),
    )


def cost_points(points: list[dict], engine: str) -> list[dict]:
    """The points that measured ``engine``'s cost: completed, and not limit probes (fewer iterations, one
    engine: they measure a limit, not the cost)."""
    return [p for p in points if p["engines"].get(engine, {}).get("completed") and not p.get("probe")]


def fit_cost_model(
    points: list[dict], rank: int, iterations: int, holdout: bool = True, machine: dict | None = None
) -> dict:
    """Per engine: time per iteration and peak memory as non-negative combinations of the terms, fitted on
    the completed points less the held-out ones, and the held-out checks; NumPy's entry keeps the block rule of
    ``machine`` (the study's: :func:`block_rule`) for its predictions."""
    model = {"rank": rank, "iterations": iterations, "check_target": CHECK_TARGET}
    for engine in ENGINES:
        rows = [(p, p["engines"][engine]) for p in cost_points(points, engine)]
        names = terms(engine)
        features = {id(row): _measured_features(engine, *row, rank) for row in rows}
        # One point per term the points exercise: a term that is zero at every point (the sparse path's, when
        # every point was dense) cannot be fitted and stays at zero, so it needs no point.
        exercised = [f["time"] for f in features.values()]
        needed = int(np.count_nonzero(np.any(exercised, axis=0))) if rows else len(names["time"])
        if len(rows) < needed:
            model[engine] = {"fitted": False, "reason": f"{len(rows)} completed points (need {needed})"}
            continue
        held = _holdouts(rows, needed) if holdout else []
        held_ids = {id(r) for _, r in held}
        used = [r for r in rows if id(r) not in held_ids]
        entry = {"fitted": True, "points_used": len(used), "coefficients": {}, "max_relative_error_on_fitted": {}}
        if engine == "numpy":
            entry["block_rule"] = block_rule(machine)
        for target, key in (("time", "fit_seconds"), ("memory", "peak_rss_mb")):
            x = np.array([features[id(row)][target] for row in used])
            y = np.array([r[key] / (iterations if target == "time" else 1.0) for _, r in used])
            coef, stderr, error = weighted_nnls(x, y)
            entry["coefficients"][target] = [
                {"term": name, "value": float(c), "stderr": None if math.isnan(s) else float(s)}
                for name, c, s in zip(names[target], coef, stderr)
            ]
            entry["max_relative_error_on_fitted"][target] = error
        entry["checks"] = [check(entry, engine, role, p, r, rank, iterations) for role, (p, r) in held]
        if not held:
            entry["checks_skipped"] = (
                f"{len(rows)} completed points: holding two out would leave fewer than {needed + 1} to fit"
            )
        model[engine] = entry
    return model


def check(entry: dict, engine: str, role: str, p: dict, r: dict, rank: int, iterations: int) -> dict:
    predicted = predict_point(
        entry, engine, p["users"], p["jokes"], p["train_ratings"], rank, iterations, _dense(engine, r), r.get("blocks")
    )
    seconds_error = predicted["seconds"] / r["fit_seconds"] - 1
    mb_error = predicted["memory_mb"] / r["peak_rss_mb"] - 1
    return {
        "role": role,
        "axis": p.get("axis"),
        "train_ratings": p["train_ratings"],
        "users": p["users"],
        "jokes": p["jokes"],
        "predicted_seconds": predicted["seconds"],
        "measured_seconds": r["fit_seconds"],
        "predicted_mb": predicted["memory_mb"],
        "measured_mb": r["peak_rss_mb"],
        "seconds_error": seconds_error,
        "mb_error": mb_error,
        "within_target": abs(seconds_error) <= CHECK_TARGET and abs(mb_error) <= CHECK_TARGET,
    }


def values(entry: dict, target: str) -> list[float]:
    return [c["value"] for c in entry["coefficients"][target]]


def predict_point(
    entry: dict,
    engine: str,
    users: float,
    jokes: float,
    nnz: float,
    rank: int,
    iterations: int,
    dense: bool = False,
    blocks: int | None = None,
) -> dict:
    features = _features(engine, users, jokes, nnz, rank, dense, blocks, entry.get("block_rule"))
    seconds = float(np.dot(features["time"], values(entry, "time"))) * iterations
    memory = float(np.dot(features["memory"], values(entry, "memory")))
    return {"seconds": seconds, "memory_mb": memory}


TARGETS = [
    {"name": "real Jester (dataset 1)", "users": 24983, "jokes": 100, "ratings": 1_810_455},
    {
        "name": "50 M users x 10,000 jokes (seed's guess)",
        "users": 50_000_000,
        "jokes": 10_000,
        "ratings": 50_000_000 * 100,
    },
    {"name": "Netflix Prize", "users": 480_189, "jokes": 17_770, "ratings": 100_480_507},
]


# Spark's unified memory (execution and storage) in a heap (UnifiedMemoryManager: 300 MB reserved for the
# system, spark.memory.fraction 0.6 of the rest, the default the workers keep), used for studies recorded before
# the workers kept Spark's own figure (maxMemory, which starts from the JVM's usable heap rather than -Xmx) and
# to turn cached bytes into the heap that holds them.
SPARK_RESERVED_MB, SPARK_MEMORY_FRACTION = 300, 0.6


def heap_needed_mb(storage: dict, train_ratings: float) -> float:
    """The heap whose unified memory holds what Spark ALS caches for ``train_ratings``, by the study's line
    through the cached bytes (``limits.spark.in_memory.storage_model``) and the rule by which Spark sizes its
    unified memory from the heap (UnifiedMemoryManager: 300 MB reserved, ``spark.memory.fraction`` of the rest).
    Spark local mode's resident memory grows to whatever heap it is given, so that model cannot say this."""
    cached_mb = storage["fixed_mb"] + storage["bytes_per_rating"] * train_ratings / 2**20
    return SPARK_RESERVED_MB + cached_mb / SPARK_MEMORY_FRACTION


def predict(
    model: dict,
    scale: ScaleConfig,
    cluster: dict | None = None,
    storage: dict | None = None,
    timed: dict[str, list[tuple[int, float]]] | None = None,
) -> list[dict]:
    """The models' predictions for the named data sets. The cluster column's time divides the size-dependent
    part of one machine's time over the executors (perfect scaling, no network time: an assumption, said so
    in scale.md). Its shuffle volume and memory per executor come from the cluster model fitted to the
    standalone-cluster measurements when there is one (``cluster``), else from the partitioning rule above
    and one machine's memory divided over the executors. Given Spark's storage model (``storage``), Spark's
    one-machine memory is the heap it needs (:func:`heap_needed_mb`); given the sizes each engine was timed on
    (``timed``: jokes and training ratings), each prediction says how far beyond them it reaches
    (``extrapolation``: its training ratings over the most timed with at least as many jokes), which is how far
    the model is trusted."""
    measured = (cluster or {}).get("model") or {}
    measured = measured if measured.get("fitted") else None
    rank, iterations = model["rank"], model["iterations"]
    machine_mb = scale.machine_memory_gb * 1024
    executors = scale.cluster_executors
    out = []
    for target in TARGETS:
        nnz = target["ratings"] * (1 - scale.test_fraction)
        row = {**target, "train_ratings": nnz, "engines": {}}
        for engine in ENGINES:
            entry = model.get(engine, {})
            if not entry.get("fitted"):
                continue
            dense = engine == "numpy" and uses_dense_path(
                target["users"], target["jokes"], nnz, scale.numpy_dense_budget_mb
            )
            one = predict_point(entry, engine, target["users"], target["jokes"], nnz, rank, iterations, dense)
            if engine == "numpy":
                one["path"] = "dense" if dense else "sparse"
            one["memory_from"] = "resident memory model"
            if engine == "spark" and storage:
                one.update(
                    resident_mb=one["memory_mb"],
                    memory_mb=heap_needed_mb(storage, nnz),
                    memory_from="heap its cached blocks need",
                )
            wide_enough = [ratings for jokes, ratings in (timed or {}).get(engine, []) if jokes >= target["jokes"]]
            if wide_enough:
                one["extrapolation"] = nnz / max(wide_enough)
            row["engines"][engine] = {**one, "fits_one_machine": one["memory_mb"] <= machine_mb}
            if engine == "spark":
                fixed_seconds = values(entry, "time")[0] * iterations
                fixed_mb = values(entry, "memory")[0]
                copies = shuffle_bytes_per_iteration(
                    target["users"], target["jokes"], nnz, rank, executors * scale.cores_per_executor
                )
                if measured:
                    memory = measured["executor_memory_mb"]
                    per_executor = memory["fixed"] + memory["per_rating"] * nnz / executors
                else:
                    per_executor = fixed_mb + (one["memory_mb"] - fixed_mb) / executors
                row["engines"]["spark"]["cluster"] = {
                    "executors": executors,
                    "seconds": fixed_seconds + (one["seconds"] - fixed_seconds) / executors,
                    "memory_mb_per_executor": per_executor,
                    "shuffle_gb_per_iteration": copies * (measured["shuffle_factor"] if measured else 1.0) / 2**30,
                    "shuffle_and_memory_from": "cluster measurements" if measured else "partitioning rule",
                    "time_from": "assumed perfect scaling",
                }
        out.append(row)
    return out


def predicted_limit(
    entry: dict, engine: str, *, per_user: float, jokes: int, rank: int, machine_mb: float, dense_budget_mb: float
) -> dict | None:
    """The number of users (``jokes`` jokes, ``per_user`` training ratings each) at which the engine's memory
    model reaches ``machine_mb`` (the study passes its memory budget, the line a measured run is stopped at),
    taking NumPy's path at each size as the engine would (dense while the pattern fits its budget, sparse past
    it): a geometric scan, then bisection."""
    if not entry.get("fitted"):
        return None

    def memory(users: float) -> float:
        nnz = users * per_user
        dense = engine == "numpy" and uses_dense_path(users, jokes, nnz, dense_budget_mb)
        features = _features(engine, users, jokes, nnz, rank, dense, rule=entry.get("block_rule"))
        return float(np.dot(features["memory"], values(entry, "memory")))

    low, high = 1_000.0, None
    users = low
    while users < 1e10:
        if memory(users) > machine_mb:
            high = users
            break
        low, users = users, users * 1.5
    if high is None:
        return None
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if memory(middle) <= machine_mb else (low, middle)
    nnz = low * per_user
    path = ("dense" if uses_dense_path(low, jokes, nnz, dense_budget_mb) else "sparse") if engine == "numpy" else None
    return {"users": low, "train_ratings": nnz, "memory_mb": machine_mb, "path": path}


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
