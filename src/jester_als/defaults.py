"""How the default tuning grid was chosen: validation RMSE of candidate grids on a table's training ratings.

``python -m jester_als.defaults`` (``make defaults-docs``) generates the default table (or reads the ratings a
``prepare`` wrote), holds out the test ratings exactly as the jobs do (``split.test_fraction``, ``split.seed``)
and never looks at them again, splits the rest into a fitting and a validation part (``tune.train_ratio``), and
scores with the NumPy engine (Spark's objective, tested against Spark's factors):

- the default grid at several iteration counts, to show whether its choice depends on how long tuning fits;
- a wider grid around it, to show where the best point of a broader search lies;
- the final refit's iterations for the chosen point;
- the same grid on a 1-5 version of the table, with ``regParam`` scaled to the scale (``tune.scale_reg_param``)
  and as given.

It writes ``defaults.json`` and ``defaults.md`` (``docs/`` keeps the run the shipped defaults quote).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time

import numpy as np

from jester_als import hashsplit
from jester_als.config import JesterConfig, load_config
from jester_als.generate import REAL_JESTER, GeneratorParams, generate_chunks, table_statistics
from jester_als.numpy_als import RatingMatrix, fit_biases, fit_numpy_als
from jester_als.outputs import now_iso, write_text_atomic
from jester_als.tune import reg_param_factor, scaled_grid

WIDE_RANKS = (5, 8, 10, 15, 20, 30)
WIDE_REG_PARAMS = (0.2, 0.3, 0.4, 0.5, 0.7)
ITERATIONS = (5, 10, 20)
REFIT_ITERATIONS = (10, 15, 20, 30)
FIVE_POINT = (1.0, 5.0)


class Validation:
    """The fitting and validation parts of a table's training ratings (the test ratings left out)."""

    def __init__(
        self,
        users,
        jokes,
        ratings,
        *,
        test_fraction: float,
        split_seed: int,
        train_ratio: float,
        rating_range,
        seed: int,
    ):
        users, jokes = np.asarray(users, dtype=np.int32), np.asarray(jokes, dtype=np.int32)
        train = ~hashsplit.is_test(users, jokes, test_fraction=test_fraction, seed=split_seed)
        users, jokes, ratings = users[train], jokes[train], np.asarray(ratings)[train]
        # Another hash seed than the test split's: which training ratings validate is independent of the test.
        held = hashsplit.is_test(users, jokes, test_fraction=1.0 - train_ratio, seed=split_seed + 1)
        self.fitting = RatingMatrix.from_ids(users[~held], jokes[~held], ratings[~held])
        self.users, self.jokes, self.ratings = users[held], jokes[held], ratings[held]
        self.rating_range = rating_range
        self.seed = seed

    def rmse(self, *, rank: int, regParam: float, maxIter: int, biases: bool, bias_reg: float) -> float:  # noqa: N803
        model = fit_numpy_als(
            self.fitting,
            rank=rank,
            reg_param=regParam,
            max_iter=maxIter,
            seed=self.seed,
            biases=biases,
            bias_reg=bias_reg,
        )
        return self._rmse(model.predict(self.users, self.jokes))

    def bias_rmse(self, bias_reg: float) -> float:
        return self._rmse(fit_biases(self.fitting, reg=bias_reg).predict(self.users, self.jokes))

    def _rmse(self, predicted: np.ndarray) -> float:
        predicted = np.clip(predicted, *self.rating_range)
        ok = ~np.isnan(predicted)
        return float(np.sqrt(np.mean((predicted[ok] - self.ratings[ok]) ** 2)))


def grid_scores(validation: Validation, grid: dict, *, bias_reg: float) -> list[dict]:
    """Validation RMSE of every point of ``grid`` (names as in ``tune.grid``)."""
    names = ("biases", "maxIter", "rank", "regParam")
    points = []
    for values in itertools.product(*(grid[name] for name in names)):
        params = dict(zip(names, values))
        points.append({"params": params, "validation_rmse": validation.rmse(**params, bias_reg=bias_reg)})
    return points


def best(points: list[dict]) -> dict:
    return min(points, key=lambda point: point["validation_rmse"])


def validation_of(users, jokes, ratings, cfg: JesterConfig, rating_range) -> Validation:
    """The jobs' split of these ratings (``split``, then ``tune.train_ratio``), as the tuning sees it."""
    return Validation(
        users,
        jokes,
        ratings,
        test_fraction=cfg.split.test_fraction,
        split_seed=cfg.split.seed,
        train_ratio=cfg.tune.train_ratio,
        rating_range=tuple(rating_range),
        seed=cfg.als.seed,
    )


