"""Fold-in: recommendations for users the model was not fitted on, from their ratings alone, without a refit.

A new user's factors are what ALS itself computes for a user with the jokes fixed: the regularized least squares
``(Y_u^T Y_u + regParam n_u I) x_u = Y_u^T r_u`` over the jokes the user rated (Spark's ALS-WR objective). For the
biased model the user's offset comes first, as the last pass of the offsets' fit computes it with the jokes'
offsets fixed, ``b_u = sum(r - mu - b_j) / (bias_reg + n_u)``, and the factors are solved on ``r - mu - b_u - b_j``.
A user who was in the training data, folded in with the same ratings, gets the factors (and offset) the fit gave
it: each ALS iteration ends with exactly this user half-step. Spark's models and the NumPy engine's are both read
into :class:`FoldInModel` (the jokes' side only, a few floats per joke); the solve is the NumPy engine's
(``numpy_als.solve_users_given_jokes``), run on the driver (:func:`fold_in`) or inside Spark tasks over the new
users' ratings grouped by user (:func:`fold_in_spark`: ``mapInPandas``, which Spark Connect runs too, and no
collect of the ratings).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from jester_als.numpy_als import NumpyALSModel, RatingMatrix, positions, solve_users_given_jokes

PARAMS_FILE = "jester_als_params.json"  # beside a saved model: what fold-in needs that the model does not keep


@dataclass
class FoldInModel:
    """The jokes' side of a fitted model: what fold-in needs, for any model kind."""

    joke_ids: np.ndarray  # sorted
    joke_factors: np.ndarray  # (jokes, rank) float64, in joke_ids order
    reg_param: float
    mean: float | None = None  # the biased model's mu, joke offsets and their regularization
    joke_bias: np.ndarray | None = None
    bias_reg: float | None = None

    @property
    def biased(self) -> bool:
        return self.joke_bias is not None

    @property
    def rank(self) -> int:
        return self.joke_factors.shape[1]


def save_params(path: str, params: dict, bias_reg: float | None) -> None:
    """Record the params a model was fitted with beside it (Spark's ``ALSModel`` keeps its rank, not its
    regParam, which fold-in must use)."""
    keep = {k: params[k] for k in ("rank", "regParam", "maxIter") if k in params}
    keep.update(biases=bool(params.get("biases")), bias_reg=bias_reg if params.get("biases") else None)
    with open(os.path.join(path, PARAMS_FILE), "w", encoding="utf-8") as handle:
        json.dump(keep, handle, indent=2)


def load_params(path: str) -> dict | None:
    file = os.path.join(path, PARAMS_FILE)
    if not os.path.exists(file):
        return None
    with open(file, encoding="utf-8") as handle:
        return json.load(handle)


def from_numpy_model(model: NumpyALSModel, reg_param: float) -> FoldInModel:
    biases = model.biases
    return FoldInModel(
        np.asarray(model.joke_ids),
        np.asarray(model.joke_factors, dtype=np.float64),
        reg_param,
        None if biases is None else biases.mean,
        None if biases is None else biases.joke,
        None if biases is None else biases.reg,
    )


def spark_factors(frame) -> tuple[np.ndarray, np.ndarray]:
    """(ids, factors) of a Spark factor table (``id``, ``features``) read to the driver through Arrow, sorted
    by id (as :func:`~jester_als.numpy_als.positions` needs)."""
    table = frame.toArrow()
    ids = table.column("id").to_numpy()
    order = np.argsort(ids, kind="stable")
    factors = np.array(table.column("features").to_pylist(), dtype=np.float64).reshape(len(ids), -1)
    return ids[order], factors[order]


def spark_offsets(frame, key: str, column: str, ids: np.ndarray) -> np.ndarray:
    """A Spark offsets table (``key``, ``column``) as an array aligned with the sorted ``ids`` (0 where an id has
    none)."""
    table = frame.toArrow()
    out = np.zeros(len(ids))
    where, known = positions(ids, table.column(key).to_numpy())
    out[where[known]] = table.column(column).to_numpy()[known]
    return out


