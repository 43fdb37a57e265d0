"""``prepare`` in one pass over the input, for the common table: wide, integer user ids, every CSV row as wide as
the header, no per-user minimum. The input is read, melted, classified and its accepted ratings written in one
Spark job; everything ``prepare`` counts comes from Spark's observed metrics of that job (``DataFrame.observe``:
aggregates computed while the rows stream past, in classic and Connect sessions alike) and from one aggregation
of the written ratings, which are small and columnar. The refused cells take a second pass only when there are
some, and the check that no user id is on two rows reads the input again only when fewer users have ratings than
rows name one. A table that turns out to need more (a malformed row, ids to re-index) is handed back to the
general path (:func:`jester_als.prepare.prepare_ratings`), which counts and checks it with cached intermediate
results: the same outputs and counts either way, which the tests compare.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass

from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from jester_als.config import InputConfig
from jester_als.prepare import (
    CSV_PRUNING,
    MALFORMED,
    InputError,
    _not_int_id,
    _quote,
    _user_key,
    check_unique_users,
    classify_cells,
    hash_sum,
    hash_total,
    hex64,
    input_name,
    joke_columns,
    melt_wide_ratings,
    ratings_hash,
    read_table,
)

log = logging.getLogger(__name__)

MISSING = ("blank", "sentinel")
REJECTED = ("not_a_number", "not_finite", "out_of_range", "bad_user_id", "bad_joke_id")


def eligible(inp: InputConfig) -> bool:
    """Whether the input's settings allow the one-pass path (the table itself may still send it back)."""
    return (
        inp.one_pass
        and inp.layout == "wide"
        and inp.format in ("csv", "parquet", "table")
        and inp.min_ratings_per_user <= 1
        and inp.user_ids != "reindex"
    )


@dataclass
class OnePass:
    """What the one pass found: the same ``counts``, ``fingerprint`` and ``source`` as :class:`PreparedRatings`
    (the ratings and refused cells are already written)."""

    counts: dict
    fingerprint: dict
    source: str
    # seconds of each part: the pass itself (read, melt, classify, count, write), the count of the written
    # ratings' users and jokes, the check that no user id is on two rows (0 when not needed), the refused cells
    parts: dict
    user_ids = None  # ids are never re-indexed on this path


def prepare_in_one_pass(spark: SparkSession, inp: InputConfig, ratings_path: str, rejected_path: str) -> OnePass | None:
    """Write the accepted ratings to ``ratings_path`` and the refused cells to ``rejected_path``; None (with
    nothing left at either path) when the table needs the general path."""
    restore = None
    if inp.format == "csv" and inp.header:
        # Column pruning hides a row's field count from the parser (see prepare_ratings): off for this read.
        restore = spark.conf.get(CSV_PRUNING, "true")
        spark.conf.set(CSV_PRUNING, "false")
    try:
        return _one_pass(spark, inp, ratings_path, rejected_path)
    finally:
        if restore is not None:
            spark.conf.set(CSV_PRUNING, restore)


