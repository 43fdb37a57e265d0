"""When Spark ALS is not allowed (Databricks shared compute without ML whitelisting), either stop with a
message that says what to do, or, with ``als.fallback: numpy``, tune, evaluate and recommend with the NumPy
engine on the driver, and say so in the log and in ``metrics.json``.
"""

from __future__ import annotations

import itertools
import logging
import os
import time

import numpy as np

from jester_als.errors import JobError
from jester_als.numpy_als import NumpyALSModel, RatingMatrix, fit_numpy_als, positions, rmse_mae

log = logging.getLogger(__name__)

WHITELIST_MARKERS = ("is not whitelisted", "Py4JSecurityException")

WAYS_OUT = (
    "Spark ML's ALS cannot be constructed on this compute (Py4JSecurityException: the ALS class is not "
    "whitelisted). This happens on Databricks shared/standard access mode clusters before Runtime 17. "
    "Ways out: (1) run on a cluster in dedicated (single-user) access mode; (2) use Databricks Runtime 17 or "
    "later on standard compute; (3) use serverless compute with environment version 4 or later. Or set "
    "als.fallback: numpy to fit the NumPy engine on the driver instead."
)


class AlsNotAllowedError(JobError):
    """Spark ALS was refused by the platform (Py4J whitelisting)."""


def is_not_allowed(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return any(marker in text for marker in WHITELIST_MARKERS)


def not_allowed_reason(exc: BaseException) -> str:
    """The line of the error that says what was refused."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return next((line for line in lines if any(m in line for m in WHITELIST_MARKERS)), lines[0] if lines else "")


def _arrays(df) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = df.select("user", "joke", "rating").toArrow()
    return (table.column("user").to_numpy().astype(np.int64), table.column("joke").to_numpy().astype(np.int64),
            table.column("rating").to_numpy().astype(np.float64))


def tune_numpy(train_df, test_df, cfg: dict, reason: str) -> tuple[dict, NumpyALSModel]:
    """The same grid, train ratio and seeds as the Spark tuning, fitted with NumPy ALS on the driver."""
    tuning = cfg["tune"]
    grid = tuning["grid"]
    ignored = sorted(set(grid) - {"rank", "regParam", "maxIter"})
    if ignored:
        log.warning("NumPy fallback ignores grid params it does not have: %s", ignored)
    users, jokes, ratings = _arrays(train_df)
    test_users, test_jokes, test_ratings = _arrays(test_df)
    inner_train = np.random.default_rng(tuning["seed"]).random(ratings.size) < tuning["train_ratio"]
    fit_part = RatingMatrix.from_ids(users[inner_train], jokes[inner_train], ratings[inner_train])
    names = ("maxIter", "rank", "regParam")
    values = [grid.get(name, [default]) for name, default in zip(names, (10, 10, 0.1))]
    validation = []
    started = time.perf_counter()
    for max_iter, rank, reg in itertools.product(*values):
        model = fit_numpy_als(fit_part, rank=rank, reg_param=reg, max_iter=max_iter, seed=cfg["als"]["seed"])
        score = rmse_mae(ratings[~inner_train], model.predict(users[~inner_train], jokes[~inner_train]))
        validation.append({"params": {"maxIter": max_iter, "rank": rank, "regParam": reg},
                           "validation_rmse": score["rmse"]})
    tune_seconds = time.perf_counter() - started
    best = dict(min(validation, key=lambda p: p["validation_rmse"])["params"])
    params = dict(best, maxIter=tuning["refit_max_iter"] or best["maxIter"])
    started = time.perf_counter()
    model = fit_numpy_als(RatingMatrix.from_ids(users, jokes, ratings), rank=params["rank"],
                          reg_param=params["regParam"], max_iter=params["maxIter"], seed=cfg["als"]["seed"])
    fit_seconds = time.perf_counter() - started
    scores = rmse_mae(test_ratings, model.predict(test_users, test_jokes))
    log.warning("Spark ALS not allowed here; tuned NumPy ALS on the driver instead: %s, test RMSE %.4f", params,
                scores["rmse"])
    section = {"engine": "numpy (fallback)", "fallback_reason": reason, "best_params": best, "params": params,
               "model_params": params, "validation": validation, "tune_seconds": tune_seconds,
               "fit_seconds": fit_seconds, "test_rmse": scores["rmse"], "test_mae": scores["mae"],
               "test_rows_scored": scores["rows"], "train_ratings": int(ratings.size)}
    return section, model


def save_numpy_model(model: NumpyALSModel, path: str) -> None:
    os.makedirs(path, exist_ok=True)
    np.savez(os.path.join(path, "numpy_als.npz"), user_factors=model.user_factors, joke_factors=model.joke_factors,
             user_ids=model.user_ids, joke_ids=model.joke_ids)


def load_numpy_model(path: str) -> NumpyALSModel | None:
    file = os.path.join(path, "numpy_als.npz")
    if not os.path.exists(file):
        return None
    with np.load(file) as saved:
        return NumpyALSModel(saved["user_factors"], saved["joke_factors"], saved["user_ids"], saved["joke_ids"])


def recommend_numpy(spark, model: NumpyALSModel, rated_df, top_n: int):
    """Top-N unrated jokes per user from NumPy factors, scored on the driver in blocks of users."""
    import pyarrow as pa

    users, jokes, _ = _arrays(rated_df)
    u, u_known = positions(model.user_ids, users)
    j, j_known = positions(model.joke_ids, jokes)
    known = u_known & j_known
    u, j = u[known], j[known]
    order = np.argsort(u, kind="stable")
    bounds = np.searchsorted(u[order], np.arange(len(model.user_ids) + 1))
    n = min(top_n, len(model.joke_ids))
    out_user, out_rank, out_joke, out_score = [], [], [], []
    block = max(1, 2_000_000 // max(1, len(model.joke_ids)))
    for start in range(0, len(model.user_ids), block):
        stop = min(start + block, len(model.user_ids))
        scores = model.user_factors[start:stop] @ model.joke_factors.T
        rows = order[bounds[start]:bounds[stop]]
        scores[u[rows] - start, j[rows]] = -np.inf  # never recommend a rated joke
        top = np.argsort(-scores, axis=1, kind="stable")[:, :n]
        top_scores = np.take_along_axis(scores, top, axis=1)
        keep = np.isfinite(top_scores)
        block_users = np.repeat(model.user_ids[start:stop, None], n, axis=1)
        ranks = np.broadcast_to(np.arange(1, n + 1), top.shape)
        out_user.append(block_users[keep])
        out_rank.append(ranks[keep])
        out_joke.append(model.joke_ids[top][keep])
        out_score.append(top_scores[keep])
    table = pa.table({"user": np.concatenate(out_user).astype(np.int32),
                      "rank": np.concatenate(out_rank).astype(np.int32),
                      "joke": np.concatenate(out_joke).astype(np.int32),
                      "score": np.concatenate(out_score).astype(np.float64)})
    return spark.createDataFrame(table)
