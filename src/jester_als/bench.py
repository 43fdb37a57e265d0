"""``jester-als bench``: NumPy ALS, Spark ALS and the seed's per-user loop fitted on the same ratings with
the same params in one run; medians of repeats, ratios from the same run, RMSE on the same test ratings.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time

import numpy as np

from jester_als.generate import GeneratorParams, generate_chunks
from jester_als.numpy_als import RatingMatrix, fit_loop_als, fit_numpy_als, rmse_mae
from jester_als.outputs import now_iso, write_text_atomic
from jester_als.report import table
from jester_als.session import als_blocks
from jester_als.tune import fit_als, make_als

log = logging.getLogger(__name__)


def generated_split(params: GeneratorParams, test_fraction: float, seed: int):
    """The generated table as long arrays, split at random over ratings (seeded)."""
    users, jokes, values = (np.concatenate(parts) for parts in zip(*(c.long() for c in generate_chunks(params))))
    is_test = np.random.default_rng(seed).random(values.size) < test_fraction
    train = (users[~is_test], jokes[~is_test], values[~is_test])
    test = (users[is_test], jokes[is_test], values[is_test])
    return train, test


def _timed(fn, repeats: int):
    seconds, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - started)
    return result, seconds


def run_bench(spark, cfg: dict) -> dict:
    bench = cfg["bench"]
    gen = GeneratorParams.from_config(cfg["generate"], users=bench["users"], jokes=bench["jokes"])
    rank, reg, iters = bench["rank"], bench["regParam"], bench["maxIter"]
    (tr_u, tr_j, tr_r), (te_u, te_j, te_r) = generated_split(gen, bench["test_fraction"], bench["seed"])
    train = RatingMatrix.from_ids(tr_u, tr_j, tr_r)
    log.info("bench: %d users x %d jokes, %d training and %d test ratings, rank %d, regParam %s, %d iterations",
             gen.users, gen.jokes, train.nnz, te_r.size, rank, reg, iters)
    engines = {}

    model, seconds = _timed(lambda: fit_numpy_als(train, rank=rank, reg_param=reg, max_iter=iters, seed=bench["seed"]),
                            bench["numpy_repeats"])
    engines["numpy_als"] = {"seconds": seconds, **rmse_mae(te_r, model.predict(te_u, te_j))}

    if bench["loop_repeats"]:
        model, seconds = _timed(lambda: fit_loop_als(train, rank=rank, reg_param=reg, max_iter=iters,
                                                     seed=bench["seed"]), bench["loop_repeats"])
        engines["seed_loop"] = {"seconds": seconds, **rmse_mae(te_r, model.predict(te_u, te_j))}

    import pyarrow as pa

    train_df = spark.createDataFrame(pa.table({"user": tr_u.astype(np.int32), "joke": tr_j.astype(np.int32),
                                               "rating": tr_r}))
    train_df = train_df.persist()
    train_df.count()
    blocks = als_blocks(spark, cfg["als"]["blocks"])
    als = make_als(seed=bench["seed"], blocks=blocks, checkpoint_interval=cfg["als"]["checkpoint_interval"])
    params = {"rank": rank, "regParam": reg, "maxIter": iters}
    fits = [fit_als(train_df, als, params) for _ in range(bench["spark_repeats"])]
    spark_model = fits[-1][0]
    test_df = spark.createDataFrame(pa.table({"user": te_u.astype(np.int32), "joke": te_j.astype(np.int32),
                                              "rating": te_r}))
    scored = spark_model.transform(test_df).select("rating", "prediction").toArrow()
    engines["spark_als"] = {"seconds": [s for _, s in fits], "blocks": blocks,
                            **rmse_mae(scored.column("rating").to_numpy(), scored.column("prediction").to_numpy())}
    train_df.unpersist()

    for engine in engines.values():
        engine["median_seconds"] = statistics.median(engine["seconds"])
    numpy_median = engines["numpy_als"]["median_seconds"]
    result = {
        "when": now_iso(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "numpy": np.__version__, "spark": spark.version,
                    "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE")},
        "data": {"users": gen.users, "jokes": gen.jokes, "train_ratings": train.nnz, "test_ratings": int(te_r.size),
                 "generator_seed": gen.seed},
        "params": params,
        "engines": engines,
        "speedup_vs_numpy": {name: e["median_seconds"] / numpy_median for name, e in engines.items()},
        "targets": {"numpy_fit_at_most_seconds": bench["target_numpy_seconds"],
                    "spark_over_numpy_at_least": bench["target_speedup"]},
    }
    result["targets"]["met"] = bool(numpy_median <= bench["target_numpy_seconds"]
                                    and result["speedup_vs_numpy"]["spark_als"] >= bench["target_speedup"])
    return result


LABELS = {"numpy_als": "NumPy ALS (vectorized)", "spark_als": "Spark ALS", "seed_loop": "seed's per-user loop"}


def render_bench(result: dict) -> str:
    data, params = result["data"], result["params"]
    rows = []
    for name, engine in result["engines"].items():
        rows.append([LABELS[name], f"{engine['median_seconds']:.2f}", len(engine["seconds"]),
                     f"{result['speedup_vs_numpy'][name]:.1f}x", f"{engine['rmse']:.4f}", f"{engine['mae']:.4f}"])
    targets = result["targets"]
    return "\n".join([
        "# jester-als bench", "",
        f"{data['users']:,} users x {data['jokes']} jokes, {data['train_ratings']:,} training ratings, "
        f"{data['test_ratings']:,} test ratings; rank {params['rank']}, regParam {params['regParam']}, "
        f"{params['maxIter']} iterations. {result['machine']['cpus']} CPUs, Spark {result['machine']['spark']} "
        f"local mode, NumPy {result['machine']['numpy']}; {result['when']}.", "",
        table(["engine", "median fit (s)", "runs", "time / NumPy's", "test RMSE", "test MAE"], rows), "",
        f"Targets: NumPy fit <= {targets['numpy_fit_at_most_seconds']} s and Spark/NumPy >= "
        f"{targets['spark_over_numpy_at_least']}x: {'met' if targets['met'] else 'NOT met'}.", ""])


def bench_job(spark, cfg: dict) -> dict:
    result = run_bench(spark, cfg)
    out_dir = cfg["output"]["dir"]
    os.makedirs(out_dir, exist_ok=True)
    write_text_atomic(os.path.join(out_dir, "bench.json"), json.dumps(result, indent=2) + "\n")
    text = render_bench(result)
    write_text_atomic(os.path.join(out_dir, "bench.md"), text)
    print(text)
    return result
