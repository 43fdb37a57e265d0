"""Splitting the ratings, tuning Spark ML ALS with TrainValidationSplit, and held-out evaluation.

The split is over ratings, never over users or ids: each (user, joke) pair goes to test when a seeded hash
of the pair falls below ``test_fraction``. It is therefore a pure function of the data and the seed: the
same in every run, on every partitioning, and in every job that recomputes it (``baseline`` uses exactly
the rows ``tune`` held out). Tuning results are read through public APIs only (``getEstimatorParamMaps``
and ``validationMetrics``), which also work over Spark Connect.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from pyspark.ml.evaluation import RegressionEvaluator
from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.ml.tuning import ParamGridBuilder, TrainValidationSplit
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jester_als.biased import fit_biased_als, fit_biases, residual_ratings
from jester_als.hashsplit import SPLIT_BUCKETS, test_threshold
from jester_als.numpy_als import nmae
from jester_als.session import is_connect, materialize, try_persist, try_unpersist

log = logging.getLogger(__name__)


def is_test_rating(*, test_fraction: float, seed: int):
    """Boolean column: this (user, joke) rating is held out for test (the rule in ``hashsplit``, whose
    ``is_test`` computes the same for NumPy arrays)."""
    bucket = F.pmod(F.xxhash64("user", "joke", F.lit(seed)), F.lit(SPLIT_BUCKETS))
    return bucket < F.lit(test_threshold(test_fraction))


def split_ratings(ratings: DataFrame, *, test_fraction: float, seed: int) -> tuple[DataFrame, DataFrame]:
    """Split ratings into (train, test) by a seeded hash of (user, joke)."""
    is_test = is_test_rating(test_fraction=test_fraction, seed=seed)
    return ratings.where(~is_test), ratings.where(is_test)


def make_als(*, seed: int, blocks: int, checkpoint_interval: int = 10, nonnegative: bool = False) -> ALS:
    """Explicit-feedback ALS on (user, joke, rating). ``coldStartStrategy='drop'`` keeps NaN predictions
    (users or jokes unseen in training) out of every metric."""
    return ALS(
        userCol="user",
        itemCol="joke",
        ratingCol="rating",
        implicitPrefs=False,
        coldStartStrategy="drop",
        seed=seed,
        numUserBlocks=blocks,
        numItemBlocks=blocks,
        checkpointInterval=checkpoint_interval,
        nonnegative=nonnegative,
    )


def checkpoint_only_when_needed(als: ALS, max_iters: list[int]) -> ALS:
    """``als`` for fits of the given ``maxIter`` values: with checkpointInterval -1 (none) when none of them is
    longer than its interval. Spark's explicit ALS checkpoints its item factors at iteration 0 whatever the
    interval (``iter % checkpointInterval == 0`` in ``ALS.train``): a job and a write to the checkpoint
    directory that cut a lineage of no iteration at all, while a fit no longer than the interval never builds
    a longer lineage than the interval allows anyway. Longer fits keep Spark's checkpoints."""
    interval = als.getCheckpointInterval()
    if interval > 0 and max_iters and max(max_iters) <= interval:
        return als.copy({als.checkpointInterval: -1})
    return als


def param_grid(als: ALS, grid: dict) -> list:
    """ParamGridBuilder over every ALS parameter named in the YAML grid, in a stable order (``biases`` is not
    an ALS parameter: :func:`grid_points` adds it)."""
    builder = ParamGridBuilder()
    for name in sorted(grid):
        if name != "biases":
            builder = builder.addGrid(als.getParam(name), list(grid[name]))
    return builder.build()


def grid_points(als: ALS, grid: dict, biases: bool = False) -> list[tuple[bool, dict]]:
    """(biases, ALS param map) for every grid point: the ALS grid once per value of ``grid['biases']``
    (``[biases]`` when the grid does not name it), plain points first."""
    flags = sorted({bool(v) for v in grid.get("biases", [biases])})
    return [(flag, param_map) for flag in flags for param_map in param_grid(als, grid)]


