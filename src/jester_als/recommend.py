"""Top-N jokes per user that the user has not rated, from a fitted ALS model."""

from __future__ import annotations

from pyspark.ml.recommendation import ALSModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jester_als.biased import BiasedALSModel, top_per_user
from jester_als.tune import clipped


def recommend_unrated(model: ALSModel, rated: DataFrame, top_n: int, rating_range=None) -> DataFrame:
    """``user``, ``rank`` (1 = best), ``joke``, ``score`` for every user in the model.

    Jokes are ranked by the model's raw score; the ``score`` written is clipped to ``rating_range`` (the
    rating scale), so two jokes both predicted above the top of the scale keep their order.

    ``rated`` holds every known rating (train and test): a joke the user rated is never recommended.
    For the plain model, ALS ranks all jokes for a user in its blocked top-k; asking for ``top_n`` plus the
    most any user has rated guarantees ``top_n`` unrated jokes survive the filter without scoring a users x
    jokes product. The biased model scores every pair (:meth:`BiasedALSModel.all_scores`).
    """
    rated = rated.select("user", "joke")
    if isinstance(model, BiasedALSModel):
        # Every (user, joke) pair is scored anyway (the joke offsets change the order): drop the rated
        # pairs from all of them and rank what is left, in one pass.
        unrated = model.all_scores().join(rated, on=["user", "joke"], how="left_anti")
    else:
        most_rated = rated.groupBy("user").count().agg(F.max("count")).first()[0] or 0
        jokes = model.itemFactors.count()
        k = int(min(jokes, top_n + most_rated))
        candidates = (
            model.recommendForAllUsers(k)
            .select("user", F.explode("recommendations").alias("r"))
            .select("user", F.col("r.joke").alias("joke"), F.col("r.rating").cast("double").alias("score"))
        )
        unrated = candidates.join(rated, on=["user", "joke"], how="left_anti")
    ranked = top_per_user(unrated, top_n)
    if rating_range is not None:
        ranked = ranked.withColumn("score", clipped(F.col("score"), rating_range))
    return ranked
