"""The driver-side comparison: a sample of users collected with Arrow, NumPy ALS and simple baselines fitted
on its training ratings, and every engine (Spark ALS included) scored on exactly the same held-out rows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jester_als.config import JesterConfig
from jester_als.hashsplit import SPLIT_BUCKETS, test_threshold
from jester_als.numpy_als import RatingMatrix, arrow_ratings, fit_biases, fit_numpy_als, nmae, positions, rmse_mae
from jester_als.peakmem import PeakRSS
from jester_als.tune import is_test_rating

log = logging.getLogger(__name__)

# What the seed notebook estimated the whole wide table takes in memory.
SEED_TABLE_ESTIMATE_MB = 19.25


def sample_users(ratings: DataFrame, *, max_users: int | None, fraction: float | None, seed: int) -> DataFrame:
    """The sampled users' ids: those whose seeded hash falls below ``fraction`` (deterministic), then at
    most ``max_users`` of them, the lowest hashes first (also deterministic)."""
    users = (
        ratings.select("user")
        .distinct()
        .withColumn("user_hash", F.pmod(F.xxhash64("user", F.lit(seed)), F.lit(SPLIT_BUCKETS)))
    )
    if fraction is not None and fraction < 1.0:
        users = users.where(F.col("user_hash") < F.lit(test_threshold(fraction)))
    if max_users is not None:
        users = users.orderBy("user_hash", "user").limit(max_users)
    return users.select("user")


@dataclass
class CollectedSample:
    train: RatingMatrix
    test_users: np.ndarray
    test_jokes: np.ndarray
    test_ratings: np.ndarray
    users: int
    collect_seconds: float
    test_rows: DataFrame | None = None  # the same test ratings, in Spark, for the Spark model to score there
    # every collected rating (train and test) as (users, jokes, ratings) arrays, for the new-user evaluation
    cells: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def nbytes(self) -> int:
        return self.train.nbytes() + self.test_users.nbytes + self.test_jokes.nbytes + self.test_ratings.nbytes


def collect_sample(
    ratings: DataFrame,
    *,
    test_fraction: float,
    split_seed: int,
    max_users: int | None,
    fraction: float | None,
    sample_seed: int,
) -> CollectedSample:
    """Collect the sampled users' train and test ratings (the split ``tune`` used) to the driver via Arrow."""
    started = time.perf_counter()
    sampled = sample_users(ratings, max_users=max_users, fraction=fraction, seed=sample_seed)
    rows = (
        ratings.join(sampled, on="user", how="inner")
        .withColumn("is_test", is_test_rating(test_fraction=test_fraction, seed=split_seed))
        .select("user", "joke", "rating", "is_test")
    )
    table = rows.toArrow()  # Arrow batches: no per-row Python objects; also works over Spark Connect
    users, jokes, values = arrow_ratings(table)
    is_test = table.column("is_test").to_numpy(zero_copy_only=False).astype(bool)
    train = RatingMatrix.from_ids(users[~is_test], jokes[~is_test], values[~is_test])
    return CollectedSample(
        train,
        users[is_test].astype(np.int64),
        jokes[is_test].astype(np.int64),
        values[is_test].astype(np.float64),
        int(np.unique(users).size),
        time.perf_counter() - started,
        rows.where("is_test").select("user", "joke"),
        (users, jokes, values),
    )


def _pair_keys(users: np.ndarray, jokes: np.ndarray) -> np.ndarray:
    """One int64 per (user, joke) pair of int32 ids: distinct pairs, distinct keys."""
    return (users.astype(np.int64) << 32) | (jokes.astype(np.int64) & 0xFFFFFFFF)


def spark_predictions(model, test_rows: DataFrame, users: np.ndarray, jokes: np.ndarray) -> np.ndarray:
    """The Spark model's predictions for exactly these (user, joke) rows, in order (NaN = cold start).
    ``test_rows`` holds the same pairs in Spark: they are scored where they are and only the predictions are
    collected (sending the pairs from the driver made one task of ~9 MB at Jester size)."""
    scored = model.transform(test_rows).select("user", "joke", "prediction").toArrow()
    keys = _pair_keys(scored.column("user").to_numpy(), scored.column("joke").to_numpy())
    order = np.argsort(keys)
    values = scored.column("prediction").to_numpy().astype(np.float64)[order]
    at, found = positions(keys[order], _pair_keys(users, jokes))
    return np.where(found, values[at] if len(values) else np.nan, np.nan)


