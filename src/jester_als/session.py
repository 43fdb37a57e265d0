"""Building (or joining) the SparkSession, in classic or Spark Connect mode, and reading its capacity.

Only the job entry point builds a session; library functions receive one. Nothing here touches
``sparkContext``, ``.rdd`` or the JVM, so the same code runs over Spark Connect and on serverless compute.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
import sys
import tempfile

from jester_als import owner
from jester_als.config import SparkConfig
from jester_als.errors import JobError, first_line
from jester_als.localcluster import free_ports

log = logging.getLogger(__name__)

SPARK_DEFAULT_ALS_BLOCKS = 10


def is_connect(spark) -> bool:
    """True for a Spark Connect session (``pyspark.sql.connect``)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def platform_owned() -> bool:
    """True on Databricks (classic or serverless), where the platform owns the session: never stop it."""
    return bool(os.environ.get("DATABRICKS_RUNTIME_VERSION"))


def build_session(
    spark_cfg: SparkConfig,
    *,
    master: str | None = None,
    remote: str | None = None,
    spark_log: str | None = None,
    verbose: bool = False,
):
    """Return ``(spark, created)``; ``created`` is False when the session belongs to someone else (an active
    session we joined, or the platform's on Databricks), which the job must then never stop.

    Precedence for where to run: ``remote`` argument, ``master`` argument, ``spark.remote`` /
    ``spark.master`` in the config, the ``SPARK_REMOTE`` environment variable, then whatever spark-submit
    or the platform configured (local mode with all cores when run as a plain Python program).
    The checkpoint directory is set here: without one, ALS dies with StackOverflowError past ~20 iterations.
    A checkpoint directory this function creates is removed by :func:`release_session`.
    """
    from pyspark.sql import SparkSession

    master, remote = where_to_run(spark_cfg, master, remote)

    active = SparkSession.getActiveSession()
    if active is not None and not remote and not master:
        ensure_checkpoint_dir(active, spark_cfg.checkpoint_dir)
        return active, False

    builder = SparkSession.builder.appName(spark_cfg.app_name)
    extra = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in spark_cfg.conf.items()}
    if runs_locally(master, remote):
        extra = {**_local_process(spark_log, verbose, spark_cfg.local_java_options), **extra}
    launch = {"spark.log.level": spark_cfg.log_level, **extra}
    if remote and remote.startswith("local"):
        return _local_connect(builder, remote, launch, extra, spark_cfg.checkpoint_dir)
    if remote:
        spark = builder.remote(remote).getOrCreate()
        bound_connect_retries(spark)
        _apply_connect_settings(spark, extra, spark_cfg.checkpoint_dir)
        log.info(
            "Spark %s session over Spark Connect at %s, checkpoint dir %s",
            spark.version,
            remote,
            _conf(spark, "spark.checkpoint.dir") or "none",
        )
        return spark, not platform_owned()
    return _classic(
        builder.master(master) if master else builder,
        launch,
        extra,
        spark_cfg.checkpoint_dir,
        local=runs_locally(master, remote),
        spark_log=spark_log,
        verbose=verbose,
    )


def _local_process(spark_log: str | None, verbose: bool, java_options: list[str]) -> dict:
    """This process set up for a Spark that runs inside it; the local-mode settings."""
    # Python workers (fold-in's mapInPandas) run this interpreter, the job's own environment, not whatever
    # `python3` comes first on PATH, which may lack the package and NumPy. pyspark reads the environment
    # variable when it starts its context (the spark.pyspark.python setting did not reach local workers).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if spark_log:
        os.makedirs(os.path.dirname(spark_log), exist_ok=True)
    # Local mode talks to itself only: bind to the loopback address instead of letting Spark warn (two lines)
    # that the hostname resolves to it and pick another interface. A user's own SPARK_LOCAL_IP wins.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    return local_mode_defaults(spark_log, verbose, java_options)


