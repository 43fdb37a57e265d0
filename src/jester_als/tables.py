"""Results as catalog tables: the recommendations and the run's numeric metrics, beside the files.

Each table is partitioned by ``run_key`` and written with dynamic partition overwrite, so a rerun with the same
key replaces exactly its own rows and never another run's (``output.run_key``: on Databricks, the job run's id,
so a retried task rewrites what it wrote; without one, the run's own id). The files under ``output.dir`` are
committed first: a table that cannot be written leaves them in place and the job ends with exit status 1 and a
message naming the table.
"""

from __future__ import annotations

import logging

from jester_als.config import OutputConfig
from jester_als.errors import JobError, first_line

log = logging.getLogger(__name__)


class TableWriteError(JobError):
    """A catalog table could not be written (the files under output.dir are committed)."""


def numeric_metrics(metrics: dict, prefix: str = "") -> list[tuple[str, float]]:
    """Every number of ``metrics`` as (dotted name, value), lists and the run manifest left out."""
    rows = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if name in ("run", "plots") or isinstance(value, list):
            continue
        if isinstance(value, dict):
            rows += numeric_metrics(value, f"{name}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append((name, float(value)))
    return rows


def _write(frame, table: str, what: str) -> None:
    spark = frame.sparkSession
    try:
        if spark.catalog.tableExists(table):
            # insertInto matches columns by position: the table's order
            frame.select(*spark.table(table).columns).write.insertInto(table, overwrite=True)
        else:
            frame.write.partitionBy("run_key").saveAsTable(table)
    except Exception as exc:  # the catalog refused: a missing schema, no privilege, another format
        first = first_line(exc)
        raise TableWriteError(
            f"{what} table {table}: cannot be written ({first}); the files under output.dir are committed"
        ) from None


def write_tables(spark, out: OutputConfig, job: str, metrics: dict, output_dir: str) -> dict:
    """Write the tables ``output`` names for this run; what was written (table -> rows)."""
    if not (out.recommendations_table or out.metrics_table):
        return {}
    from pyspark.sql import functions as F

    run = metrics.get("run") or {}
    key = out.run_key or run.get("run_id")
    written = {}
    previous = spark.conf.get("spark.sql.sources.partitionOverwriteMode", None)
    spark.conf.set("spark.sql.sources.partitionOverwriteMode", "dynamic")
    try:
        if out.recommendations_table and "recommendations" in metrics:
            import os

            recs = spark.read.parquet(os.path.join(output_dir, "recommendations"))
            frame = recs.select(
                F.col("user").cast("string").alias("user"), "rank", "joke", "score", F.lit(key).alias("run_key")
            )
            _write(frame, out.recommendations_table, "recommendations")
            written[out.recommendations_table] = metrics["recommendations"]["rows"]
        if out.metrics_table:
            rows = [(name, value, job, run.get("finished"), key) for name, value in numeric_metrics(metrics)]
            frame = spark.createDataFrame(
                rows, "metric string, value double, job string, finished string, run_key string"
            )
            _write(frame, out.metrics_table, "metrics")
            written[out.metrics_table] = len(rows)
    finally:
        if previous is not None:
            spark.conf.set("spark.sql.sources.partitionOverwriteMode", previous)
    log.info("tables written for run key %s: %s", key, written)
    return written