def from_spark_model(model, reg_param: float) -> FoldInModel:
    """A Spark ``ALSModel`` or :class:`~jester_als.biased.BiasedALSModel`: its item factors (and joke offsets)
    read to the driver through Arrow (jokes x rank floats)."""
    joke_ids, factors = spark_factors(model.itemFactors)
    biases = getattr(model, "biases", None)
    if biases is None:
        return FoldInModel(joke_ids, factors, reg_param)
    joke_bias = spark_offsets(biases.joke, "joke", "joke_bias", joke_ids)
    return FoldInModel(joke_ids, factors, reg_param, biases.mean, joke_bias, biases.reg)


def _matrix(model: FoldInModel, users: np.ndarray, jokes: np.ndarray, ratings: np.ndarray) -> RatingMatrix:
    """The ratings user by user, jokes as positions in the model's jokes (every joke must be the model's)."""
    order = np.lexsort((jokes, users))
    users, jokes, ratings = users[order], jokes[order], ratings[order]
    user_ids, starts = np.unique(users, return_index=True)
    indptr = np.append(starts, users.size).astype(np.int64)
    return RatingMatrix(
        indptr,
        np.searchsorted(model.joke_ids, jokes).astype(np.int32),
        np.asarray(ratings, dtype=np.float32),
        user_ids,
        model.joke_ids,
    )


@dataclass
class FoldedUsers:
    user_ids: np.ndarray
    factors: np.ndarray  # (users, rank)
    offsets: np.ndarray | None  # mu + b_u of each user (biased model), else None
    rated: RatingMatrix  # the ratings they were folded in from


def fold_in(model: FoldInModel, users: np.ndarray, jokes: np.ndarray, ratings: np.ndarray) -> FoldedUsers:
    """Factors (and ``mu + b_u``) of every user in ``users`` from its ratings of the model's jokes."""
    data = _matrix(model, np.asarray(users), np.asarray(jokes), np.asarray(ratings, dtype=np.float64))
    offsets = None
    if model.biased:
        owner = data.users
        values = data.ratings.astype(np.float64) - model.mean - model.joke_bias[data.jokes]
        user_bias = np.bincount(owner, values, len(data.user_ids)) / (model.bias_reg + data.user_counts)
        offsets = model.mean + user_bias
        data = data.with_ratings(values - user_bias[owner])
    factors = solve_users_given_jokes(data, model.joke_factors, model.reg_param)
    return FoldedUsers(data.user_ids, factors, offsets, data)