def compare_engines(
    spark_model, ratings: DataFrame, cfg: JesterConfig, params: dict, collected: dict | None = None
) -> dict:
    """Collect the sample, fit NumPy ALS and the baselines, score everything on the same held-out rows. The
    collected ratings go into ``collected["cells"]`` (users, jokes, ratings arrays) for a caller that needs
    the same sample again."""
    base = cfg.baseline
    numpy_params = {
        "rank": int(params["rank"]),
        "reg_param": float(params["regParam"]),
        "max_iter": int(params["maxIter"]),
        "biases": bool(params.get("biases", False)),
        "bias_reg": float(cfg.als.bias_reg),
    }
    with PeakRSS() as driver_memory:  # what the driver pays for NumPy ALS: the collected sample and the fit
        sample = collect_sample(
            ratings,
            test_fraction=cfg.split.test_fraction,
            split_seed=cfg.split.seed,
            max_users=base.max_users,
            fraction=base.fraction,
            sample_seed=base.seed,
        )
        log.info(
            "collected %d users (%d train, %d test ratings, %.1f MB) in %.1f s",
            sample.users,
            sample.train.nnz,
            sample.test_ratings.size,
            sample.nbytes() / 2**20,
            sample.collect_seconds,
        )
        if collected is not None:
            collected["cells"] = sample.cells
        if sample.train.nnz == 0 or sample.test_ratings.size == 0:
            raise ValueError(
                "the user sample has no training or no test ratings; raise baseline.max_users or baseline.fraction"
            )
        started = time.perf_counter()
        numpy_model = fit_numpy_als(
            sample.train, seed=base.seed, tol=base.tol, dense_budget_mb=base.dense_budget_mb, **numpy_params
        )
        numpy_seconds = time.perf_counter() - started
    started = time.perf_counter()
    bias_model = fit_biases(sample.train, reg=base.bias_reg)
    bias_seconds = time.perf_counter() - started

    predictions = {
        "numpy_als": numpy_model.predict(sample.test_users, sample.test_jokes),
        "spark_als": spark_predictions(spark_model, sample.test_rows, sample.test_users, sample.test_jokes),
        "bias": bias_model.predict(sample.test_users, sample.test_jokes),
        "global_mean": np.full(sample.test_ratings.size, float(sample.train.ratings.mean(dtype=np.float64))),
    }
    low, high = cfg.input.rating_range
    predictions = {name: np.clip(p, low, high) for name, p in predictions.items()}  # the rating scale, for all
    # The same rows for every engine: those every engine can score (ALS drops cold starts).
    same = np.logical_and.reduce([~np.isnan(p) for p in predictions.values()])
    truth = sample.test_ratings[same]
    scores = {name: rmse_mae(truth, p[same]) for name, p in predictions.items()}
    for score in scores.values():
        score["nmae"] = nmae(score["mae"], (low, high))
    width = float(high - low)
    edges = np.linspace(-width, width, 41)  # every error of a clipped prediction of an in-range rating
    histogram = {
        "edges": edges.tolist(),
        "counts": {
            label: np.histogram(predictions[name][same] - truth, edges)[0].tolist()
            for name, label in (("spark_als", "Spark ALS"), ("numpy_als", "NumPy ALS"), ("bias", "user + joke bias"))
        },
    }
    numpy_section = {
        "sample_users": sample.users,
        "sample_train_ratings": sample.train.nnz,
        "sample_test_ratings": int(sample.test_ratings.size),
        "rows": int(same.sum()),
        "params": {
            "rank": numpy_params["rank"],
            "regParam": numpy_params["reg_param"],
            "maxIter": numpy_params["max_iter"],
            "biases": numpy_params["biases"],
        },
        "iterations": numpy_model.iterations,
        "test_rmse": scores["numpy_als"]["rmse"],
        "test_mae": scores["numpy_als"]["mae"],
        "test_nmae": scores["numpy_als"]["nmae"],
        "fit_seconds": numpy_seconds,
        "spark_test_rmse_same_rows": scores["spark_als"]["rmse"],
        "spark_test_mae_same_rows": scores["spark_als"]["mae"],
        "collect_seconds": sample.collect_seconds,
        "driver_seconds": sample.collect_seconds + numpy_seconds,
        "memory": {
            "collected_mb": sample.nbytes() / 2**20,
            "factors_mb": numpy_model.nbytes() / 2**20,
            "driver_peak_mb": driver_memory.peak_mb,
            "driver_growth_mb": driver_memory.peak_mb - driver_memory.start_mb,
            "seed_estimate_whole_table_mb": SEED_TABLE_ESTIMATE_MB,
        },
    }
    baselines = {
        "rows": int(same.sum()),
        "global_mean": {
            "test_rmse": scores["global_mean"]["rmse"],
            "test_mae": scores["global_mean"]["mae"],
            "test_nmae": scores["global_mean"]["nmae"],
            "value": float(sample.train.ratings.mean(dtype=np.float64)),
        },
        "bias": {
            "test_rmse": scores["bias"]["rmse"],
            "test_mae": scores["bias"]["mae"],
            "test_nmae": scores["bias"]["nmae"],
            "reg": base.bias_reg,
            "fit_seconds": bias_seconds,
        },
        "error_histogram": histogram,
    }
    log.info(
        "same %d rows: numpy ALS RMSE %.4f (fit %.2f s), Spark ALS %.4f, bias %.4f, global mean %.4f",
        same.sum(),
        scores["numpy_als"]["rmse"],
        numpy_seconds,
        scores["spark_als"]["rmse"],
        scores["bias"]["rmse"],
        scores["global_mean"]["rmse"],
    )
    if scores["spark_als"]["rmse"] >= scores["bias"]["rmse"]:
        log.warning(
            "the chosen Spark ALS model does not beat the user + joke bias baseline on the same rows (RMSE %.4f "
            "against %.4f): its factors add error here; report.md says where the grid could widen",
            scores["spark_als"]["rmse"],
            scores["bias"]["rmse"],
        )
    return {"numpy_als": numpy_section, "baselines": baselines}
