"""Reading the Jester table and turning it into clean long ratings, accounting for every input cell.

The wide table (one row per user, one column per joke) is melted with a ``stack(...)`` expression generated
from the joke columns actually present. Every cell is then classified:

============  ==================  =============================================================
status        reason              meaning
============  ==================  =============================================================
accepted      ``rated``           a finite number inside the rating range (0.00 is a real rating)
missing       ``blank``           empty cell: the user did not rate the joke
missing       ``sentinel``        one of ``input.missing_values`` (99 in the original files)
rejected      ``not_a_number``    text that is not a number (``abc``, ``N/A``, ``--``)
rejected      ``not_finite``      NaN or infinity
rejected      ``out_of_range``    a number outside ``input.rating_range``
rejected      ``bad_user_id``     the user id is blank (or, with ``input.user_ids: integer``, not an
                                  integer in Spark's Int range)
rejected      ``bad_joke_id``     long layout: the joke id is missing or not such an integer
rejected      ``too_few_ratings`` the user has fewer valid ratings than ``input.min_ratings_per_user``
rejected      ``wrong_field_count`` every cell of a CSV row with more or fewer fields than the header (the
                                  ``detail`` column names the row and both counts)
============  ==================  =============================================================

Accepted + missing + rejected always equals the cells read; refused cells are written out with their reason.
User ids that are not integers in Int range (``u-17``, ``3000000000``, ``12.5``) are re-indexed to dense
integers by default (``input.user_ids: auto``); the mapping is kept with the outputs (``user_ids/``) and
recommendations carry the original ids. Problems with the table's shape (a missing user column, joke columns
that are not ids or appear twice, a user id on two rows, an empty file) stop the run before any output.
"""

from __future__ import annotations

import csv
import logging
import re
import time
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from jester_als.config import InputConfig, JesterConfig, LongColumns
from jester_als.errors import JobError, first_line
from jester_als.excel import COUNT as EXCEL_COUNT
from jester_als.excel import FILE as EXCEL_FILE
from jester_als.excel import ROW as EXCEL_ROW
from jester_als.excel import USER as EXCEL_USER
from jester_als.excel import ExcelInputError, read_excel_table
from jester_als.excel import joke_columns as excel_joke_columns
from jester_als.session import try_persist, try_unpersist

log = logging.getLogger(__name__)

INT_MAX = 2**31 - 1


MALFORMED = "_jester_als_malformed_row"  # Spark's corrupt-record column for CSV rows of the wrong width
CSV_PRUNING = "spark.sql.csv.parser.columnPruning.enabled"


class InputError(JobError):
    """The input cannot be processed; the message names the file or table and what was expected."""


def input_name(inp: InputConfig) -> str:
    return f"table {inp.table}" if inp.format == "table" else f"{inp.format} file {inp.path}"


def read_table(spark: SparkSession, inp: InputConfig) -> DataFrame:
    """Read the raw table; CSV cells stay strings so that nothing is guessed before classification."""
    name = input_name(inp)
    try:
        if inp.format == "csv":
            table = _read_csv(spark, inp, name)
        elif inp.format == "parquet":
            table = spark.read.parquet(inp.path)
        elif inp.format == "xls":
            table = read_excel_table(spark, inp.path)
        else:
            table = spark.read.table(inp.table)
        columns = table.columns
    except ExcelInputError as exc:
        raise InputError(str(exc)) from None
    except InputError:
        raise
    except Exception as exc:
        first = first_line(exc)
        if "PATH_NOT_FOUND" in first or "TABLE_OR_VIEW_NOT_FOUND" in first or "does not exist" in first:
            raise InputError(f"{name}: does not exist ({first})") from None
        raise InputError(f"{name}: cannot be read ({first}){_format_hint(inp)}") from None
    if not columns:
        raise InputError(f"{name}: is empty (no header and no rows)")
    return table


def _format_hint(inp: InputConfig) -> str:
    """Where the path's extension names another format than ``input.format``, a hint saying so."""
    path = (inp.path or "").rstrip("/").lower()
    named = {".csv": "csv", ".parquet": "parquet", ".xls": "xls", ".xlsx": "xls"}
    other = next((fmt for ext, fmt in named.items() if path.endswith(ext)), None)
    if other is None or other == inp.format:
        return ""
    return f"; the file's name says {other}, input.format says {inp.format}"


def _read_csv(spark: SparkSession, inp: InputConfig, name: str) -> DataFrame:
    header = inp.header and inp.layout != "jester"
    reader = (
        spark.read.option("header", header)
        .option("sep", inp.delimiter)
        .option("inferSchema", False)
        .option("mode", "PERMISSIVE")
    )
    try:
        table = reader.csv(inp.path)
    except Exception as exc:
        # A repeated name renamed onto another column's name (2 at fields 1 and 3 -> 21, 23 beside a joke 21)
        # fails Spark's own read; the header line says which name the file repeats.
        if header and "COLUMN_ALREADY_EXISTS" in str(exc):
            check_header(spark, inp, None, name)
        raise
    if not header or not table.columns:  # an empty file is refused by read_table
        return table
    if any(column.endswith(str(index)) for index, column in enumerate(table.columns)):
        check_header(spark, inp, table.columns, name)
    # Read again with the header's columns as strings plus a column for malformed rows: Spark then marks a row
    # with more or fewer fields than the header instead of silently dropping the extra fields or padding the
    # missing ones with blanks.
    schema = StructType([StructField(c, StringType()) for c in table.columns] + [StructField(MALFORMED, StringType())])
    return reader.option("columnNameOfCorruptRecord", MALFORMED).schema(schema).csv(inp.path)


