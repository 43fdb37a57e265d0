"""``jester-als bench``: NumPy ALS, Spark ALS and the seed's per-user loop fitted on the same ratings with the
same params in one run, each in a fresh process of its own (so that the peak resident memory is the engine's);
medians of repeats, ratios from the same run, RMSE on the same test ratings.

The table is generated and split by the project's one hash rule (``hashsplit``) straight to Parquet, chunk by
chunk, so any ``bench.users`` this machine can hold works; Spark's driver heap is sized to the data, and a size
whose Spark fit would not fit ``bench.memory_budget_mb`` is refused before anything is generated or fitted.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from jester_als.config import BenchConfig, JesterConfig, size_mb
from jester_als.errors import JobError
from jester_als.generate import GeneratorParams
from jester_als.harness.data import write_split_parquet
from jester_als.harness.runner import run_worker
from jester_als.harness.worker import WorkerSpec
from jester_als.outputs import now_iso, scratch_dir, staged_outputs, write_text_atomic
from jester_als.plots import SKIPPED, engine_bars, pyplot
from jester_als.registry import JOBS
from jester_als.report import table
from jester_als.scale.costmodel import heap_needed_mb

log = logging.getLogger(__name__)

# Spark ALS's driver heap in local mode. What it needs is the heap whose unified memory holds what ALS caches:
# the scaling study fits a line through the cached bytes Spark's block manager reports per training rating
# (docs/scale.json, limits.spark.in_memory.storage_model.bytes_per_rating; tests/test_bench.py holds this
# constant to it), and Spark's own rule turns cached bytes into a heap (scale.costmodel.heap_needed_mb). A heap
# that only just holds them spends its time collecting garbage, so Spark is given more when the budget allows
# (the GIVE figure: several times the need), never less than 4 GB, and a size is refused only when even the need
# does not fit.
SPARK_CACHED_BYTES_PER_RATING = 39
SPARK_HEAP_GIVE_BYTES_PER_RATING = 250
SPARK_HEAP_BASE_MB = 1024
SPARK_HEAP_MIN_MB = 4096
# The JVM's resident memory beyond its heap (metaspace, threads, Netty buffers) and the Python driver's.
SPARK_PROCESS_OVERHEAD_MB = 2048


JESTER_USERS = 24_983
ENGINES = (
    ("numpy_als", "numpy", "numpy_repeats"),
    ("seed_loop", "loop", "loop_repeats"),
    ("spark_als", "spark", "spark_repeats"),
)


class BenchTooLargeError(JobError):
    """The requested table would not fit this machine's memory budget for one of the engines."""


class BenchEngineFailed(JobError):
    """An engine's worker process did not complete (budget exceeded, out of memory, error)."""


