"""``prepare`` in one pass over the input, for the common table: wide, integer user ids, every CSV row as wide as the
header, no per-user minimum; and for the original Excel files, whose users the reader numbers (their count column
is checked from the same pass). The input is read, melted, classified and its accepted ratings written in one Spark
job, which counts its input rows as they stream past (Spark's observed metrics, ``DataFrame.observe``, in classic
and Connect sessions alike: the rows, their hash, their ids, per row the cells that are not blank and those spelt
as a sentinel, and the distinct ids of the rows with a rating); the ratings' own figures come from the written
ratings, which are small and columnar, in one aggregate. Where some cells are neither blank, rated nor spelt as a
sentinel, a second pass classifies the cells again and writes and counts the refused ones, and the users are
counted from the written ratings (as they are when some id lies beyond the observed bitmaps, :data:`USER_BITMAPS`);
the check that no user id is on two rows reads the input again only when fewer users have ratings than rows name
one. A table that turns out to need more (a malformed row, ids to re-index) is handed back to the general path
(:func:`jester_als.prepare.prepare_ratings`), which counts and checks it with cached intermediate results: the
same outputs and counts either way, which the tests compare.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass

from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from jester_als.config import InputConfig
from jester_als.excel import COUNT as EXCEL_COUNT
from jester_als.excel import USER as EXCEL_USER
from jester_als.excel import joke_columns as excel_joke_columns
from jester_als.prepare import (
    _INT_ID,
    CSV_PRUNING,
    MALFORMED,
    MELTED_COLUMNS,
    RATINGS_SCHEMA,
    REFUSED_COLUMNS,
    REFUSED_SCHEMA,
    InputError,
    _not_int_id,
    _quote,
    _user_key,
    as_refused,
    cells_where,
    check_excel_count_column,
    check_unique_users,
    classify_cells,
    count_column_tests,
    excel_user_files,
    hash_sum,
    hash_total,
    hex64,
    input_name,
    joke_columns,
    melt_rows,
    melt_wide_ratings,
    ratings_hash,
    read_table,
    wide_rows,
)

log = logging.getLogger(__name__)

JOKE_WORDS = 8  # rated jokes as bits of at most this many 64-bit words: joke ids that span up to 512
# The users counted as the rows stream past, exactly, as Spark's bitmaps of 32,768 ids each (bitmap_construct_agg):
# this many of them hold ids 1 to 131,072, all of Jester's. A table with other ids has its users counted from the
# written ratings instead.
USER_BITMAPS = 4
BITMAP_IDS = 32768  # the ids one of Spark's bitmaps holds


def eligible(inp: InputConfig) -> bool:
    """Whether the input's settings allow the one-pass path (the table itself may still send it back): a wide
    table, or the original Excel files, whose users the reader numbers (a headerless CSV in their layout numbers
    its users by a window over all its rows, which the pass cannot stream)."""
    return (
        inp.one_pass
        and ((inp.layout == "wide" and inp.format in ("csv", "parquet", "table")) or _excel(inp))
        and inp.min_ratings_per_user <= 1
        and inp.user_ids != "reindex"
    )


def _excel(inp: InputConfig) -> bool:
    return inp.layout == "jester" and inp.format == "xls"


@dataclass
class OnePass:
    """What the one pass found: the same ``counts``, ``fingerprint`` and ``source`` as :class:`PreparedRatings`
    (the ratings and refused cells are already written)."""

    counts: dict
    fingerprint: dict
    source: str
    # seconds of each part: the pass itself (read, melt, classify, count, write), the written ratings counted,
    # the check that no user id is on two rows (0 when not needed), the sentinels and refused cells
    parts: dict
    user_files: DataFrame | None = None  # user -> the Excel file and row it was read from (format xls)
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
    columns = _columns(table, inp, source)
    if columns is None:
        return None  # refused by the general path with its own message
    user_column, jokes, count_column = columns
    joke_ids = [j for _, j in jokes]
    # Everything the pass counts, it counts per row, before the melt: Spark's observed metrics are gathered by an
    # operator of their own that takes every row it sees out of the generated code, so an observation of the cells
    # would handle each cell a second time. A row's cells are counted by plain tests of their text (not blank;
    # spelt exactly as a sentinel); what needs a cell parsed comes from the written ratings or, when some cells
    # are neither blank, rated nor such a sentinel, from a second pass over those.
    per_row = {
        "_row_hash": F.xxhash64(*[_quote(c) for c in table.columns]),
        "_row_named": _user_key(user_column).isNotNull(),
        "_row_not_int": _not_int_id(_quote(user_column)),
        "_row_malformed": F.col(MALFORMED).isNotNull() if MALFORMED in table.columns else F.lit(False),
        "_row_filled": F.expr(cells_where(jokes, "trim(x) != ''")),
        "_row_sentinel": F.expr(cells_where(jokes, _spelt_as_sentinel(inp.missing_values))),
    }
    count_metrics = []
    if count_column:  # the Jester layout's count column, checked as the general path's summary checks it
        per_row["_row_not_count"], per_row["_row_count_differs"], _ = count_column_tests(*count_column)
        count_metrics = [
            F.count(F.when(F.col("_row_not_count"), 1)).alias("count_not_count"),
            F.count(F.when(F.col("_row_count_differs"), 1)).alias("count_differs"),
        ]
    marks = [("start", time.perf_counter())]
    # One observation for the whole query, of scalars only: Spark 4.0's Connect server reports a single
    # observation per query to its client and cannot send it an array ("Unsupported component type ... in
    # arrays"), so the rated jokes come from the written ratings below.
    observed = Observation("prepare")
    rows = wide_rows(table, user_column, jokes, per_row).observe(
        observed,
        F.count(F.lit(1)).alias("rows"),
        *hash_sum(F.col("_row_hash"), "row_hash"),
        F.count(F.when(F.col("_row_named"), 1)).alias("named"),
        F.count(F.when(F.col("_row_not_int"), 1)).alias("not_int"),
        F.count(F.when(F.col("_row_malformed"), 1)).alias("malformed"),
        F.sum("_row_filled").alias("filled"),
        F.sum("_row_sentinel").alias("sentinel"),
        *_rated_user_ids(F.col("_row_filled") > F.col("_row_sentinel")),
        *count_metrics,
    )
    cells = classify_cells(
        melt_rows(rows, jokes, parsed=True),
        missing_values=inp.missing_values,
        rating_range=inp.rating_range,
        columns=MELTED_COLUMNS[True],
    )
    (
        cells.where(F.col("reason") == "rated")
        .select("user", "joke", "rating")
        .write.mode("overwrite")
        .parquet(ratings_path)
    )
    by_row = observed.get
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
    if count_column:
        _check_counts(table, count_column, source, by_row, ratings_path)
    written_ratings = spark.read.schema(RATINGS_SCHEMA).parquet(ratings_path)
    written = _written_counts(written_ratings, joke_ids)
    # cells neither blank nor rated: sentinels and refused cells
    others = int(by_row["filled"] or 0) - written["n"]
    second_pass = others != int(by_row["sentinel"] or 0)
    # When every cell that is not blank is rated or spelt as a sentinel, a row has a rating exactly when it has more
    # cells that are not blank than spelt as a sentinel: the observed ids of those rows are the users.
    written["users"] = (
        written_ratings.select("user").distinct().count()
        if second_pass or by_row["users_elsewhere"]
        else sum(int(by_row[f"users_{k}"]) for k in range(1, USER_BITMAPS + 1))
    )
    marks.append(("written_counts", time.perf_counter()))
    if written["users"] != by_row["named"]:
        # Fewer users with ratings than rows naming one: some rows have no rating, or an id is on two rows.
        try:
            check_unique_users(table, user_column, source)
        except InputError:
            _remove(ratings_path)
            raise
    log.info(
        "%s: %d joke columns (ids %d..%d)%s, read in one pass",
        source,
        len(jokes),
        min(joke_ids),
        max(joke_ids),
        ", Jester layout, users numbered by row across the files" if count_column else "",
    )
    marks.append(("unique_users", time.perf_counter()))
    if second_pass:
        sentinel, by_reason = _refused_pass(spark, table, inp, user_column, jokes, rejected_path, others)
    else:
        # no rows, planned as an empty relation: Spark writes the schema alone
        table.where(F.lit(False)).select(*[F.lit(None).cast("string").alias(c) for c in REFUSED_COLUMNS]).write.mode(
            "overwrite"
        ).parquet(rejected_path)
        sentinel, by_reason = others, {}
    marks.append(("refused", time.perf_counter()))
    return OnePass(
        _counts(int(by_row["rows"]), sentinel, by_reason, written, joke_ids),
        {"rows": int(by_row["rows"]), "content_hash": hex64(hash_total(by_row, "row_hash"))},
        source,
        {name: round(t - before, 2) for (name, t), (_, before) in zip(marks[1:], marks)},
        user_files=excel_user_files(table) if count_column else None,
    )


def _columns(table: DataFrame, inp: InputConfig, source: str) -> tuple | None:
    """The table's user column, its joke columns with their ids, and the Jester layout's count column with what
    :func:`count_column_tests` needs (None for a wide table); None when the user column is missing."""
    if _excel(inp):
        jokes = excel_joke_columns(table.columns)
        return EXCEL_USER, jokes, (EXCEL_COUNT, jokes, inp.missing_values)
    if inp.user_column not in table.columns:
        return None
    header = [c for c in table.columns if c != MALFORMED]
    return inp.user_column, joke_columns(header, inp.user_column, inp.drop_columns, source), None


def _check_counts(table: DataFrame, count_column: tuple, source: str, by_row: dict, ratings_path: str) -> None:
    """The Excel files' count column checked from the pass's counts (:func:`check_excel_count_column`), which reads
    the table again only to name a row; a refusal leaves no ratings written."""
    try:
        check_excel_count_column(
            table, count_column, source, {k: int(by_row[k]) for k in ("rows", "count_not_count", "count_differs")}
        )
    except InputError:
        _remove(ratings_path)
        raise


def _rated_user_ids(rated) -> list:
    """Observed metrics of the rows for which ``rated`` holds: the distinct integer user ids among them, counted
    exactly as bits of :data:`USER_BITMAPS` bitmaps (``users_1``, ...), and how many of the rows have an id no bitmap
    holds (``users_elsewhere``). Spark's observed metrics take no distinct count; a bitmap is a set that they take,
    and the count of each is a scalar, which a Spark Connect 4.0 client can be sent."""
    user = F.when(rated, F.col(_INT_ID))
    return [
        *[
            F.bitmap_count(
                F.bitmap_construct_agg(F.when(F.bitmap_bucket_number(user) == k, F.bitmap_bit_position(user)))
            ).alias(f"users_{k}")
            for k in range(1, USER_BITMAPS + 1)
        ],
        F.count(F.when((user < 1) | (user > USER_BITMAPS * BITMAP_IDS), 1)).alias("users_elsewhere"),
    ]


def _spelt_as_sentinel(missing_values: list[float]) -> str:
    """A test (for :func:`cells_where`) true for the usual spellings of the sentinels (``99``, ``99.0``,
    ``99.00``): each of those is a sentinel whatever else is in its row. A sentinel spelt otherwise (`` 99``,
    ``9.9e1``) is found by the second pass, which parses every cell that is neither blank, rated nor spelt so."""
    spellings = set()
    for value in missing_values:
        value = float(value)
        spellings.add(repr(value))
        if value.is_integer():
            spellings.update({f"{value:.0f}", f"{value:.2f}"})
    if not spellings:
        return "false"
    return "x IN (" + ", ".join(f"'{s}'" for s in sorted(spellings)) + ")"


def _refused_pass(
    spark: SparkSession,
    table: DataFrame,
    inp: InputConfig,
    user_column: str,
    jokes: list[tuple[str, int]],
    rejected_path: str,
    others: int,
) -> tuple[int, dict]:
    """Classify the cells again, write the refused ones to ``rejected_path``, and count the sentinels and the
    refused cells by reason: only run when some cells are neither blank, rated nor spelt as a sentinel."""
    observed = Observation("refused")
    cells = classify_cells(
        melt_wide_ratings(table, user_column, jokes),
        missing_values=inp.missing_values,
        rating_range=inp.rating_range,
    )
    # in the refused cells' columns before the observation: see MELTED_COLUMNS for why nothing asks for them after
    unrated = as_refused(cells.where(~F.col("reason").isin("blank", "rated"))).observe(
        observed,
        F.count(F.when(F.col("reason") == "sentinel", 1)).alias("sentinel"),
        F.count(F.when(F.col("reason") != "sentinel", 1)).alias("rejected"),
    )
    # (neither blank, rated nor a sentinel: refused)
    unrated.where(F.col("reason") != "sentinel").write.mode("overwrite").parquet(rejected_path)
    sentinel, rejected = int(observed.get["sentinel"]), int(observed.get["rejected"])
    by_reason = {
        row["reason"]: int(row["count"])
        for row in spark.read.schema(REFUSED_SCHEMA).parquet(rejected_path).groupBy("reason").count().collect()
    }
    # one classification counted three ways: they cannot differ
    if sentinel + rejected != others or sum(by_reason.values()) != rejected:
        raise RuntimeError(
            f"prepare found {others} cells neither blank nor rated, then {sentinel} sentinels and {rejected} refused "
            f"cells in its second pass, and {by_reason} in their output"
        )
    return sentinel, by_reason


def _written_counts(written: DataFrame, joke_ids: list[int]) -> dict:
    """The written ratings' count, sum, sum of squares and hash (:func:`ratings_hash`) and their jokes (``rated``):
    in one aggregate whose rows carry their jokes as bits, where the joke ids span at most :data:`JOKE_WORDS` words
    (all of Jester's do); else with one more query for the jokes."""
    low = min(joke_ids)
    words = (max(joke_ids) - low) // 64 + 1
    sums = [
        F.count(F.lit(1)).alias("n"),
        F.sum("rating").alias("total"),
        F.sum(F.col("rating") * F.col("rating")).alias("squares"),
        *ratings_hash(F.lit(True)),
    ]
    if words > JOKE_WORDS:
        row = written.agg(*sums).first().asDict()
        row["rated"] = [r["joke"] for r in written.select("joke").distinct().collect()]
        return row
    offset = F.col("joke") - low
    # (the Python API's shiftleft takes a constant shift only)
    bits = [
        F.bit_or(
            F.when((offset >= 64 * w) & (offset < 64 * (w + 1)), F.expr(f"shiftleft(1L, joke - {low + 64 * w})"))
        ).alias(f"w{w}")
        for w in range(words)
    ]
    row = written.agg(*bits, *sums).first().asDict()
    row["rated"] = [low + 64 * w + b for w in range(words) for b in range(64) if (row[f"w{w}"] or 0) >> b & 1]
    return row


def _counts(rows: int, sentinel: int, by_reason: dict, written: dict, joke_ids: list[int]) -> dict:
    """The counts :func:`jester_als.prepare.count_cells` gives, from the rows read, the sentinels, the refused
    cells by reason (``by_reason``) and the written ratings (:func:`_written_counts`)."""
    n = int(written["n"] or 0)
    mean = written["total"] / n if n else None
    rated_jokes = set(written["rated"])
    cells = rows * len(joke_ids)
    missing = {"blank": cells - n - sentinel - sum(by_reason.values()), "sentinel": sentinel}
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
        "std": max(written["squares"] / n - mean * mean, 0.0) ** 0.5 if n else None,
        "hash": hash_total(written, "hash"),
        "users": int(written["users"]),
    }
    counts["rows_without_ratings"] = None
    return counts


def _remove(path: str) -> None:
    shutil.rmtree(path.removeprefix("file:"), ignore_errors=True)
