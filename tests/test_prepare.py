"""Reading and melting the wide Jester table: real rows, the generated stack expression, every cell counted."""

from __future__ import annotations

import csv

import pytest
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, IntegerType, StructField, StructType

from helpers import assert_frames_equal
from jester_als.config import load_config
from jester_als.prepare import (
    MELTED_COLUMNS,
    InputError,
    hash_sum,
    hash_total,
    joke_columns,
    melt_rows,
    prepare_ratings,
    stack_expression,
    wide_rows,
)

RATINGS_SCHEMA = StructType(
    [StructField("user", IntegerType()), StructField("joke", IntegerType()), StructField("rating", DoubleType())]
)


def input_config(path, **extra):
    overrides = [f"input.path={path}", "output.dir=/tmp/unused", "input.drop_columns=[]"]
    overrides += [f"input.{k}={v}" for k, v in extra.items()]
    return load_config(None, overrides).input


def expected_long_rows(path):
    """The excerpt melted independently with the csv module: every non-blank cell, as printed."""
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        for record in reader:
            user = int(record[0])
            for name, cell in zip(header[1:], record[1:]):
                if cell.strip():
                    rows.append((user, int(name), float(cell)))
    return rows


def test_melt_of_real_excerpt_matches_independent_melt(spark, excerpt_path):
    prepared = prepare_ratings(spark, input_config(excerpt_path))
    try:
        expected = spark.createDataFrame(expected_long_rows(excerpt_path), RATINGS_SCHEMA)
        assert_frames_equal(prepared.ratings, expected)
        assert prepared.counts["cells"] == 10 * 100
        assert prepared.counts["accepted"] + prepared.counts["missing_total"] == 1000
        assert prepared.counts["rejected_total"] == 0
    finally:
        prepared.release()


def test_real_excerpt_keeps_zero_ratings_and_drops_blanks(spark, excerpt_path):
    prepared = prepare_ratings(spark, input_config(excerpt_path))
    try:
        ratings = prepared.ratings
        # User 4 rated joke 61 exactly 0.0 in the real data: a rating, not a missing value.
        zero = ratings.where((F.col("user") == 4) & (F.col("joke") == 61)).collect()
        assert [r["rating"] for r in zero] == [0.0]
        # User 1 left joke 71 blank: it must not appear at all (the seed filled it with 0).
        assert ratings.where((F.col("user") == 1) & (F.col("joke") == 71)).count() == 0
        per_user = {r["user"]: r["count"] for r in ratings.groupBy("user").count().collect()}
        assert per_user[2] == 100 and per_user[1] == 74
    finally:
        prepared.release()


def test_stack_expression_uses_the_columns_present():
    jokes = joke_columns(
        ["User", "Number of Jokes Rated", "7", "12", "100"], "User", ["Number of Jokes Rated"], "test.csv"
    )
    assert jokes == [("7", 7), ("12", 12), ("100", 100)]
    assert stack_expression(jokes) == (
        "stack(3, 7, CAST(`7` AS STRING), 12, CAST(`12` AS STRING), 100, CAST(`100` AS STRING)) AS (joke, raw)"
    )


def test_melted_columns_are_the_melts_own(spark):
    # the one pass classifies the melt without asking Spark for its columns: the list must be the melt's
    wide = spark.createDataFrame([("1", "2.5", " 99")], "User string, `7` string, `12` string")
    jokes = [("7", 7), ("12", 12)]
    for parsed in (False, True):
        melted = melt_rows(wide_rows(wide, "User", jokes), jokes, parsed=parsed)
        assert melted.columns == MELTED_COLUMNS[parsed]
    rows = melt_rows(wide_rows(wide, "User", jokes), jokes, parsed=True).collect()
    assert [(r["user"], r["joke"], r["raw"], r["value"]) for r in rows] == [(1, 7, "2.5", 2.5), (1, 12, " 99", 99.0)]


def test_non_integer_joke_column_is_refused_with_its_name():
    with pytest.raises(InputError, match=r"test.csv: joke column\(s\) \['Notes'\] are not integer joke ids"):
        joke_columns(["User", "1", "Notes"], "User", [], "test.csv")


