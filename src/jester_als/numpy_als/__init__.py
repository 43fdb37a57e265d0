"""A vectorized NumPy ALS on the driver that optimizes exactly Spark ML's explicit-feedback objective.

Spark's ALS (explicit, ALS-WR) minimizes

    sum over known (u, j) of (r_uj - x_u . y_j)^2  +  regParam * (n_u |x_u|^2 summed over users
                                                                 + n_j |y_j|^2 summed over jokes)

where n_u and n_j count the ratings of user u and joke j. Each half-step solves, for every user at once,
``(sum_j y_j y_j^T + regParam n_u I) x_u = sum_j r_uj y_j``. Here the Gram matrices of a block of users come
from one product of the block's rating pattern with the jokes' outer products (only the upper triangle:
k(k+1)/2 columns instead of k^2), and the block's k x k systems are solved by one batched Cholesky
factorization vectorized over its users. Blocks are sized to the CPU cache and run on a thread pool, so no
Python loop runs over single users or jokes, the working set is bounded, and every core works. Memory: the
ratings once (8 bytes each, user-major) plus the factors.

Like Spark, each iteration updates the joke factors first, then the user factors, and factors start as
seeded random unit vectors.

With ``biases=True`` the model is ``r_uj ~ mu + b_u + b_j + x_u . y_j`` (Koren, Bell and Volinsky, 2009), fitted
in two stages exactly as the Spark engine (``jester_als.biased``) fits it: regularized user and joke offsets
first (:func:`fit_biases`), then the objective above on the residuals ``r_uj - mu - b_u - b_j``.

The engine's parts: ``data`` (the rating matrix and Arrow columns), ``biases`` (the offsets), ``solver`` (batched
Cholesky, blocks, threads), ``fit`` (the iterations and fold-in's half-steps), ``model`` (the fitted model,
saved and loaded), ``seed`` (the seed's loop, the reference), ``metrics``. What other modules use is
re-exported here.
"""

from jester_als.numpy_als.biases import BIAS_PASSES, Biases, fit_biases, residuals
from jester_als.numpy_als.data import RatingMatrix, arrow_column, arrow_ratings, positions
from jester_als.numpy_als.fit import fit_numpy_als, solve_jokes_given_users, solve_users_given_jokes
from jester_als.numpy_als.metrics import nmae, rmse_mae
from jester_als.numpy_als.model import NonFiniteFactorsError, NumpyALSModel
from jester_als.numpy_als.seed import fit_loop_als
from jester_als.numpy_als.solver import (
    DEFAULT_DENSE_BUDGET_MB,
    block_rows,
    engine_threads,
    last_level_cache_bytes,
    uses_dense_path,
)

__all__ = [
    "BIAS_PASSES",
    "DEFAULT_DENSE_BUDGET_MB",
    "Biases",
    "NonFiniteFactorsError",
    "NumpyALSModel",
    "RatingMatrix",
    "arrow_column",
    "arrow_ratings",
    "block_rows",
    "engine_threads",
    "fit_biases",
    "fit_loop_als",
    "fit_numpy_als",
    "last_level_cache_bytes",
    "nmae",
    "positions",
    "residuals",
    "rmse_mae",
    "solve_jokes_given_users",
    "solve_users_given_jokes",
    "uses_dense_path",
]
