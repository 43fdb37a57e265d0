"""``prepare`` in one pass over the input, for the common table: wide, integer user ids, every CSV row as wide as
the header, no per-user minimum. The input is read, melted, classified and its accepted ratings written in one
Spark job; everything ``prepare`` counts comes from Spark's observed metrics of that job (``DataFrame.observe``:
aggregates computed while the rows stream past, in classic and Connect sessions alike) and from one aggregation
of the written ratings, which are small and columnar. The refused cells take a second pass only when there are
some. A table that turns out to need more (a malformed row, ids to re-index, a user id that may be on two rows)
is handed back to the general path (:func:`jester_als.prepare.prepare_ratings`), which counts and checks it with
cached intermediate results: the same outputs and counts either way, which the tests compare.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass

from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from jester_als.prepare import (
    CSV_PRUNING,
    MALFORMED,
    InputError,
    _not_int_id,
    _quote,
    _user_key,
    check_unique_users,
    classify_cells,
    content_hash,
    hex64,
    input_name,
    joke_columns,
    melt_wide_ratings,
    read_table,
)

log = logging.getLogger(__name__)

MISSING = ("blank", "sentinel")
REJECTED = ("not_a_number", "not_finite", "out_of_range", "bad_user_id", "bad_joke_id")


def eligible(inp: dict) -> bool:
    """Whether the input's settings allow the one-pass path (the table itself may still send it back)."""
    return (inp["one_pass"] and inp["layout"] == "wide" and inp["format"] in ("csv", "parquet", "table")
            and inp["min_ratings_per_user"] <= 1 and inp["user_ids"] != "reindex")


@dataclass
class OnePass:
    """What the one pass found: the same ``counts``, ``fingerprint`` and ``source`` as :class:`PreparedRatings`
    (the ratings and refused cells are already written)."""

    counts: dict
    fingerprint: dict
    source: str


def prepare_in_one_pass(spark: SparkSession, inp: dict, ratings_path: str, rejected_path: str) -> OnePass | None:
    """Write the accepted ratings to ``ratings_path`` and the refused cells to ``rejected_path``; None (with
    nothing left at either path) when the table needs the general path."""
    restore = None
    if inp["format"] == "csv" and inp["header"]:
        # Column pruning hides a row's field count from the parser (see prepare_ratings): off for this read.
        restore = spark.conf.get(CSV_PRUNING, "true")
        spark.conf.set(CSV_PRUNING, "false")
    try:
        return _one_pass(spark, inp, ratings_path, rejected_path)
    finally:
        if restore is not None:
            spark.conf.set(CSV_PRUNING, restore)


def _one_pass(spark: SparkSession, inp: dict, ratings_path: str, rejected_path: str) -> OnePass | None:
    source = input_name(inp)
    table = read_table(spark, inp)
    user_column = inp["user_column"]
    if user_column not in table.columns:
        return None  # refused by the general path with its own message
    header = [c for c in table.columns if c != MALFORMED]
    jokes = joke_columns(header, user_column, inp["drop_columns"], source)
    rows = Observation("rows")
    row_metrics = [F.count(F.lit(1)).alias("rows"), content_hash(*table.columns).alias("hash"),
                   F.count(_user_key(user_column)).alias("named"),
                   F.count(F.when(_not_int_id(_quote(user_column)), 1)).alias("not_int")]
    if MALFORMED in table.columns:
        row_metrics.append(F.count(MALFORMED).alias("malformed"))
    def classified(wide: DataFrame) -> DataFrame:
        return classify_cells(melt_wide_ratings(wide.drop(MALFORMED), user_column, jokes),
                              missing_values=inp["missing_values"], rating_range=inp["rating_range"])

    cells = classified(table.observe(rows, *row_metrics))
    accepted = F.col("status") == "accepted"
    rating = F.when(accepted, F.col("rating"))
    observed = Observation("cells")
    cell_metrics = [F.count(F.lit(1)).alias("cells"), F.count(rating).alias("n"), F.sum(rating).alias("total"),
                    F.sum(rating * rating).alias("squares"),
                    F.sum(F.when(accepted, F.xxhash64("user", "joke", "rating")).cast("decimal(38,0)")).alias("hash"),
                    F.collect_set(F.when(accepted, F.col("joke"))).alias("jokes")]  # a few hundred ids at most
    cell_metrics += [F.count(F.when(F.col("reason") == r, 1)).alias(r) for r in (*MISSING, *REJECTED)]
    (cells.observe(observed, *cell_metrics).where(accepted).select("user", "joke", "rating")
     .write.mode("overwrite").parquet(ratings_path))
    by_row, by_cell = rows.get, observed.get
    if by_row["rows"] == 0:
        _remove(ratings_path)
        raise InputError(f"{source}: has a header but no rows")
    if by_row.get("malformed") or (by_row["not_int"] and inp["user_ids"] == "auto"):
        log.info("%s: %s; counting it on the general path", source,
                 "a row's field count differs from the header's" if by_row.get("malformed")
                 else "some user ids are not integers in Int range")
        _remove(ratings_path)
        return None
    users = spark.read.parquet(ratings_path).select("user").distinct().count()
    if users != by_row["named"]:
        # Fewer users with ratings than rows naming one: some rows have no rating, or an id is on two rows.
        try:
            check_unique_users(table, user_column, source)
        except InputError:
            _remove(ratings_path)
            raise
    log.info("%s: %d joke columns (ids %d..%d), read in one pass", source, len(jokes),
             min(j for _, j in jokes), max(j for _, j in jokes))
    rejected_total = sum(by_cell[r] for r in REJECTED)
    # a query of its own (an observation reports its first action only); empty without a refused cell
    plain = classified(table)
    refused = plain.where(F.col("status") == "rejected") if rejected_total else plain.where(F.lit(False))
    (refused.select(F.col("user_raw").alias("user"), F.col("joke_raw").alias("joke"), F.col("raw").alias("value"),
                    "reason", F.lit(None).cast("string").alias("detail"))
     .write.mode("overwrite").parquet(rejected_path))
    return OnePass(_counts(by_cell, users, [j for _, j in jokes]), {"rows": int(by_row["rows"]),
                   "content_hash": hex64(by_row["hash"])}, source)


def _counts(by_cell, users: int, joke_ids: list[int]) -> dict:
    """The counts :func:`jester_als.prepare.count_cells` gives, from the observed metrics and the written
    ratings."""
    n = int(by_cell["n"])
    mean = by_cell["total"] / n if n else None
    rated_jokes = set(by_cell["jokes"] or [])
    counts = {"cells": int(by_cell["cells"]), "accepted": n,
              "missing": {r: int(by_cell[r]) for r in MISSING if by_cell[r]},
              "rejected": {r: int(by_cell[r]) for r in REJECTED if by_cell[r]}}
    counts["missing_total"] = sum(counts["missing"].values())
    counts["rejected_total"] = sum(counts["rejected"].values())
    counts["jokes_without_ratings"] = sorted(j for j in joke_ids if j not in rated_jokes)
    counts["ratings"] = {
        "ratings": n, "items": len(rated_jokes), "mean": mean,
        "std": max(by_cell["squares"] / n - mean * mean, 0.0) ** 0.5 if n else None,
        "hash": int(by_cell["hash"] or 0), "users": int(users)}
    counts["rows_without_ratings"] = None
    return counts


def _remove(path: str) -> None:
    shutil.rmtree(path.removeprefix("file:"), ignore_errors=True)
