"""The seed's loop, kept as the reference the vectorized engine is checked and timed against: one small solve per user
and per joke in Python."""

from __future__ import annotations

import logging

import numpy as np

from jester_als.numpy_als.data import RatingMatrix
from jester_als.numpy_als.fit import (
    _unit_random,
)
from jester_als.numpy_als.model import NumpyALSModel

log = logging.getLogger("jester_als.numpy_als")  # one logger for the engine, as before it was a package


def fit_loop_als(data: RatingMatrix, *, rank: int, reg_param: float, max_iter: int, seed: int = 0) -> NumpyALSModel:
    """The seed notebook's algorithm, kept as a reference point for ``bench``: one ``np.linalg.solve`` per
    user and per joke in a Python loop (same objective, same initialization, hence the same result)."""
    n_users, n_jokes = data.shape
    user_of = data.users  # built on request: once, not per user
    order_u = np.argsort(user_of, kind="stable")
    order_j = np.argsort(data.jokes, kind="stable")
    u_bounds = np.searchsorted(user_of[order_u], np.arange(n_users + 1))
    j_bounds = np.searchsorted(data.jokes[order_j], np.arange(n_jokes + 1))
    rng = np.random.default_rng(seed)
    users = _unit_random(rng, n_users, rank)
    jokes = _unit_random(rng, n_jokes, rank)
    eye = np.eye(rank)
    for _ in range(max_iter):
        for j in range(n_jokes):
            rows = order_j[j_bounds[j] : j_bounds[j + 1]]
            x = users[user_of[rows]]
            jokes[j] = np.linalg.solve(x.T @ x + reg_param * max(len(rows), 1) * eye, x.T @ data.ratings[rows])
        for u in range(n_users):
            rows = order_u[u_bounds[u] : u_bounds[u + 1]]
            y = jokes[data.jokes[rows]]
            users[u] = np.linalg.solve(y.T @ y + reg_param * max(len(rows), 1) * eye, y.T @ data.ratings[rows])
    return NumpyALSModel(users, jokes, data.user_ids, data.joke_ids, [], max_iter)