def check_header(spark: SparkSession, inp: InputConfig, columns: list[str] | None, name: str) -> None:
    """Spark silently renames repeated header names (``5,5`` becomes ``50,51``, which would read as jokes 50
    and 51), so the header line itself is checked for repeats. Only called when some column's name ends with its
    own index: Spark names a repeated or empty header field by appending its index (``makeSafeHeader`` of its CSV
    source: ``5`` -> ``51``, empty -> ``_c3``), so where no name does, none was renamed and the header line need
    not be read again. ``columns``: the columns Spark read (None where its read failed)."""
    first = spark.read.text(inp.path).limit(1).collect()
    if not first:
        raise InputError(f"{name}: is empty (no header and no rows)")
    line = first[0]["value"].lstrip("\ufeff")
    names = next(csv.reader([line], delimiter=inp.delimiter), [])
    seen, repeated = set(), []
    for column in names:
        if column in seen and column not in repeated:
            repeated.append(column)
        seen.add(column)
    if repeated:
        raise InputError(
            f"{name}: column(s) {repeated[:5]} appear more than once in the header; each joke must have one column"
        )
    if columns is not None and len(names) != len(columns):
        log.warning(
            "%s: header has %d names but Spark read %d columns (delimiter %r?)",
            name,
            len(names),
            len(columns),
            inp.delimiter,
        )


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def joke_columns(columns: list[str], user_column: str, drop_columns: list[str], source: str) -> list[tuple[str, int]]:
    """Map the wide table's joke columns to joke ids; every column that is not the user column or dropped
    must be named by an integer id."""
    if user_column not in columns:
        raise InputError(
            f"{source}: no user column {user_column!r} (columns: {columns[:6]}"
            f"{' ...' if len(columns) > 6 else ''}); set input.user_column"
        )
    jokes = []
    bad = []
    for name in columns:
        if name == user_column or name in drop_columns:
            continue
        text = name.strip()
        if text.lstrip("+-").isdigit() and 0 <= int(text) <= INT_MAX:
            jokes.append((name, int(text)))
        else:
            bad.append(name)
    if bad:
        raise InputError(
            f"{source}: joke column(s) {bad[:5]} are not integer joke ids; expected every column "
            f"other than {user_column!r} and input.drop_columns {drop_columns} to be a joke id"
        )
    ids = [j for _, j in jokes]
    dupes = sorted({j for j in ids if ids.count(j) > 1})
    if dupes:
        raise InputError(f"{source}: joke id(s) {dupes[:5]} appear in more than one column")
    if not jokes:
        raise InputError(f"{source}: no joke columns found")
    return jokes


def stack_expression(jokes: list[tuple[str, int]], parsed: bool = False) -> str:
    """``stack(n, 1, CAST(`1` AS STRING), 2, ...) AS (joke, raw)`` for the given (column, joke id) pairs; with
    ``parsed``, each cell's value as a double too (``value``: null unless its trimmed text is a number)."""
    cells = []
    for column, joke_id in jokes:
        text = f"CAST({_quote(column)} AS STRING)"
        cells.append(f"{joke_id}, {text}" + (f", try_cast(trim({text}) AS DOUBLE)" if parsed else ""))
    return f"stack({len(jokes)}, {', '.join(cells)}) AS (joke, raw{', value' if parsed else ''})"


_RAW_ID, _INT_ID = "_jester_als_user_raw", "_jester_als_user"  # the user id as read and parsed, before the melt


def wide_rows(
    wide: DataFrame,
    user_column: str,
    jokes: list[tuple[str, int]],
    per_row: dict | None = None,
) -> DataFrame:
    """The wide table's joke columns, its user id as read and parsed, and the row's values ``per_row`` (name ->
    column expression): the rows :func:`melt_rows` melts. The id and ``per_row`` are computed here, once per row:
    in the same select as the generator Spark would evaluate them after it, once per cell (its ExtractGenerator
    rule puts a select's other expressions above the Generate)."""
    # columns by name rather than F.col: PySpark's F.col records its caller's place for error messages, a call to
    # the JVM per column, and a wide table has a hundred or more
    return wide.select(
        *[_quote(column) for column, _ in jokes],
        F.col(_quote(user_column)).cast("string").alias(_RAW_ID),
        _int_id(_quote(user_column)).alias(_INT_ID),
        *[value.alias(name) for name, value in (per_row or {}).items()],
    )


# The columns melt_rows gives (parsed or not), for classify_cells without asking Spark: a Spark Connect 4.0 server
# asked for the columns of a plan holding an observation below a generator then reports that observation empty
# when the plan runs (seen with pyspark 4.0.5; pyspark 4.3 reports it).
MELTED_COLUMNS = {False: ["user_raw", "user", "joke", "raw"], True: ["user_raw", "user", "joke", "raw", "value"]}


def melt_rows(rows: DataFrame, jokes: list[tuple[str, int]], parsed: bool = False) -> DataFrame:
    """:func:`wide_rows`' rows -> one row per (user, joke) cell: ``user_raw`` string, ``user`` int (null unless
    the id is an integer in Int range), ``joke`` int, ``raw`` string (and with ``parsed``, ``value``: see
    :func:`stack_expression`). Every cell is kept, blanks included, so that it can be counted."""
    return rows.select(
        F.col(_RAW_ID).alias("user_raw"), F.col(_INT_ID).alias("user"), F.expr(stack_expression(jokes, parsed))
    )


def melt_wide_ratings(wide: DataFrame, user_column: str, jokes: list[tuple[str, int]]) -> DataFrame:
    """Wide table -> one row per (user, joke) cell (see :func:`melt_rows`)."""
    return melt_rows(wide_rows(wide, user_column, jokes), jokes)


def number_rows(table: DataFrame, column: str = "_row") -> DataFrame:
    """Add the 1-based position of each row in file order (the original Jester files identify users by
    row). One ordered window: fine for tables of millions of rows, which is what this layout holds."""
    ordered = table.select(
        "*",
        F.col("_metadata.file_path").alias("_file"),
        F.col("_metadata.file_block_start").alias("_block"),
        F.monotonically_increasing_id().alias("_pos"),
    )
    order = Window.orderBy("_file", "_block", "_pos")
    return ordered.withColumn(column, F.row_number().over(order)).drop("_file", "_block", "_pos")


