"""`prepare` reads the common wide table in one pass and counts it from Spark's observed metrics; every other
table goes the general way. Both give the same outputs and counts, and a table the one pass cannot settle (a
malformed row, ids to re-index, an id that may be on two rows) is handed to the general path."""

from __future__ import annotations

import json

import pytest

from helpers import job_argv, one_pass_comparable
from jester_als.cli import main

HEADER = "User,Number of Jokes Rated,1,2,3,4,5\n"
# rated cells, blanks, the sentinel in two spellings, 0.00, text, NaN, out of range, a blank user id, a row with
# no rating at all, a joke nobody rated (5)
MIXED = HEADER + ("1,4,1.5,-2,99,0.00,\n2,3,abc,7.25,99.0,NaN,\n3,2,11,-10,10,,\n,1,3,,,,\n4,0,,,,,\n5,4,2,2,2,2,\n")


def prepared(tmp_path, text: str, *overrides: str):
    """`jester-als prepare` of ``text`` with one_pass on and off: per mode its data section, ratings and
    refused cells as sorted rows."""
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    path = tmp_path / "table.csv"
    path.write_text(text)
    found = {}
    for one_pass in (True, False):
        out = tmp_path / f"out-{one_pass}"
        assert main(job_argv("prepare", f"input.one_pass={str(one_pass).lower()}", *overrides, path=path, out=out)) == 0
        data = json.loads((out / "metrics.json").read_text())["data"]
        ratings = sorted(tuple(r) for r in spark.read.parquet(str(out / "ratings")).collect())
        rejected = sorted(
            (tuple(r) for r in spark.read.parquet(str(out / "rejected")).collect()),
            key=lambda row: tuple("" if v is None else str(v) for v in row),
        )
        found[one_pass] = data, ratings, rejected
    return found


def test_one_pass_and_general_path_give_the_same_outputs_and_counts(spark, tmp_path):
    found = prepared(tmp_path, MIXED)
    (one, one_ratings, one_rejected), (general, ratings, rejected) = found[True], found[False]
    assert one["one_pass"] and not general["one_pass"]
    assert one_pass_comparable(one) == one_pass_comparable(general)
    assert one["rating_mean"] == pytest.approx(general["rating_mean"], rel=1e-12)
    assert one["rating_std"] == pytest.approx(general["rating_std"], rel=1e-12)
    assert one_ratings == ratings and one_rejected == rejected
    # what the table holds, so the comparison is not between two empty answers
    assert one["cells"]["missing"] == {"blank": 14, "sentinel": 2}
    assert one["cells"]["rejected"] == {"not_a_number": 1, "not_finite": 1, "out_of_range": 1, "bad_user_id": 1}
    assert one["jokes_without_ratings"] == [5] and one["rows_without_ratings"] == 2
    assert (1, 4, 0.0) in ratings and len(ratings) == one["ratings"] == 10


@pytest.mark.parametrize(
    "text, why",
    [
        (HEADER + "1,2,1,2,,,\n2,9,1,2,3,4,5,6\n", "a malformed row"),
        (HEADER + "u-1,2,1,2,,,\n2,2,3,4,,,\n", "ids to re-index"),
    ],
)
def test_a_table_the_one_pass_cannot_settle_goes_the_general_way(spark, tmp_path, text, why):
    found = prepared(tmp_path, text)
    (one, one_ratings, one_rejected), (general, ratings, rejected) = found[True], found[False]
    assert not one["one_pass"], why
    assert (
        one_pass_comparable(one) == one_pass_comparable(general) and one_ratings == ratings and one_rejected == rejected
    )


def test_a_user_on_two_rows_is_refused_as_on_the_general_path(tmp_path, capsys):
    path = tmp_path / "table.csv"
    path.write_text(HEADER + "1,2,1,2,,,\n1,2,,,3,4,\n")
    out = tmp_path / "out"
    assert main(job_argv("prepare", path=path, out=out)) == 1
    assert "user id(s) on more than one row: '1' (2 rows)" in capsys.readouterr().err
    assert not (out / "ratings").exists()


def test_a_table_without_refused_cells_gives_the_same_empty_refused_table_on_both_paths(spark, tmp_path):
    # joke ids need not be 1..n, and a joke nobody rated is named by either path
    text = "User,Number of Jokes Rated,7,300,3001\n1,1,1,,\n2,1,-3,,\n3,1,,2.5,\n"
    (one, one_ratings, one_rejected), (general, ratings, rejected) = prepared(tmp_path, text).values()
    assert one["one_pass"] and one_pass_comparable(one) == one_pass_comparable(general)
    assert one_ratings == ratings and one_rejected == rejected == []
    assert one["jokes_without_ratings"] == [3001] and one["items"] == 2 and one["users"] == 3
    assert one["cells"]["rejected"] == {} and one["cells"]["missing"] == {"blank": 6}


def test_rated_jokes_at_the_edges_of_the_one_pass_bit_words_are_all_found(spark, tmp_path):
    # the one pass finds the rated jokes as bits of 64-bit words: ids on both sides of each word's edge
    text = "User,Number of Jokes Rated,0,63,64,127,128,200\n1,2,1,,2,,,\n2,3,,3,,-1,,\n3,1,,,,,9.5,\n"
    (one, one_ratings, _), (general, ratings, _) = prepared(tmp_path, text).values()
    assert one["one_pass"] and one_pass_comparable(one) == one_pass_comparable(general) and one_ratings == ratings
    assert one["items"] == 5 and one["jokes_without_ratings"] == [200]


@pytest.mark.parametrize("sentinels", ["99,99.0,99.00", " 99,9.9e1,99.000"])
def test_sentinels_in_any_spelling_are_counted_as_on_the_general_path(spark, tmp_path, sentinels):
    # the usual spellings are counted as the rows stream past; the others take the second pass
    found = prepared(tmp_path, HEADER + f"1,4,1.5,{sentinels},\n2,2,-2,,,7.25,\n")
    (one, one_ratings, one_rejected), (general, ratings, rejected) = found[True], found[False]
    assert one["one_pass"] and one_pass_comparable(one) == one_pass_comparable(general)
    assert one_ratings == ratings and one_rejected == rejected == []
    assert one["cells"]["missing"] == {"blank": 4, "sentinel": 3} and one["cells"]["rejected"] == {}
    assert len(ratings) == one["ratings"] == 3


@pytest.mark.parametrize(
    "ids",
    [
        # at the edges of the one pass's bitmaps of 32,768 ids, where it counts users as the rows stream past
        ("1", "32768", "32769", "131072", "65537"),
        # ids no bitmap holds: the users are counted from the written ratings
        ("0", "32768", "131073", "2147483647", "65537"),
    ],
)
def test_users_are_counted_exactly_whatever_their_ids(spark, tmp_path, ids):
    # the last row has cells, all sentinels: it names a user with no rating
    rows = [
        f"{ids[0]},2,1,2,,,",
        f"{ids[1]},1,,,3,,",
        f"{ids[2]},1,,,,-4,",
        f"{ids[3]},1,5,,,,",
        f"{ids[4]},0,99,99,,,",
    ]
    (one, one_ratings, one_rejected), (general, ratings, rejected) = prepared(
        tmp_path, HEADER + "\n".join(rows)
    ).values()
    assert one["one_pass"] and one_pass_comparable(one) == one_pass_comparable(general)
    assert one_ratings == ratings and one_rejected == rejected == []
    assert one["users"] == 4 and one["rows_without_ratings"] == 1
    assert one["cells"]["missing"] == {"blank": 18, "sentinel": 2}
