"""The one rule that splits ratings into train and test, for Spark columns and for NumPy arrays alike.

A rating (user, joke) is held out for test when ``pmod(xxhash64(user, joke, seed), 1_000_000)`` is below
``round(test_fraction * 1_000_000)``: Spark SQL's ``xxhash64`` (seed 42) over the two int ids and the int seed.
The Spark side is ``tune.is_test_rating``; :func:`is_test` here computes the same bits in NumPy, so the
``bench`` and ``scale`` tables, generated without Spark, are split exactly as ``tune`` would split them
(a test compares the two on the same rows). Deterministic on any partitioning and in any row order.
"""

from __future__ import annotations

import numpy as np

SPLIT_BUCKETS = 1_000_000
SPARK_HASH_SEED = 42  # XxHash64's default seed in Spark SQL (functions.xxhash64)

# XXH64's primes, as Spark's org.apache.spark.sql.catalyst.expressions.XXH64 uses them.
_P1 = np.uint64(0x9E3779B185EBCA87)
_P2 = np.uint64(0xC2B2AE3D27D4EB4F)
_P3 = np.uint64(0x165667B19E3779F9)
_P5 = np.uint64(0x27D4EB2F165667C5)


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


def _hash_int(values: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Spark's ``XXH64.hashInt(value, seed)`` for arrays of 32-bit ints (uint64 arithmetic wraps as Java's
    long does)."""
    with np.errstate(over="ignore"):
        h = (seed + _P5 + np.uint64(4)) ^ ((values.astype(np.int64).astype(np.uint64) & np.uint64(0xFFFFFFFF)) * _P1)
        h = _rotl(h, 23) * _P2 + _P3
        h ^= h >> np.uint64(33)
        h *= _P2
        h ^= h >> np.uint64(29)
        h *= _P3
        h ^= h >> np.uint64(32)
    return h


def xxhash64_ints(*columns: np.ndarray, seed: int = SPARK_HASH_SEED) -> np.ndarray:
    """Spark SQL's ``xxhash64(c1, c2, ...)`` over int (32-bit) columns, as signed 64-bit integers: each
    column's hash seeds the next, as Spark's ``XxHash64`` expression does."""
    size = np.broadcast_shapes(*(np.shape(c) for c in columns))
    h = np.full(size, np.uint64(seed % 2**64), dtype=np.uint64)
    for column in columns:
        column = np.broadcast_to(np.asarray(column), size)
        if column.size and (column.min() < -(2**31) or column.max() >= 2**31):
            raise ValueError("xxhash64_ints hashes 32-bit ids; Spark hashes wider ids as longs")
        h = _hash_int(column, h)
    return h.view(np.int64)


def test_threshold(test_fraction: float) -> int:
    return int(round(test_fraction * SPLIT_BUCKETS))


def is_test(users: np.ndarray, jokes: np.ndarray, *, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean array: these (user, joke) ratings are held out for test, exactly as ``tune`` decides it."""
    hashed = xxhash64_ints(users, jokes, np.int32(seed))
    return np.mod(hashed, SPLIT_BUCKETS) < test_threshold(test_fraction)  # floor mod: Spark's pmod