def _heap_mb(train_ratings: int, bytes_per_rating: int) -> int:
    return max(SPARK_HEAP_MIN_MB, SPARK_HEAP_BASE_MB + -(-train_ratings * bytes_per_rating // 2**20))


def spark_heap_need_mb(train_ratings: int) -> int:
    """The least heap that holds what Spark ALS caches for ``train_ratings`` (at least the 4 GB floor)."""
    storage = {"fixed_mb": 0.0, "bytes_per_rating": SPARK_CACHED_BYTES_PER_RATING}
    return max(SPARK_HEAP_MIN_MB, math.ceil(heap_needed_mb(storage, train_ratings)))


def spark_heap_mb(train_ratings: int, bench: BenchConfig) -> int:
    """The heap for Spark's fit: ``bench.spark_driver_memory`` if set (e.g. "8g"), else sized to the data
    within ``bench.memory_budget_mb``; BenchTooLargeError when Spark's need does not fit the budget."""
    setting, budget = bench.spark_driver_memory, bench.memory_budget_mb
    if setting != "auto":
        return size_mb(setting)
    need = spark_heap_need_mb(train_ratings)
    if need + SPARK_PROCESS_OVERHEAD_MB > budget:
        raise BenchTooLargeError(
            f"bench.users={bench.users:,} gives about {train_ratings:,} training ratings; Spark ALS needs about "
            f"{need:,} MB of driver heap to cache them ({SPARK_CACHED_BYTES_PER_RATING} bytes a rating, as the "
            f"scaling study measured) plus "
            f"{SPARK_PROCESS_OVERHEAD_MB:,} MB beside it, above bench.memory_budget_mb={budget:,}. Lower "
            f"bench.users, raise bench.memory_budget_mb if the machine has the memory, set "
            f"bench.spark_driver_memory (e.g. 12g) to try a smaller heap, or bench.spark_repeats=0 to time "
            f"NumPy alone"
        )
    return min(_heap_mb(train_ratings, SPARK_HEAP_GIVE_BYTES_PER_RATING), budget - SPARK_PROCESS_OVERHEAD_MB)


def check_fits(bench: BenchConfig, params: GeneratorParams) -> int | None:
    """Spark's heap for the expected table (None when Spark does not run), or BenchTooLargeError before
    anything is generated."""
    if not bench.spark_repeats:
        return None
    expected_train = int(params.users * min(params.mean_ratings, params.jokes) * (1 - bench.test_fraction))
    return spark_heap_mb(expected_train, bench)


def run_bench(cfg: JesterConfig) -> dict:
    bench = cfg.bench
    gen = GeneratorParams.from_config(cfg.generate, users=bench.users, jokes=bench.jokes)
    heap = check_fits(bench, gen)
    out_dir = Path(cfg.output.dir)
    work = Path(scratch_dir("bench", bench.work_dir))
    try:
        sizes = write_split_parquet(gen, work, bench.test_fraction, bench.seed)
        train_ratings = sizes["train_ratings"]
        log.info(
            "bench: %d users x %d jokes, %d training and %d test ratings, rank %d, regParam %s, %d iterations",
            gen.users,
            gen.jokes,
            train_ratings,
            sizes["test_ratings"],
            bench.rank,
            bench.regParam,
            bench.maxIter,
        )
        engines = {}
        for name, engine, repeats_key in ENGINES:
            if not getattr(bench, repeats_key):
                continue
            spec = WorkerSpec(
                engine=engine,
                data_dir=str(work),
                rank=bench.rank,
                reg_param=bench.regParam,
                max_iter=bench.maxIter,
                repeats=getattr(bench, repeats_key),
                seed=bench.seed,
                result_file=str(work / f"{engine}-result.json"),
                spark_driver_memory=f"{heap or SPARK_HEAP_MIN_MB}m",
                dense_budget_mb=bench.numpy_dense_budget_mb,
            )
            result = run_worker(
                spec,
                memory_budget_mb=bench.memory_budget_mb,
                time_budget_seconds=bench.time_budget_seconds,
                keep_log_in=out_dir,
            )
            if not result["completed"]:
                raise BenchEngineFailed(
                    f"{name} did not complete on {train_ratings:,} training ratings: "
                    f"{result['limit']} (worker log: {result.get('log')})"
                )
            engines[name] = {
                "seconds": result["seconds"],
                "median_seconds": statistics.median(result["seconds"]),
                "peak_mb": result["peak_rss_mb"],
                "bytes_per_rating": result["peak_rss_mb"] * 2**20 / train_ratings,
                "load_seconds": result.get("load_seconds"),
                **{k: result[k] for k in ("rmse", "mae", "rows")},
            }
            if engine == "spark":
                engines[name]["driver_heap_mb"] = heap
            log.info(
                "  %s: median %.2f s, peak %.0f MB (%.1f bytes a training rating), test RMSE %.4f",
                name,
                engines[name]["median_seconds"],
                result["peak_rss_mb"],
                engines[name]["bytes_per_rating"],
                result["rmse"],
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    numpy_median = engines["numpy_als"]["median_seconds"] if "numpy_als" in engines else None
    result = {
        "when": now_iso(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "spark": _spark_version(),
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        },
        "data": {
            "users": gen.users,
            "jokes": gen.jokes,
            "train_ratings": train_ratings,
            "test_ratings": sizes["test_ratings"],
            "generator_seed": gen.seed,
            "split": "hash: pmod(xxhash64(user, joke, seed), 1e6) < test_fraction * 1e6",
        },
        "params": {"rank": bench.rank, "regParam": bench.regParam, "maxIter": bench.maxIter},
        "engines": engines,
        "speedup_vs_numpy": (
            {name: e["median_seconds"] / numpy_median for name, e in engines.items()} if numpy_median else {}
        ),
        "targets": {
            "numpy_fit_at_most_seconds": bench.target_numpy_seconds,
            "spark_over_numpy_at_least": bench.target_speedup,
        },
    }
    speedup = result["speedup_vs_numpy"].get("spark_als")
    at_jester_size = (gen.users, gen.jokes, bench.maxIter) == (JESTER_USERS, 100, 20)
    result["targets"]["applies"] = at_jester_size  # the targets are stated for the Jester-sized default run
    result["targets"]["met"] = (
        bool(
            numpy_median is not None
            and speedup is not None
            and numpy_median <= bench.target_numpy_seconds
            and speedup >= bench.target_speedup
        )
        if at_jester_size
        else None
    )
    return result


def _spark_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("pyspark")
    except Exception:  # noqa: BLE001 - no pyspark: the bench ran NumPy alone
        return None


LABELS = {"numpy_als": "NumPy ALS (vectorized)", "spark_als": "Spark ALS", "seed_loop": "seed's per-user loop"}


def render_bench(result: dict) -> str:
    data, params = result["data"], result["params"]
    rows = []
    for name, engine in result["engines"].items():
        ratio = result["speedup_vs_numpy"].get(name)
        rows.append(
            [
                LABELS[name],
                f"{engine['median_seconds']:.2f}",
                len(engine["seconds"]),
                f"{ratio:.1f}x" if ratio else "",
                f"{engine['peak_mb']:,.0f}",
                f"{engine['bytes_per_rating']:.0f}",
                f"{engine['rmse']:.4f}",
                f"{engine['mae']:.4f}",
            ]
        )
    targets = result["targets"]
    return "\n".join(
        [
            "# jester-als bench",
            "",
            f"{data['users']:,} users x {data['jokes']} jokes, {data['train_ratings']:,} training ratings, "
            f"{data['test_ratings']:,} test ratings (hash split); rank {params['rank']}, "
            f"regParam {params['regParam']}, "
            f"{params['maxIter']} iterations. {result['machine']['cpus']} CPUs, Spark {result['machine']['spark']} "
            f"local mode, NumPy {result['machine']['numpy']}; {result['when']}. Each engine ran in a fresh process; "
            f"peak = that process tree's largest resident memory, including the ratings it read.",
            "",
            table(
                [
                    "engine",
                    "median fit (s)",
                    "runs",
                    "time / NumPy's",
                    "peak (MB)",
                    "bytes / training rating",
                    "test RMSE",
                    "test MAE",
                ],
                rows,
            ),
            "",
            (
                f"Targets at Jester size: NumPy fit <= {targets['numpy_fit_at_most_seconds']} s and Spark/NumPy >= "
                f"{targets['spark_over_numpy_at_least']}x: {'met' if targets['met'] else 'NOT met'}."
                if targets.get("applies")
                else "The targets are stated for the Jester-sized default run (24,983 users, "
                "100 jokes, 20 iterations); not judged at this size."
            ),
            "",
        ]
    )


def bench_plot(result: dict, path: str):
    """``bench.png``: each engine's test RMSE and median fit time (bars), or why it was skipped."""

    plt = pyplot()
    if plt is None:
        return {"skipped": SKIPPED}
    rows = [(LABELS[name], engine["rmse"], engine["median_seconds"]) for name, engine in result["engines"].items()]
    data = result["data"]
    engine_bars(
        plt,
        rows,
        f"bench: {data['users']:,} users, {data['train_ratings']:,} training ratings, "
        f"{result['params']['maxIter']} iterations",
        path,
        "median fit seconds",
    )
    return os.path.basename(path)


def bench_job(cfg: JesterConfig) -> str:
    """The ``bench`` job: bench.json, bench.md and bench.png in ``output.dir``; prints bench.md, returns the line
    that says it is done."""

    started = time.perf_counter()
    with staged_outputs(cfg.output, JOBS["bench"].outputs) as out:  # mode checked before any work
        result = run_bench(cfg)
        plot = bench_plot(result, out.path("bench.png"))
        result["plot"] = plot
        write_text_atomic(out.path("bench.json"), json.dumps(result, indent=2) + "\n")
        text = render_bench(result)
        text += (
            "\n![median fit time and test RMSE per engine](bench.png)\n"
            if plot == "bench.png"
            else f"\nPlot skipped: {plot['skipped']}.\n"
        )
        write_text_atomic(out.path("bench.md"), text)
    print(text)
    return f"jester-als bench: done in {time.perf_counter() - started:.0f} s; outputs in {cfg.output.dir}"
