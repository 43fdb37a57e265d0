"""A vectorized NumPy ALS on the driver that optimizes exactly Spark ML's explicit-feedback objective.

Spark's ALS (explicit, ALS-WR) minimizes

    sum over known (u, j) of (r_uj - x_u . y_j)^2  +  regParam * (n_u |x_u|^2 summed over users
                                                                 + n_j |y_j|^2 summed over jokes)

where n_u and n_j count the ratings of user u and joke j. Each half-step solves, for every user at once,
``(sum_j y_j y_j^T + regParam n_u I) x_u = sum_j r_uj y_j``. Here the per-user Gram matrices come from one
sparse product of the rating pattern with the jokes' outer products (only the upper triangle: k(k+1)/2
columns instead of k^2), and the k x k systems are solved by one batched Cholesky factorization vectorized
over users. No Python loop runs over users or jokes; memory is O(ratings + (users + jokes) k^2).

Like Spark, each iteration updates the joke factors first, then the user factors, and factors start as
seeded random unit vectors.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from jester_als.errors import JobError

log = logging.getLogger(__name__)


@dataclass
class RatingMatrix:
    """Ratings indexed 0..users-1 and 0..jokes-1, with the original ids to map back."""

    users: np.ndarray  # (nnz,) int32 row index
    jokes: np.ndarray  # (nnz,) int32 column index
    ratings: np.ndarray  # (nnz,) float
    user_ids: np.ndarray  # (n_users,) original ids, sorted
    joke_ids: np.ndarray  # (n_jokes,) original ids, sorted

    @classmethod
    def from_ids(cls, user_ids: np.ndarray, joke_ids: np.ndarray, ratings: np.ndarray) -> RatingMatrix:
        users_sorted, user_index = _dense_index(np.asarray(user_ids))
        jokes_sorted, joke_index = _dense_index(np.asarray(joke_ids))
        return cls(user_index, joke_index, np.asarray(ratings, dtype=np.float64), users_sorted, jokes_sorted)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.user_ids), len(self.joke_ids)

    @property
    def nnz(self) -> int:
        return int(self.ratings.size)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.users, self.jokes, self.ratings, self.user_ids, self.joke_ids))


def positions(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each id sits in ``sorted_ids``, and whether it is there at all (unknown ids get position 0,
    to be masked by the second array)."""
    if len(sorted_ids) == 0:
        return np.zeros(len(ids), dtype=np.intp), np.zeros(len(ids), dtype=bool)
    clipped = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    known = sorted_ids[clipped] == ids
    return np.where(known, clipped, 0), known