def _one_pass(spark: SparkSession, inp: InputConfig, ratings_path: str, rejected_path: str) -> OnePass | None:
    source = input_name(inp)
    table = read_table(spark, inp)
    user_column = inp.user_column
    if user_column not in table.columns:
        return None  # refused by the general path with its own message
    header = [c for c in table.columns if c != MALFORMED]
    jokes = joke_columns(header, user_column, inp.drop_columns, source)
    first = jokes[0][1]  # every row melts into exactly one cell of each joke: the first one stands for its row
    of_row = F.col("joke") == first
    per_row = [
        F.xxhash64(*[F.col(_quote(c)) for c in table.columns]).alias("_row_hash"),
        _user_key(user_column).isNotNull().alias("_row_named"),
        _not_int_id(_quote(user_column)).alias("_row_not_int"),
        (F.col(MALFORMED).isNotNull() if MALFORMED in table.columns else F.lit(False)).alias("_row_malformed"),
    ]

    def classified(with_rows: bool) -> DataFrame:
        wide = table.select("*", *per_row) if with_rows else table
        keep = ("_row_hash", "_row_named", "_row_not_int", "_row_malformed") if with_rows else ()
        return classify_cells(
            melt_wide_ratings(wide.drop(MALFORMED), user_column, jokes, keep),
            missing_values=inp.missing_values,
            rating_range=inp.rating_range,
        )

    marks = [("start", time.perf_counter())]
    cells = classified(True)
    accepted = F.col("status") == "accepted"
    rating = F.when(accepted, F.col("rating"))
    # One observation for the whole query, of scalars only: Spark 4.0's Connect server reports a single
    # observation per query to its client and cannot send it an array ("Unsupported component type ... in
    # arrays"), so the row-level figures are summed over each row's first cell, and the rated jokes come from
    # the written ratings below.
    observed = Observation("prepare")
    metrics = [
        F.count(F.when(of_row, 1)).alias("rows"),
        *hash_sum(F.when(of_row, F.col("_row_hash")), "row_hash"),
        F.count(F.when(of_row & F.col("_row_named"), 1)).alias("named"),
        F.count(F.when(of_row & F.col("_row_not_int"), 1)).alias("not_int"),
        F.count(F.when(of_row & F.col("_row_malformed"), 1)).alias("malformed"),
        F.count(F.lit(1)).alias("cells"),
        F.count(rating).alias("n"),
        F.sum(rating).alias("total"),
        F.sum(rating * rating).alias("squares"),
        *ratings_hash(accepted),
    ]
    metrics += [F.count(F.when(F.col("reason") == r, 1)).alias(r) for r in (*MISSING, *REJECTED)]
    (
        cells.observe(observed, *metrics)
        .where(accepted)
        .select("user", "joke", "rating")
        .write.mode("overwrite")
        .parquet(ratings_path)
    )
    by_row = by_cell = observed.get
    marks.append(("pass", time.perf_counter()))
    if by_row["rows"] == 0:
        _remove(ratings_path)
        raise InputError(f"{source}: has a header but no rows")
    if by_row.get("malformed") or (by_row["not_int"] and inp.user_ids == "auto"):
        log.info(
            "%s: %s; counting it on the general path",
            source,
            "a row's field count differs from the header's"
            if by_row.get("malformed")
            else "some user ids are not integers in Int range",
        )
        _remove(ratings_path)
        return None
    # Two aggregations: one holding both distinct aggregates is planned with an Expand that copies every rating
    # once per aggregate, and took several times as long as the two alone.
    written = spark.read.parquet(ratings_path)
    users = written.select("user").distinct().count()
    rated = [row["joke"] for row in written.select("joke").distinct().collect()]
    marks.append(("written_counts", time.perf_counter()))
    if users != by_row["named"]:
        # Fewer users with ratings than rows naming one: some rows have no rating, or an id is on two rows.
        try:
            check_unique_users(table, user_column, source)
        except InputError:
            _remove(ratings_path)
            raise
    log.info(
        "%s: %d joke columns (ids %d..%d), read in one pass",
        source,
        len(jokes),
        min(j for _, j in jokes),
        max(j for _, j in jokes),
    )
    marks.append(("unique_users", time.perf_counter()))
    rejected_total = sum(by_cell[r] for r in REJECTED)
    # a query of its own (an observation reports its first action only); empty without a refused cell
    plain = classified(False)
    refused = plain.where(F.col("status") == "rejected") if rejected_total else plain.where(F.lit(False))
    (
        refused.select(
            F.col("user_raw").alias("user"),
            F.col("joke_raw").alias("joke"),
            F.col("raw").alias("value"),
            "reason",
            F.lit(None).cast("string").alias("detail"),
        )
        .write.mode("overwrite")
        .parquet(rejected_path)
    )
    marks.append(("refused", time.perf_counter()))
    return OnePass(
        _counts(by_cell, users, rated, [j for _, j in jokes]),
        {"rows": int(by_row["rows"]), "content_hash": hex64(hash_total(by_row, "row_hash"))},
        source,
        {name: round(t - before, 2) for (name, t), (_, before) in zip(marks[1:], marks)},
    )


def _counts(by_cell, users: int, rated: list[int], joke_ids: list[int]) -> dict:
    """The counts :func:`jester_als.prepare.count_cells` gives, from the observed metrics and the written
    ratings."""
    n = int(by_cell["n"])
    mean = by_cell["total"] / n if n else None
    rated_jokes = set(rated or [])
    counts = {
        "cells": int(by_cell["cells"]),
        "accepted": n,
        "missing": {r: int(by_cell[r]) for r in MISSING if by_cell[r]},
        "rejected": {r: int(by_cell[r]) for r in REJECTED if by_cell[r]},
    }
    counts["missing_total"] = sum(counts["missing"].values())
    counts["rejected_total"] = sum(counts["rejected"].values())
    counts["jokes_without_ratings"] = sorted(j for j in joke_ids if j not in rated_jokes)
    counts["ratings"] = {
        "ratings": n,
        "items": len(rated_jokes),
        "mean": mean,
        "std": max(by_cell["squares"] / n - mean * mean, 0.0) ** 0.5 if n else None,
        "hash": hash_total(by_cell, "hash"),
        "users": int(users),
    }
    counts["rows_without_ratings"] = None
    return counts


def _remove(path: str) -> None:
    shutil.rmtree(path.removeprefix("file:"), ignore_errors=True)
