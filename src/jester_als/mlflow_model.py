"""Every model kind the jobs save (Spark's ``ALSModel``, the biased model, the NumPy engine's) as one MLflow
``pyfunc`` model that recommends without Spark: the fitted factors (and offsets) and each known user's rated
jokes, exported as NumPy arrays, scored by the fold-in module's top-N (:func:`jester_als.foldin.top_n`, the same
ranking rule as the ``recommend`` job: the raw score, never a joke the user rated, the score clipped to the rating
range).

Input: a DataFrame with an integer ``user`` column; param ``n`` (default the run's ``recommend.top_n``). Output:
``user``, ``rank``, ``joke``, ``score`` rows, n per known user, none for a user the model does not know. The model
ships this package as its code (MLflow's ``code_paths``), so loading it needs numpy, scipy, pandas and
threadpoolctl, never pyspark or a JVM. Logging it needs no Spark ML model writer either, which matters on
Databricks serverless and standard (shared) access mode: there ``mlflow.spark.log_model`` refuses to run unless
its ``dfs_tmpdir`` (or ``MLFLOW_DFS_TMP``) is a Unity Catalog volume path (mlflow/spark/__init__.py,
``_check_databricks_uc_volume_tmpdir_availability``: "UC volume path must be provided to save, log or load
SparkML models in Databricks shared or serverless clusters").
"""

from __future__ import annotations

import os

import numpy as np

from jester_als.foldin import (
    FoldedUsers,
    FoldInModel,
    from_numpy_model,
    from_spark_model,
    spark_factors,
    spark_offsets,
    top_n,
)
from jester_als.numpy_als import NumpyALSModel, RatingMatrix, positions

ARRAYS = "recommender.npz"


def export(
    directory: str,
    *,
    user_ids,
    user_factors,
    user_offsets,
    joke_ids,
    joke_factors,
    joke_bias,
    rated_users,
    rated_jokes,
    rating_range,
    top: int,
) -> str:
    """Write the arrays a :class:`Recommender` loads into ``directory``; returns the arrays' path. ``user_offsets``
    are ``mu + b_u`` per user (None for a plain model), ``joke_bias`` ``b_j`` (None likewise); ``rated_*`` are the
    (user, joke) pairs of every known rating, which are never recommended."""
    order = np.argsort(user_ids, kind="stable")
    user_ids = np.asarray(user_ids)[order]
    joke_order = np.argsort(joke_ids, kind="stable")
    joke_ids = np.asarray(joke_ids)[joke_order]
    arrays = {
        "user_ids": user_ids,
        "user_factors": np.asarray(user_factors, dtype=np.float64)[order],
        "joke_ids": joke_ids,
        "joke_factors": np.asarray(joke_factors, dtype=np.float64)[joke_order],
    }
    if user_offsets is not None:
        arrays["user_offsets"] = np.asarray(user_offsets, dtype=np.float64)[order]
        arrays["joke_bias"] = np.asarray(joke_bias, dtype=np.float64)[joke_order]
    # the rated pairs of known users, user-major: positions into user_ids and joke_ids
    u, user_known = positions(user_ids, np.asarray(rated_users))
    j, joke_known = positions(joke_ids, np.asarray(rated_jokes))
    known = user_known & joke_known
    pairs = np.lexsort((j[known], u[known]))
    arrays["rated_user"] = u[known][pairs].astype(np.int64)
    arrays["rated_joke"] = j[known][pairs].astype(np.int32)
    arrays.update(rating_range=np.asarray(rating_range, dtype=np.float64), top_n=np.asarray(top))
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, ARRAYS)
    np.savez(path, **arrays)
    return path


