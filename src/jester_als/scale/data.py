"""The study's data: a generated Jester-shaped table streamed to train and test Parquet files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jester_als import hashsplit
from jester_als.generate import GeneratorParams, long_chunks
from jester_als.numpy_als import arrow_column


def write_split_parquet(params: GeneratorParams, directory: Path, test_fraction: float, seed: int) -> dict:
    """Stream the generated table to ``train.parquet`` and ``test.parquet`` (long layout), chunk by chunk, so
    generating a large table needs memory for one chunk only (tables with many jokes are generated long)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("user", pa.int32()), ("joke", pa.int32()), ("rating", pa.float64())])
    writers = {name: pq.ParquetWriter(directory / f"{name}.parquet", schema) for name in ("train", "test")}
    counts = {"train": 0, "test": 0}
    try:
        for users, jokes, values in long_chunks(params):
            users, jokes = users.astype(np.int32), jokes.astype(np.int32)
            is_test = hashsplit.is_test(users, jokes, test_fraction=test_fraction, seed=seed)
            for name, mask in (("train", ~is_test), ("test", is_test)):
                writers[name].write_table(pa.table({"user": users[mask], "joke": jokes[mask],
                                                    "rating": values[mask]}, schema=schema))
                counts[name] += int(mask.sum())
    finally:
        for writer in writers.values():
            writer.close()
    return {"train_ratings": counts["train"], "test_ratings": counts["test"]}


def read_ratings(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, joke, rating) arrays of a Parquet file written by :func:`write_split_parquet`: int32 ids and
    float32 ratings filled row group by row group, so the Arrow side never holds more than one row group (the
    whole table as Arrow buffers would double the collected data's share of the engine's peak memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = pq.ParquetFile(path)
    rows = source.metadata.num_rows
    out = {"user": np.empty(rows, np.int32), "joke": np.empty(rows, np.int32), "rating": np.empty(rows, np.float32)}
    position = 0
    for group in range(source.num_row_groups):
        table = source.read_row_group(group, columns=list(out))
        for name, array in out.items():
            array[position:position + table.num_rows] = arrow_column(table, name)
        position += table.num_rows
        del table
    pa.default_memory_pool().release_unused()  # Arrow's allocator keeps freed buffers otherwise
    return out["user"], out["joke"], out["rating"]