def _dense_index(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct ids, int32 index of each id in them). Small non-negative integer ids (Jester's) take
    a counting pass instead of a sort: O(n) time and no int64 copies of the ratings."""
    if ids.size and np.issubdtype(ids.dtype, np.integer) and ids.min() >= 0 and ids.max() < 4 * ids.size + 1_000_000:
        present = np.zeros(int(ids.max()) + 1, dtype=bool)
        present[ids] = True
        position = np.cumsum(present, dtype=np.int64) - 1
        return np.flatnonzero(present), position[ids].astype(np.int32)
    distinct, index = np.unique(ids, return_inverse=True)
    return distinct, index.astype(np.int32)


@dataclass
class NumpyALSModel:
    user_factors: np.ndarray  # (n_users, rank)
    joke_factors: np.ndarray  # (n_jokes, rank)
    user_ids: np.ndarray
    joke_ids: np.ndarray
    train_rmse: list[float] = field(default_factory=list)
    iterations: int = 0
    layout: str = "dense"  # which products the fit used: "dense" or "sparse"

    def nbytes(self) -> int:
        return self.user_factors.nbytes + self.joke_factors.nbytes

    def predict(self, user_ids: np.ndarray, joke_ids: np.ndarray) -> np.ndarray:
        """Predicted ratings; NaN where the user or joke was not in training (Spark's cold start)."""
        u, u_ok = positions(self.user_ids, user_ids)
        j, j_ok = positions(self.joke_ids, joke_ids)
        ok = u_ok & j_ok
        out = np.full(len(user_ids), np.nan)
        out[ok] = np.einsum("ij,ij->i", self.user_factors[u[ok]], self.joke_factors[j[ok]])
        return out

    # The model owns its lifecycle: fit (``fit_numpy_als``), predict, save, load; ``driver`` recommends with it.
    FILE = "numpy_als.npz"

    def save(self, path: str) -> None:
        """Write the factors and ids under the directory ``path`` (the job's ``model/``)."""
        os.makedirs(path, exist_ok=True)
        np.savez(os.path.join(path, self.FILE), user_factors=self.user_factors, joke_factors=self.joke_factors,
                 user_ids=self.user_ids, joke_ids=self.joke_ids)

    @classmethod
    def saved_at(cls, path: str) -> bool:
        return os.path.exists(os.path.join(path, cls.FILE))

    @classmethod
    def load(cls, path: str) -> NumpyALSModel:
        with np.load(os.path.join(path, cls.FILE)) as saved:
            return cls(saved["user_factors"], saved["joke_factors"], saved["user_ids"], saved["joke_ids"])


class NonFiniteFactorsError(JobError):
    """A fit produced NaN or infinite factors (non-finite input, or a numerically singular problem)."""


def arrow_ratings(table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A collected Arrow table's ``user``, ``joke`` and ``rating`` columns as the engine's arrays (int64 ids,
    float64 ratings); the one place the project turns Arrow into NumPy for the engine."""
    return (table.column("user").to_numpy().astype(np.int64), table.column("joke").to_numpy().astype(np.int64),
            table.column("rating").to_numpy().astype(np.float64))


def _unit_random(rng: np.random.Generator, n: int, rank: int) -> np.ndarray:
    factors = rng.standard_normal((n, rank))
    return factors / np.linalg.norm(factors, axis=1, keepdims=True)


def batched_cholesky_solve(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve ``gram[:, :, i] x[:, i] = rhs[:, i]`` for a batch of symmetric positive definite k x k systems.

    ``gram`` is (k, k, n) and ``rhs`` (k, n): the batch is the last, contiguous axis, so every step of the
    factorization is one vector operation over all n systems. The loops run over the k columns (k is the
    rank, ~10); this beats one LAPACK call per system (9 ms against 13 ms for 25,000 systems of rank 10).
    Returns x as (n, k).
    """
    k = gram.shape[0]
    low = np.zeros_like(gram)
    for j in range(k):
        row = low[j, :j]
        pivot = np.sqrt(gram[j, j] - np.einsum("mn,mn->n", row, row))
        low[j, j] = pivot
        if j + 1 < k:
            low[j + 1:, j] = (gram[j + 1:, j] - np.einsum("imn,mn->in", low[j + 1:, :j], row)) / pivot
    y = np.empty_like(rhs)
    for j in range(k):  # forward substitution: L y = b
        y[j] = (rhs[j] - np.einsum("mn,mn->n", low[j, :j], y[:j])) / low[j, j]
    x = np.empty_like(rhs)
    for j in range(k - 1, -1, -1):  # backward substitution: L^T x = y
        x[j] = (y[j] - np.einsum("mn,mn->n", low[j + 1:, j], x[j + 1:])) / low[j, j]
    return x.T


class _HalfStep:
    """Everything fixed about solving one side (users given jokes, or jokes given users).

    ``pattern`` has a row per factor being solved and a 1 where it has a rating; ``weighted`` holds the
    ratings themselves. Both are dense float32 arrays when they fit the memory budget (BLAS products, the
    fast path for Jester's 100 jokes) and scipy CSR matrices otherwise (memory proportional to ratings).
    """

    def __init__(self, pattern, weighted, counts: np.ndarray, rank: int):
        self.pattern = pattern
        self.weighted = weighted
        self.counts = counts
        self.rank = rank
        self.tri_i, self.tri_j = np.triu_indices(rank)

    def solve(self, other: np.ndarray, reg: float) -> np.ndarray:
        k = self.rank
        other32 = other.astype(np.float32, copy=False)
        outer = other32[:, self.tri_i] * other32[:, self.tri_j]  # (n_other, k(k+1)/2): symmetric, so half
        upper = np.asarray(self.pattern @ outer, dtype=np.float64).T  # every row's Gram matrix, one product
        gram = np.empty((k, k, upper.shape[1]))
        gram[self.tri_i, self.tri_j] = upper
        gram[self.tri_j, self.tri_i] = upper
        diag = np.arange(k)
        # ALS-WR: lambda scaled by each row's rating count.
        gram[diag, diag] += reg * np.maximum(self.counts, 1)
        rhs = np.asarray(self.weighted @ other32, dtype=np.float64).T
        return batched_cholesky_solve(gram, rhs)


def _train_rmse(data: RatingMatrix, users: np.ndarray, jokes: np.ndarray) -> float:
    predicted = np.einsum("ij,ij->i", users[data.users], jokes[data.jokes])
    return float(np.sqrt(np.mean((data.ratings - predicted) ** 2)))


DEFAULT_DENSE_BUDGET_MB = 512
# BLAS on a dense pattern does users x jokes work where sparse products do ratings' worth, about ten times
# slower per element: dense pays only while at least this share of the cells is rated (Jester: 73%).
DENSE_MIN_DENSITY = 0.1


def uses_dense_path(users: int, jokes: int, ratings: int, dense_budget_mb: float) -> bool:
    """The rule ``fit_numpy_als`` applies: dense when the pattern fits the budget and is dense enough."""
    cells = users * jokes
    return cells * 16 <= dense_budget_mb * 2**20 and ratings >= DENSE_MIN_DENSITY * cells


def _rating_operators(data: RatingMatrix, dense_budget_mb: float):
    """(pattern, weighted) by user and by joke: dense float32 arrays (BLAS products) when
    ``uses_dense_path``, else CSR matrices (memory proportional to the ratings)."""
    n_users, n_jokes = data.shape
    if uses_dense_path(n_users, n_jokes, data.nnz, dense_budget_mb):
        pattern = np.zeros((n_users, n_jokes), dtype=np.float32)
        pattern[data.users, data.jokes] = 1.0
        weighted = np.zeros((n_users, n_jokes), dtype=np.float32)
        weighted[data.users, data.jokes] = data.ratings
        return (pattern, weighted), (np.ascontiguousarray(pattern.T), np.ascontiguousarray(weighted.T)), "dense"
    by_user = _csr(data.users, data.jokes, data.ratings, n_users, n_jokes)
    by_joke = _csr(data.jokes, data.users, data.ratings, n_jokes, n_users)
    return by_user, by_joke, "sparse"


def _csr(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_rows: int, n_cols: int):
    """(pattern, weighted) CSR matrices built directly (one stable sort, int32 indices), not through COO,
    which would hold several int64 copies of every rating at once."""
    order = np.argsort(rows, kind="stable")
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    indices = cols[order].astype(np.int32)
    weighted = sp.csr_matrix((values[order].astype(np.float32), indices, indptr), shape=(n_rows, n_cols))
    del order
    pattern = sp.csr_matrix((np.ones(indices.size, dtype=np.float32), indices, indptr), shape=(n_rows, n_cols))
    return pattern, weighted


def fit_numpy_als(data: RatingMatrix, *, rank: int, reg_param: float, max_iter: int, seed: int = 0,
                  tol: float | None = None, dense_budget_mb: float = DEFAULT_DENSE_BUDGET_MB) -> NumpyALSModel:
    """Fit explicit ALS with Spark's objective.

    Parameters
    ----------
    data : RatingMatrix
        Training ratings.
    rank, reg_param, max_iter : int, float, int
        As Spark's ``rank``, ``regParam`` and ``maxIter``.
    seed : int
        Seeds the random unit-vector initialization.
    tol : float, optional
        Stop early when the training RMSE improves by less than this between iterations (it is then
        computed every iteration; without ``tol`` only at DEBUG log level).
    dense_budget_mb : float
        Largest dense users x jokes rating pattern to build (two float32 copies each way); above it, or
        when fewer than ``DENSE_MIN_DENSITY`` of the cells are rated, the products use sparse matrices,
        whose memory is proportional to the ratings.
    """
    n_users, n_jokes = data.shape
    (by_user, by_user_r), (by_joke, by_joke_r), layout = _rating_operators(data, dense_budget_mb)
    log.debug("numpy ALS: %d users x %d jokes, %d ratings, %s products", n_users, n_jokes, data.nnz, layout)
    user_step = _HalfStep(by_user, by_user_r, np.bincount(data.users, minlength=n_users), rank)
    joke_step = _HalfStep(by_joke, by_joke_r, np.bincount(data.jokes, minlength=n_jokes), rank)

    rng = np.random.default_rng(seed)
    users = _unit_random(rng, n_users, rank)
    jokes = _unit_random(rng, n_jokes, rank)
    track = tol is not None or log.isEnabledFor(logging.DEBUG)
    history: list[float] = []
    iterations = 0
    for iteration in range(1, max_iter + 1):
        jokes = joke_step.solve(users, reg_param)
        users = user_step.solve(jokes, reg_param)
        iterations = iteration
        if track:
            history.append(_train_rmse(data, users, jokes))
            log.debug("numpy ALS iteration %d: train RMSE %.5f", iteration, history[-1])
            if tol is not None and len(history) > 1 and history[-2] - history[-1] < tol:
                break
    if not (np.isfinite(users).all() and np.isfinite(jokes).all()):
        raise NonFiniteFactorsError(
            f"NumPy ALS (rank {rank}, regParam {reg_param}, {iterations} iterations) produced non-finite factors: "
            f"the training ratings hold NaN or infinity, or regParam is too small for users or jokes with few "
            f"ratings")
    return NumpyALSModel(users, jokes, data.user_ids, data.joke_ids, history, iterations, layout)


def fit_loop_als(data: RatingMatrix, *, rank: int, reg_param: float, max_iter: int, seed: int = 0) -> NumpyALSModel:
    """The seed notebook's algorithm, kept as a reference point for ``bench``: one ``np.linalg.solve`` per
    user and per joke in a Python loop (same objective, same initialization, hence the same result)."""
    n_users, n_jokes = data.shape
    order_u = np.argsort(data.users, kind="stable")
    order_j = np.argsort(data.jokes, kind="stable")
    u_bounds = np.searchsorted(data.users[order_u], np.arange(n_users + 1))
    j_bounds = np.searchsorted(data.jokes[order_j], np.arange(n_jokes + 1))
    rng = np.random.default_rng(seed)
    users = _unit_random(rng, n_users, rank)
    jokes = _unit_random(rng, n_jokes, rank)
    eye = np.eye(rank)
    for _ in range(max_iter):
        for j in range(n_jokes):
            rows = order_j[j_bounds[j]:j_bounds[j + 1]]
            x = users[data.users[rows]]
            jokes[j] = np.linalg.solve(x.T @ x + reg_param * max(len(rows), 1) * eye, x.T @ data.ratings[rows])
        for u in range(n_users):
            rows = order_u[u_bounds[u]:u_bounds[u + 1]]
            y = jokes[data.jokes[rows]]
            users[u] = np.linalg.solve(y.T @ y + reg_param * max(len(rows), 1) * eye, y.T @ data.ratings[rows])
    return NumpyALSModel(users, jokes, data.user_ids, data.joke_ids, [], max_iter)


def rmse_mae(actual: np.ndarray, predicted: np.ndarray) -> dict:
    """RMSE and MAE over rows with a prediction (NaN = cold start, dropped as Spark's 'drop' does)."""
    ok = ~np.isnan(predicted)
    err = actual[ok] - predicted[ok]
    if err.size == 0:
        return {"rmse": None, "mae": None, "rows": 0}
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err))), "rows": int(err.size)}


def timed_fit(data: RatingMatrix, **params) -> tuple[NumpyALSModel, float]:
    started = time.perf_counter()
    model = fit_numpy_als(data, **params)
    return model, time.perf_counter() - started
