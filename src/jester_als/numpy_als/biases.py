"""The offsets of the biased model, ``mu + b_u + b_j``: regularized user and joke offsets fitted by a few alternating
passes, and the residuals ALS fits after them."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from jester_als.numpy_als.data import RatingMatrix, positions

log = logging.getLogger("jester_als.numpy_als")  # one logger for the engine, as before it was a package


# Alternating passes of the bias fit, in both engines (``jester_als.biased`` uses the same number). On the
# default table (1.8 M ratings) the offsets after 3 passes are within 6e-4 of a rating point of where 100 passes
# take them (2.3e-3 after one pass; 10 passes still leave 2.6e-4: the last digits converge slowly and matter
# nothing next to a rating's noise), and every pass costs Spark two joins and aggregations over the ratings.
BIAS_PASSES = 3


@dataclass
class Biases:
    """``mu + b_u + b_j``: the global mean and regularized user and joke offsets (by position in ``user_ids``
    and ``joke_ids``)."""

    mean: float
    user: np.ndarray  # (n_users,) float64
    joke: np.ndarray  # (n_jokes,) float64
    user_ids: np.ndarray
    joke_ids: np.ndarray
    reg: float

    def predict(self, user_ids: np.ndarray, joke_ids: np.ndarray) -> np.ndarray:
        """``mu + b_u + b_j``; an unknown user or joke contributes no offset."""
        u, u_known = positions(self.user_ids, user_ids)
        j, j_known = positions(self.joke_ids, joke_ids)
        return self.mean + np.where(u_known, self.user[u], 0.0) + np.where(j_known, self.joke[j], 0.0)


def fit_biases(data: RatingMatrix, *, reg: float, passes: int = BIAS_PASSES) -> Biases:
    """Regularized user and joke offsets around the global mean by alternating closed-form updates, jokes
    first: ``b_j = sum_u (r_uj - mu - b_u) / (reg + n_j)``, then ``b_u = sum_j (r_uj - mu - b_j) / (reg + n_u)``.
    Only ``data``'s ratings enter: a fit's biases never see its validation or test ratings."""
    mu = float(data.ratings.mean(dtype=np.float64)) if data.nnz else 0.0
    n_users, n_jokes = data.shape
    users = data.users
    user_counts, joke_counts = data.user_counts, data.joke_counts
    centred = data.ratings.astype(np.float64) - mu
    user_bias, joke_bias = np.zeros(n_users), np.zeros(n_jokes)
    for _ in range(passes):
        joke_bias = np.bincount(data.jokes, centred - user_bias[users], n_jokes) / (reg + joke_counts)
        user_bias = np.bincount(users, centred - joke_bias[data.jokes], n_users) / (reg + user_counts)
    return Biases(mu, user_bias, joke_bias, data.user_ids, data.joke_ids, float(reg))


def residuals(data: RatingMatrix, biases: Biases) -> RatingMatrix:
    """``data`` with each rating less its ``mu + b_u + b_j`` (float32, like the ratings)."""
    offsets = biases.mean + biases.user[data.users] + biases.joke[data.jokes]
    return data.with_ratings(data.ratings - offsets)