def jester_joke_columns(columns: list[str]) -> list[tuple[str, int]]:
    """The joke columns of a table in the original Jester layout, with their ids: every column after the
    first (the count of rated jokes), numbered by position."""
    return [(name, position) for position, name in enumerate(columns) if position > 0]


def jester_original_cells(
    table: DataFrame, source: str, missing_values: list[float], counted: dict
) -> tuple[DataFrame, list[tuple[str, int]]]:
    """The original Jester files: no header, the count of rated jokes first, then jokes 1..N, users by row.
    ``counted``: :func:`read_summary`'s figures of the table, for :func:`check_count_column`."""
    columns = table.columns
    if len(columns) < 2:
        raise InputError(
            f"{source}: the Jester layout needs a count column and at least one joke column, "
            f"found {len(columns)} column(s)"
        )
    jokes = jester_joke_columns(columns)
    numbered = number_rows(table).withColumn("_user", F.col("_row").cast("string"))
    check_count_column(
        numbered, columns[0], jokes, missing_values, source, counted, order="_row", names={"row": "_row"}
    )
    return melt_wide_ratings(numbered, "_user", jokes), jokes


# A table whose first column is no count of rated jokes on more than this share of its rows is refused: it is not
# in the Jester layout (without that column every joke would be read one column off). Fewer such rows, or counts
# that differ from the rated cells, are told in the log and the cells read as they are.
NOT_A_COUNT_SHARE = 0.5


def cells_where(jokes: list[tuple[str, int]], test: str) -> str:
    """SQL for how many of a row's joke cells ``x`` (as text) pass ``test`` (SQL of ``x``). A lambda over the
    row's cells rather than a sum of a test per column: Spark evaluates a lambda without compiling it into the
    query's generated code, which a hundred tests would enlarge, and a job compiles that code on its first run."""
    cells = ", ".join(f"CAST({_quote(c)} AS STRING)" for c, _ in jokes)
    return f"size(filter(array({cells}), x -> {test}))"


def count_column_tests(count_column: str, jokes: list[tuple[str, int]], missing_values: list[float]):
    """(not_count, differs, given) of a row of the Jester layout: its first column is not a whole number from 0 to
    the number of jokes; it is one, but not the number of the row's cells that are neither blank nor a sentinel;
    that number of cells."""
    sentinels = ", ".join(repr(float(v)) for v in missing_values)
    given_test = "trim(x) != ''" + (
        f" AND NOT coalesce(try_cast(trim(x) AS DOUBLE) IN ({sentinels}), false)" if sentinels else ""
    )
    given = F.expr(cells_where(jokes, given_test))
    value = F.expr(f"try_cast(trim(CAST({_quote(count_column)} AS STRING)) AS DOUBLE)")
    is_count = F.coalesce(
        (value == F.floor(value)) & (value >= 0) & (value <= len(jokes)), F.lit(False)
    )  # null (not a number) is no count
    return ~is_count, is_count & (value != given), given


def check_count_column(
    table: DataFrame,
    count_column: str,
    jokes: list[tuple[str, int]],
    missing_values: list[float],
    source: str,
    counted: dict,
    *,
    order: str,
    names: dict[str, str],
) -> None:
    """Refuse a table whose first column is no count of rated jokes on most rows, or warn of rows whose count
    differs from their cells, from ``counted`` (``rows``, ``count_not_count``, ``count_differs``: counted by
    :func:`read_summary` in its pass). Only then is the table read again, for the first such row in ``order``,
    named by ``names`` (word -> column: ``{"row": "_row"}``)."""
    rows, not_count, differs = counted["rows"], counted["count_not_count"], counted["count_differs"]
    if not not_count and not differs:
        return
    is_not_count, is_different, given = count_column_tests(count_column, jokes, missing_values)
    example = F.struct(
        *[F.col(c).alias(w) for w, c in names.items()],
        # a count read as a double (typed Parquet, an Excel column of numbers) is shown as it was written: 99, not 99.0
        F.regexp_replace(F.trim(F.col(_quote(count_column)).cast("string")), r"\.0$", "").alias("count"),
        given.alias("given"),
    )
    first = table.select(
        F.min_by(example, F.when(is_not_count, F.col(order))).alias("not_count"),
        F.min_by(example, F.when(is_different, F.col(order))).alias("differs"),
    ).first()

    def name(row) -> str:
        return " ".join(f"{word} {row[word]}" for word in names)

    if not_count > NOT_A_COUNT_SHARE * rows:
        raise InputError(
            f"{source}: the Jester layout reads each row's count of rated jokes first, then jokes 1..{len(jokes)}, "
            f"but the first column is not such a count on {not_count:,} of {rows:,} rows "
            f"({name(first['not_count'])}: {first['not_count']['count']!r}); without that column every joke would "
            "be read one column off (give the table a header naming its user column and jokes, and read it with "
            "layout: wide)"
        )
    if not_count:
        log.warning(
            "%s: on %d of %d rows the first column is not a count of rated jokes (%s: %r); their cells are read "
            "as they are",
            source,
            not_count,
            rows,
            name(first["not_count"]),
            first["not_count"]["count"],
        )
    if differs:
        log.warning(
            "%s: on %d of %d rows the first column, the count of rated jokes, differs from the cells rated (%s: "
            "count %s, %d cells neither blank nor a sentinel); the cells are read as they are",
            source,
            differs,
            rows,
            name(first["differs"]),
            first["differs"]["count"],
            first["differs"]["given"],
        )


def check_excel_count_column(table: DataFrame, count_column: tuple, source: str, counted: dict) -> None:
    """:func:`check_count_column` on the Excel files as read (``count_column``: the reader's count column, its
    jokes and the missing values), a row named by its file and row in the order the users were numbered."""
    check_count_column(
        table.withColumn("_order", F.col(EXCEL_USER).cast("int")),
        *count_column,
        source,
        counted,
        order="_order",
        names={"file": EXCEL_FILE, "row": EXCEL_ROW},
    )