def test_missing_user_column_is_refused():
    with pytest.raises(InputError, match=r"test.csv: no user column 'User'"):
        joke_columns(["Id", "1", "2"], "User", [], "test.csv")


def test_sentinel_range_and_text_cells_are_classified_and_counted(spark, tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text(
        "User,Number of Jokes Rated,1,2,3,4,5\n"
        "1,5,0.00,99,-10.00,abc,15\n"
        "2,5,99.0,,10,N/A,-11\n"
        "3,5, 4.5 ,99.00,NaN,Infinity,--\n"
        "x,1,3.0,,,,\n",
        encoding="utf-8",
    )
    inp = input_config(path, drop_columns='["Number of Jokes Rated"]', user_ids="integer")
    prepared = prepare_ratings(spark, inp)
    try:
        expected = spark.createDataFrame([(1, 1, 0.0), (1, 3, -10.0), (2, 3, 10.0), (3, 1, 4.5)], RATINGS_SCHEMA)
        assert_frames_equal(prepared.ratings, expected)
        counts = prepared.counts
        assert counts["cells"] == 20
        assert counts["missing"] == {"sentinel": 3, "blank": 5}
        assert counts["rejected"] == {"not_a_number": 3, "out_of_range": 2, "not_finite": 2, "bad_user_id": 1}
        assert counts["accepted"] + counts["missing_total"] + counts["rejected_total"] == counts["cells"]
        rejected = {(r["user"], r["joke"], r["value"], r["reason"]) for r in prepared.rejected.collect()}
        assert ("1", "4", "abc", "not_a_number") in rejected
        assert ("2", "5", "-11", "out_of_range") in rejected
        assert ("x", "1", "3.0", "bad_user_id") in rejected
    finally:
        prepared.release()


def test_long_layout_is_read_and_classified(spark, tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("user,joke,rating\n1,5,2.5\n1,6,0\n2,5,99\n2,x,1.0\n", encoding="utf-8")
    prepared = prepare_ratings(spark, input_config(path, layout="long"))
    try:
        assert_frames_equal(prepared.ratings, spark.createDataFrame([(1, 5, 2.5), (1, 6, 0.0)], RATINGS_SCHEMA))
        assert prepared.counts["rejected"] == {"bad_joke_id": 1}
        assert prepared.counts["missing"] == {"sentinel": 1}
    finally:
        prepared.release()


def test_missing_file_names_the_file(spark, tmp_path):
    with pytest.raises(InputError, match=r"csv file .*nope.csv: does not exist"):
        prepare_ratings(spark, input_config(tmp_path / "nope.csv"))


def test_fingerprint_is_order_independent_and_counts_repeated_rows(spark):
    from jester_als.prepare import fingerprint

    rows = [("1", "2.5", ""), ("2", "-3", "99"), ("3", "0.00", "7")]
    same = fingerprint(spark.createDataFrame(rows, ["User", "1", "2"]))
    shuffled = fingerprint(spark.createDataFrame(rows[::-1], ["User", "1", "2"]).repartition(3))
    doubled = fingerprint(spark.createDataFrame(rows + [rows[1], rows[1]], ["User", "1", "2"]))
    without = fingerprint(spark.createDataFrame([rows[0], rows[2]], ["User", "1", "2"]))
    assert shuffled == same
    # An XOR of row hashes would make two extra copies of a row vanish; the fingerprint must not.
    assert doubled["content_hash"] != same["content_hash"] and doubled["rows"] == 5
    assert without["content_hash"] != same["content_hash"]


def test_the_sliced_hash_sum_is_the_sum_of_the_hashes_modulo_2_64(spark):
    rows = spark.range(2000).select(F.xxhash64("id").alias("h"))
    row = rows.agg(*hash_sum(F.col("h"), "hash")).first()
    hashes = [r["h"] for r in rows.collect()]
    assert any(h < 0 for h in hashes) and any(h > 2**62 for h in hashes)  # every slice's top bits are used
    assert hash_total(row, "hash") == sum(hashes) % 2**64
