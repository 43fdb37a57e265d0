"""The cost model: per-iteration time and peak memory as least-squares fits over the measured points, a check
on a point left out, Spark's shuffle volume, and predictions for sizes this machine cannot hold."""

from __future__ import annotations

import numpy as np

from jester_als.numpy_als import uses_dense_path

ENGINES = ("numpy", "spark")
BYTES_PER_FACTOR = 4  # Spark ships float32 factors in its shuffles


def _features(engine: str, users: float, jokes: float, nnz: float, rank: int, dense: bool = False) -> dict:
    time_terms = [1.0, nnz * rank ** 2, (users + jokes) * rank ** 3]
    memory = [1.0, nnz, (users + jokes) * rank]
    if engine == "numpy":
        # NumPy's dense path works and stores the whole users x jokes pattern; the sparse path does not.
        time_terms.append(users * jokes * rank ** 2 if dense else 0.0)
        memory.append(users * jokes if dense else 0.0)
    return {"time": time_terms, "memory": memory}


def shuffle_bytes_per_iteration(users: float, jokes: float, nnz: float, rank: int, blocks: int) -> float:
    """Spark ALS sends each factor once to every block of the other side that rates it: at most
    min(blocks, its ratings) copies per user and per joke, each rank float32s, per half iteration."""
    joke_copies = jokes * min(blocks, max(1.0, nnz / max(jokes, 1.0)))
    user_copies = users * min(blocks, max(1.0, nnz / max(users, 1.0)))
    return (joke_copies + user_copies) * rank * BYTES_PER_FACTOR


def _nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with non-negative coefficients, relative errors (points span orders of magnitude)."""
    from scipy.optimize import nnls

    weights = 1.0 / np.maximum(y, 1e-9)
    coef, _ = nnls(x * weights[:, None], y * weights)
    return coef


def fit_cost_model(points: list[dict], rank: int, iterations: int, holdout: bool = True) -> dict:
    """Per engine: time per iteration and peak memory as non-negative combinations of the features. The
    largest completed point of each engine is held out (when there are enough points) to check the model."""
    model = {"rank": rank, "iterations": iterations, "engines": {}}
    for engine in ENGINES:
        rows = [(p, p["engines"][engine]) for p in points
                if p["engines"].get(engine, {}).get("completed")]
        if len(rows) < 3:
            model["engines"][engine] = {"fitted": False, "reason": f"{len(rows)} completed points (need 3)"}
            continue
        rows.sort(key=lambda r: r[0]["train_ratings"])
        held = rows[-1] if holdout and len(rows) >= 4 else None
        used = rows[:-1] if held else rows
        fitted = {}
        for target, key in (("time", "fit_seconds"), ("memory", "peak_rss_mb")):
            x = np.array([_features(engine, p["users"], p["jokes"], p["train_ratings"], rank,
                                    r.get("path") == "dense")[target] for p, r in used])
            y = np.array([r[key] / (iterations if target == "time" else 1.0) for _, r in used])
            coef = _nnls(x, y)
            fitted_y = x @ coef
            fitted[target] = {"coefficients": coef.tolist(),
                              "max_relative_error_on_fitted": float(np.max(np.abs(fitted_y - y) / y))}
        entry = {"fitted": True, "points_used": len(used), **fitted}
        if held:
            p, r = held
            predicted = predict_point(entry, engine, p["users"], p["jokes"], p["train_ratings"], rank, iterations,
                                      r.get("path") == "dense")
            entry["holdout"] = {"users": p["users"], "jokes": p["jokes"], "train_ratings": p["train_ratings"],
                                "measured_seconds": r["fit_seconds"], "predicted_seconds": predicted["seconds"],
                                "measured_memory_mb": r["peak_rss_mb"], "predicted_memory_mb": predicted["memory_mb"]}
        model["engines"][engine] = entry
    return model


def predict_point(entry: dict, engine: str, users: float, jokes: float, nnz: float, rank: int,
                  iterations: int, dense: bool = False) -> dict:
    features = _features(engine, users, jokes, nnz, rank, dense)
    seconds = float(np.dot(features["time"], entry["time"]["coefficients"])) * iterations
    memory = float(np.dot(features["memory"], entry["memory"]["coefficients"]))
    return {"seconds": seconds, "memory_mb": memory}


TARGETS = [
    {"name": "real Jester (dataset 1)", "users": 24983, "jokes": 100, "ratings": 1_810_455},
    {"name": "50 M users x 10,000 jokes (seed's guess)", "users": 50_000_000, "jokes": 10_000,
     "ratings": 50_000_000 * 100},
    {"name": "Netflix Prize", "users": 480_189, "jokes": 17_770, "ratings": 100_480_507},
]


def predict(model: dict, cfg: dict) -> list[dict]:
    scale = cfg["scale"]
    rank, iterations = model["rank"], model["iterations"]
    machine_mb = scale["machine_memory_gb"] * 1024
    executors = scale["cluster_executors"]
    out = []
    for target in TARGETS:
        nnz = target["ratings"] * (1 - scale["test_fraction"])
        row = {**target, "train_ratings": nnz, "engines": {}}
        for engine, entry in model["engines"].items():
            if not entry.get("fitted"):
                continue
            dense = engine == "numpy" and uses_dense_path(target["users"], target["jokes"], nnz,
                                                          scale["numpy_dense_budget_mb"])
            one = predict_point(entry, engine, target["users"], target["jokes"], nnz, rank, iterations, dense)
            if engine == "numpy":
                one["path"] = "dense" if dense else "sparse"
            fits = one["memory_mb"] <= machine_mb
            row["engines"][engine] = {**one, "fits_one_machine": fits}
            if engine == "spark":
                # Work and data divide over executors; the per-iteration fixed cost does not.
                coef_t = entry["time"]["coefficients"]
                coef_m = entry["memory"]["coefficients"]
                fixed = coef_t[0] * iterations
                row["engines"]["spark"]["cluster"] = {
                    "executors": executors,
                    "seconds": fixed + (one["seconds"] - fixed) / executors,
                    "memory_mb_per_executor": coef_m[0] + (one["memory_mb"] - coef_m[0]) / executors,
                    "shuffle_gb_per_iteration": 2 * shuffle_bytes_per_iteration(
                        target["users"], target["jokes"], nnz, rank, executors * scale["cores_per_executor"]) / 2**30,
                }
        out.append(row)
    return out
