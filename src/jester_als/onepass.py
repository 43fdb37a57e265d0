"""``prepare`` in one pass over the input, for the common table: wide, integer user ids, every CSV row as wide as the
header, no per-user minimum. The input is read, melted, classified and its accepted ratings written in one Spark
job; everything ``prepare`` counts comes from Spark's observed metrics of that job (``DataFrame.observe``:
aggregates computed while the rows stream past, in classic and Connect sessions alike) and from the written ratings,
which are small and columnar. The refused cells take a second pass only when there are some (and are counted by
reason from what it wrote), and the check that no user id is on two rows reads the input again only when fewer users
have ratings than rows name one. A table that turns out to need more (a malformed row, ids to re-index) is handed
back to the general path (:func:`jester_als.prepare.prepare_ratings`), which counts and checks it with cached
intermediate results: the same outputs and counts either way, which the tests compare.
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
    REFUSED_COLUMNS,
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
    refused_cells,
)

log = logging.getLogger(__name__)

JOKE_WORDS = 8  # rated jokes as bits of at most this many 64-bit words: joke ids that span up to 512


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
    per_row = {
        "_row_hash": F.xxhash64(*[_quote(c) for c in table.columns]),
        "_row_named": _user_key(user_column).isNotNull(),
        "_row_not_int": _not_int_id(_quote(user_column)),
        "_row_malformed": F.col(MALFORMED).isNotNull() if MALFORMED in table.columns else F.lit(False),
    }

    def classified(with_rows: bool) -> DataFrame:
        return classify_cells(
            melt_wide_ratings(table, user_column, jokes, per_row=per_row if with_rows else None),
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
    # Every aggregate here is updated for every cell that streams past, so the observation holds only what
    # cannot come from elsewhere: the cells read are the rows times the joke columns (each row melts into one
    # cell per joke), the blanks are the cells left over, and the refused cells are counted by reason from
    # their own output, which is written only when there are some.
    metrics = [
        F.count(F.when(of_row, 1)).alias("rows"),
        *hash_sum(F.when(of_row, F.col("_row_hash")), "row_hash"),
        F.count(F.when(of_row & F.col("_row_named"), 1)).alias("named"),
        F.count(F.when(of_row & F.col("_row_not_int"), 1)).alias("not_int"),
        F.count(F.when(of_row & F.col("_row_malformed"), 1)).alias("malformed"),
        F.count(rating).alias("n"),
        F.sum(rating).alias("total"),
        F.sum(rating * rating).alias("squares"),
        *ratings_hash(accepted),
        F.count(F.when(F.col("reason") == "sentinel", 1)).alias("sentinel"),
        F.count(F.when(F.col("status") == "rejected", 1)).alias("rejected"),
    ]
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
    users, rated = _users_and_jokes(spark.read.parquet(ratings_path), [j for _, j in jokes])
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
    if by_cell["rejected"]:
        # a query of its own (an observation reports its first action only)
        refused_cells(classified(False)).write.mode("overwrite").parquet(rejected_path)
        by_reason = {
            row["reason"]: row["count"] for row in spark.read.parquet(rejected_path).groupBy("reason").count().collect()
        }
    else:
        # no rows, planned as an empty relation: Spark writes the schema alone
        table.where(F.lit(False)).select(*[F.lit(None).cast("string").alias(c) for c in REFUSED_COLUMNS]).write.mode(
            "overwrite"
        ).parquet(rejected_path)
        by_reason = {}
    marks.append(("refused", time.perf_counter()))
    return OnePass(
        _counts(by_cell, by_reason, len(jokes), users, rated, [j for _, j in jokes]),
        {"rows": int(by_row["rows"]), "content_hash": hex64(hash_total(by_row, "row_hash"))},
        source,
        {name: round(t - before, 2) for (name, t), (_, before) in zip(marks[1:], marks)},
    )


def _users_and_jokes(written: DataFrame, joke_ids: list[int]) -> tuple[int, list[int]]:
    """The users with a rating and the jokes with one, of the written ratings: in one aggregation by user whose
    rows carry the user's jokes as bits, where the joke ids span at most :data:`JOKE_WORDS` words (all of
    Jester's do); else two, since one holding both distinct aggregates is planned with an Expand that copies
    every rating once per aggregate."""
    low = min(joke_ids)
    words = (max(joke_ids) - low) // 64 + 1
    if words > JOKE_WORDS:
        users = written.select("user").distinct().count()
        return users, [row["joke"] for row in written.select("joke").distinct().collect()]
    offset = F.col("joke") - low
    # (the Python API's shiftleft takes a constant shift only)
    bits = [
        F.bit_or(
            F.when((offset >= 64 * w) & (offset < 64 * (w + 1)), F.expr(f"shiftleft(1L, joke - {low + 64 * w})"))
        ).alias(f"w{w}")
        for w in range(words)
    ]
    row = (
        written.groupBy("user")
        .agg(*bits)
        .agg(F.count(F.lit(1)).alias("users"), *[F.bit_or(f"w{w}").alias(f"w{w}") for w in range(words)])
        .first()
    )
    rated = [low + 64 * w + b for w in range(words) for b in range(64) if (row[f"w{w}"] or 0) >> b & 1]
    return int(row["users"]), rated


def _counts(by_cell, by_reason: dict, joke_columns: int, users: int, rated: list[int], joke_ids: list[int]) -> dict:
    """The counts :func:`jester_als.prepare.count_cells` gives, from the observed metrics, the refused cells by
    reason (``by_reason``) and the written ratings."""
    n = int(by_cell["n"])
    mean = by_cell["total"] / n if n else None
    rated_jokes = set(rated or [])
    cells = int(by_cell["rows"]) * joke_columns
    sentinel, rejected = int(by_cell["sentinel"]), int(by_cell["rejected"])
    if sum(by_reason.values()) != rejected:  # one classification written twice: they cannot differ
        raise RuntimeError(f"prepare counted {rejected} refused cells in its pass and {by_reason} in their output")
    missing = {"blank": cells - n - sentinel - rejected, "sentinel": sentinel}
    counts = {
        "cells": cells,
        "accepted": n,
        "missing": {r: k for r, k in missing.items() if k},
        "rejected": {r: int(k) for r, k in sorted(by_reason.items())},
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