def scores(model: FoldInModel, folded: FoldedUsers, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Predicted ratings of users ``[start, stop)`` of ``folded`` for every joke of the model (unclipped)."""
    predicted = folded.factors[start:stop] @ model.joke_factors.T
    if model.biased:
        predicted += folded.offsets[start:stop, None] + model.joke_bias[None, :]
    return predicted


def predict(model: FoldInModel, folded: FoldedUsers, users: np.ndarray, jokes: np.ndarray) -> np.ndarray:
    """Predictions for (user, joke) pairs of folded users; NaN for a user or joke the fold-in does not know."""
    u, u_known = positions(folded.user_ids, users)
    j, j_known = positions(model.joke_ids, jokes)
    ok = u_known & j_known
    out = np.full(len(users), np.nan)
    out[ok] = np.einsum("ij,ij->i", folded.factors[u[ok]], model.joke_factors[j[ok]])
    if model.biased:
        out[ok] += folded.offsets[u[ok]] + model.joke_bias[j[ok]]
    return out


def top_n(model: FoldInModel, folded: FoldedUsers, n: int, rating_range=None, block: int = 100_000) -> dict:
    """Each folded user's ``n`` best jokes among those it did not rate: arrays ``user``, ``rank``, ``joke``,
    ``score`` (clipped to ``rating_range``), ranked by the raw score, ties by joke id."""
    n = min(n, len(model.joke_ids))
    parts = {"user": [], "rank": [], "joke": [], "score": []}
    rated = folded.rated
    for start in range(0, len(folded.user_ids), block):
        stop = min(start + block, len(folded.user_ids))
        predicted = scores(model, folded, start, stop)
        lo, hi = rated.indptr[start], rated.indptr[stop]
        rows = np.repeat(np.arange(stop - start), np.diff(rated.indptr[start : stop + 1]))
        predicted[rows, rated.jokes[lo:hi]] = -np.inf  # never a joke the user rated
        best = np.argsort(-predicted, axis=1, kind="stable")[:, :n]
        best_scores = np.take_along_axis(predicted, best, axis=1)
        keep = np.isfinite(best_scores)
        parts["user"].append(np.repeat(folded.user_ids[start:stop], n).reshape(-1, n)[keep])
        parts["rank"].append(np.broadcast_to(np.arange(1, n + 1), best.shape)[keep])
        parts["joke"].append(model.joke_ids[best][keep])
        parts["score"].append(best_scores[keep])
    out = {name: np.concatenate(values) if values else np.array([]) for name, values in parts.items()}
    if rating_range is not None:
        out["score"] = np.clip(out["score"], rating_range[0], rating_range[1])
    return out


FOLDED_SCHEMA = (
    "user int, offset double, features array<double>, "
    "recommendations array<struct<rank: int, joke: int, score: double>>"
)


@dataclass
class SparkFoldIn:
    """The new users folded in inside Spark tasks, computed once and persisted: ``factors`` (user, offset,
    features) and ``recommendations`` (user, rank, joke, score) read it; :meth:`release` drops it."""

    folded: object  # DataFrame

    @property
    def factors(self):
        return self.folded.select("user", "offset", "features")

    @property
    def recommendations(self):
        from pyspark.sql import functions as F

        return self.folded.select("user", F.explode("recommendations").alias("r")).select(
            "user", "r.rank", "r.joke", "r.score"
        )

    def release(self) -> None:
        from jester_als.session import try_unpersist  # not at the top: the MLflow model ships without it

        try_unpersist(self.folded)


def fold_in_spark(model: FoldInModel, ratings, top: int, rating_range) -> SparkFoldIn:
    """Fold-in over a DataFrame of new users' ratings (user, joke, rating), inside Spark tasks: the ratings are
    gathered per user (one row each), and every Arrow batch of users is folded in and ranked at once by
    :func:`fold_in` and :func:`top_n`, in one pass (``mapInArrow``: arrays in, arrays out) whose result is
    persisted for the two outputs. A user's ``offset`` is ``mu + b_u`` (null for the plain model)."""
    import pyarrow as pa
    from pyspark.sql import functions as F

    from jester_als.session import try_persist  # not at the top: the MLflow model ships without it

    per_user = ratings.groupBy("user").agg(
        F.collect_list("joke").alias("jokes"), F.collect_list("rating").alias("ratings")
    )

    def folded(batches):
        for batch in batches:
            counts = batch.column("jokes").value_lengths().to_numpy(zero_copy_only=False)
            users = np.repeat(batch.column("user").to_numpy(zero_copy_only=False), counts)
            jokes = batch.column("jokes").flatten().to_numpy(zero_copy_only=False)
            values = batch.column("ratings").flatten().to_numpy(zero_copy_only=False)
            result = fold_in(model, users, jokes, values)
            best = top_n(model, result, top, rating_range)
            n, rank = result.factors.shape
            bounds = np.searchsorted(best["user"], result.user_ids)
            recommendations = pa.ListArray.from_arrays(
                pa.array(np.append(bounds, len(best["user"])).astype(np.int32)),
                pa.StructArray.from_arrays(
                    [
                        pa.array(best["rank"].astype(np.int32)),
                        pa.array(best["joke"].astype(np.int32)),
                        pa.array(best["score"].astype(np.float64)),
                    ],
                    names=["rank", "joke", "score"],
                ),
            )
            features = pa.ListArray.from_arrays(
                pa.array(np.arange(0, n * rank + 1, rank, dtype=np.int32)), pa.array(result.factors.reshape(-1))
            )
            offsets = pa.array(result.offsets if result.offsets is not None else [None] * n, pa.float64())
            yield pa.RecordBatch.from_arrays(
                [pa.array(result.user_ids.astype(np.int32)), offsets, features, recommendations],
                names=["user", "offset", "features", "recommendations"],
            )

    kept = try_persist(per_user.mapInArrow(folded, FOLDED_SCHEMA), "the folded-in users")
    return SparkFoldIn(kept)
