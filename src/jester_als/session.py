"""Building (or joining) the SparkSession, in classic or Spark Connect mode, and reading its capacity.

Only the job entry point builds a session; library functions receive one. Nothing here touches
``sparkContext``, ``.rdd`` or the JVM, so the same code runs over Spark Connect and on serverless compute.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile

log = logging.getLogger(__name__)

SPARK_DEFAULT_ALS_BLOCKS = 10


def is_connect(spark) -> bool:
    """True for a Spark Connect session (``pyspark.sql.connect``)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def build_session(spark_cfg: dict, *, master: str | None = None, remote: str | None = None):
    """Return ``(spark, created)``; ``created`` is False when an active session was joined.

    Precedence for where to run: ``remote`` argument, ``master`` argument, ``spark.remote`` /
    ``spark.master`` in the config, the ``SPARK_REMOTE`` environment variable, then whatever spark-submit
    or the platform configured (local mode with all cores when run as a plain Python program).
    The checkpoint directory is set here: without one, ALS dies with StackOverflowError past ~20 iterations.
    """
    from pyspark.sql import SparkSession

    remote = remote or spark_cfg.get("remote") or (None if master or spark_cfg.get("master")
                                                  else os.environ.get("SPARK_REMOTE"))
    master = master or spark_cfg.get("master")

    active = SparkSession.getActiveSession()
    if active is not None and not remote and not master:
        ensure_checkpoint_dir(active, spark_cfg.get("checkpoint_dir"))
        return active, False

    builder = SparkSession.builder.appName(spark_cfg.get("app_name", "jester-als"))
    extra = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in (spark_cfg.get("conf") or {}).items()}
    if remote:
        spark = builder.remote(remote).getOrCreate()
        _apply_connect_settings(spark, extra, spark_cfg.get("checkpoint_dir"))
        log.info("Spark %s session over Spark Connect at %s, checkpoint dir %s", spark.version, remote,
                 _conf(spark, "spark.checkpoint.dir") or "unknown")
        return spark, True
    if master:
        builder = builder.master(master)
    checkpoint_dir = spark_cfg.get("checkpoint_dir") or tempfile.mkdtemp(prefix="jester-als-checkpoint-")
    settings = {"spark.checkpoint.dir": checkpoint_dir, "spark.log.level": spark_cfg.get("log_level", "WARN"),
                **extra}
    for key, value in settings.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:
        if "CANNOT_MODIFY_CONFIG" not in str(exc):
            raise
        # A platform session that is Spark Connect underneath (Databricks serverless) refuses launch-time
        # settings: join it as it is and apply what it accepts.
        log.info("the platform's session refused launch-time settings; joining it as it is")
        spark = SparkSession.builder.getOrCreate()
        _apply_connect_settings(spark, extra, spark_cfg.get("checkpoint_dir"))
        return spark, False
    log.info("Spark %s session (%s), checkpoint dir %s", spark.version, master_of(spark) or "default master",
             checkpoint_dir)
    return spark, True


def _apply_connect_settings(spark, settings: dict, checkpoint_dir: str | None) -> None:
    """Over Connect only session settings can change; launch-time ones belong to the server."""
    refused = []
    for key, value in settings.items():
        try:
            spark.conf.set(key, value)
        except Exception:  # static settings (spark.driver.*, spark.ui.*) are the server's
            refused.append(key)
    if refused:
        log.info("not applied over Spark Connect (launch-time settings belong to the server): %s",
                 ", ".join(refused))
    ensure_checkpoint_dir(spark, checkpoint_dir, force=bool(checkpoint_dir))


def ensure_checkpoint_dir(spark, wanted: str | None, *, force: bool = False) -> None:
    """Make sure a checkpoint directory is set on a session we joined (or reached over Connect) rather
    than built; where the platform refuses, say so and go on."""
    current = _conf(spark, "spark.checkpoint.dir")
    if current and not force:
        return
    target = wanted or tempfile.mkdtemp(prefix="jester-als-checkpoint-")
    try:
        spark.conf.set("spark.checkpoint.dir", target)
    except Exception as exc:
        if current:
            log.info("keeping the server's checkpoint dir %s (cannot change it: %s)", current,
                     str(exc).splitlines()[0])
        else:
            log.warning("no checkpoint dir and cannot set one (%s): ALS runs past ~20 iterations may hit "
                        "StackOverflowError; start the server with --conf spark.checkpoint.dir=...",
                        str(exc).splitlines()[0])


def _conf(spark, key: str) -> str | None:
    try:
        return spark.conf.get(key, None)
    except Exception:  # some keys are not readable over Connect / serverless
        return None


def master_of(spark) -> str | None:
    return _conf(spark, "spark.master")


def cluster_cores(spark) -> int | None:
    """Cores the session can run tasks on, from public settings only; None when it cannot be told."""
    parallelism = _conf(spark, "spark.default.parallelism")
    if parallelism and parallelism.isdigit():
        return int(parallelism)
    master = master_of(spark) or ""
    match = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?", master)
    if match:
        n = match.group(1)
        return os.cpu_count() or 1 if n in (None, "*") else int(n) if n else 1
    local_cluster = re.fullmatch(r"local-cluster\[(\d+),\s*(\d+),\s*\d+\]", master)
    if local_cluster:
        return int(local_cluster.group(1)) * int(local_cluster.group(2))
    instances, cores = _conf(spark, "spark.executor.instances"), _conf(spark, "spark.executor.cores")
    if instances and cores and instances.isdigit() and cores.isdigit():
        return int(instances) * int(cores)
    cores_max = _conf(spark, "spark.cores.max")
    if cores_max and cores_max.isdigit():
        return int(cores_max)
    return None


def als_blocks(spark, setting: int | str) -> int:
    """ALS user/item blocks: one per core (2 blocks on 2 cores fit 1.45 M ratings in 9.1 s where Spark's
    default 10 blocks took 13.1 s). Falls back to Spark's default when the core count is unknown."""
    if setting != "auto":
        return int(setting)
    cores = cluster_cores(spark)
    if cores is None:
        log.info("could not tell the cluster's cores; using Spark's default of %d ALS blocks",
                 SPARK_DEFAULT_ALS_BLOCKS)
        return SPARK_DEFAULT_ALS_BLOCKS
    return max(1, cores)


def try_persist(df, what: str):
    """Persist ``df``; serverless compute refuses ``persist()``, which costs time, not correctness, because
    every split in this project is a pure function of the data and the seed."""
    try:
        return df.persist()
    except Exception as exc:
        log.warning("could not persist %s (%s); it will be recomputed when reused", what,
                    str(exc).splitlines()[0])
        return df


def try_unpersist(df) -> None:
    try:
        df.unpersist()
    except Exception:  # nothing was persisted, or the platform does not allow it
        pass
