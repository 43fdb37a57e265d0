"""The NumPy engine used from a Spark job: ratings collected to the driver as arrays, the tuning grid fitted
on them, and top-N recommendations written back as a DataFrame. The engine itself is ``numpy_als``."""

from __future__ import annotations

import itertools
import logging
import time

import numpy as np

from jester_als.config import JesterConfig
from jester_als.numpy_als import (
    NumpyALSModel,
    RatingMatrix,
    arrow_ratings,
    fit_numpy_als,
    nmae,
    positions,
    rmse_mae,
)
from jester_als.tune import reg_param_factor, scaled_grid

log = logging.getLogger(__name__)


def collect_ratings(df) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, joke, rating) arrays of a ratings DataFrame, collected through Arrow."""
    return arrow_ratings(df.select("user", "joke", "rating").toArrow())


def tune_numpy(train_df, test_df, cfg: JesterConfig, reason: str) -> tuple[dict, NumpyALSModel]:
    """The same grid, train ratio and seeds as the Spark tuning, fitted with NumPy ALS on the driver."""

    tuning = cfg.tune
    grid = scaled_grid(tuning.grid.as_dict(), reg_param_factor(cfg.input.rating_range, tuning.scale_reg_param))
    ignored = sorted(set(grid) - {"rank", "regParam", "maxIter", "biases"})
    if ignored:
        log.warning("NumPy fallback ignores grid params it does not have: %s", ignored)
    users, jokes, ratings = collect_ratings(train_df)
    test_users, test_jokes, test_ratings = collect_ratings(test_df)
    inner_train = np.random.default_rng(tuning.seed).random(ratings.size) < tuning.train_ratio
    fit_part = RatingMatrix.from_ids(users[inner_train], jokes[inner_train], ratings[inner_train])
    names = ("biases", "maxIter", "rank", "regParam")
    defaults = (cfg.als.biases, 10, 10, 0.1)
    values = [grid.get(name, [default]) for name, default in zip(names, defaults)]
    bias_reg = cfg.als.bias_reg
    validation = []
    started = time.perf_counter()
    for biases, max_iter, rank, reg in itertools.product(*values):
        model = fit_numpy_als(
            fit_part,
            rank=rank,
            reg_param=reg,
            max_iter=max_iter,
            seed=cfg.als.seed,
            biases=bool(biases),
            bias_reg=bias_reg,
        )
        score = rmse_mae(ratings[~inner_train], model.predict(users[~inner_train], jokes[~inner_train]))
        validation.append(
            {
                "params": {"biases": bool(biases), "maxIter": max_iter, "rank": rank, "regParam": reg},
                "validation_rmse": score["rmse"],
            }
        )
    tune_seconds = time.perf_counter() - started
    best = dict(min(validation, key=lambda p: p["validation_rmse"])["params"])
    params = dict(best, maxIter=tuning.refit_max_iter or best["maxIter"])
    started = time.perf_counter()
    model = fit_numpy_als(
        RatingMatrix.from_ids(users, jokes, ratings),
        rank=params["rank"],
        reg_param=params["regParam"],
        max_iter=params["maxIter"],
        seed=cfg.als.seed,
        biases=params["biases"],
        bias_reg=bias_reg,
    )
    fit_seconds = time.perf_counter() - started
    scores = rmse_mae(test_ratings, _clip(model.predict(test_users, test_jokes), cfg.input.rating_range))
    log.warning(
        "Spark ALS not allowed here; tuned NumPy ALS on the driver instead: %s, test RMSE %.4f", params, scores["rmse"]
    )
    section = {
        "engine": "numpy (fallback)",
        "fallback_reason": reason,
        "best_params": best,
        "params": params,
        "model_params": params,
        "validation": validation,
        "tune_seconds": tune_seconds,
        "fit_seconds": fit_seconds,
        "test_rmse": scores["rmse"],
        "test_mae": scores["mae"],
        "test_nmae": nmae(scores["mae"], cfg.input.rating_range),
        "test_rows_scored": scores["rows"],
        "train_ratings": int(ratings.size),
    }
    return section, model


def _clip(values: np.ndarray, rating_range) -> np.ndarray:
    return values if rating_range is None else np.clip(values, rating_range[0], rating_range[1])


def recommend_numpy(spark, model: NumpyALSModel, rated_df, top_n: int, rating_range=None):
    """Top-N unrated jokes per user from NumPy factors, scored on the driver in blocks of users; ranked by the
    raw score, the written score clipped to ``rating_range`` as in ``recommend_unrated``."""
    import pyarrow as pa

    users, jokes, _ = collect_ratings(rated_df)
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
        if model.biases is not None:  # fitted on the same ratings: the same user and joke positions
            scores += model.biases.mean + model.biases.user[start:stop, None] + model.biases.joke[None, :]
        rows = order[bounds[start] : bounds[stop]]
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
    table = pa.table(
        {
            "user": np.concatenate(out_user).astype(np.int32),
            "rank": np.concatenate(out_rank).astype(np.int32),
            "joke": np.concatenate(out_joke).astype(np.int32),
            "score": _clip(np.concatenate(out_score).astype(np.float64), rating_range),
        }
    )
    return spark.createDataFrame(table)
