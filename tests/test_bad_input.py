"""Bad input, one case per row of the README's table: each file is written here, run through the prepare job,
and either accounted for cell by cell or refused before any output with a message naming what is wrong."""

from __future__ import annotations

import json

from pyspark.sql import functions as F

from helpers import job_argv
from jester_als.cli import main

HEADER = "User,Number of Jokes Rated,1,2,3,4\n"


def prepare(tmp_path, text: str | bytes | None, *overrides: str, name: str = "table.csv"):
    """Run `jester-als prepare` on a file holding `text`; return (exit status, output dir, metrics or None)."""
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    argv = job_argv("prepare", path=path, out=out)
    for item in overrides:
        argv += ["--set", item]
    code = main(argv)
    metrics_file = out / "metrics.json"
    return code, out, json.loads(metrics_file.read_text()) if metrics_file.exists() else None


def cells_add_up(metrics):
    cells = metrics["data"]["cells"]
    assert cells["accepted"] + sum(cells["missing"].values()) + sum(cells["rejected"].values()) == cells["read"]
    assert cells["accepted"] == metrics["data"]["ratings"]
    return cells


def rejected_rows(spark, out):
    rejected = spark.read.parquet(str(out / "rejected")).collect()
    return {(r["user"], r["joke"], r["value"], r["reason"]) for r in rejected}


def refused(code, out, capsys, *fragments):
    assert code == 1
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, err
    assert not (out / "ratings").exists() and not (out / "metrics.json").exists()


# --- cells that are refused or missing, and counted -------------------------------------------------------


def test_non_numeric_cells_are_refused_and_counted(spark, tmp_path):
    code, out, metrics = prepare(tmp_path, HEADER + "1,4,abc,N/A,--,2.5\n2,4,1,2,3,4\n")
    assert code == 0
    cells = cells_add_up(metrics)
    assert cells["rejected"] == {"not_a_number": 3}
    # the plain read-melt-write prepare is timed against reads the text cells as missing, not as a failure
    assert metrics["data"]["timing_seconds"]["reference_scan"] > 0
    assert {
        ("1", "1", "abc", "not_a_number"),
        ("1", "2", "N/A", "not_a_number"),
        ("1", "3", "--", "not_a_number"),
    } == rejected_rows(spark, out)


def test_rows_with_more_or_fewer_fields_than_the_header_are_refused_cell_by_cell(spark, tmp_path):
    # 4 joke columns; user 2 has two fields too many, user 3 one too few, user 4 a quoted field with a comma.
    text = HEADER + '1,4,1,2,3,4\n2,6,1,2,3,4,5,6\n3,3,1,2,3\n4,4,"1,5",2,3,4\n'
    code, out, metrics = prepare(tmp_path, text)
    assert code == 0
    cells = cells_add_up(metrics)
    # The file holds 4 + 6 + 3 + 4 rating fields (after the user and count columns): all accounted for.
    assert cells["read"] == 17
    assert cells["rejected"] == {"wrong_field_count": 9, "not_a_number": 1}
    rows = spark.read.parquet(str(out / "rejected")).where("reason = 'wrong_field_count'").collect()
    assert {(r["user"], r["joke"], r["value"]) for r in rows} == {
        ("2", "1", "1"),
        ("2", "2", "2"),
        ("2", "3", "3"),
        ("2", "4", "4"),
        ("2", None, "5"),
        ("2", None, "6"),
        ("3", "1", "1"),
        ("3", "2", "2"),
        ("3", "3", "3"),
    }
    assert {r["detail"] for r in rows} == {
        "row of user 2 has 8 fields; the header has 6",
        "row of user 3 has 5 fields; the header has 6",
    }
    assert ("4", "1", "1,5", "not_a_number") in rejected_rows(spark, out)  # a well-formed row, read as CSV


def test_out_of_range_values_are_refused(spark, tmp_path):
    code, out, metrics = prepare(tmp_path, HEADER + "1,4,15,-11,10,-10\n")
    assert code == 0
    assert cells_add_up(metrics)["rejected"] == {"out_of_range": 2}
    assert ("1", "2", "-11", "out_of_range") in rejected_rows(spark, out)