def long_cells(table: DataFrame, columns: LongColumns, source: str) -> DataFrame:
    """Long table -> the same cell shape as ``melt_wide_ratings``."""
    names = [columns.user, columns.joke, columns.rating]
    missing = [c for c in names if c not in table.columns]
    if missing:
        raise InputError(f"{source}: long layout needs columns {names}; missing {missing} (set input.long_columns)")
    return table.select(
        F.col(_quote(columns.user)).cast("string").alias("user_raw"),
        F.col(_quote(columns.joke)).cast("string").alias("joke_raw"),
        F.col(_quote(columns.rating)).cast("string").alias("raw"),
    )


def _int_id(column: str):
    """A trimmed string that is a whole number within Int range (``12``, ``12.0``), else null."""
    as_double = F.expr(f"try_cast(trim({column}) AS DOUBLE)")
    ok = (
        as_double.isNotNull()
        & ~F.isnan(as_double)
        & (as_double == F.floor(as_double))
        & (as_double >= 0)
        & (as_double <= INT_MAX)
    )
    return F.when(ok, as_double.cast("int"))


def _not_int_id(column: str):
    """The id in ``column`` is not blank and not an integer in Int range: it needs re-indexing."""
    return (F.trim(F.col(column).cast("string")) != "") & _int_id(column).isNull()


def needs_reindex(cells: DataFrame) -> bool:
    """Some non-blank user id is not an integer in Int range."""
    return bool(cells.where(_not_int_id("user_raw")).limit(1).count())


def user_id_mapping(cells: DataFrame) -> DataFrame:
    """Original id (trimmed string) -> dense int ``user`` 1..n in the ids' sort order (deterministic)."""
    originals = (
        cells.select(F.trim(F.col("user_raw")).alias("original_user")).where(F.col("original_user") != "").distinct()
    )
    return originals.withColumn("user", F.dense_rank().over(Window.orderBy("original_user")).cast("int"))


def classify_cells(
    cells: DataFrame,
    *,
    missing_values: list[float],
    rating_range: list[float],
    min_ratings_per_user: int = 1,
    columns: list[str] | None = None,
) -> DataFrame:
    """Add ``user`` int (unless already there), ``rating`` double, ``status`` and ``reason`` to every cell
    (see the module table). ``columns``: the cells' columns, where the caller knows them without asking Spark
    (see :data:`MELTED_COLUMNS`)."""
    low, high = float(rating_range[0]), float(rating_range[1])
    # One select rather than a column at a time: each step of a DataFrame is analysed on its own, and the melt
    # of a wide table is a large plan to analyse.
    columns = columns or cells.columns
    parsed = {
        "joke": _int_id("joke_raw") if "joke_raw" in columns else F.col("joke"),
        "joke_raw": F.col("joke_raw") if "joke_raw" in columns else F.col("joke").cast("string"),
        "user": F.col("user") if "user" in columns else _int_id("user_raw"),
    }
    text = F.trim(F.col("raw"))
    value = F.col("value") if "value" in columns else F.expr("try_cast(trim(raw) AS DOUBLE)")
    sentinel = value.isin([float(v) for v in missing_values]) if missing_values else F.lit(False)
    forced = F.col("forced_reason") if "forced_reason" in columns else F.lit(None).cast("string")
    reason = (
        F.when(forced.isNotNull(), forced)
        # (a number is never blank: its text is trimmed only when it is not one)
        .when(F.col("raw").isNull() | (value.isNull() & (text == "")), "blank")
        .when(value.isNull(), "not_a_number")
        .when(F.isnan(value) | (F.abs(value) == float("inf")), "not_finite")
        .when(sentinel, "sentinel")
        .when((value < low) | (value > high), "out_of_range")
        .when(parsed["user"].isNull(), "bad_user_id")
        .when(parsed["joke"].isNull(), "bad_joke_id")
        .otherwise("rated")
    )
    # the columns in the order adding them one at a time gave: the given ones (the joke parsed in place), then
    # the added ones
    added = [name for name in ("joke", "joke_raw", "user") if name not in columns]
    classified = cells.select(
        *[parsed[c].alias(c) if c == "joke" else _quote(c) for c in columns if c != "value"],
        *[parsed[name].alias(name) for name in added],
        value.alias("rating"),
        reason.alias("reason"),
    )
    if min_ratings_per_user > 1:
        valid = classified.where(F.col("reason") == "rated").groupBy("user").agg(F.count(F.lit(1)).alias("_valid"))
        classified = (
            classified.join(valid, on="user", how="left")
            .withColumn(
                "reason",
                F.when(
                    (F.col("reason") == "rated") & (F.coalesce("_valid", F.lit(0)) < min_ratings_per_user),
                    "too_few_ratings",
                ).otherwise(F.col("reason")),
            )
            .drop("_valid")
        )
    status = (
        F.when(F.col("reason") == "rated", "accepted")
        .when(F.col("reason").isin("blank", "sentinel"), "missing")
        .otherwise("rejected")
    )
    return classified.withColumn("status", status)


REFUSED_COLUMNS = ("user", "joke", "value", "reason", "detail")  # the refused cells as written, all strings
# The written tables' schemas, for reading back what this run has just written: given a schema, Spark skips the
# job that reads the files' footers to find one.
RATINGS_SCHEMA = "user INT, joke INT, rating DOUBLE"
REFUSED_SCHEMA = ", ".join(f"{c} STRING" for c in REFUSED_COLUMNS)


def refused_cells(classified: DataFrame) -> DataFrame:
    """The rejected cells of ``classified`` as ``rejected/`` holds them (see :func:`as_refused`)."""
    return as_refused(classified.where(F.col("status") == "rejected"))