def study(users, jokes, ratings, cfg: JesterConfig) -> dict:
    """Every figure of the choice, on one table's validation ratings."""
    bias_reg = cfg.als.bias_reg
    validation = validation_of(users, jokes, ratings, cfg, cfg.input.rating_range)
    grid = cfg.tune.grid.as_dict()
    grid.setdefault("biases", [cfg.als.biases])
    by_iterations = {}
    for iterations in ITERATIONS:
        points = grid_scores(validation, {**grid, "maxIter": [iterations]}, bias_reg=bias_reg)
        by_iterations[str(iterations)] = {"points": points, "best": best(points)["params"]}
    wide = grid_scores(
        validation,
        {"biases": [False, True], "maxIter": [20], "rank": list(WIDE_RANKS), "regParam": list(WIDE_REG_PARAMS)},
        bias_reg=bias_reg,
    )
    chosen = by_iterations[str(grid["maxIter"][0])]["best"]
    refit = {str(n): validation.rmse(**{**chosen, "maxIter": n}, bias_reg=bias_reg) for n in REFIT_ITERATIONS}
    plain_rank10 = validation.rmse(rank=10, regParam=grid["regParam"][0], maxIter=20, biases=False, bias_reg=bias_reg)
    return {
        "fitting_ratings": validation.fitting.nnz,
        "validation_ratings": int(validation.ratings.size),
        "grid": grid,
        "by_iterations": by_iterations,
        "chosen": chosen,
        "refit": refit,
        "wide": {"points": wide, "best": best(wide)},
        "references": {"bias": validation.bias_rmse(bias_reg), "plain_rank10": plain_rank10},
    }


def five_point(users, jokes, ratings, cfg: JesterConfig) -> dict:
    """The default grid on the table mapped onto whole stars 1-5 (``round(3 + r / 5)``), with regParam scaled to
    the scale and as given, against the bias baseline."""
    stars = np.clip(np.round(3.0 + np.asarray(ratings) / 5.0), *FIVE_POINT)
    validation = validation_of(users, jokes, stars, cfg, FIVE_POINT)
    grid = {**cfg.tune.grid.as_dict(), "maxIter": [10]}
    grid.setdefault("biases", [cfg.als.biases])
    bias_reg = cfg.als.bias_reg
    factor = reg_param_factor(FIVE_POINT, True)
    scaled = grid_scores(validation, scaled_grid(grid, factor), bias_reg=bias_reg)
    given = grid_scores(validation, grid, bias_reg=bias_reg)
    return {
        "factor": factor,
        "scaled": {"points": scaled, "best": best(scaled)},
        "given": {"points": given, "best": best(given)},
        "bias": validation.bias_rmse(bias_reg),
    }


def render(result: dict) -> str:
    table, five = result["table"], result["five_point"]
    grid = table["grid"]
    lines = [
        "# How the default grid was chosen",
        "",
        f"Written by `python -m jester_als.defaults` (`make defaults-docs`) on {result['source']}, "
        f"{result['finished']}, in {result['seconds']:.0f} s. Validation RMSE only: the test ratings are held out "
        f"as the jobs hold them out and never scored here. {table['fitting_ratings']:,} fitting and "
        f"{table['validation_ratings']:,} validation ratings; the NumPy engine (Spark's objective).",
        "",
        *(
            [
                "## The generated table against the real ratings",
                "",
                render_statistics(result["generated_statistics"]),
                "",
            ]
            if result.get("generated_statistics")
            else []
        ),
        "## The default grid at several tuning iteration counts",
        "",
        "| maxIter | best point | its validation RMSE |",
        "|---|---|---|",
    ]
    for iterations, found in table["by_iterations"].items():
        score = best(found["points"])["validation_rmse"]
        lines.append(f"| {iterations} | {_params(found['best'])} | {score:.4f} |")
    lines += [
        "",
        f"Grid: {json.dumps(grid)}. Chosen at the grid's own maxIter: {_params(table['chosen'])}.",
        "",
        "## The final refit's iterations for the chosen point",
        "",
        "| maxIter | validation RMSE |",
        "|---|---|",
    ]
    lines += [f"| {n} | {score:.4f} |" for n, score in table["refit"].items()]
    wide_best = table["wide"]["best"]
    lines += [
        "",
        "## A wider grid (20 iterations)",
        "",
        f"Ranks {list(WIDE_RANKS)} x regParam {list(WIDE_REG_PARAMS)} x plain and biased: best "
        f"{_params(wide_best['params'])} at {wide_best['validation_rmse']:.4f}.",
        "",
        "| point | validation RMSE |",
        "|---|---|",
    ]
    for point in sorted(table["wide"]["points"], key=lambda p: p["validation_rmse"])[:10]:
        lines.append(f"| {_params(point['params'])} | {point['validation_rmse']:.4f} |")
    lines += [
        "",
        f"References on the same validation ratings: bias baseline {table['references']['bias']:.4f}, "
        f"plain ALS rank 10 (20 iterations) {table['references']['plain_rank10']:.4f}.",
        "",
        "## The same grid on a 1-5 scale",
        "",
        f"The table's ratings as whole stars (round(3 + r / 5), clipped to 1-5); regParam scaled by "
        f"{five['factor']:g} against as given.",
        "",
        "| regParam | best point | validation RMSE |",
        "|---|---|---|",
        *(
            f"| {label} | {_params(five[key]['best']['params'])} | {five[key]['best']['validation_rmse']:.4f} |"
            for key, label in (("scaled", "scaled"), ("given", "as given"))
        ),
        "",
        f"Bias baseline on the same ratings: {five['bias']:.4f}.",
        "",
    ]
    return "\n".join(lines)