def _local_connect(builder, remote: str, launch: dict, extra: dict, checkpoint_dir: str | None):
    """A Spark Connect server pyspark starts inside this process (``remote("local[N]")``)."""
    # pyspark starts that server itself (pyspark/sql/connect/session.py, SparkSession._start_connect_server, in
    # 4.0 and 4.3 alike). Launch-time settings such as the checkpoint directory and driver memory must reach
    # that server's SparkConf: the running server refuses them (CANNOT_MODIFY_CONFIG). Passed as builder options
    # they also come back as session settings the server refuses, with a warning each; the server's initial
    # conf (PYSPARK_REMOTE_INIT_CONF_*, read by the same function) takes them without that, and the session
    # settings are then applied where the server allows.
    launch = {**launch, "spark.checkpoint.dir": checkpoint_dir or _owned_checkpoint_dir()}
    os.environ["PYSPARK_REMOTE_INIT_CONF_LEN"] = "1"
    os.environ["PYSPARK_REMOTE_INIT_CONF_0"] = json.dumps(launch)
    try:
        spark = builder.remote(remote).getOrCreate()
    finally:
        os.environ.pop("PYSPARK_REMOTE_INIT_CONF_LEN", None)
        os.environ.pop("PYSPARK_REMOTE_INIT_CONF_0", None)
    bound_connect_retries(spark)
    _apply_connect_settings(spark, extra, None, quiet=True)
    log.info(
        "Spark %s over Spark Connect, local server %s started by pyspark, checkpoint dir %s",
        spark.version,
        remote,
        launch["spark.checkpoint.dir"],
    )
    log_ui_address(launch)
    return spark, not platform_owned()


def _classic(
    builder,
    launch: dict,
    extra: dict,
    given_checkpoint_dir: str | None,
    *,
    local: bool,
    spark_log: str | None,
    verbose: bool,
):
    """A classic session: local mode, spark-submit's master, or the platform's."""
    from pyspark.sql import SparkSession

    checkpoint_dir = given_checkpoint_dir or _owned_checkpoint_dir()
    for key, value in {"spark.checkpoint.dir": checkpoint_dir, **launch}.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:
        if "CANNOT_MODIFY_CONFIG" not in str(exc):
            _remove_owned_dirs()  # no session to release: its directory goes now, not at the next run's sweep
            raise
        # A platform session that is Spark Connect underneath (Databricks serverless) refuses launch-time
        # settings: join it as it is and apply what it accepts.
        log.info("the platform's session refused launch-time settings; joining it as it is")
        spark = SparkSession.builder.getOrCreate()
        _apply_connect_settings(spark, extra, given_checkpoint_dir)
        return spark, False
    log.info(
        "Spark %s session (%s), checkpoint dir %s",
        spark.version,
        master_of(spark) or "default master",
        _conf(spark, "spark.checkpoint.dir") or checkpoint_dir,
    )
    if local:
        log_ui_address(launch)
        if spark_log:
            log.info("Spark's own warnings: %s%s", spark_log, "" if verbose else " (-v shows them here too)")
    return spark, not platform_owned()


def where_to_run(spark_cfg: SparkConfig, master: str | None, remote: str | None) -> tuple[str | None, str | None]:
    """``(master, remote)`` by :func:`build_session`'s precedence: the arguments, the config, ``SPARK_REMOTE``."""
    remote = remote or spark_cfg.remote or (None if master or spark_cfg.master else os.environ.get("SPARK_REMOTE"))
    return master or spark_cfg.master, remote


def runs_locally(master: str | None, remote: str | None) -> bool:
    """The job will start Spark in local mode on this machine: a ``local[...]`` master or remote, or a plain
    ``python``/console-script run with no master (not under spark-submit, which starts the JVM first, and
    not on Databricks)."""
    target = remote or master
    if target:
        return target.startswith("local")
    return not (os.environ.get("PYSPARK_GATEWAY_PORT") or platform_owned())