def as_refused(classified: DataFrame) -> DataFrame:
    """The cells of ``classified`` in the columns ``rejected/`` holds: the user and joke as read, the value as
    read, the reason and its detail (null where the reason needs none)."""
    source = {
        "user": F.col("user_raw"),
        "joke": F.col("joke_raw"),
        "value": F.col("raw"),
        "reason": F.col("reason"),
        "detail": F.col("detail") if "detail" in classified.columns else F.lit(None).cast("string"),
    }
    return classified.select(*[source[c].alias(c) for c in REFUSED_COLUMNS])


@dataclass
class PreparedRatings:
    """The clean long ratings, the refused cells, and the count of every cell by status and reason."""

    ratings: DataFrame  # user int, joke int, rating double
    rejected: DataFrame  # user, joke, value (as read), reason
    counts: dict  # {"cells": n, "accepted": n, "missing": {...}, "rejected": {...}}
    source: str
    classified: DataFrame
    user_ids: DataFrame | None = None  # original_user -> user, when ids were re-indexed
    fingerprint: dict | None = None
    restore: dict | None = None  # session settings to put back once the outputs are written
    table: DataFrame | None = None  # the input as read, persisted

    @property
    def user_files(self) -> DataFrame | None:
        """user -> the Excel file and row it was read from (format xls), else None."""
        if self.table is None or EXCEL_FILE not in self.table.columns:
            return None
        return excel_user_files(self.table)

    def release(self) -> None:
        try_unpersist(self.classified)
        if self.table is not None:
            try_unpersist(self.table)
        for key, value in (self.restore or {}).items():
            try:
                self.classified.sparkSession.conf.set(key, value)
            except Exception:  # the platform may refuse; the setting only concerned this read
                pass


def excel_user_files(table: DataFrame) -> DataFrame:
    """``user_files/``: each user of the Excel files as read (:func:`jester_als.excel.read_excel_table`) with the
    file and row it came from."""
    return table.select(
        F.col(EXCEL_USER).cast("int").alias("user"), F.col(EXCEL_FILE).alias("file"), F.col(EXCEL_ROW).alias("row")
    )


def rows_without_ratings(prepared, users: int) -> int:
    """Input rows that gave no usable rating (``prepared``: :class:`PreparedRatings` or the one pass's result):
    counted where rows are not users one to one (the long layout), else the rows less the users with ratings."""
    counted = prepared.counts["rows_without_ratings"]
    return prepared.fingerprint["rows"] - users if counted is None else counted


def cells_read(counts: dict, refused_later: dict[str, int] | None = None) -> dict:
    """Every cell read, by what became of it: accepted, missing by sentinel, refused by reason; ``refused_later``
    are accepted cells a later step refused (fold-in's jokes the model never saw), by reason."""
    later = {reason: n for reason, n in (refused_later or {}).items() if n}
    return {
        "read": counts["cells"],
        "accepted": counts["accepted"] - sum(later.values()),
        "missing": counts["missing"],
        "rejected": {**counts["rejected"], **later},
    }


# (shift, bits) of the slices of a 64-bit hash summed as longs: the widest slice has 22 bits, so a slice's sum
# fits a long up to 2^41 rows
HASH_SLICES = ((0, 22), (22, 21), (43, 21))


def hash_sum(hashes, name: str) -> list:
    """Aggregate columns whose :func:`hash_total` is the sum of the 64-bit ``hashes`` modulo 2^64: an
    order-independent hash of the rows that counts repeats (two identical rows do not cancel as an XOR would).
    Each slice of the hashes is summed as a long: the hashes' own long sum would overflow (an error under ANSI
    SQL), and a decimal sum of them was several times slower. Three slices rather than more: every aggregate
    costs each row it sees, and the one pass sees every cell."""
    return [
        F.sum(F.shiftrightunsigned(hashes, shift).bitwiseAND((1 << bits) - 1)).alias(f"{name}_{i}")
        for i, (shift, bits) in enumerate(HASH_SLICES)
    ]


def hash_total(row, name: str) -> int:
    """The sum modulo 2^64 of the hashes :func:`hash_sum` summed under ``name`` (0 for no rows)."""
    return sum(int(row[f"{name}_{i}"] or 0) << shift for i, (shift, _) in enumerate(HASH_SLICES)) & (2**64 - 1)


def ratings_hash(accepted) -> list:
    """:func:`hash_sum` aggregates (named ``hash``) of the ``accepted`` cells' (user, joke, rating): the ratings
    hash both prepare paths report, so the same ratings give the same hash on either."""
    return hash_sum(F.when(accepted, F.xxhash64("user", "joke", "rating")), "hash")


def content_hash(*columns: str) -> list:
    """:func:`hash_sum` aggregates (named ``hash``) of the per-row xxhash64 of ``columns``."""
    return hash_sum(F.xxhash64(*[_quote(c) for c in columns]), "hash")


def hex64(value) -> str:
    """The low 64 bits of an aggregate hash as 16 hex digits."""
    return f"{int(value or 0) & (2**64 - 1):016x}"


def fingerprint(table: DataFrame) -> dict:
    """Row count and an order-independent content hash of the table as read."""
    return read_summary(table)[0]


def _user_key(user_column: str):
    """A wide row's user as ALS will see it: the integer id when the trimmed id is one (so ``12``, ``012`` and
    ``12.0`` are one user), else the trimmed text (re-indexed by its text); null when blank."""
    text = F.trim(F.col(_quote(user_column)).cast("string"))
    return F.when(text != "", F.coalesce(_int_id(_quote(user_column)).cast("string"), text))