STATISTIC_LABELS = {
    "ratings_per_user_mean": "ratings per user, mean",
    "ratings_per_user_min": "ratings per user, min",
    "ratings_per_user_percentiles": "ratings per user, 5/25/50/75/95th percentile",
    "share_rated_all": "share of users who rated every joke",
    "rating_mean": "rating mean",
    "rating_std": "rating std",
    "zero_share": "share of exact 0.00",
    "bin_shares": "share in [-10,-6), [-6,-2), [-2,2), [2,6), [6,10]",
    "joke_mean_std": "std of the jokes' means",
    "user_mean_std": "std of the users' means",
    "universal_jokes": "jokes rated by more than 98% of users",
    "energy_shares": "energy of the first 10 singular values (full raters, means removed)",
}


def render_statistics(stats: dict) -> str:
    """The generated table's statistics beside the real sample's (``REAL_JESTER``)."""

    def shown(value) -> str:
        if isinstance(value, list):
            return ", ".join(str(v) if isinstance(v, int) else f"{v:.3g}" for v in value)
        return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"

    rows = [f"| {label} | {shown(stats[key])} | {shown(REAL_JESTER[key])} |" for key, label in STATISTIC_LABELS.items()]
    return "\n".join(["| statistic | generated | real Jester (5,000-user sample) |", "|---|---|---|", *rows])


def _params(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jester_als.defaults", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--conf", default=None, help="config whose grid, split and seeds are studied (default: the built-in defaults)"
    )
    parser.add_argument(
        "--ratings",
        default=None,
        help="a prepare job's ratings/ (Parquet); default: generate the config's table in memory",
    )
    parser.add_argument("--out", default="output/defaults", help="directory for defaults.json and defaults.md")
    args = parser.parse_args(argv)
    cfg = load_config(args.conf)
    started = time.perf_counter()
    if args.ratings:
        import pyarrow.parquet as pq

        table = pq.read_table(args.ratings, columns=["user", "joke", "rating"])
        users, jokes, ratings = (table[name].to_numpy() for name in ("user", "joke", "rating"))
        source = f"the ratings in {args.ratings}"
        generated = None
    else:
        params = GeneratorParams.from_config(cfg.generate)
        wide = np.vstack([chunk.ratings for chunk in generate_chunks(params)])
        rows, columns = np.nonzero(~np.isnan(wide))
        users, jokes, ratings = rows + 1, columns + 1, wide[rows, columns]
        source = f"the generated table ({params.users:,} users x {params.jokes} jokes, seed {params.seed})"
        generated = table_statistics(wide)
    result = {
        "source": source,
        "generated_statistics": generated,
        "table": study(users, jokes, ratings, cfg),
        "five_point": five_point(users, jokes, ratings, cfg),
    }

    result.update(finished=now_iso(), seconds=time.perf_counter() - started)
    os.makedirs(args.out, exist_ok=True)
    write_text_atomic(os.path.join(args.out, "defaults.json"), json.dumps(result, indent=2) + "\n")
    write_text_atomic(os.path.join(args.out, "defaults.md"), render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