def _plain(value):
    return value.item() if hasattr(value, "item") else value


@dataclass
class TuneResult:
    best_params: dict
    validation: list[dict]  # one per grid point: params, validation RMSE, and (the job's loop) its seconds
    tune_seconds: float
    method: str = "TrainValidationSplit"
    edges: list[dict] = field(default_factory=list)  # grid_edges of the best point
    waves: list[float] = field(default_factory=list)  # seconds of each wave of ``parallelism`` points
    # splitting the folds and fitting the offsets before the first point, and releasing them after the last
    folds_seconds: float | None = None


def point_cost(als: ALS, param_map: dict) -> float:
    """A grid point's relative cost, for ordering the points: ALS's work per iteration grows with the rank
    (a rank x rank system per user and joke, a rank-one update per rating), times the iterations."""
    values = {param.name: value for param, value in param_map.items()}
    rank = values.get("rank", als.getOrDefault("rank"))
    return float(rank) * float(values.get("maxIter", als.getOrDefault("maxIter")))


def tvs_runs_here(spark) -> bool:
    """Whether Spark's TrainValidationSplit can run on this client.

    pyspark 4.0's Connect client fits every grid point on a worker thread (even at parallelism 1) that has no
    active session, and its ML calls assert one (``assert session is not None`` in ``pyspark/ml/util.py``,
    reached from ``TrainValidationSplit._fit``); pyspark 4.1 and later carry the session over.
    """
    import pyspark

    major_minor = tuple(int(part) for part in pyspark.__version__.split(".")[:2])
    return not (is_connect(spark) and major_minor < (4, 1))


def train_validation_split(
    train: DataFrame,
    als: ALS,
    points: list[tuple[bool, dict]],
    evaluator,
    *,
    train_ratio: float,
    seed: int,
    bias_reg: float = 10.0,
    parallelism: int = 1,
    folds_ready: list | None = None,
    timed: dict | None = None,
) -> list[float]:
    """What ``TrainValidationSplit._fit`` does, for grid points that may include the biased model: the same
    seeded ``rand`` column splits ``train`` into a fitting part (< ``train_ratio``) and a validation part,
    each point is fitted on the first and scored on the second, ``parallelism`` points at a time on threads
    that carry the session (as TVS's ``inheritable_thread_target``). The offsets of the biased points are
    fitted once, on the fitting part only. Returns the metric per point, in order. (Spark's TVS also refits
    the best point on all of ``train``; the jobs do that themselves with ``tune.refit_max_iter``.) The time the
    folds and offsets are ready (before the first point starts) is appended to ``folds_ready``, and when each
    point started and finished goes into ``timed`` by its 1-based number."""
    from multiprocessing.pool import ThreadPool

    from pyspark.util import inheritable_thread_target

    rand_col = f"{als.uid}_rand"
    marked = train.select("*", F.rand(seed).alias(rand_col))
    condition = marked[rand_col] >= train_ratio
    validation = try_persist(marked.filter(condition), "the validation part")
    fitting = try_persist(marked.filter(~condition), "the fitting part")
    biases = residual = None
    try:
        if any(flag for flag, _ in points):
            biases = fit_biases(fitting, reg=bias_reg)
            residual = residual_ratings(fitting, biases)
        if folds_ready is not None:
            folds_ready.append(time.perf_counter())

        def score(numbered: tuple[int, tuple[bool, dict]]) -> float:
            number, (flag, param_map) = numbered
            started = time.perf_counter()
            if flag:
                model = fit_biased_als(
                    fitting, als.copy(param_map), bias_reg=bias_reg, biases=biases, residual=residual
                )
                metric = evaluator.evaluate(model.transform(validation))
            else:
                metric = evaluator.evaluate(als.fit(fitting, param_map).transform(validation, param_map))
            log.info(
                "  grid point %d/%d done in %.1f s: %s%s -> validation RMSE %.4f",
                number,
                len(points),
                time.perf_counter() - started,
                "biased " if flag else "",
                {p.name: _plain(v) for p, v in param_map.items()},
                metric,
            )
            if timed is not None:
                timed[number] = (started, time.perf_counter())
            return metric

        numbered = list(enumerate(points, start=1))
        if parallelism <= 1 or len(points) == 1:
            return [score(point) for point in numbered]
        # The costliest points start first and each thread takes the next point when it is free (chunks of
        # one): in grid order, map's default chunks paired the two largest ranks on one thread at the end
        # while the other thread idled.
        ordered = sorted(numbered, key=lambda point: -point_cost(als, point[1][1]))
        pool = ThreadPool(processes=min(parallelism, len(points)))
        try:
            scored = pool.map(inheritable_thread_target(train.sparkSession)(score), ordered, chunksize=1)
        finally:
            pool.close()
        by_number = {number: metric for (number, _), metric in zip(ordered, scored)}
        return [by_number[number] for number, _ in numbered]
    finally:
        if biases is not None:
            biases.release()
            try_unpersist(residual)
        try_unpersist(fitting)
        try_unpersist(validation)