def test_sentinel_99_in_every_spelling_is_missing(tmp_path):
    code, _, metrics = prepare(tmp_path, HEADER + "1,4,99,99.0,99.00,0.00\n")
    assert code == 0
    cells = cells_add_up(metrics)
    assert cells["missing"] == {"sentinel": 3} and cells["accepted"] == 1  # 0.00 is a rating


def test_nan_and_infinity_are_refused(tmp_path):
    code, _, metrics = prepare(tmp_path, HEADER + "1,4,NaN,Infinity,-inf,1\n")
    assert code == 0
    assert cells_add_up(metrics)["rejected"] == {"not_finite": 3}


def test_rows_that_are_all_missing_are_counted(tmp_path):
    code, _, metrics = prepare(tmp_path, HEADER + "1,4,1,2,3,4\n2,0,,,,\n3,0,99,,99,\n")
    assert code == 0
    cells = cells_add_up(metrics)
    assert metrics["data"]["rows_without_ratings"] == 2 and metrics["data"]["users"] == 1
    assert cells["missing"] == {"blank": 6, "sentinel": 2}


def test_users_below_the_minimum_are_refused(spark, tmp_path):
    code, out, metrics = prepare(tmp_path, HEADER + "1,4,1,2,3,4\n2,1,5,,,\n", "input.min_ratings_per_user=2")
    assert code == 0
    assert cells_add_up(metrics)["rejected"] == {"too_few_ratings": 1}
    assert rejected_rows(spark, out) == {("2", "1", "5", "too_few_ratings")}
    assert metrics["data"]["users"] == 1


def test_jokes_nobody_rated_are_reported(tmp_path):
    code, _, metrics = prepare(tmp_path, HEADER + "1,3,1,,3,4\n2,3,1,,3,4\n")
    assert code == 0
    assert metrics["data"]["jokes_without_ratings"] == [2] and metrics["data"]["items"] == 3


def test_blank_user_id_is_refused(spark, tmp_path):
    code, out, metrics = prepare(tmp_path, HEADER + "1,4,1,2,3,4\n,2,5,6,,\n")
    assert code == 0
    assert cells_add_up(metrics)["rejected"] == {"bad_user_id": 2}


# --- ids that are re-indexed ------------------------------------------------------------------------------


def test_non_integer_and_huge_user_ids_are_reindexed_with_the_mapping_kept(spark, tmp_path):
    code, out, metrics = prepare(tmp_path, HEADER + "u-17,4,1,2,3,4\n3000000000,4,4,3,2,1\n12.5,2,1,2,,\n")
    assert code == 0
    assert metrics["data"]["user_ids_reindexed"] is True and metrics["data"]["users"] == 3
    mapping = {r["original_user"]: r["user"] for r in spark.read.parquet(str(out / "user_ids")).collect()}
    assert set(mapping) == {"u-17", "3000000000", "12.5"} and sorted(mapping.values()) == [1, 2, 3]
    ratings = spark.read.parquet(str(out / "ratings"))
    assert ratings.where(F.col("user") == mapping["12.5"]).count() == 2


def test_user_ids_integer_mode_refuses_them_instead(tmp_path):
    code, _, metrics = prepare(tmp_path, HEADER + "u-17,4,1,2,3,4\n5,4,4,3,2,1\n", "input.user_ids=integer")
    assert code == 0
    assert cells_add_up(metrics)["rejected"] == {"bad_user_id": 4}


# --- shapes that stop the run before any output -----------------------------------------------------------


def test_missing_user_column_stops(tmp_path, capsys):
    code, out, _ = prepare(tmp_path, "Id,Number of Jokes Rated,1,2\n1,2,3,4\n")
    refused(code, out, capsys, "table.csv: no user column 'User'", "input.user_column")


