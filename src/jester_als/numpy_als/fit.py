"""Fitting: ALS iterations over the solver (jokes first, then users, as Spark does), with the biased model's offsets
fitted first when asked, and single half-steps for fold-in."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from jester_als.numpy_als.biases import fit_biases, residuals
from jester_als.numpy_als.data import RatingMatrix
from jester_als.numpy_als.model import NonFiniteFactorsError, NumpyALSModel
from jester_als.numpy_als.solver import (
    DEFAULT_DENSE_BUDGET_MB,
    _blas_limited,
    _Solver,
    engine_threads,
)

log = logging.getLogger("jester_als.numpy_als")  # one logger for the engine, as before it was a package


def _unit_random(rng: np.random.Generator, n: int, rank: int) -> np.ndarray:
    factors = rng.standard_normal((n, rank))
    return factors / np.linalg.norm(factors, axis=1, keepdims=True)


def _train_rmse(data: RatingMatrix, users: np.ndarray, jokes: np.ndarray) -> float:
    predicted = np.einsum("ij,ij->i", users[data.users], jokes[data.jokes])
    return float(np.sqrt(np.mean((data.ratings - predicted) ** 2)))


def fit_numpy_als(
    data: RatingMatrix,
    *,
    rank: int,
    reg_param: float,
    max_iter: int,
    seed: int = 0,
    tol: float | None = None,
    dense_budget_mb: float = DEFAULT_DENSE_BUDGET_MB,
    threads: int | None = None,
    biases: bool = False,
    bias_reg: float = 10.0,
) -> NumpyALSModel:
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
        Largest dense users x jokes pattern and ratings (two float32 arrays) to build; above it, or when fewer
        than ``DENSE_MIN_DENSITY`` of the cells are rated, the products use the sparse ratings directly.
    threads : int, optional
        Worker threads (default: the cores this process may use).
    biases, bias_reg : bool, float
        Fit ``mu + b_u + b_j`` first (:func:`fit_biases`, regularized by ``bias_reg``) and the factors on the
        residuals; predictions add the offsets back.
    """
    threads = threads or engine_threads()
    offsets = None
    if biases:
        offsets = fit_biases(data, reg=bias_reg)
        data = residuals(data, offsets)
    solver = _Solver(data, rank, dense_budget_mb, threads)
    n_users, n_jokes = data.shape
    log.debug(
        "numpy ALS: %d users x %d jokes, %d ratings, %s blocks of %d users, %d threads",
        n_users,
        n_jokes,
        data.nnz,
        solver.layout,
        solver.block,
        threads,
    )
    rng = np.random.default_rng(seed)
    users = _unit_random(rng, n_users, rank)
    jokes = _unit_random(rng, n_jokes, rank)
    track = tol is not None or log.isEnabledFor(logging.DEBUG)
    history: list[float] = []
    iterations = 0
    with _blas_limited(threads), ThreadPoolExecutor(threads, thread_name_prefix="numpy-als") as pool:
        for iteration in range(1, max_iter + 1):
            jokes = solver.solve_jokes(pool, users, reg_param)
            users = solver.solve_users(pool, jokes, reg_param)
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
            f"ratings"
        )
    return NumpyALSModel(
        users, jokes, data.user_ids, data.joke_ids, history, iterations, solver.layout, len(solver.starts), offsets
    )


def _one_half_step(
    data: RatingMatrix, given: np.ndarray, reg_param: float, dense_budget_mb: float, side: str
) -> np.ndarray:
    threads = engine_threads()
    solver = _Solver(data, given.shape[1], dense_budget_mb, threads)
    solve = solver.solve_users if side == "users" else solver.solve_jokes
    with _blas_limited(threads), ThreadPoolExecutor(threads) as pool:
        return solve(pool, np.asarray(given, dtype=np.float64), reg_param)


def solve_users_given_jokes(
    data: RatingMatrix, joke_factors: np.ndarray, reg_param: float, *, dense_budget_mb: float = DEFAULT_DENSE_BUDGET_MB
) -> np.ndarray:
    """One user half-step: every user's factor that minimizes Spark's objective for these joke factors (rows
    in ``data.joke_ids`` order). The last thing each Spark ALS iteration does, so it recovers a Spark model's
    user factors from its item factors."""
    return _one_half_step(data, joke_factors, reg_param, dense_budget_mb, "users")


def solve_jokes_given_users(
    data: RatingMatrix, user_factors: np.ndarray, reg_param: float, *, dense_budget_mb: float = DEFAULT_DENSE_BUDGET_MB
) -> np.ndarray:
    """One joke half-step: every joke's factor that minimizes Spark's objective for these user factors (rows in
    ``data.user_ids`` order); the first thing each iteration does."""
    return _one_half_step(data, user_factors, reg_param, dense_budget_mb, "jokes")
