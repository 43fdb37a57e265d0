"""Saving and loading every model kind the jobs fit, in one place: Spark's ``ALSModel``, the biased model
(:class:`~jester_als.biased.BiasedALSModel`) and the NumPy engine's model a fallback run saves in their place.
``jester_als.load_model`` is :func:`load_model` re-exported."""

from __future__ import annotations

import os

from pyspark.ml.recommendation import ALSModel
from pyspark.sql import SparkSession

from jester_als.biased import BiasedALSModel
from jester_als.numpy_als import NumpyALSModel
from jester_als.prepare import InputError


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
            f"model {path}: cannot be loaded ({str(exc).splitlines()[0]}); run the tune job "
            f"with the same output.dir first"
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