def test_joke_column_that_is_not_an_id_stops(tmp_path, capsys):
    code, out, _ = prepare(tmp_path, "User,Number of Jokes Rated,1,Notes\n1,1,3,hi\n")
    refused(code, out, capsys, "joke column(s) ['Notes'] are not integer joke ids")


def test_duplicated_joke_columns_stop(tmp_path, capsys):
    code, out, _ = prepare(tmp_path, "User,Number of Jokes Rated,1,2,2\n1,3,3,4,5\n")
    refused(code, out, capsys, "column(s) ['2'] appear more than once in the header")
    # Spark renames the 2s of fields 1 and 3 to 21 and 23, and joke 21 has a column of its own: its read fails
    jokes = [str(j) for j in range(1, 23)]
    header = ",".join(["User", "2", *jokes])
    code, out, _ = prepare(tmp_path, header + "\n" + ",".join(["1"] * (len(jokes) + 2)) + "\n")
    refused(code, out, capsys, "column(s) ['2'] appear more than once in the header; each joke must have one column")


def test_duplicated_users_stop(tmp_path, capsys):
    code, out, _ = prepare(tmp_path, HEADER + "1,2,1,2,,\n1,2,,,3,4\n")
    refused(code, out, capsys, "user id(s) on more than one row: '1' (2 rows)")
    # ids are compared as ALS sees them: 7, 007 and 7.0 are one user
    code, out, _ = prepare(tmp_path, HEADER + "7,2,1,2,,\n007,2,,,3,4\n 7.0 ,1,,,,5\n8,1,1,,,\n")
    refused(code, out, capsys, "user id(s) on more than one row: '7' (3 rows)")


def test_long_table_with_two_ratings_of_one_joke_by_one_user_stops(tmp_path, capsys):
    code, out, _ = prepare(tmp_path, "user,joke,rating\n1,1,2.5\n1,2,3.0\n2,1,1.0\n1,2,-4.0\n", "input.layout=long")
    refused(
        code,
        out,
        capsys,
        "table.csv: 1 (user, joke) pair(s) rated on more than one row (user 1 joke 2 (2 times)); the long layout "
        "takes one rating per user and joke: keep one row of each pair",
    )
    # re-indexed ids are named as the input gave them
    text = "user,joke,rating\nann,1,2.5\nbob,1,1.0\nann,1,3.0\nbob,1,2.0\nbob,1,-1.0\n"
    code, out, _ = prepare(tmp_path, text, "input.layout=long")
    refused(code, out, capsys, "2 (user, joke) pair(s) rated on more than one row (user ann joke 1 (2 times), user bob")


def test_empty_file_stops(tmp_path, capsys):
    code, out, _ = prepare(tmp_path, "")
    assert code == 1
    err = capsys.readouterr().err
    # said once, as what it is (not wrapped in "cannot be read")
    assert "table.csv: is empty (no header and no rows)" in err and "cannot be read" not in err, err
    assert not (out / "ratings").exists() and not (out / "metrics.json").exists()


def test_header_only_file_stops(tmp_path, capsys):
    code, out, _ = prepare(tmp_path, HEADER)
    refused(code, out, capsys, "table.csv: has a header but no rows")


def test_file_that_does_not_exist_stops(tmp_path, capsys):
    code, out, _ = prepare(tmp_path, None, name="missing.csv")
    refused(code, out, capsys, "missing.csv: does not exist")


def test_a_file_of_another_format_says_what_spark_found_and_which_format_was_asked(tmp_path, capsys):
    code, out, _ = prepare(tmp_path, HEADER + "1,4,1,2,3,4\n", "input.format=parquet")
    refused(
        code,
        out,
        capsys,
        "parquet file ",
        "table.csv: cannot be read ([FAILED_READ_FILE.CANNOT_READ_FILE_FOOTER] ",  # Spark's error, not py4j's line
        "; the file's name says csv, input.format says parquet",
    )