def read_summary(
    table: DataFrame, user_column: str | None = None, *, wide: bool = False, count_column: tuple | None = None
) -> tuple[dict, dict]:
    """One pass over the table as read: its fingerprint (row count and order-independent content hash) and,
    given the user column, how many of its ids are not integers in Int range (``not_int``: they need
    re-indexing) and, for a wide table, how many rows name a user and how many distinct users they name;
    for a CSV file read with the malformed-row column, how many rows have a field count other than the
    header's (``malformed``); given the Jester layout's ``(count column, jokes, missing values)``, how many rows
    have no count there (``count_not_count``) and how many a count other than their cells' (``count_differs``,
    see :func:`count_column_tests`)."""
    aggregates = [F.count(F.lit(1)).alias("rows"), *content_hash(*table.columns)]
    if count_column:
        not_count, differs, _ = count_column_tests(*count_column)
        aggregates += [
            F.count(F.when(not_count, 1)).alias("count_not_count"),
            F.count(F.when(differs, 1)).alias("count_differs"),
        ]
    if MALFORMED in table.columns:
        aggregates.append(F.count(MALFORMED).alias("malformed"))
    if user_column:
        aggregates.append(F.count(F.when(_not_int_id(_quote(user_column)), 1)).alias("not_int"))
        if wide:
            key = _user_key(user_column)
            aggregates += [F.count(key).alias("named"), F.countDistinct(key).alias("distinct")]
    row = table.agg(*aggregates).first().asDict()
    users = {
        k: int(row[k])
        for k in ("not_int", "named", "distinct", "malformed", "count_not_count", "count_differs")
        if k in row
    }
    return {"rows": int(row["rows"]), "content_hash": hex64(hash_total(row, "hash"))}, users


def check_unique_users(table: DataFrame, user_column: str, source: str) -> None:
    """Each user on one row (ids compared as ALS sees them: ``12`` and ``12.0`` are one user): then a wide
    table cannot give two ratings of one joke by one user, since its joke columns are distinct."""
    repeated = (
        table.groupBy(_user_key(user_column).alias("id"))
        .count()
        .where("count > 1 AND id IS NOT NULL")
        .orderBy("id")
        .limit(5)
        .collect()
    )
    if repeated:
        shown = ", ".join(f"{r['id']!r} ({r['count']} rows)" for r in repeated)
        raise InputError(
            f"{source}: user id(s) on more than one row: {shown}; each user must have one row (column {user_column!r})"
        )


def check_input(spark: SparkSession, inp: InputConfig) -> dict:
    """What ``prepare`` checks before reading any row: the input exists and its header has the user column and
    integer joke ids (wide), the three columns (long), or any columns (the original Jester layout). Spark reads
    the header and nothing else; raises InputError like ``prepare``."""
    source = input_name(inp)
    table = read_table(spark, inp)
    header = [c for c in table.columns if c != MALFORMED]
    result = {"input": source, "layout": inp.layout, "columns": len(header)}
    if inp.layout == "wide":
        jokes = joke_columns(header, inp.user_column, inp.drop_columns, source)
        result.update(jokes=len(jokes), joke_ids=[min(j for _, j in jokes), max(j for _, j in jokes)])
    elif inp.layout == "long":
        long_cells(table, inp.long_columns, source)
    elif EXCEL_USER in table.columns:  # the workbooks as read: their count column and jokes, and their users
        jokes = excel_joke_columns(table.columns)
        result.update(columns=len(jokes) + 1, jokes=len(jokes), users=table.count())
    else:  # a headerless CSV in the original layout: the count column, then the jokes
        result.update(jokes=len(header) - 1)
    return result


def check_job(spark: SparkSession, cfg: JesterConfig) -> str:
    """The ``check`` job: :func:`check_input` on the configured input, as the line it prints."""
    found = check_input(spark, cfg.input)
    return f"jester-als check: config {cfg.source or '(built-in defaults)'} is valid; " + ", ".join(
        f"{k} {v}" for k, v in found.items()
    )


def ratings_cells(
    spark: SparkSession, inp: InputConfig, table: DataFrame | None = None
) -> tuple[DataFrame, str, dict, bool | None]:
    """Read the configured input (or take ``table``, the input as read); return its cells (wide melted or
    long), the input's name and fingerprint, and whether some user id is not an integer in Int range (None where
    the cells must be asked)."""
    source = input_name(inp)
    table = read_table(spark, inp) if table is None else table
    layout = inp.layout
    user_column = {"wide": inp.user_column, "long": inp.long_columns.user}.get(layout)
    if user_column is not None and user_column not in table.columns:
        user_column = None  # refused below with the layout's own message
    excel = layout == "jester" and EXCEL_USER in table.columns  # the Excel files, users numbered as they were read
    count_column = None
    if layout == "jester" and len(table.columns) >= 2:  # (fewer: refused below)
        count_column = (
            (EXCEL_COUNT, excel_joke_columns(table.columns), inp.missing_values)
            if excel
            else (table.columns[0], jester_joke_columns(table.columns), inp.missing_values)
        )
    prints, users = read_summary(table, user_column, wide=layout == "wide", count_column=count_column)
    not_int = users["not_int"] > 0 if "not_int" in users else None
    if prints["rows"] == 0:
        raise InputError(f"{source}: has a header but no rows")
    counted = {"rows": prints["rows"], **users}
    if excel:
        jokes = count_column[1]
        check_excel_count_column(table, count_column, source, counted)
        log.info("%s: Jester layout, %d joke columns, users numbered by row across the files", source, len(jokes))
        return melt_wide_ratings(table, EXCEL_USER, jokes), source, prints, False
    if layout == "jester":
        cells, jokes = jester_original_cells(table, source, inp.missing_values, counted)
        log.info("%s: Jester layout, %d joke columns, users numbered by row", source, len(jokes))
        return cells, source, prints, False  # users are numbered 1..rows
    if layout == "wide":
        header = [c for c in table.columns if c != MALFORMED]
        jokes = joke_columns(header, inp.user_column, inp.drop_columns, source)
        if users["distinct"] != users["named"]:
            check_unique_users(table, inp.user_column, source)
        log.info(
            "%s: %d joke columns (ids %d..%d)", source, len(jokes), min(j for _, j in jokes), max(j for _, j in jokes)
        )
        if not users.get("malformed"):
            # No malformed-row column, or every row had the header's width (counted in the summary pass): one
            # scan of the file instead of a second one for the malformed rows. drop() of a column the table
            # lacks is a no-op.
            return melt_wide_ratings(table.drop(MALFORMED), inp.user_column, jokes), source, prints, not_int
        well_formed = table.where(F.col(MALFORMED).isNull()).drop(MALFORMED)
        cells = (
            melt_wide_ratings(well_formed, inp.user_column, jokes)
            .withColumn("forced_reason", F.lit(None).cast("string"))
            .withColumn("detail", F.lit(None).cast("string"))
        )
        malformed = malformed_row_cells(table, header, inp.user_column, dict(jokes), inp.delimiter)
        return cells.unionByName(malformed), source, prints, not_int
    return long_cells(table, inp.long_columns, source), source, prints, not_int