def local_mode_defaults(spark_log: str | None, verbose: bool, java_options: list[str]) -> dict:
    """Settings for Spark in local mode on one machine, under any config's own ``spark.conf``: Spark's 200
    shuffle partitions are 200 tiny tasks on a laptop; the console progress bar only where a person watches;
    the driver JVM gets ``java_options`` (``spark.local_java_options``) and the package's log settings."""

    cores = os.cpu_count() or 2
    # The UI's port is chosen here, not left to Spark: Spark moves to the next port when 4040 is taken and
    # does not put the port it bound back into the conf, so only a port chosen up front can be shown.
    log4j = os.path.join(os.path.dirname(os.path.abspath(__file__)), "log4j2.properties")
    # Spark's own log lines: to ``spark_log`` (spark.log under output.dir), errors only on the console unless
    # verbose; without a file, the console keeps Spark's warnings.
    java = [
        *java_options,
        f"-Dlog4j2.configurationFile=file:{log4j}",
        f"-Djester_als.console_level={'warn' if verbose or not spark_log else 'error'}",
        f"-Djester_als.console_trace={'full' if verbose or not spark_log else 'short'}",
    ]
    if spark_log:
        java.append(f"-Djester_als.spark_log={spark_log}")
    return {
        "spark.sql.shuffle.partitions": str(2 * cores),
        "spark.driver.memory": "4g",
        # Every broadcast hash join's map takes at least one Tungsten page (LongToUnsafeRowMap.init allocates
        # 1 MB, and MemoryConsumer.allocatePage rounds a request up to the page size), and Spark sizes the page
        # from the execution memory per core (MemoryManager.defaultPageSizeBytes: up to 64 MB), which a 4g
        # driver on a few cores reaches. Adaptive execution broadcasts the small side of every factor and offset
        # join, so each grid point pinned 64 MB pages until its DataFrames were dropped, and the heap filled with
        # them. Pages grow on demand, so a small one only costs a copy for the rare large broadcast.
        "spark.buffer.pageSize": "2m",
        "spark.ui.showConsoleProgress": str(sys.stderr.isatty()).lower(),
        "spark.ui.port": str(free_ports(1)[0]),
        "spark.driver.extraJavaOptions": " ".join(f'"{option}"' if " " in option else option for option in java),
    }


def log_ui_address(settings: dict) -> None:
    """Name the Spark UI of a session started on this machine (its port was set in ``settings``)."""
    if settings.get("spark.ui.enabled", "true") != "false" and settings.get("spark.ui.port"):
        log.info("Spark UI: http://localhost:%s (while the job runs)", settings["spark.ui.port"])


_OWNED_DIRS: list[str] = []


CHECKPOINT_PREFIX = "jester-als-checkpoint-"


def _owned_checkpoint_dir() -> str:
    """A checkpoint directory of this run's own, under the temp dir; those of killed runs are removed first."""
    owner.sweep(os.path.join(glob.escape(tempfile.gettempdir()), CHECKPOINT_PREFIX + "*"))
    path = tempfile.mkdtemp(prefix=CHECKPOINT_PREFIX)
    owner.claim(path)
    _OWNED_DIRS.append(path)
    return path


def release_session(spark, created: bool) -> None:
    """Stop a session the job created and remove the checkpoint directories it made (on success and on
    failure alike); a session that belongs to someone else is left running."""
    try:
        if created:
            spark.stop()
    finally:
        _remove_owned_dirs()


def _remove_owned_dirs() -> None:
    """Remove the checkpoint directories this process made for its sessions."""
    while _OWNED_DIRS:
        path = _OWNED_DIRS.pop()
        owner.release(path)
        shutil.rmtree(path, ignore_errors=True)