def tune_als(
    train: DataFrame,
    als: ALS,
    grid: dict,
    *,
    train_ratio: float,
    parallelism: int,
    seed: int,
    method: str = "auto",
    biases: bool = False,
    bias_reg: float = 10.0,
) -> TuneResult:
    """Tune over the grid on the training ratings and report every grid point.

    A grid of Spark ALS parameters alone runs Spark's TrainValidationSplit where it runs (``method``
    ``"auto"``). A grid that includes the biased model (``biases: [false, true]`` in the grid, or
    ``biases=True``) cannot: the biased model is fitted by this project's code around ALS, not by one Spark
    estimator, so :func:`train_validation_split` does exactly what TVS does for every point; so does a client
    on which TVS does not run (pyspark 4.0 over Connect). ``"tvs"`` and ``"loop"`` force one of them.
    """
    if "checkpointInterval" not in grid:
        als = checkpoint_only_when_needed(als, list(grid.get("maxIter", [als.getMaxIter()])))
    points = grid_points(als, grid, biases)
    evaluator = RegressionEvaluator(metricName="rmse", labelCol="rating", predictionCol="prediction")
    any_biased = any(flag for flag, _ in points)
    use_tvs = not any_biased and (method == "tvs" or (method == "auto" and tvs_runs_here(train.sparkSession)))
    started = time.perf_counter()
    folds_ready: list[float] = []  # when the job's loop had its folds and offsets ready
    timed: dict[int, tuple[float, float]] = {}  # when each point of the job's loop started and finished
    threads = parallelism
    if use_tvs:
        log.info(
            "TrainValidationSplit: %d grid points, trainRatio %.2f, parallelism %d",
            len(points),
            train_ratio,
            parallelism,
        )
        tvs = TrainValidationSplit(
            estimator=als,
            estimatorParamMaps=[p for _, p in points],
            evaluator=evaluator,
            trainRatio=train_ratio,
            parallelism=parallelism,
            seed=seed,
        )
        tvs_model = tvs.fit(train)
        metrics = list(tvs_model.validationMetrics)
        points = [(False, param_map) for param_map in tvs_model.getEstimatorParamMaps()]
        how = "TrainValidationSplit"
    else:
        import pyspark

        threads = parallelism if tvs_runs_here(train.sparkSession) else 1
        why = (
            "the grid includes the biased model"
            if any_biased
            else f"Spark's TrainValidationSplit does not run over Spark Connect with pyspark {pyspark.__version__}"
        )
        log.info(
            "train/validation split: %d grid points, trainRatio %.2f, %d at a time (the job's own loop: %s)",
            len(points),
            train_ratio,
            threads,
            why,
        )
        metrics = train_validation_split(
            train,
            als,
            points,
            evaluator,
            train_ratio=train_ratio,
            seed=seed,
            bias_reg=bias_reg,
            parallelism=threads,
            folds_ready=folds_ready,
            timed=timed,
        )
        how = "the job's loop (as TrainValidationSplit)"
    finished = time.perf_counter()
    tune_seconds = finished - started
    ends = sorted(end for _, end in timed.values())
    # The folds' cost is building them and releasing them (unpersisting waits on the driver); the grid's part
    # runs from the first point's start to the last point's end, so its waves add up to it.
    folds_seconds = round(folds_ready[0] - started + finished - ends[-1], 2) if folds_ready and ends else None
    validation = []
    for number, ((flag, param_map), rmse) in enumerate(zip(points, metrics), start=1):
        params = {p.name: _plain(v) for p, v in param_map.items()}
        if "biases" in grid or biases:
            params["biases"] = flag
        point = {"params": dict(sorted(params.items())), "validation_rmse": float(rmse)}
        if number in timed:
            point["seconds"] = round(timed[number][1] - timed[number][0], 2)
        validation.append(point)
        if use_tvs:  # the loop logged each point as it finished
            log.info("  %s -> validation RMSE %.4f", params, rmse)
    best = min(validation, key=lambda point: point["validation_rmse"])
    best_params = dict(best["params"])
    # Params not in the grid are the estimator's own; name the ones the contract promises.
    for name in ("rank", "regParam", "maxIter"):
        best_params.setdefault(name, _plain(als.getOrDefault(name)))
    best_params.setdefault("biases", False)
    edges = grid_edges(grid, best_params)
    if edges:
        log.warning("the best grid point is on the grid's edge: %s", describe_edges(edges))
    return TuneResult(
        best_params=best_params,
        validation=validation,
        tune_seconds=tune_seconds,
        method=how,
        edges=edges,
        waves=wave_seconds(folds_ready[0] if folds_ready else started, ends, threads),
        folds_seconds=folds_seconds,
    )