def malformed_row_cells(
    table: DataFrame, header: list[str], user_column: str, joke_ids: dict[str, int], delimiter: str
) -> DataFrame:
    """Every field of the rows Spark marked as malformed (a field count that differs from the header's), as
    cells refused with ``wrong_field_count``: a field under a joke column keeps that joke id, a field past the
    header has none. The raw line is split on the delimiter outside double quotes, as CSV does."""
    split_on = re.escape(delimiter) + '(?=(?:[^"]*"[^"]*")*[^"]*$)'
    fields = F.split(F.col(MALFORMED), split_on, -1)
    skipped = [i for i, name in enumerate(header) if name not in joke_ids]  # the user and dropped columns
    joke_at = F.array(*[F.lit(joke_ids.get(name)).cast("int") for name in header])
    # Referencing a data column beside the malformed-row column is required: Spark refuses a query of a raw
    # CSV file that reads only that column.
    rows = table.where(F.col(MALFORMED).isNotNull()).select(
        F.trim(F.col(_quote(user_column)).cast("string")).alias("user_raw"),
        F.size(fields).alias("fields"),
        F.posexplode(fields).alias("pos", "field"),
    )
    return rows.where(~F.col("pos").isin(skipped)).select(
        "user_raw",
        _int_id("user_raw").alias("user"),
        F.try_element_at(joke_at, (F.col("pos") + 1).cast("int")).alias("joke"),
        F.regexp_replace("field", r'^\s*"(.*)"\s*$', "$1").alias("raw"),
        F.lit("wrong_field_count").alias("forced_reason"),
        F.format_string(
            "row of user %s has %d fields; the header has %d", F.col("user_raw"), F.col("fields"), F.lit(len(header))
        ).alias("detail"),
    )


def count_cells(classified: DataFrame, *, rows_are_users: bool = False) -> dict:
    """Cells by status and reason, the jokes nobody rated, the accepted ratings' summary (``users``, ``items``,
    ``ratings``, ``mean``, ``std`` and the content hash of (user, joke, rating)) and (unless ``rows_are_users``)
    the users without a rating, from two aggregations over the persisted cells: one by joke, status and reason
    (a few hundred rows, summed here) and the distinct users with a rating. Where every row of the table is one
    user (wide and Jester layouts) the rows without a rating are the table's rows less the users with ratings:
    left as None here."""
    accepted = F.col("status") == "accepted"
    rating = F.when(accepted, F.col("rating"))
    groups = (
        classified.groupBy("joke", "status", "reason")
        .agg(
            F.count(F.lit(1)).alias("cells"),
            F.count(rating).alias("n"),
            F.sum(rating).alias("total"),
            F.sum(rating * rating).alias("squares"),
            *ratings_hash(accepted),
        )
        .collect()
    )
    counts = {"cells": 0, "accepted": 0, "missing": {}, "rejected": {}}
    rated_per_joke: dict = {}
    for row in groups:
        counts["cells"] += row["cells"]
        if row["status"] == "accepted":
            counts["accepted"] += row["cells"]
        else:
            by_reason = counts[row["status"]]
            by_reason[row["reason"]] = by_reason.get(row["reason"], 0) + row["cells"]
        if row["joke"] is not None:
            rated_per_joke[row["joke"]] = rated_per_joke.get(row["joke"], 0) + row["n"]
    counts["missing_total"] = sum(counts["missing"].values())
    counts["rejected_total"] = sum(counts["rejected"].values())
    counts["jokes_without_ratings"] = sorted(joke for joke, n in rated_per_joke.items() if not n)
    rated = [row for row in groups if row["n"]]
    n = sum(row["n"] for row in rated)
    mean = sum(row["total"] for row in rated) / n if n else None
    counts["ratings"] = {
        "ratings": n,
        "items": sum(1 for v in rated_per_joke.values() if v),
        "mean": mean,
        "std": max(sum(row["squares"] for row in rated) / n - mean * mean, 0.0) ** 0.5 if n else None,
        "hash": sum(hash_total(row, "hash") for row in rated) & (2**64 - 1),
        "users": classified.where(accepted).select("user").distinct().count() if n else 0,
    }
    counts["rows_without_ratings"] = (
        None
        if rows_are_users
        else (classified.groupBy("user_raw").agg(F.count(rating).alias("n")).where("n = 0").count())
    )
    return counts


def prepare_ratings(spark: SparkSession, inp: InputConfig) -> PreparedRatings:
    """Read, melt and classify the configured input, and count every cell.

    The classified cells are persisted (they feed the counts, the ratings and the refused cells); call
    ``release()`` on the result once the outputs are written."""
    restore = {}
    if inp.format == "csv" and inp.header and inp.layout == "wide":
        # With CSV column pruning, Spark parses only the columns a query uses and no longer sees a row's field
        # count (a dropped column such as "Number of Jokes Rated" is never used), so malformed rows would
        # pass unmarked. Off for this read; put back by release().
        restore[CSV_PRUNING] = spark.conf.get(CSV_PRUNING, "true")
        spark.conf.set(CSV_PRUNING, "false")
    try:
        return _prepare(spark, inp, restore)
    except BaseException:
        for key, value in restore.items():
            spark.conf.set(key, value)
        raise


