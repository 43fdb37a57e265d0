"""The original Jester files as distributed: Excel workbooks read with input.format xls, and the archives
`make download-jester` fetches, unpacked and checked (served here from a local HTTP server)."""

from __future__ import annotations

import csv
import functools
import http.server
import io
import json
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import xlwt

from helpers import job_argv, one_pass_comparable
from jester_als import download
from jester_als.cli import main

EXCERPT = Path(__file__).parent / "data" / "jester_seed_excerpt.csv"


def write_xls(path: Path, rows: list[list]) -> Path:
    """An .xls workbook with ``rows`` on its first sheet (None: an empty cell)."""
    book = xlwt.Workbook()
    sheet = book.add_sheet("jester")
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            if value is not None:
                sheet.write(r, c, value)
    book.save(str(path))
    return path


def excerpt_rows() -> list[list]:
    """The real excerpt in the original files' layout: the count of rated jokes, then jokes 1-100, 99 = not
    rated."""
    with open(EXCERPT, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[1:]
    out = []
    for row in rows:
        ratings = [float(cell) if cell else 99 for cell in row[1:]]
        out.append([sum(1 for cell in row[1:] if cell), *ratings])
    return out


def dataset_1_folder(tmp_path, rows: list[list]) -> Path:
    """A folder holding ``rows`` as dataset 1 ships them: split over two workbooks, the first six rows first."""
    folder = tmp_path / "jester"
    folder.mkdir()
    write_xls(folder / "jester-data-1.xls", rows[:6])
    write_xls(folder / "jester-data-2.xls", rows[6:])
    return folder


def prepare(tmp_path, path, *extra) -> tuple[int, Path]:
    out = tmp_path / "out"
    code = main(
        [*job_argv("prepare", "input.reference_scan=false", conf="conf/jester.yaml", path=path, out=out), *extra]
    )
    return code, out


def test_dataset_1_files_are_read_as_one_table_users_numbered_across_files(spark, tmp_path):
    """Two workbooks in one directory: the real excerpt split over them. Users go on from one file to the next,
    99 is missing, and the ratings are the excerpt's own."""
    rows = excerpt_rows()
    code, out = prepare(tmp_path, dataset_1_folder(tmp_path, rows))
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    rated = sum(row[0] for row in rows)
    assert metrics["data"]["ratings"] == rated and metrics["data"]["users"] == len(rows)
    assert metrics["data"]["cells"]["missing"] == {"sentinel": 100 * len(rows) - rated}
    ratings = {(r["user"], r["joke"]): r["rating"] for r in spark.read.parquet(str(out / "ratings")).collect()}
    for user, row in enumerate(rows, start=1):
        for joke, value in enumerate(row[1:], start=1):
            assert ratings.get((user, joke)) == (None if value == 99 else value), (user, joke)
    files = {r["user"]: (r["file"], r["row"]) for r in spark.read.parquet(str(out / "user_files")).collect()}
    assert files[1] == ("jester-data-1.xls", 1) and files[6] == ("jester-data-1.xls", 6)
    assert files[7] == ("jester-data-2.xls", 1) and files[10] == ("jester-data-2.xls", 4)


def test_text_and_out_of_range_cells_are_refused_cell_by_cell(spark, tmp_path):
    # a boolean cell (TRUE) is no rating, though Arrow would read it as 1.0
    path = write_xls(tmp_path / "odd.xls", [[3, 1.5, "abc", -9.97], [2, 99, 12.5, 0.0], [2, True, 99, 2.25]])
    code, out = prepare(tmp_path, path, "--set", "input.reference_scan=true")
    assert code == 0
    data = json.loads((out / "metrics.json").read_text())["data"]
    # prepare is timed against the plain read-melt-write of the same workbooks, which reads their joke columns
    assert data["timing_seconds"]["reference_scan"] > 0 and data["timing_seconds"]["ratio"] > 0
    assert data["cells"] == {
        "read": 9,
        "accepted": 4,
        "missing": {"sentinel": 2},
        "rejected": {"not_a_number": 2, "out_of_range": 1},
    }
    rejected = spark.read.parquet(str(out / "rejected")).collect()
    refused = {(r["user"], r["joke"], r["value"], r["reason"]) for r in rejected}
    assert refused == {
        ("1", "2", "abc", "not_a_number"),
        ("2", "2", "12.5", "out_of_range"),
        ("3", "1", "True", "not_a_number"),
    }


def test_a_count_that_differs_from_the_cells_is_named_by_file_and_row(tmp_path, capsys):
    rows = excerpt_rows()
    wrong = [[rows[7][0] - 1, *rows[7][1:]]]
    code, out = prepare(tmp_path, dataset_1_folder(tmp_path, [*rows[:7], *wrong, *rows[8:]]))
    assert code == 0
    err = capsys.readouterr().err
    assert (
        f"on 1 of {len(rows)} rows the first column, the count of rated jokes, differs from the cells rated (file "
        f"jester-data-2.xls row 2: count {rows[7][0] - 1}, {rows[7][0]} cells neither blank nor a sentinel)" in err
    )


def test_one_pass_and_general_path_read_the_workbooks_alike(spark, tmp_path):
    """The workbooks go through prepare's one pass unless input.one_pass is off: the same ratings, refused cells,
    counts and files either way, on the real excerpt with a text cell, an out-of-range cell, a count that
    differs and a row with no rating."""
    rows = excerpt_rows()
    rows[1][3], rows[2][5] = "abc", 12.5
    rows[3] = [rows[3][0] - 1, *rows[3][1:]]
    rows.append([0, *[99] * 100])
    folder = dataset_1_folder(tmp_path, rows)
    found = {}
    for one_pass in ("true", "false"):
        code, out = prepare(tmp_path / one_pass, folder, "--set", f"input.one_pass={one_pass}")
        assert code == 0
        data = json.loads((out / "metrics.json").read_text())["data"]
        tables = [sorted(tuple(r) for r in spark.read.parquet(str(out / name)).collect()) for name in TABLES]
        found[one_pass] = data, tables
    (one, one_tables), (general, general_tables) = found["true"], found["false"]
    assert one["one_pass"] and not general["one_pass"]
    assert one_pass_comparable(one) == one_pass_comparable(general)
    assert one["rating_mean"] == pytest.approx(general["rating_mean"], rel=1e-12)
    assert one_tables == general_tables
    # what the workbooks hold, so that the comparison is not between two empty answers
    assert one["cells"]["rejected"] == {"not_a_number": 1, "out_of_range": 1} and one["rows_without_ratings"] == 1
    assert one["users"] == len(rows) - 1 and one_tables[2][-1] == (len(rows), "jester-data-2.xls", 5)


TABLES = ("ratings", "rejected", "user_files")


def test_a_first_column_that_is_no_count_is_refused_on_the_one_pass_and_leaves_nothing(tmp_path, capsys):
    rows = [row[1:] for row in excerpt_rows()]  # the count column left out: every joke one column off
    code, out = prepare(tmp_path, write_xls(tmp_path / "no-count.xls", rows))
    assert code == 1
    assert "the first column is not such a count on" in capsys.readouterr().err
    assert not (out / "ratings").exists() and not (out / "metrics.json").exists()


def test_the_workbooks_rows_are_left_to_the_tasks_and_the_setting_put_back(spark, tmp_path, capsys):
    """Spark's optimizer would evaluate a projection of the workbooks on the driver (a local relation): prepare
    leaves that rule out while it reads them, and puts the session's own setting back."""
    from pyspark.sql import functions as F

    from jester_als.excel import EXCLUDED_RULES, read_excel_table, rows_evaluated_in_tasks

    path = write_xls(tmp_path / "few.xls", excerpt_rows())
    table = read_excel_table(spark, str(path))
    with rows_evaluated_in_tasks(spark, True):
        table.select((F.col("1") + 1).alias("x")).explain()
    table.select((F.col("1") + 1).alias("x")).explain()
    inside, after = capsys.readouterr().out.split("== Physical Plan ==")[1:]
    assert "Project" in inside and "Project" not in after  # (after: folded into the relation by the optimizer)
    assert spark.conf.get(EXCLUDED_RULES, None) is None
    other = "org.apache.spark.sql.catalyst.optimizer.CombineUnions"
    spark.conf.set(EXCLUDED_RULES, other)
    try:
        assert prepare(tmp_path, path)[0] == 0
        assert spark.conf.get(EXCLUDED_RULES) == other
    finally:
        spark.conf.unset(EXCLUDED_RULES)


@pytest.mark.parametrize(
    "rows,expected",
    [
        ([["Number rated", "Joke 1", "Joke 2"], [2, 1.0, 2.0]], "row 1 is text"),
        ([[1], [1]], "the Jester layout needs the count of rated jokes and at least one joke column"),
    ],
)
def test_a_sheet_of_another_shape_is_refused(tmp_path, capsys, rows, expected):
    path = write_xls(tmp_path / "shape.xls", rows)
    code, out = prepare(tmp_path, path)
    assert code == 1
    err = capsys.readouterr().err
    assert str(path) in err and expected in err and "Traceback" not in err
    assert not (out / "ratings").exists()


def test_files_with_different_jokes_are_not_read_together(tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_xls(folder / "a.xls", [[2, 1.0, 2.0]])
    write_xls(folder / "b.xls", [[3, 1.0, 2.0, 3.0]])
    code, _ = prepare(tmp_path, folder)
    assert code == 1
    err = capsys.readouterr().err
    assert f"{folder / 'b.xls'}: 3 joke columns where {folder / 'a.xls'} has 2" in err


def test_a_file_that_is_not_a_workbook_and_a_missing_reader_are_named(tmp_path, capsys, monkeypatch):
    garbage = tmp_path / "broken.xls"
    garbage.write_bytes(b"not an excel file at all")
    assert prepare(tmp_path, garbage)[0] == 1
    assert f"{garbage}: cannot be read as an Excel workbook" in capsys.readouterr().err
    good = write_xls(tmp_path / "good.xls", [[1, 2.0]])
    monkeypatch.setitem(sys.modules, "python_calamine", None)  # as if the excel extra were not installed
    assert prepare(tmp_path, good)[0] == 1
    assert "pip install 'jester-als[excel]'" in capsys.readouterr().err


def test_files_not_there_yet_are_named_with_where_to_get_them(tmp_path, capsys):
    assert prepare(tmp_path, tmp_path / "jester")[0] == 1
    assert f"xls file {tmp_path / 'jester'}: does not exist (the official Jester files: make download-jester" in (
        capsys.readouterr().err
    )
    (tmp_path / "empty").mkdir()
    assert prepare(tmp_path, tmp_path / "empty")[0] == 1
    assert "no Excel workbook (.xls, .xlsx) there (the official Jester files: make download" in capsys.readouterr().err


def test_check_says_what_the_workbooks_hold(tmp_path, capsys):
    rows = excerpt_rows()
    folder = dataset_1_folder(tmp_path, rows)
    assert main(job_argv("check", conf="conf/jester.yaml", path=folder, out=tmp_path / "out")) == 0
    said = capsys.readouterr().out
    assert said.strip().endswith(f"layout jester, columns 101, jokes 100, users {len(rows)}"), said


def test_xls_needs_the_jester_layout(tmp_path, capsys):
    assert main(job_argv("check", "input.layout=wide", conf="conf/jester.yaml")) == 2
    assert "--set input.layout=wide: must be 'jester' with input.format 'xls'" in capsys.readouterr().err


@pytest.fixture
def served(tmp_path):
    """A local HTTP server over a folder: yields (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()


def zipped(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_download_unpacks_the_archives_and_prepare_reads_them(spark, tmp_path, served):
    folder, url = served
    rows = excerpt_rows()
    for number, part in ((1, rows[:5]), (2, rows[5:])):
        workbook = write_xls(tmp_path / f"jester-data-{number}.xls", part)
        zipped(folder / f"jester_dataset_1_{number}.zip", {workbook.name: workbook.read_bytes(), "readme.txt": b"x"})
    into = tmp_path / "data" / "jester"
    assert download.main(["--into", str(into), f"{url}/jester_dataset_1_1.zip", f"{url}/jester_dataset_1_2.zip"]) == 0
    assert sorted(p.name for p in into.iterdir()) == ["jester-data-1.xls", "jester-data-2.xls"]
    code, out = prepare(tmp_path, into)
    assert code == 0
    assert json.loads((out / "metrics.json").read_text())["data"]["users"] == len(rows)


def test_a_corrupt_or_wrong_archive_is_refused_and_leaves_nothing(tmp_path, served, capsys):
    folder, url = served
    workbook = write_xls(tmp_path / "jester-data-1.xls", excerpt_rows()[:2])
    whole = zipped(folder / "good.zip", {workbook.name: workbook.read_bytes()}).read_bytes()
    (folder / "cut.zip").write_bytes(whole[: len(whole) // 2])
    (folder / "page.zip").write_bytes(b"<html>moved</html>")
    buffer = io.BytesIO(whole)
    damaged = bytearray(buffer.getvalue())
    damaged[40] ^= 0xFF  # inside the member's compressed bytes: its CRC no longer matches
    (folder / "crc.zip").write_bytes(bytes(damaged))
    into = tmp_path / "into"
    for name in ("cut.zip", "page.zip", "crc.zip"):
        assert download.main(["--into", str(into), f"{url}/good.zip", f"{url}/{name}"]) == 1
        err = capsys.readouterr().err
        assert f"{url}/{name}" in err and ("corrupt" in err or "not a zip archive" in err), err
        assert not [p for p in into.iterdir()]  # all or nothing: not even the good archive's file
    assert download.main(["--into", str(into), f"{url}/missing.zip"]) == 1
    assert "cannot be downloaded" in capsys.readouterr().err