def wave_seconds(started: float, finished: list[float], parallelism: int) -> list[float]:
    """Seconds of each wave of ``parallelism`` grid points (a wave ends when its last point finishes), from the
    points' finishing times in order; empty when they were not recorded (Spark's own TrainValidationSplit)."""
    waves, previous = [], started
    for end in range(parallelism, len(finished) + parallelism, max(parallelism, 1)):
        last = finished[min(end, len(finished)) - 1]
        waves.append(round(last - previous, 2))
        previous = last
    return waves


def fit_als(train: DataFrame, als: ALS, params: dict, *, bias_reg: float = 10.0) -> tuple[ALSModel, float]:
    """Fit the model ``params`` name (ALS params, and ``biases`` for the biased model) on all training ratings;
    returns the model and the fit wall time (the offsets' fit included)."""

    biased = bool(params.get("biases"))
    estimator = als.copy({als.getParam(name): value for name, value in params.items() if name != "biases"})
    if "checkpointInterval" not in params:
        estimator = checkpoint_only_when_needed(estimator, [estimator.getMaxIter()])
    started = time.perf_counter()
    # fit() is eager for ALS (factors are computed and cached), so this times the whole optimisation.
    model = fit_biased_als(train, estimator, bias_reg=bias_reg) if biased else estimator.fit(train)
    return model, time.perf_counter() - started