def _prepare(spark: SparkSession, inp: InputConfig, restore: dict) -> PreparedRatings:
    # The input is parsed once: its summary pass fills the cache, and the cells are melted from the cache.
    table = try_persist(read_table(spark, inp), "the input table")
    try:
        cells, source, prints, not_int = ratings_cells(spark, inp, table)
    except BaseException:
        try_unpersist(table)
        raise
    user_ids = None
    mode = inp.user_ids
    if mode == "reindex" or (mode == "auto" and (needs_reindex(cells) if not_int is None else not_int)):
        user_ids = try_persist(user_id_mapping(cells), "the user id mapping")
        cells = (
            cells.drop("user")
            .join(user_ids, F.trim(F.col("user_raw")) == F.col("original_user"), "left")
            .drop("original_user")
        )
        log.info(
            "%s: user ids are not all integers in Int range; re-indexed %d users (mapping in user_ids/)",
            source,
            user_ids.count(),
        )
    classified = classify_cells(
        cells,
        missing_values=inp.missing_values,
        rating_range=inp.rating_range,
        min_ratings_per_user=inp.min_ratings_per_user,
    )
    # What is kept for the counts and the two outputs: the raw text only of refused cells and the rating only
    # of accepted ones (nulls cost next to nothing in the cache, where every cell's text would be built into
    # it and read back).
    # The long layout counts its users without a rating by their raw ids, so keeps every cell's.
    rejected_only = F.col("status") == "rejected"
    text = ("joke_raw", "raw", "detail") if inp.layout == "long" else ("joke_raw", "raw", "detail", "user_raw")
    kept = [
        F.col(c) if c not in text else F.when(rejected_only, F.col(c)).alias(c)
        for c in ("user", "joke", "user_raw", "reason", "status", "joke_raw", "raw", "detail")
        if c in classified.columns
    ]
    classified = try_persist(
        classified.select(*kept, F.when(F.col("status") == "accepted", F.col("rating")).alias("rating")),
        "the classified input cells",
    )
    counts = count_cells(classified, rows_are_users=inp.layout != "long")
    ratings = classified.where(F.col("status") == "accepted").select("user", "joke", "rating")
    rejected = refused_cells(classified)
    malformed = counts["rejected"].get("wrong_field_count")
    if malformed:
        rows = (
            rejected.where(F.col("reason") == "wrong_field_count")
            .select("detail")
            .distinct()
            .orderBy("detail")
            .limit(5)
            .collect()
        )
        log.warning(
            "%s: %d cells refused from rows whose field count differs from the header: %s",
            source,
            malformed,
            "; ".join(r["detail"] for r in rows),
        )
    return PreparedRatings(ratings, rejected, counts, source, classified, user_ids, prints, restore, table)


def reference_scan(spark: SparkSession, inp: InputConfig, path: str) -> float:
    """Seconds of the least work any prepare must do: one read of the input, melted (wide layouts), its
    non-blank cells written as Parquet under ``path``, without checks or counts. ``prepare``'s own time is
    reported against it."""
    started = time.perf_counter()
    if inp.format == "csv":
        header = inp.header and inp.layout != "jester"
        table = spark.read.option("header", header).option("sep", inp.delimiter).csv(inp.path)
    else:
        table = read_table(spark, inp)
    if inp.layout == "long":
        columns = inp.long_columns
        cells = table.select(
            F.col(_quote(columns.user)).alias("user_raw"),
            F.col(_quote(columns.joke)).alias("joke"),
            F.col(_quote(columns.rating)).alias("raw"),
        )
    elif inp.format == "xls":  # the workbooks as read_excel_table hands them over, users already numbered
        cells = melt_wide_ratings(table, EXCEL_USER, excel_joke_columns(table.columns))
    elif inp.layout == "jester":
        cells = melt_wide_ratings(table.withColumn("_user", F.lit("0")), "_user", jester_joke_columns(table.columns))
    else:
        jokes = joke_columns(table.columns, inp.user_column, inp.drop_columns, input_name(inp))
        cells = melt_wide_ratings(table, inp.user_column, jokes)
    # the wide layouts' melt parses the user id once per row; the long layout's id is a cell of its own
    # try_cast: under ANSI casts a text cell would fail the scan, which prepare refuses cell by cell instead
    user = F.col("user") if "user" in cells.columns else F.col("user_raw").try_cast("int")
    (
        cells.where(F.col("raw").isNotNull() & (F.trim(F.col("raw").cast("string")) != ""))
        .select(
            user.alias("user"),
            F.col("joke").try_cast("int").alias("joke"),
            F.col("raw").try_cast("double").alias("rating"),
        )
        .write.mode("overwrite")
        .parquet(path)
    )
    return time.perf_counter() - started


def check_duplicates(ratings: DataFrame, source: str, user_ids: DataFrame | None = None) -> None:
    """A long table's rows each rate one (user, joke) pair: two ratings of one pair are refused, the pairs
    named by the ids the input gave (``user_ids``: the mapping, where the ids were re-indexed)."""
    dupes = ratings.groupBy("user", "joke").count().where("count > 1")
    first = dupes.orderBy("user", "joke").limit(3)
    if user_ids is not None:
        first = first.join(user_ids, "user", "left").orderBy("user", "joke")
    first = first.collect()
    if first:
        shown = ", ".join(
            f"user {r['original_user'] if user_ids is not None else r['user']} joke {r['joke']} ({r['count']} times)"
            for r in first
        )
        repeated = dupes.count()
        raise InputError(
            f"{source}: {repeated:,} (user, joke) pair(s) rated on more than one row ({shown}); the long layout "
            "takes one rating per user and joke: keep one row of each pair (the latest, say) and read it again"
        )
