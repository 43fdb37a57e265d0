"""Biased ALS on Spark: ``r_uj ~ mu + b_u + b_j + x_u . y_j`` (Koren, Bell and Volinsky, 2009).

Spark ML's ALS has no bias terms, so the model is fitted in two stages: regularized user and joke offsets by
alternating DataFrame aggregations (the same closed-form passes as ``numpy_als.fit_biases``, so both engines
fit the same model), then Spark's ALS on the residuals ``r_uj - mu - b_u - b_j``. Everything stays in
DataFrames (no collect beyond the global mean, no JVM access), so it runs in classic and Connect mode and at
cluster scale. The offsets are fitted on the ratings the fit is given and nothing else: inside tuning on each
fitting part, for the final model on the training ratings.

:class:`BiasedALSModel` answers what the jobs ask of an ``ALSModel`` (``transform``,
``recommendForAllUsers``, ``userFactors``, ``itemFactors``) with the offsets added back, and saves and loads
itself as a directory (``als/``, ``user_bias/``, ``joke_bias/``, ``bias_mean/``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jester_als.numpy_als import BIAS_PASSES
from jester_als.session import cluster_cores, materialize, try_persist, try_unpersist

log = logging.getLogger(__name__)


# The user offsets are joined to every rating. Spark estimates the size of a checkpointed DataFrame from what
# it was computed from, far above its rows (a few hundred KB of offsets is planned as tens of MB), so it shuffles
# all the ratings for a join a broadcast would do; up to this many users (16 bytes each) the join is broadcast.
BROADCAST_USERS = 1_000_000


def joinable_users(user_bias: DataFrame, small: bool) -> DataFrame:
    """The user offsets, marked for a broadcast join where they are ``small`` (:data:`BROADCAST_USERS`)."""
    return F.broadcast(user_bias) if small else user_bias


@dataclass
class SparkBiases:
    """The global mean and the offsets as DataFrames: ``user`` (user, user_bias), ``joke`` (joke, joke_bias)."""

    mean: float
    user: DataFrame
    joke: DataFrame
    reg: float
    small_user: bool = False  # few enough users to send their offsets to every task (BROADCAST_USERS)

    def users(self) -> DataFrame:
        """The user offsets, ready to join (:func:`joinable_users`)."""
        return joinable_users(self.user, self.small_user)

    def release(self) -> None:
        """Drop the offsets' cached blocks (checkpointed or persisted)."""
        try_unpersist(self.user)
        try_unpersist(self.joke)


def fit_biases(train: DataFrame, *, reg: float, passes: int = BIAS_PASSES) -> SparkBiases:
    """Regularized offsets of ``train``'s ratings, jokes first in each pass:
    ``b_j = sum(r - mu - b_u) / (reg + n_j)``, then ``b_u = sum(r - mu - b_j) / (reg + n_u)``.

    Each pass's offsets are computed and cut from their lineage before the next pass reads them
    (:func:`materialize`), so plans stay one pass deep; the centred ratings, read by every pass, are persisted.
    """
    mean = train.agg(F.avg("rating")).first()[0]
    if mean is None:
        raise ValueError("no ratings to fit biases on")
    centred = try_persist(
        train.select("user", "joke", (F.col("rating") - F.lit(mean)).alias("r")), "the centred ratings"
    )
    shrunk = F.sum("r") / (F.lit(float(reg)) + F.count(F.lit(1)))
    user_bias = None
    joke_bias = None
    small = None  # the same users every pass: counted once, after the first
    try:
        for _ in range(passes):
            residual = (
                centred
                if user_bias is None
                else (
                    centred.join(joinable_users(user_bias, small), on="user").select(
                        "joke", (F.col("r") - F.col("user_bias")).alias("r")
                    )
                )
            )
            joke_bias = materialize(residual.groupBy("joke").agg(shrunk.alias("joke_bias")), "the joke offsets")
            user_bias = materialize(
                centred.join(F.broadcast(joke_bias), on="joke")
                .select("user", (F.col("r") - F.col("joke_bias")).alias("r"))
                .groupBy("user")
                .agg(shrunk.alias("user_bias")),
                "the user offsets",
            )
            if small is None:
                small = user_bias.count() <= BROADCAST_USERS
    finally:
        try_unpersist(centred)
    return SparkBiases(float(mean), user_bias, joke_bias, float(reg), bool(small))


def with_offsets(df: DataFrame, biases: SparkBiases, column: str = "prediction") -> DataFrame:
    """``df`` with ``mu + b_u + b_j`` added to ``column`` (an unknown user or joke adds no offset), columns in
    their original order."""
    joined = df.join(biases.users(), on="user", how="left").join(F.broadcast(biases.joke), on="joke", how="left")
    total = F.col(column).cast("double") + offset_sum(biases)
    return joined.select(*[total.alias(c) if c == column else F.col(c) for c in df.columns])


def offset_sum(biases: SparkBiases) -> F.Column:
    """``mu + b_u + b_j`` over joined ``user_bias`` and ``joke_bias`` columns (a missing offset adds 0)."""
    return F.lit(biases.mean) + F.coalesce(F.col("user_bias"), F.lit(0.0)) + F.coalesce(F.col("joke_bias"), F.lit(0.0))