def regression_metrics(
    predictions: DataFrame, *, label: str = "rating", prediction: str = "prediction", rating_range=None
) -> dict:
    """RMSE and MAE of predictions against held-out ratings, in one pass. With ``rating_range``, ``rmse`` and
    ``mae`` are of the predictions clipped to it, and the same pass adds the raw ones (``raw_rmse``,
    ``raw_mae``) and how many predictions fell outside the scale (``outside``)."""
    raw_error = F.col(prediction) - F.col(label)
    error = raw_error if rating_range is None else clipped(F.col(prediction), rating_range) - F.col(label)
    columns = [
        F.sqrt(F.avg(error * error)).alias("rmse"),
        F.avg(F.abs(error)).alias("mae"),
        F.count(F.lit(1)).alias("rows"),
    ]
    if rating_range is not None:
        low, high = float(rating_range[0]), float(rating_range[1])
        columns += [
            F.sqrt(F.avg(raw_error * raw_error)).alias("raw_rmse"),
            F.avg(F.abs(raw_error)).alias("raw_mae"),
            F.count(F.when((F.col(prediction) < low) | (F.col(prediction) > high), 1)).alias("outside"),
        ]
    row = predictions.agg(*columns).first()
    if not row["rows"]:
        raise ValueError("no predictions to evaluate: every test rating belongs to a user or joke unseen in training")
    result = {"rmse": float(row["rmse"]), "mae": float(row["mae"]), "rows": int(row["rows"])}
    if rating_range is not None:
        result.update(raw_rmse=float(row["raw_rmse"]), raw_mae=float(row["raw_mae"]), outside=int(row["outside"]))
    return result


RANKING_METRICS = (
    ("precisionAtK", "precision_at_k"),
    ("ndcgAtK", "ndcg_at_k"),
    ("recallAtK", "recall_at_k"),
    ("meanAveragePrecisionAtK", "map_at_k"),
)


def ranking_metrics(predictions: DataFrame, *, k: int, threshold: float) -> dict:
    """Precision@k, NDCG@k, recall@k and MAP@k of ranking each user's held-out jokes by ``prediction``.

    Relevant jokes are the user's held-out ratings >= ``threshold``; only held-out jokes are ranked because
    the relevance of a joke the user never rated is unknown. Users with no relevant held-out joke are
    left out (their precision is undefined). Ties in ``prediction`` are broken by joke id. Uses Spark's
    ``RankingEvaluator`` definitions.
    """
    return rankings_metrics(predictions, ["prediction"], k=k, threshold=threshold)["prediction"]


def rankings_metrics(rows: DataFrame, scores: list[str], *, k: int, threshold: float) -> dict[str, dict]:
    """:func:`ranking_metrics` of several orders of the same rows at once (a column of ``rows`` each): one
    shuffle by user gathers each user's rows, every order is a sort of that user's short list (no window
    sort per order), and every metric of every order is averaged in the same aggregation (one job, where
    ``RankingEvaluator`` takes one per metric and order). The metrics are Spark's ``RankingMetrics``
    definitions, spelled in SQL (:func:`ranking_columns`); a test holds them to ``RankingEvaluator``."""

    def in_order(score: str, keep=None):
        # Ascending (-score, joke) is score descending with ties broken by joke id: a window's
        # ORDER BY score DESC, joke, without the window's sort of all rows.
        entry = F.struct((-F.col(score).cast("double")).alias("s"), F.col("joke").cast("double").alias("j"))
        return F.transform(
            F.array_sort(F.collect_list(entry if keep is None else F.when(keep, entry))), lambda e: e["j"]
        )

    per_user = (
        rows.groupBy("user")
        .agg(
            in_order("rating", F.col("rating") >= threshold).alias("relevant_jokes"),
            *[in_order(score).alias(f"ranked{i}") for i, score in enumerate(scores)],
        )
        .where(F.size("relevant_jokes") > 0)
    )
    averages = [F.count(F.lit(1)).alias("users")]
    for i in range(len(scores)):
        columns = ranking_columns(F.col(f"ranked{i}"), F.col("relevant_jokes"), k)
        averages += [F.avg(columns[key]).alias(f"{key}{i}") for _, key in RANKING_METRICS]
    row = per_user.agg(*averages).first()
    users = int(row["users"])
    results = {}
    for i, score in enumerate(scores):
        if users == 0:
            results[score] = {**{key: None for _, key in RANKING_METRICS}, "k": k, "users": 0}
            continue
        results[score] = {
            "k": k,
            "users": users,
            "relevance_threshold": threshold,
            **{key: float(row[f"{key}{i}"]) for _, key in RANKING_METRICS},
        }
    return results