# How long a Connect client keeps retrying an unreachable server. pyspark's default policy
# (pyspark/sql/connect/client/retries.py, DefaultPolicy: 15 retries, backoff x4 up to 60 s) waits at least
# ten minutes before it gives up, which to a user looks like a hang. Bounded here to about 16 s per call
# (0.25 + 0.5 + ... + 8 s), enough to ride out a restart of the connection, not a lost server.
CONNECT_RETRY_POLICY = {"max_retries": 6, "backoff_multiplier": 2.0, "initial_backoff": 250, "max_backoff": 8_000}


def bound_connect_retries(spark) -> None:
    """Make a Connect session we created give up on a server that went away within a bounded time."""
    try:
        from pyspark.sql.connect.client.retries import DefaultPolicy

        spark.client.set_retry_policies([DefaultPolicy(**CONNECT_RETRY_POLICY)])
    except Exception as exc:  # an older or different client: keep its own policy
        log.debug("could not bound the Connect client's retries: %s", exc)


def connection_lost(spark, exc: BaseException) -> bool:
    """True when ``exc`` says the Spark Connect server can no longer be reached."""
    if not is_connect(spark):
        return False
    text = f"{type(exc).__name__}: {exc}"
    return any(
        marker in text
        for marker in (
            "RetriesExceeded",
            "StatusCode.UNAVAILABLE",
            "Connection refused",
            "failed to connect to all addresses",
            "Socket closed",
        )
    )


def _apply_connect_settings(spark, settings: dict, checkpoint_dir: str | None, *, quiet: bool = False) -> None:
    """Over Connect only session settings can change; launch-time ones belong to the server. Asking
    ``isModifiable`` first keeps the server from logging a CANNOT_MODIFY_CONFIG stack trace per key."""
    refused = []
    for key, value in settings.items():
        if not _modifiable(spark, key):
            refused.append(key)
            continue
        try:
            spark.conf.set(key, value)
        except Exception:
            refused.append(key)
    if refused and not quiet:
        log.info("not applied over Spark Connect (launch-time settings belong to the server): %s", ", ".join(refused))
    if not quiet:
        ensure_checkpoint_dir(spark, checkpoint_dir, force=bool(checkpoint_dir))


def _modifiable(spark, key: str) -> bool:
    try:
        return bool(spark.conf.isModifiable(key))
    except Exception:  # the call itself is not available: let set() tell
        return True


def ensure_checkpoint_dir(spark, wanted: str | None, *, force: bool = False) -> None:
    """Make sure a checkpoint directory is set on a session we joined (or reached over Connect) rather
    than built; where the platform refuses, say so and go on (:func:`check_iterations` then decides
    whether the configured fits are safe without one)."""
    current = _conf(spark, "spark.checkpoint.dir")
    if current and not force:
        return
    if not _modifiable(spark, "spark.checkpoint.dir"):
        if current:
            log.info("keeping the server's checkpoint dir %s (it is a launch-time setting)", current)
        else:
            log.warning(
                "the Spark server has no checkpoint dir and it cannot be set from here; start the "
                "server with --conf spark.checkpoint.dir=..."
            )
        return
    target = wanted or _owned_checkpoint_dir()
    try:
        spark.conf.set("spark.checkpoint.dir", target)
    except Exception as exc:
        log.warning("could not set the checkpoint dir (%s)", first_line(exc))


# Spark's ALS without a checkpoint directory keeps the whole lineage of its factor RDDs, and (de)serializing a
# task over a long lineage overflows a JVM thread's stack: on the driver ("Task serialization failed:
# StackOverflowError" in ObjectOutputStream, the job aborts) or in an executor (ObjectInputStream, which stops
# the SparkContext or kills a Connect server). How deep a stack gets before it overflows depends on how much of
# the (de)serialization code the JIT has compiled yet, so the edge moves with the machine's load, and on the
# JVM's settings: C1-only (-XX:TieredStopAtLevel=1) frames are larger, and smaller thread stacks hold fewer. The
# limit is half the highest count that fitted on the default table over a Connect server with the JVM's default
# compiler and stack size (docs/running-everywhere.md); it holds under that condition only, which is why the
# message below tells the user to give the server a checkpoint directory rather than to trust the count.
ITERATIONS_WITHOUT_CHECKPOINTS = 10


