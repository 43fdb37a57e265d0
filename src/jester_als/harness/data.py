"""The benchmarks' data: a generated Jester-shaped table streamed to train and test Parquet files."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np

from jester_als import hashsplit
from jester_als.generate import GeneratorParams, long_chunk_tasks
from jester_als.numpy_als import arrow_column, engine_threads

T = TypeVar("T")


def write_split_parquet(params: GeneratorParams, directory: Path, test_fraction: float, seed: int) -> dict:
    """Stream the generated table to ``train.parquet`` and ``test.parquet`` (long layout), chunk by chunk, so
    generating a large table needs memory for a few chunks only (tables with many jokes are generated long).
    The chunks are generated and split on a thread pool, one thread per core (NumPy and Arrow release the GIL;
    each chunk has its own seeded generator, so the table is the same), and written in order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("user", pa.int32()), ("joke", pa.int32()), ("rating", pa.float64())])

    def split(task) -> dict:
        users, jokes, values = task()
        users, jokes = users.astype(np.int32), jokes.astype(np.int32)
        is_test = hashsplit.is_test(users, jokes, test_fraction=test_fraction, seed=seed)
        return {
            name: pa.table({"user": users[mask], "joke": jokes[mask], "rating": values[mask]}, schema=schema)
            for name, mask in (("train", ~is_test), ("test", is_test))
        }

    writers = {name: pq.ParquetWriter(directory / f"{name}.parquet", schema) for name in ("train", "test")}
    counts = {"train": 0, "test": 0}
    try:
        for tables in in_order((partial(split, task) for task in long_chunk_tasks(params)), engine_threads()):
            for name, table in tables.items():
                writers[name].write_table(table)
                counts[name] += table.num_rows
    finally:
        for writer in writers.values():
            writer.close()
    return {"train_ratings": counts["train"], "test_ratings": counts["test"]}


def in_order(tasks: Iterable[Callable[[], T]], threads: int) -> Iterator[T]:
    """The results of zero-argument ``tasks``, run on ``threads`` threads, in the tasks' order; at most
    ``threads + 1`` run or wait at once, so memory stays that many results whatever the number of tasks."""
    with ThreadPoolExecutor(threads, thread_name_prefix="jester-als-generate") as pool:
        pending: deque[Future] = deque()
        for task in tasks:
            pending.append(pool.submit(task))
            if len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def user_prefix(source, max_user: int | None) -> tuple[int, list[tuple[int, int]]]:
    """The rows of a Parquet file written by :func:`write_split_parquet` (users ascending) whose user is at most
    ``max_user`` (all rows for None), as (rows, [(row group, rows taken from its start)]): from the row groups'
    statistics, reading the user column of the one group the boundary falls in."""
    groups = []
    for group in range(source.num_row_groups):
        meta = source.metadata.row_group(group)
        rows = meta.num_rows
        if max_user is None:
            groups.append((group, rows))
            continue
        stats = meta.column(0).statistics  # column 0 is "user"
        if stats is not None and stats.has_min_max and stats.max <= max_user:
            groups.append((group, rows))
        elif stats is None or not stats.has_min_max or stats.min <= max_user:
            users = arrow_column(source.read_row_group(group, columns=["user"]), "user")
            groups.append((group, int(np.searchsorted(users, max_user, side="right"))))
            break
        else:
            break
    return sum(rows for _, rows in groups), groups


def split_counts(directory: Path, max_user: int | None = None) -> dict:
    """Training and test ratings of a table written by :func:`write_split_parquet` (of its first ``max_user``
    users, when given)."""
    import pyarrow.parquet as pq

    return {
        f"{name}_ratings": user_prefix(pq.ParquetFile(directory / f"{name}.parquet"), max_user)[0]
        for name in ("train", "test")
    }


def read_ratings(path: Path, max_user: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, joke, rating) arrays of a Parquet file written by :func:`write_split_parquet` (its users up to
    ``max_user``, when given): int32 ids and float32 ratings filled row group by row group, so the Arrow side
    never holds more than one row group (the whole table as Arrow buffers would double the collected data's
    share of the engine's peak memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = pq.ParquetFile(path)
    rows, groups = user_prefix(source, max_user)
    out = {"user": np.empty(rows, np.int32), "joke": np.empty(rows, np.int32), "rating": np.empty(rows, np.float32)}
    position = 0
    for group, taken in groups:
        table = source.read_row_group(group, columns=list(out)).slice(0, taken)
        for name, array in out.items():
            array[position : position + taken] = arrow_column(table, name)
        position += taken
        del table
    pa.default_memory_pool().release_unused()  # Arrow's allocator keeps freed buffers otherwise
    return out["user"], out["joke"], out["rating"]