def ranking_columns(ranked: F.Column, relevant: F.Column, k: int) -> dict[str, F.Column]:
    """Precision@k, recall@k, NDCG@k and MAP@k of one ranked list against its relevant set (both arrays of
    distinct ids, the set not empty), as Spark's ``mllib.evaluation.RankingMetrics`` defines them: precision
    divides the hits in the top ``k`` by ``k``, recall by the set's size; NDCG has binary gains and ``1 /
    log(i + 2)`` discounts, normalised by the ideal list of ``min(|set|, k)`` hits; MAP@k sums the precision
    at each hit over the top ``k`` and divides by ``min(|set|, k)``."""

    def total(values: F.Column) -> F.Column:
        return F.aggregate(values, F.lit(0.0), lambda acc, x: acc + x)

    top = F.slice(ranked, 1, k)
    hits = F.transform(top, lambda joke: F.when(F.array_contains(relevant, joke), 1.0).otherwise(0.0))
    found = total(hits)
    discounted = total(F.transform(hits, lambda hit, i: hit / F.log(i + 2.0)))
    ideal_hits = F.least(F.size(relevant), F.lit(k))
    ideal = total(F.transform(F.array_repeat(F.lit(1.0), ideal_hits), lambda one, i: one / F.log(i + 2.0)))
    # the precision at position i + 1 where it is a hit: the hits up to it (a prefix sum), over i + 1
    at_hits = F.transform(hits, lambda hit, i: hit * total(F.slice(hits, 1, i + 1)) / (i + 1.0))
    return {
        "precision_at_k": found / F.lit(float(k)),
        "ndcg_at_k": discounted / ideal,
        "recall_at_k": found / F.size(relevant),
        "map_at_k": total(at_hits) / ideal_hits,
    }


REFERENCES = ("random", "popularity")


def with_references(scored: DataFrame, train: DataFrame, *, seed: int) -> DataFrame:
    """``scored`` (user, joke, rating, ...) with the two reference orders as columns: ``random`` (a seeded hash
    of user and joke: the same order on every run and partitioning) and ``popularity`` (the joke's mean
    training rating, for everyone; a joke without training ratings last)."""
    joke_means = train.groupBy("joke").agg(F.avg("rating").alias("popularity"))
    return (
        scored.join(joke_means, on="joke", how="left")
        .fillna({"popularity": float("-inf")})
        .withColumn("random", F.xxhash64("user", "joke", F.lit(seed)).cast("double"))
    )


def reference_rankings(scored: DataFrame, train: DataFrame, *, k: int, threshold: float, seed: int) -> dict:
    """What ranking the same users' same held-out jokes without a model scores, with the same definitions
    (:func:`with_references`). ``scored`` holds the rows the model scored (user, joke, rating), so the
    references rank exactly the model's rows."""
    rows = with_references(scored.select("user", "joke", "rating"), train, seed=seed)
    return rankings_metrics(rows, list(REFERENCES), k=k, threshold=threshold)


# Ordered parameters of a grid: a best value at the end of the values tried may not be the best there is.
ORDERED_GRID_PARAMS = ("rank", "regParam", "maxIter")

# The scale regParam values are given for when ``tune.scale_reg_param`` is on: Jester's 20 points.
REG_PARAM_SCALE_SPAN = 20.0


def reg_param_factor(rating_range, scale: bool) -> float:
    """What a grid's regParam values are multiplied by for ``rating_range``.

    With the ratings scaled by c, ALS-WR's squared errors grow by c^2 while its penalty grows by c (factors of
    sqrt(c) on each side fit the same model), so the regParam that balances them grows by c: values tuned on
    Jester's 20-point scale are multiplied by (high - low) / 20 on another scale."""
    if not scale:
        return 1.0
    return (float(rating_range[1]) - float(rating_range[0])) / REG_PARAM_SCALE_SPAN


