"""How fast fold-in serves new users: ``python -m jester_als.serve`` (``make serve-docs``).

A model with the default run's chosen kind of params is fitted on the default table's training ratings (NumPy
engine), and new users who rated the ten gauge jokes (drawn from the same generator with another seed) are
folded in: 1 user, 10,000 users at once and 1 M users on the driver (NumPy, the input already in memory, median
of repeats), and 1 M users with Spark (local mode, ``mapInPandas`` over the ratings grouped by user, factors and
top-N written to a no-op sink, so the time is the fold-in's, not the disk's). Writes ``serve.json`` and
``serve.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from jester_als.config import SparkConfig, load_config
from jester_als.foldin import fold_in, from_numpy_model, top_n
from jester_als.generate import GAUGE_JOKES, GeneratorParams, generate_chunks
from jester_als.newusers import median_seconds
from jester_als.numpy_als import RatingMatrix, fit_numpy_als
from jester_als.outputs import now_iso, write_text_atomic

SIZES = (1, 10_000, 1_000_000)
REPEATS = 5


def gauge_ratings(users: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """New users' ratings of the gauge jokes (those each rated), ids from 1."""
    params = GeneratorParams(users=users, seed=seed)
    parts = [chunk.long() for chunk in generate_chunks(params)]
    users_, jokes, values = (np.concatenate(p) for p in zip(*parts))
    keep = np.isin(jokes, GAUGE_JOKES)
    return users_[keep], jokes[keep], values[keep]


def spark_seconds(foldable, users, jokes, values, top: int, rating_range) -> float:
    import pyarrow as pa

    from jester_als.foldin import fold_in_spark  # the Spark measurement only: the NumPy ones run without pyspark
    from jester_als.session import build_session

    spark, _ = build_session(SparkConfig(app_name="jester-als-serve"), master="local[2]")
    table = pa.table({"user": users.astype(np.int32), "joke": jokes.astype(np.int32), "rating": values})
    ratings = spark.createDataFrame(table).persist()
    ratings.count()
    clock = time.perf_counter()
    folded = fold_in_spark(foldable, ratings, top, rating_range)
    folded.factors.write.format("noop").mode("overwrite").save()
    folded.recommendations.write.format("noop").mode("overwrite").save()
    seconds = time.perf_counter() - clock
    folded.release()
    ratings.unpersist()
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jester_als.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--conf", default=None)
    parser.add_argument("--out", default="output/serve")
    parser.add_argument("--largest", type=int, default=SIZES[-1], help="the largest number of new users")
    args = parser.parse_args(argv)
    cfg = load_config(args.conf)
    started = time.perf_counter()
    gen = GeneratorParams.from_config(cfg.generate)
    users, jokes, values = (np.concatenate(p) for p in zip(*(c.long() for c in generate_chunks(gen))))
    params = {"rank": 10, "regParam": 0.3, "maxIter": 20, "biases": True}
    model = fit_numpy_als(
        RatingMatrix.from_ids(users, jokes, values),
        rank=params["rank"],
        reg_param=params["regParam"],
        max_iter=params["maxIter"],
        biases=True,
        bias_reg=cfg.als.bias_reg,
        seed=cfg.als.seed,
    )
    foldable = from_numpy_model(model, params["regParam"])
    new_users, new_jokes, new_values = gauge_ratings(args.largest, gen.seed + 1)
    sizes = [n for n in SIZES if n < args.largest] + [args.largest]
    numpy_rows, top = {}, cfg.recommend.top_n
    for count in sizes:
        keep = new_users <= count
        args_ = (new_users[keep], new_jokes[keep], new_values[keep])
        repeats = REPEATS if count < 1_000_000 else 3
        numpy_rows[str(count)] = {
            "fold_in_seconds": median_seconds(lambda a=args_: fold_in(foldable, *a), repeats),
            "with_top_n_seconds": median_seconds(lambda a=args_: top_n(foldable, fold_in(foldable, *a), top), repeats),
            "ratings": int(keep.sum()),
        }
    result = {
        "when": now_iso(),
        "cpus": os.cpu_count(),
        "model": {**params, "bias_reg": cfg.als.bias_reg},
        "top_n": top,
        "numpy": numpy_rows,
        "spark": {
            str(args.largest): spark_seconds(foldable, new_users, new_jokes, new_values, top, cfg.input.rating_range)
        },
    }
    result["seconds"] = time.perf_counter() - started
    os.makedirs(args.out, exist_ok=True)
    write_text_atomic(os.path.join(args.out, "serve.json"), json.dumps(result, indent=2) + "\n")
    write_text_atomic(os.path.join(args.out, "serve.md"), render(result))
    print(render(result))
    return 0


def render(result: dict) -> str:
    rows = [
        f"| {int(n):,} | NumPy (driver) | {r['ratings']:,} | {r['fold_in_seconds']:.4f} | "
        f"{r['with_top_n_seconds']:.4f} |"
        for n, r in result["numpy"].items()
    ]
    rows += [
        f"| {int(n):,} | Spark (local mode, {result['cpus']} cores) | | | {s:.1f} |" for n, s in result["spark"].items()
    ]
    model = result["model"]
    return "\n".join(
        [
            "# Fold-in: how fast new users are served",
            "",
            f"Written by `python -m jester_als.serve` (`make serve-docs`), {result['when']}, "
            f"on {result['cpus']} cores. "
            f"New users who rated the ten gauge jokes, folded into a biased model (rank {model['rank']}, regParam "
            f"{model['regParam']}) fitted on the default generated table; NumPy times are medians with the input in "
            f"memory, Spark's include grouping the ratings by user and the top {result['top_n']} of each.",
            "",
            "| new users | engine | ratings | fold-in (s) | fold-in + top-N (s) |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
