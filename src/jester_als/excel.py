"""The original Jester files as distributed: Excel workbooks (dataset 1's three ``.xls`` files, dataset 3's
150-joke sheet) with no header row, the count of rated jokes first, then one column per joke (99 = not rated),
users identified by row.

``input.format: xls`` reads one file, a directory of them or a glob, in file-name order, and numbers the users
across the files (the first file's rows are users 1..n, the next file's go on from n + 1), keeping which file and
row each user came from. The workbook is read on the driver (the files are a few MB each) and handed to Spark as
one DataFrame (a column of numbers as doubles, one holding any text as strings), so every cell goes through the
same classification and accounting as a CSV cell.
Reading needs the ``excel`` extra (python-calamine, which reads both .xls and .xlsx).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os

from jester_als.errors import JobError

log = logging.getLogger(__name__)

EXTENSIONS = (".xls", ".xlsx")
EXTRA = "pip install 'jester-als[excel]'"
USER, FILE, ROW, COUNT = "_user", "_file", "_row", "count"


class ExcelInputError(JobError):
    """An Excel input that cannot be read as the original Jester layout (named file, what was expected)."""


# Spark's optimizer evaluates a projection of a local relation, which is what createDataFrame makes of the
# workbooks, on the driver one row at a time before the query runs (ConvertToLocalRelation in apache/spark's
# Optimizer.scala: "Converts local operations ... on LocalRelation to another LocalRelation"): prepare's per-row
# counts and the melt of every cell would take one thread of the driver instead of the tasks. The rule is left
# out while prepare reads the workbooks.
LOCAL_RELATION_RULE = "org.apache.spark.sql.catalyst.optimizer.ConvertToLocalRelation"
EXCLUDED_RULES = "spark.sql.optimizer.excludedRules"


@contextlib.contextmanager
def rows_evaluated_in_tasks(spark, workbooks: bool):
    """With ``workbooks``, leave Spark's ConvertToLocalRelation out of the session's optimizer for the block, so
    that queries over the workbooks run in tasks; the setting is put back after. A session that refuses the
    setting (a platform may keep the optimizer's rules to itself) runs as before."""
    if not workbooks:
        yield
        return
    try:
        before = spark.conf.get(EXCLUDED_RULES, None)
        spark.conf.set(EXCLUDED_RULES, ",".join(rule for rule in (before, LOCAL_RELATION_RULE) if rule))
    except Exception as exc:  # noqa: BLE001 - only slower without it
        log.info("the workbooks' rows are evaluated on the driver: %s was refused (%s)", EXCLUDED_RULES, exc)
        yield
        return
    try:
        yield
    finally:
        try:
            if before is None:
                spark.conf.unset(EXCLUDED_RULES)
            else:
                spark.conf.set(EXCLUDED_RULES, before)
        except Exception:  # noqa: BLE001 - a session that took the setting takes it back; nothing to lose
            pass


# where the official files come from, for a user who followed conf/jester.yaml before fetching them
DOWNLOAD_HINT = " (the official Jester files: make download-jester, or DATASET=3 for dataset 3)"


def excel_files(path: str) -> list[str]:
    """The workbooks ``path`` names: the file itself, every .xls/.xlsx file of a directory, or a glob's matches,
    sorted by name (which orders dataset 1's ``jester-data-1.xls`` .. ``-3.xls`` as published)."""
    if os.path.isdir(path):
        found = [os.path.join(path, name) for name in os.listdir(path) if name.lower().endswith(EXTENSIONS)]
    elif any(char in path for char in "*?["):
        found = [name for name in glob.glob(path) if name.lower().endswith(EXTENSIONS)]
    elif os.path.exists(path):
        found = [path]
    else:
        raise ExcelInputError(f"xls file {path}: does not exist{DOWNLOAD_HINT}")
    if not found:
        raise ExcelInputError(f"xls file {path}: no Excel workbook (.xls, .xlsx) there{DOWNLOAD_HINT}")
    return sorted(found)


def _open(path: str):
    try:
        from python_calamine import CalamineWorkbook
    except ImportError:
        raise ExcelInputError(f"xls file {path}: reading Excel files needs python-calamine ({EXTRA})") from None
    try:
        book = CalamineWorkbook.from_path(path)
        if len(book.sheet_names) > 1:
            log.info("%s: %d sheets; reading the first, %r", path, len(book.sheet_names), book.sheet_names[0])
        return book.get_sheet_by_index(0).to_python()
    except Exception as exc:
        raise ExcelInputError(f"xls file {path}: cannot be read as an Excel workbook ({exc})") from None


def _text(value) -> str | None:
    """A cell as the text the classification reads: numbers as written, an empty cell as null."""
    if value == "" or value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _column(values: list):
    """A sheet's column as an Arrow array: doubles (empty cells null) where it holds numbers and empty cells alone,
    as every column of the original files does, else every cell's text (:func:`_text`). Arrow converts a column of
    numbers as a whole, several times faster than cell by cell; the classification reads a cell of either kind."""
    import pyarrow as pa

    kinds = set(map(type, values))
    # bool is a kind of its own: a cell that says TRUE is refused, where Arrow would read it as 1.0
    if kinds <= {float, int}:
        return pa.array(values, type=pa.float64())
    if kinds <= {float, int, str} and all(v == "" for v in values if type(v) is str):
        return pa.array([None if v == "" else v for v in values], type=pa.float64())
    return pa.array([_text(v) for v in values], type=pa.string())


def _is_number(value) -> bool:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return True
    try:
        float(str(value))
        return True
    except ValueError:
        return False


def read_sheets(path: str) -> tuple[list[str], list[list]]:
    """(files, rows) of the workbooks at ``path``; every row padded to the sheet's width. Refuses a sheet with a
    header row, one without rows, fewer than two columns, or files whose joke columns differ in number."""
    files = excel_files(path)
    all_rows: list[list] = []
    width = None
    for file in files:
        rows = _open(file)
        if not rows:
            raise ExcelInputError(f"xls file {file}: the first sheet has no rows")
        columns = max(len(row) for row in rows)
        if columns < 2:
            raise ExcelInputError(
                f"xls file {file}: {columns} column(s); the Jester layout needs the count of rated "
                f"jokes and at least one joke column"
            )
        first = rows[0]
        if first and not _is_number(first[0]) and sum(not _is_number(v) for v in first if v != "") > len(first) / 2:
            raise ExcelInputError(
                f"xls file {file}: row 1 is text ({[v for v in first[:4]]!r} ...), a header; the "
                f"original files have none (remove the row, or save the sheet as CSV and read it "
                f"with format: csv, layout: wide)"
            )
        if width is not None and columns != width:
            raise ExcelInputError(
                f"xls file {file}: {columns - 1} joke columns where {files[0]} has {width - 1}; "
                f"files read together must rate the same jokes"
            )
        width = columns
        all_rows += [(file, number, row) for number, row in enumerate(rows, start=1)]
    return files, [[file, number, *row, *[""] * (width - len(row))] for file, number, row in all_rows]


def read_excel_table(spark, path: str):
    """The workbooks at ``path`` as one DataFrame: ``_user`` (1.. across files), ``_file``, ``_row``, ``count`` and
    one column per joke named by its id (the column's position), each as :func:`_column` converts it."""
    import pyarrow as pa

    files, rows = read_sheets(path)
    jokes = len(rows[0]) - 3  # file, row and the count column
    arrays = {
        USER: pa.array([str(user) for user in range(1, len(rows) + 1)], type=pa.string()),
        FILE: pa.array([os.path.basename(row[0]) for row in rows], type=pa.string()),
        ROW: pa.array([row[1] for row in rows], type=pa.int64()),
    }
    names = [COUNT] + [str(joke) for joke in range(1, jokes + 1)]
    arrays.update({name: _column([row[position] for row in rows]) for position, name in enumerate(names, start=2)})
    table = pa.table(arrays)
    log.info("xls file %s: %d workbook(s), %d users, %d joke columns", path, len(files), len(rows), jokes)
    return spark.createDataFrame(table)


def joke_columns(columns: list[str]) -> list[tuple[str, int]]:
    """The joke columns of :func:`read_excel_table`'s DataFrame with their ids."""
    return [(name, int(name)) for name in columns if name.isdigit()]