class CheckpointDirMissing(JobError):
    """The session has no checkpoint directory, cannot be given one, and a fit asks for too many iterations."""


def check_iterations(spark, iterations: dict[str, int]) -> None:
    """Refuse, before any Spark work, fits that would overflow Spark's stack for want of a checkpoint
    directory. ``iterations`` maps the config key that asks for a fit to its maxIter."""
    if _conf(spark, "spark.checkpoint.dir"):
        return
    too_many = {key: n for key, n in iterations.items() if n > ITERATIONS_WITHOUT_CHECKPOINTS}
    if not too_many:
        if iterations:
            log.warning(
                "no checkpoint dir on this Spark session: ALS fits are limited to %d iterations",
                ITERATIONS_WITHOUT_CHECKPOINTS,
            )
        return
    asked = ", ".join(f"{key}={n}" for key, n in too_many.items())
    raise CheckpointDirMissing(
        f"this Spark session has no checkpoint directory and it is a launch-time setting the job cannot change "
        f"(a Spark Connect server, or a session started elsewhere); without one Spark's ALS overflows its stack "
        f"once its lineage grows deep enough (sooner on a JVM with C1 only or small thread stacks), so at most "
        f"{ITERATIONS_WITHOUT_CHECKPOINTS} are allowed, and this run asks for "
        f"{asked}. Start the server or cluster with --conf spark.checkpoint.dir=<shared dir> (Databricks: the job "
        f"cluster's spark_conf), or lower those settings to {ITERATIONS_WITHOUT_CHECKPOINTS} or less."
    )


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
    """ALS user/item blocks: one per core (fewer, larger blocks than Spark's default of 10 shuffle less on a
    small cluster). Falls back to Spark's default when the core count is unknown."""
    if setting != "auto":
        return int(setting)
    cores = cluster_cores(spark)
    if cores is None:
        log.info("could not tell the cluster's cores; using Spark's default of %d ALS blocks", SPARK_DEFAULT_ALS_BLOCKS)
        return SPARK_DEFAULT_ALS_BLOCKS
    return max(1, cores)


def try_persist(df, what: str):
    """Persist ``df``; serverless compute refuses ``persist()``, which costs time, not correctness, because
    every split in this project is a pure function of the data and the seed."""
    try:
        return df.persist()
    except Exception as exc:
        log.warning("could not persist %s (%s); it will be recomputed when reused", what, first_line(exc))
        return df


def materialize(df, what: str):
    """``df`` computed now and cut from its lineage (``localCheckpoint``, in Spark Connect since 4.0), so that
    a loop building on its own results keeps short plans (a plan nested once per pass is re-analysed and
    re-optimised whole at every pass). A platform that refuses it (serverless compute
    may) gets a persisted, counted DataFrame instead: slower plans, the same result."""
    try:
        return df.localCheckpoint(eager=True)
    except Exception as exc:
        if connection_lost(df.sparkSession, exc):
            raise
        log.debug("localCheckpoint refused for %s (%s); persisting instead", what, first_line(exc))
        kept = try_persist(df, what)
        kept.count()
        return kept


_SERVER_GONE: list[bool] = []


def try_unpersist(df) -> None:
    """Best-effort cleanup. Once a Connect server has been found gone, do not ask it again: each call would
    wait out the client's retries before failing."""
    if _SERVER_GONE:
        return
    try:
        df.unpersist()
    except Exception as exc:  # nothing was persisted, the platform does not allow it, or the server is gone
        if connection_lost(df.sparkSession, exc):
            _SERVER_GONE.append(True)
