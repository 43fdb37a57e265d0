"""jester-als: Spark ALS and a driver-side NumPy ALS on Jester-shaped explicit ratings."""

__version__ = "0.1.0"


def load_model(output_dir: str, spark=None):
    """The model a ``tune`` or ``pipeline`` run saved under ``output_dir`` (its ``model/``), ready to use:

    - a plain run gives a ``pyspark.ml.recommendation.ALSModel``;
    - a biased run (``als.biases``, or ``biases`` chosen by the grid) a ``jester_als.biased.BiasedALSModel``,
      whose ``transform`` and ``recommendForAllUsers`` add ``mu + b_u + b_j`` back;
    - a run that fell back to the driver (``als.fallback: numpy``) a ``jester_als.numpy_als.NumpyALSModel``
      (``predict(user_ids, joke_ids)`` on NumPy arrays).

    The Spark models need a session (``spark``, or the active one). Predictions are on the model's raw scale;
    the jobs clip them to ``input.rating_range`` (``jester_als.tune.clipped``)."""
    import os

    from jester_als.jobs import load_model_at

    return load_model_at(os.path.join(output_dir, "model"), spark)