class BiasedALSModel:
    """An ``ALSModel`` fitted on residuals plus the offsets it was fitted with."""

    META = "bias_mean"

    def __init__(self, als_model: ALSModel, biases: SparkBiases):
        self.als_model = als_model
        self.biases = biases

    @property
    def userFactors(self) -> DataFrame:  # noqa: N802 - ALSModel's names, so the jobs take either model
        return self.als_model.userFactors

    @property
    def itemFactors(self) -> DataFrame:  # noqa: N802
        return self.als_model.itemFactors

    @property
    def rank(self) -> int:
        return self.als_model.rank

    def transform(self, df: DataFrame) -> DataFrame:
        """``df`` with ``prediction = mu + b_u + b_j + x_u . y_j``; rows of users or jokes unseen in training are
        dropped, as the plain model's ``coldStartStrategy='drop'`` does."""
        return with_offsets(self.als_model.transform(df), self.biases)

    def all_scores(self) -> DataFrame:
        """``user``, ``joke``, ``score = mu + b_u + b_j + x_u . y_j`` for every user and joke of the model.

        The joke offset changes each user's order, so Spark's factor-only top-k cannot be reused: every user
        is scored against every joke (the joke factors broadcast, one dot product per pair), which is what
        ``recommendForAllUsers`` computes too, in SQL instead of BLAS: fine for catalogues of hundreds or a few
        thousand items, slow for millions of users x millions of items. The users are spread over the
        session's cores first: a few MB of user factors would otherwise be one partition (adaptive execution
        coalesces small shuffles), and one task would score every pair (a 7.2 s task of the default run's
        recommendations, on one of two cores).
        """
        users = (
            self.als_model.userFactors.withColumnRenamed("id", "user")
            .withColumnRenamed("features", "uf")
            .join(self.biases.user, on="user", how="left")
        )
        spark = self.biases.user.sparkSession
        shuffle = spark.conf.get("spark.sql.shuffle.partitions", None) or ""
        # Databricks also accepts "auto" there (auto-optimized shuffle): then the core count alone decides.
        partitions = cluster_cores(spark) or (int(shuffle) if shuffle.isdigit() else None)
        if partitions:
            users = users.repartition(partitions)
        jokes = (
            self.als_model.itemFactors.withColumnRenamed("id", "joke")
            .withColumnRenamed("features", "jf")
            .join(self.biases.joke, on="joke", how="left")
        )
        # The dot product spelled out over the rank's positions: Spark generates code for it, where zip_with +
        # aggregate runs interpreted lambdas per row.
        dot = sum(F.col("uf")[i].cast("double") * F.col("jf")[i] for i in range(self.rank))
        score = dot + offset_sum(self.biases)
        return users.crossJoin(F.broadcast(jokes)).select("user", "joke", score.alias("score"))

    def recommendForAllUsers(self, k: int) -> DataFrame:  # noqa: N802
        """Top ``k`` jokes per user by the full score (:meth:`all_scores`), in
        ``ALSModel.recommendForAllUsers``' shape (``user``, ``recommendations``: array of (joke, rating))."""
        return (
            top_per_user(self.all_scores(), k)
            .groupBy("user")
            .agg(
                F.transform(
                    F.array_sort(F.collect_list(F.struct("rank", "joke", "score"))),
                    lambda s: F.struct(s["joke"].alias("joke"), s["score"].alias("rating")),
                ).alias("recommendations")
            )
        )

    def save(self, path: str) -> None:
        """Write the model under the directory ``path`` (every part through Spark's writers)."""
        self.als_model.write().overwrite().save(os.path.join(path, "als"))
        self.biases.user.write.mode("overwrite").parquet(os.path.join(path, "user_bias"))
        self.biases.joke.write.mode("overwrite").parquet(os.path.join(path, "joke_bias"))
        spark = self.biases.user.sparkSession
        spark.createDataFrame([(self.biases.mean, self.biases.reg)], "mean double, reg double").coalesce(1).write.mode(
            "overwrite"
        ).parquet(os.path.join(path, self.META))

    @classmethod
    def saved_at(cls, path: str) -> bool:
        return os.path.exists(os.path.join(path, cls.META))

    @classmethod
    def load(cls, spark: SparkSession, path: str) -> BiasedALSModel:
        meta = spark.read.parquet(os.path.join(path, cls.META)).first()
        biases = SparkBiases(
            float(meta["mean"]),
            spark.read.parquet(os.path.join(path, "user_bias")),
            spark.read.parquet(os.path.join(path, "joke_bias")),
            float(meta["reg"]),
        )
        return cls(ALSModel.load(os.path.join(path, "als")), biases)


def top_per_user(scores: DataFrame, n: int) -> DataFrame:
    """``user``, ``rank`` (1 = best), ``joke``, ``score``: each user's ``n`` highest ``score`` rows, ties
    broken by joke id."""
    order = Window.partitionBy("user").orderBy(F.col("score").desc(), F.col("joke"))
    return (
        scores.withColumn("rank", F.row_number().over(order))
        .where(F.col("rank") <= n)
        .select("user", "rank", "joke", "score")
    )


def residual_ratings(train: DataFrame, biases: SparkBiases) -> DataFrame:
    """``train``'s ratings less ``mu + b_u + b_j``, computed now and cut from their lineage."""
    return materialize(
        with_offsets(train.withColumn("offset", F.lit(0.0)), biases, column="offset").select(
            "user", "joke", (F.col("rating") - F.col("offset")).alias("rating")
        ),
        "the residual ratings",
    )


def fit_biased_als(
    train: DataFrame,
    estimator: ALS,
    *,
    bias_reg: float,
    biases: SparkBiases | None = None,
    residual: DataFrame | None = None,
) -> BiasedALSModel:
    """Offsets on ``train`` (or the ones given, fitted on the same ratings), then ``estimator`` on the
    residuals (or the ones given: :func:`residual_ratings` of the same ratings and offsets, which tuning computes
    once for all of its biased grid points)."""
    biases = biases or fit_biases(train, reg=bias_reg)
    if residual is None:
        residual = residual_ratings(train, biases)
    return BiasedALSModel(estimator.fit(residual), biases)
