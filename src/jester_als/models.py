"""Every model kind the jobs fit, in one place: Spark's ``ALSModel``, the biased model
(:class:`~jester_als.biased.BiasedALSModel`) and the NumPy engine's model a fallback run saves in their place.
Saving and loading them, and :class:`Recommender`, what a job asks of a model whatever its kind (the jobs never
ask which kind they hold: :func:`recommender` does, once). ``jester_als.load_model`` is :func:`load_model`
re-exported."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from pyspark.ml.recommendation import ALSModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jester_als.biased import BiasedALSModel
from jester_als.driver import recommend_numpy
from jester_als.errors import first_line
from jester_als.foldin import FoldInModel, from_numpy_model, from_spark_model
from jester_als.numpy_als import NumpyALSModel
from jester_als.prepare import InputError
from jester_als.recommend import recommend_unrated


class Recommender(Protocol):
    """What a job asks of a fitted model: the same calls for every kind."""

    engine: ClassVar[str]  # where it scores: "spark" (in Spark tasks) or "numpy" (on the driver)
    model: Any  # the fitted model itself: what load_model returns and MLflow logs

    def recommend(self, spark: SparkSession, ratings: DataFrame, top_n: int, rating_range) -> DataFrame:
        """``user, rank, joke, score``: each user's top ``top_n`` jokes not in ``ratings``, scores clipped."""

    def save(self, path: str) -> None:
        """Write the model under ``path`` (read back by :func:`load_model_at`)."""

    def foldable(self, reg_param: float) -> FoldInModel:
        """The joke side of the model, for folding in new users without a refit."""

    def users(self, spark: SparkSession) -> DataFrame:
        """``user`` (int): the ids the model was fitted on."""


@dataclass
class SparkRecommender:
    """A Spark model: plain ``ALSModel`` or :class:`BiasedALSModel`."""

    model: ALSModel | BiasedALSModel
    engine: ClassVar[str] = "spark"

    def recommend(self, spark: SparkSession, ratings: DataFrame, top_n: int, rating_range) -> DataFrame:

        return recommend_unrated(self.model, ratings, top_n, rating_range)

    def save(self, path: str) -> None:
        save_model(self.model, path)

    def foldable(self, reg_param: float) -> FoldInModel:
        return from_spark_model(self.model, reg_param)

    def users(self, spark: SparkSession) -> DataFrame:
        return self.model.userFactors.select(F.col("id").alias("user"))


@dataclass
class NumpyRecommender:
    """The NumPy engine's model (a run that fell back to the driver)."""

    model: NumpyALSModel
    engine: ClassVar[str] = "numpy"

    def recommend(self, spark: SparkSession, ratings: DataFrame, top_n: int, rating_range) -> DataFrame:

        return recommend_numpy(spark, self.model, ratings, top_n, rating_range)

    def save(self, path: str) -> None:
        self.model.save(path)

    def foldable(self, reg_param: float) -> FoldInModel:
        return from_numpy_model(self.model, reg_param)

    def users(self, spark: SparkSession) -> DataFrame:
        import numpy as np
        import pyarrow as pa

        # through Arrow, as the recommendations are: a Python tuple per id was slow for millions of users
        return spark.createDataFrame(pa.table({"user": np.asarray(self.model.user_ids, dtype=np.int32)}))


def recommender(model) -> Recommender:
    """``model`` (any kind the jobs fit or load) behind the one interface the jobs use."""
    return NumpyRecommender(model) if isinstance(model, NumpyALSModel) else SparkRecommender(model)


def save_model(model, path: str) -> None:
    """Write a fitted Spark model (plain ``ALSModel`` or :class:`BiasedALSModel`) under ``path``."""
    if isinstance(model, BiasedALSModel):
        model.save(path)
    else:
        model.write().overwrite().save(path)


def load_model_at(path: str, spark: SparkSession | None = None):
    """The model saved at ``path``: an ``ALSModel``, a :class:`BiasedALSModel`, or the NumPy model a fallback
    run saved in its place."""
    if NumpyALSModel.saved_at(path):
        return NumpyALSModel.load(path)
    try:
        if BiasedALSModel.saved_at(path):
            return BiasedALSModel.load(spark or SparkSession.getActiveSession(), path)
        return ALSModel.load(path)
    except Exception as exc:
        raise InputError(
            f"model {path}: cannot be loaded ({first_line(exc)}); run the tune job with the same output.dir first"
        ) from None


def load_model(output_dir: str, spark: SparkSession | None = None):
    """The model a ``tune`` or ``pipeline`` run saved under ``output_dir`` (its ``model/``), ready to use:

    - a plain run gives a ``pyspark.ml.recommendation.ALSModel``;
    - a biased run (``als.biases``, or ``biases`` chosen by the grid) a ``jester_als.biased.BiasedALSModel``,
      whose ``transform`` and ``recommendForAllUsers`` add ``mu + b_u + b_j`` back;
    - a run that fell back to the driver (``als.fallback: numpy``) a ``jester_als.numpy_als.NumpyALSModel``
      (``predict(user_ids, joke_ids)`` on NumPy arrays).

    The Spark models need a session (``spark``, or the active one). Predictions are on the model's raw scale;
    the jobs clip them to ``input.rating_range`` (``jester_als.tune.clipped``). Every kind is also logged to
    MLflow as a pyfunc model that recommends without Spark (:mod:`jester_als.mlflow_model`)."""
    return load_model_at(os.path.join(output_dir, "model"), spark)