def test_the_generated_table_not_made_yet_says_how_to_make_it_before_spark_starts(tmp_path, capsys):
    path = tmp_path / "jester_synthetic.csv"
    for job in ("check", "prepare", "pipeline"):
        code = main(job_argv(job, f"generate.path={path}", path=path, out=tmp_path / "out"))
        refused(
            code,
            tmp_path / "out",
            capsys,
            f"jester-als {job}: csv file {path}: does not exist; it is the generated table the config reads, which "
            "`jester-als generate` writes (with the same --conf and --set), or set input.path to your own table",
        )
    assert not (tmp_path / "out" / "spark.log").exists()  # refused before Spark started


def test_table_that_does_not_exist_stops(tmp_path, capsys):
    code, out, _ = prepare(tmp_path, None, "input.format=table", "input.table=nowhere.jester_data_1")
    refused(code, out, capsys, "table nowhere.jester_data_1: does not exist")


# --- file formats that are read as they are meant ---------------------------------------------------------


def test_bom_windows_line_endings_and_quoted_numbers(spark, tmp_path):
    text = ("\ufeff" + HEADER + '1,4,"1.5","-2",3,"0.00"\n2,1,5,,,\n').replace("\n", "\r\n").encode("utf-8")
    code, out, metrics = prepare(tmp_path, text)
    assert code == 0
    assert cells_add_up(metrics)["accepted"] == 5
    ratings = {(r["user"], r["joke"]): r["rating"] for r in spark.read.parquet(str(out / "ratings")).collect()}
    assert ratings[(1, 1)] == 1.5 and ratings[(1, 4)] == 0.0 and ratings[(2, 1)] == 5.0


def test_other_delimiter(tmp_path):
    code, _, metrics = prepare(tmp_path, HEADER.replace(",", ";") + "1;4;1;2;3;4\n", "input.delimiter=';'")
    assert code == 0
    assert metrics["data"]["ratings"] == 4


def test_jester_layout_checks_the_count_column_against_the_cells(tmp_path, capsys):
    """The first column is each row's count of rated jokes: a table without it (every joke one column off) is
    refused, and a count that differs from the row's cells is told, the cells read as they are."""
    no_count = "1.5,99,-2.25,0.00\n9.9,-9.9,1,2\n99,99,99,7\n"
    code, out, _ = prepare(tmp_path, no_count, "input.layout=jester")
    assert code == 1 and not (out / "ratings").exists()
    err = capsys.readouterr().err
    assert (
        "table.csv: the Jester layout reads each row's count of rated jokes first, then jokes 1..3, but the first "
        "column is not such a count on 3 of 3 rows (row 1: '1.5'); without that column every joke would be read "
        "one column off" in err
    )
    wrong_count = "3,1.5,99,-2.25,0.00\n2,9.9,-9.9,1,2\n1,99,99,99,7\n"
    code, out, metrics = prepare(tmp_path, wrong_count, "input.layout=jester")
    assert code == 0 and metrics["data"]["ratings"] == 8
    err = capsys.readouterr().err
    assert (
        "table.csv: on 1 of 3 rows the first column, the count of rated jokes, differs from the cells rated "
        "(row 2: count 2, 4 cells neither blank nor a sentinel); the cells are read as they are" in err
    )


def test_original_jester_layout(spark, tmp_path):
    """No header, the count first, 99 for missing, users identified by their row."""
    text = "3,1.5,99,-2.25,0.00\n4,9.9,-9.9,1,2\n1,99,99,99,7\n"
    code, out, metrics = prepare(tmp_path, text, "input.layout=jester")
    assert code == 0
    cells = cells_add_up(metrics)
    assert cells["read"] == 12 and cells["missing"] == {"sentinel": 4}
    ratings = {(r["user"], r["joke"]): r["rating"] for r in spark.read.parquet(str(out / "ratings")).collect()}
    assert ratings == {
        (1, 1): 1.5,
        (1, 3): -2.25,
        (1, 4): 0.0,
        (2, 1): 9.9,
        (2, 2): -9.9,
        (2, 3): 1.0,
        (2, 4): 2.0,
        (3, 4): 7.0,
    }