def scaled_grid(grid: dict, factor: float) -> dict:
    """``grid`` with its regParam values multiplied by ``factor`` (rounded to 6 significant digits)."""
    if factor == 1.0 or "regParam" not in grid:
        return grid
    return {**grid, "regParam": [float(f"{v * factor:.6g}") for v in grid["regParam"]]}


def grid_edges(grid: dict, best: dict) -> list[dict]:
    """The ordered parameters whose best value is the smallest or the largest of several the grid tried."""
    edges = []
    for name in ORDERED_GRID_PARAMS:
        tried = sorted(set(grid.get(name, [])))
        if len(tried) < 2 or name not in best:
            continue
        side = "largest" if best[name] == tried[-1] else "smallest" if best[name] == tried[0] else None
        if side:
            edges.append({"param": name, "value": best[name], "edge": side, "tried": tried})
    return edges


def describe_edges(edges: list[dict]) -> str:
    return "; ".join(
        f"{e['param']}={e['value']} is the {e['edge']} value tried ({e['tried']}): the best may lie "
        f"{'above' if e['edge'] == 'largest' else 'below'} it"
        for e in edges
    )


def clipped(column, rating_range) -> F.Column:
    """A prediction column clipped to the rating scale [low, high]."""
    low, high = float(rating_range[0]), float(rating_range[1])
    return F.least(F.greatest(column, F.lit(low)), F.lit(high))


def evaluate_model(model: ALSModel, test: DataFrame, *, k: int, threshold: float, rating_range=None) -> dict:
    """Score the held-out ratings (see :func:`evaluate_predictions`)."""
    return evaluate_predictions(held_out_predictions(model, test), k=k, threshold=threshold, rating_range=rating_range)


def held_out_predictions(model, test: DataFrame) -> DataFrame:
    """The model's predictions for the held-out ratings, computed once (the metrics and the references all read
    them; the biased model's are joins on top of ALS's). ``coldStartStrategy=drop`` removes unseen users and
    jokes."""
    return materialize(model.transform(test), "the test predictions")


def evaluate_predictions(
    predictions: DataFrame,
    *,
    k: int,
    threshold: float,
    rating_range=None,
    references: tuple[DataFrame, int] | None = None,
) -> dict:
    """RMSE and MAE of the predictions clipped to ``rating_range`` (and of the raw ones, to show what clipping
    changed), precision@k, NDCG@k, recall@k, MAP@k, and how many test rows were scored. With ``references``
    (the training ratings and a seed), the reference rankings of the same rows too, under ``"references"``,
    ranked in the same pass as the model's (:func:`reference_rankings`)."""
    scores = regression_metrics(predictions, rating_range=rating_range)
    result = {"test_rmse": scores["rmse"], "test_mae": scores["mae"], "test_rows_scored": scores["rows"]}
    if rating_range is not None:
        result["test_nmae"] = nmae(scores["mae"], rating_range)
    if rating_range is not None:
        result["clipping"] = {
            "range": [float(rating_range[0]), float(rating_range[1])],
            "predictions_outside": scores["outside"],
            "test_rmse_unclipped": scores["raw_rmse"],
            "test_mae_unclipped": scores["raw_mae"],
        }
    if references is None:
        ranking = ranking_metrics(predictions, k=k, threshold=threshold)
    else:
        train, seed = references
        rows = with_references(predictions.select("user", "joke", "rating", "prediction"), train, seed=seed)
        rankings = rankings_metrics(rows, ["prediction", *REFERENCES], k=k, threshold=threshold)
        ranking = rankings.pop("prediction")
        result["references"] = rankings
    return {
        **result,
        **{f"{key.removesuffix('_k')}_{k}": ranking[key] for _, key in RANKING_METRICS},
        "ranking": ranking,
    }