class Recommender:
    """The exported arrays, ready to recommend (what the pyfunc wrapper holds)."""

    def __init__(self, arrays_path: str):
        with np.load(arrays_path) as data:
            arrays = {name: data[name] for name in data.files}
        self.rating_range, self.top = arrays["rating_range"].tolist(), int(arrays["top_n"])
        self.user_ids = arrays["user_ids"]
        biased = "user_offsets" in arrays
        self.model = FoldInModel(
            arrays["joke_ids"], arrays["joke_factors"], 0.0, 0.0 if biased else None, arrays.get("joke_bias"), None
        )
        self.user_factors, self.user_offsets = arrays["user_factors"], arrays.get("user_offsets")
        counts = np.bincount(arrays["rated_user"], minlength=len(self.user_ids))
        self.indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.rated_jokes = arrays["rated_joke"]

    def recommend(self, users, n: int | None = None) -> dict:
        """Top ``n`` unrated jokes of each known user among ``users`` (arrays user, rank, joke, score)."""
        where, known = positions(self.user_ids, np.unique(np.asarray(users, dtype=self.user_ids.dtype)))
        where = where[known]
        starts, counts = self.indptr[where], np.diff(self.indptr)[where]
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        take = np.arange(indptr[-1]) + np.repeat(starts - indptr[:-1], counts)
        rated = RatingMatrix(
            indptr,
            self.rated_jokes[take],
            np.zeros(len(take), dtype=np.float32),
            self.user_ids[where],
            self.model.joke_ids,
        )
        folded = FoldedUsers(
            self.user_ids[where],
            self.user_factors[where],
            None if self.user_offsets is None else self.user_offsets[where],
            rated,
        )
        return top_n(self.model, folded, self.top if n is None else int(n), self.rating_range)


def export_saved(model_dir: str, ratings_dir: str, directory: str, *, rating_range, top: int, spark=None) -> str:
    """:func:`export` of the model a job saved at ``model_dir`` (any kind), with the rated pairs of the ratings
    ``prepare`` wrote at ``ratings_dir`` (read with Arrow: no Spark needed for them). The jokes' side is what
    fold-in reads of a model (:func:`~jester_als.foldin.from_numpy_model`, :func:`~jester_als.foldin.from_spark_model`);
    the users' side is read the same way."""
    import pyarrow.parquet as pq

    from jester_als.models import load_model_at  # Spark's readers: when exporting, never when serving

    rated = pq.read_table(ratings_dir, columns=["user", "joke"])
    model = load_model_at(model_dir, spark)
    if isinstance(model, NumpyALSModel):
        jokes = from_numpy_model(model, 0.0)
        b = model.biases
        users, user_factors = model.user_ids, model.user_factors
        user_offsets = None if b is None else b.mean + b.user
    else:
        jokes = from_spark_model(model, 0.0)
        users, user_factors = spark_factors(model.userFactors)
        biases = getattr(model, "biases", None)
        user_offsets = None if biases is None else biases.mean + spark_offsets(biases.user, "user", "user_bias", users)
    return export(
        directory,
        user_ids=users,
        user_factors=user_factors,
        user_offsets=user_offsets,
        joke_ids=jokes.joke_ids,
        joke_factors=jokes.joke_factors,
        joke_bias=jokes.joke_bias,
        rated_users=rated.column("user").to_numpy(),
        rated_jokes=rated.column("joke").to_numpy(),
        rating_range=rating_range,
        top=top,
    )


try:
    import mlflow.pyfunc

    class JesterRecommender(mlflow.pyfunc.PythonModel):
        """The MLflow face of :class:`Recommender`."""

        def load_context(self, context):
            self.recommender = Recommender(context.artifacts["recommender"])

        def predict(self, context, model_input, params=None):
            import pandas as pd

            n = (params or {}).get("n")
            out = self.recommender.recommend(model_input["user"].to_numpy(), n)
            return pd.DataFrame(
                {
                    "user": out["user"].astype(np.int32),
                    "rank": out["rank"].astype(np.int32),
                    "joke": out["joke"].astype(np.int32),
                    "score": out["score"].astype(np.float64),
                }
            )
except ImportError:  # MLflow is an optional extra; tracking says so when it is missing
    JesterRecommender = None
