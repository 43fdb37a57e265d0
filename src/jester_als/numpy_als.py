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
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from jester_als.errors import JobError

log = logging.getLogger(__name__)


@dataclass
class RatingMatrix:
    """Training ratings held once, user-major and compact: user ``u``'s ratings are
    ``jokes[indptr[u]:indptr[u + 1]]`` (joke positions, int32) and ``ratings[...]`` (float32), 8 bytes per
    rating plus the ids to map back. Both half-steps of the fit read this one structure; the rating pattern is
    implied by it, never stored as a second matrix of ones."""

    indptr: np.ndarray  # (n_users + 1,) int64
    jokes: np.ndarray  # (nnz,) int32 joke position of each rating
    ratings: np.ndarray  # (nnz,) float32
    user_ids: np.ndarray  # (n_users,) original ids, sorted
    joke_ids: np.ndarray  # (n_jokes,) original ids, sorted

    @classmethod
    def from_ids(cls, user_ids: np.ndarray, joke_ids: np.ndarray, ratings: np.ndarray) -> RatingMatrix:
        """From parallel arrays in any order. Input in ascending user order (a Parquet file or a table written
        user by user) is taken as it is: the users and their rows come from where the id changes, so the peak
        stays at the input plus 5 bytes per rating (a joke position and a comparison); other input is sorted
        (plus 16 bytes per rating while it is)."""
        user_ids = np.asarray(user_ids)
        jokes_sorted, joke_index = _dense_index(np.asarray(joke_ids))
        values = np.asarray(ratings, dtype=np.float32)
        if user_ids.size and np.any(user_ids[1:] < user_ids[:-1]):
            users_sorted, user_index = _dense_index(user_ids)
            order = np.argsort(user_index)  # grouping needs no stable order; int64, freed below
            user_index, joke_index, values = user_index[order], joke_index[order], values[order]
            del order
            indptr = np.zeros(len(users_sorted) + 1, dtype=np.int64)
            np.cumsum(np.bincount(user_index, minlength=len(users_sorted)), out=indptr[1:])
            return cls(indptr, joke_index, values, users_sorted, jokes_sorted)
        if not user_ids.size:
            return cls(np.zeros(1, np.int64), joke_index, values, user_ids[:0].copy(), jokes_sorted)
        starts = np.flatnonzero(user_ids[1:] != user_ids[:-1]) + 1  # where a new user's rows begin
        indptr = np.concatenate([[0], starts, [user_ids.size]]).astype(np.int64)
        return cls(indptr, joke_index, values, user_ids[indptr[:-1]], jokes_sorted)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.user_ids), len(self.joke_ids)

    @property
    def nnz(self) -> int:
        return int(self.ratings.size)

    @property
    def user_counts(self) -> np.ndarray:
        return np.diff(self.indptr)

    @property
    def joke_counts(self) -> np.ndarray:
        return np.bincount(self.jokes, minlength=len(self.joke_ids))

    @property
    def users(self) -> np.ndarray:
        """The user position of each rating (built on request: 4 bytes per rating)."""
        return np.repeat(np.arange(len(self.user_ids), dtype=np.int32), self.user_counts)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.indptr, self.jokes, self.ratings, self.user_ids, self.joke_ids))

    def with_ratings(self, ratings: np.ndarray) -> RatingMatrix:
        """The same pattern with other values (the residuals of a bias fit); the index arrays are shared."""
        return RatingMatrix(
            self.indptr, self.jokes, np.asarray(ratings, dtype=np.float32), self.user_ids, self.joke_ids
        )


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
        position = np.cumsum(present, dtype=np.int32) - 1  # int32: the gather below allocates 4 bytes a rating
        return np.flatnonzero(present), position[ids]
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
    blocks: int = 0  # blocks of users each half-step was cut into (a term of the scaling study's cost model)
    biases: Biases | None = None  # the biased model's mu + b_u + b_j (fitted on the same ratings)

    def nbytes(self) -> int:
        extra = 0 if self.biases is None else self.biases.user.nbytes + self.biases.joke.nbytes
        return self.user_factors.nbytes + self.joke_factors.nbytes + extra

    def predict(self, user_ids: np.ndarray, joke_ids: np.ndarray) -> np.ndarray:
        """Predicted ratings; NaN where the user or joke was not in training (Spark's cold start)."""
        u, u_ok = positions(self.user_ids, user_ids)
        j, j_ok = positions(self.joke_ids, joke_ids)
        ok = u_ok & j_ok
        out = np.full(len(user_ids), np.nan)
        rows = np.flatnonzero(ok)
        for start in range(0, rows.size, self.PREDICT_CHUNK):  # the gathered factors: one chunk at a time
            part = rows[start : start + self.PREDICT_CHUNK]
            out[part] = np.einsum("ij,ij->i", self.user_factors[u[part]], self.joke_factors[j[part]])
        if self.biases is not None:
            out[rows] += self.biases.predict(np.asarray(user_ids)[rows], np.asarray(joke_ids)[rows])
        return out

    PREDICT_CHUNK = 1 << 20

    # The model owns its lifecycle: fit (``fit_numpy_als``), predict, save, load; ``driver`` recommends with it.
    FILE = "numpy_als.npz"

    def save(self, path: str) -> None:
        """Write the factors and ids under the directory ``path`` (the job's ``model/``)."""
        os.makedirs(path, exist_ok=True)
        extra = (
            {}
            if self.biases is None
            else {
                "bias_mean": np.array(self.biases.mean),
                "user_bias": self.biases.user,
                "joke_bias": self.biases.joke,
                "bias_reg": np.array(self.biases.reg),
            }
        )
        np.savez(
            os.path.join(path, self.FILE),
            user_factors=self.user_factors,
            joke_factors=self.joke_factors,
            user_ids=self.user_ids,
            joke_ids=self.joke_ids,
            **extra,
        )

    @classmethod
    def saved_at(cls, path: str) -> bool:
        return os.path.exists(os.path.join(path, cls.FILE))

    @classmethod
    def load(cls, path: str) -> NumpyALSModel:
        with np.load(os.path.join(path, cls.FILE)) as saved:
            biases = None
            if "user_bias" in saved:
                biases = Biases(
                    float(saved["bias_mean"]),
                    saved["user_bias"],
                    saved["joke_bias"],
                    saved["user_ids"],
                    saved["joke_ids"],
                    float(saved["bias_reg"]),
                )
            return cls(
                saved["user_factors"], saved["joke_factors"], saved["user_ids"], saved["joke_ids"], biases=biases
            )


class NonFiniteFactorsError(JobError):
    """A fit produced NaN or infinite factors (non-finite input, or a numerically singular problem)."""


def arrow_ratings(table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A collected Arrow table's ``user``, ``joke`` and ``rating`` columns as the engine's arrays; the one place
    the project turns Arrow into NumPy for the engine. Integer ids stay in their Arrow type (int32 ids are
    zero-copy views), ratings become float32: nothing here holds a second int64/float64 copy of the ratings."""
    return tuple(arrow_column(table, name) for name in ("user", "joke", "rating"))


def arrow_column(table, name: str) -> np.ndarray:
    """One column of a collected Arrow table as the engine holds it: ids in their Arrow integer type, ratings
    as float32 (cast in Arrow, so no float64 copy is made on the NumPy side)."""
    import pyarrow as pa

    column = table.column(name)
    if name == "rating":
        column = column.cast(pa.float32())
    return column.to_numpy()


def _unit_random(rng: np.random.Generator, n: int, rank: int) -> np.ndarray:
    factors = rng.standard_normal((n, rank))
    return factors / np.linalg.norm(factors, axis=1, keepdims=True)


def packed_offsets(rank: int) -> list[int]:
    """Where each row of a k x k symmetric matrix starts in its packed upper triangle (NumPy's ``triu_indices``
    order: (0,0), (0,1) ... (0,k-1), (1,1) ...). Row j's entries from the diagonal on, (j, j) ... (j, k-1), are
    the contiguous rows ``offsets[j] : offsets[j] + k - j``; by symmetry they are also column j's from the
    diagonal down, which is what a column-by-column Cholesky factorization reads."""
    return [j * rank - j * (j - 1) // 2 for j in range(rank)]


def batched_cholesky_solve(upper: np.ndarray, rhs: np.ndarray, ridge: np.ndarray) -> np.ndarray:
    """Solve ``(A_i + ridge_i I) x_i = b_i`` for a batch of n symmetric positive definite k x k systems.

    ``upper`` is (k(k+1)/2, n): each system's upper triangle, packed in ``triu_indices`` order (what the Gram
    products give), ``rhs`` is (k, n) and ``ridge`` (n,); any float type (they are read once, into float64).
    The batch is the last, contiguous axis, so every step is one vector operation over all n systems; the
    loops run over the k columns (k is the rank, ~10): 6k + 2k short NumPy calls whatever n is, where one
    LAPACK call per system would pay Python's call overhead n times.

    The factor L is built column by column in one float64 (k + 1, k, n) buffer whose extra row k holds b:
    eliminating that row with the same update as the rows of L is the forward substitution L y = b, so it
    costs no loop of its own, and the packed input is read straight into the buffer (no unpacked k x k copy).
    Returns x as (n, k), a view of the buffer.
    """
    k, n = rhs.shape
    offsets = packed_offsets(k)
    factor = np.empty((k + 1, k, n))
    scratch = np.empty((k + 1, n))
    for j in range(k):
        column = factor[j:, j]  # L[j:k, j] and, in the last row, y[j]
        np.copyto(column[:-1], upper[offsets[j] : offsets[j] + k - j])
        np.copyto(column[-1], rhs[j])
        column[0] += ridge
        if j:  # A[i, j] - sum over m < j of L[i, m] L[j, m], for i = j (the diagonal) .. k-1 and for b
            column -= np.einsum("imn,mn->in", factor[j:, :j], factor[j, :j], out=scratch[: k + 1 - j])
        np.sqrt(column[0], out=column[0])
        column[1:] /= column[0]
    x = factor[k]  # y, overwritten by x: backward substitution L^T x = y
    for j in range(k - 1, -1, -1):
        if j + 1 < k:
            x[j] -= np.einsum("mn,mn->n", factor[j + 1 : k, j], x[j + 1 :], out=scratch[0])
        x[j] /= factor[j, j]
    return x.T


DEFAULT_DENSE_BUDGET_MB = 512
# BLAS on a dense block does users x jokes work where sparse products do ratings' worth, about ten times
# slower per element: dense pays only while at least this share of the cells is rated (Jester: 73%).
DENSE_MIN_DENSITY = 0.1
# Rows solved together: each thread's solve buffer ((k + 1) x k float64 a row, ``batched_cholesky_solve``)
# should stay in the CPU's last-level cache, so the working set does not grow with the number of users. Not
# smaller than that: the batched solve is ~80 short NumPy calls per block whatever its size, so fewer, larger
# blocks pay less Python overhead and fewer GIL hand-offs; past the cache, a system costs more again.
FALLBACK_CACHE_BYTES = 8 * 2**20  # where the OS does not say (macOS, Windows)
MIN_BLOCK_ROWS = 512


@functools.lru_cache(maxsize=1)
def last_level_cache_bytes() -> int:
    """The size of the CPU's last-level cache, as Linux reports it in sysfs (``os.sysconf`` has no name for
    it, and glibc's ``getconf LEVEL3_CACHE_SIZE`` gave ten times the real size on this VM)."""
    caches = "/sys/devices/system/cpu/cpu0/cache"
    best = (0, FALLBACK_CACHE_BYTES)
    try:
        for index in os.listdir(caches):
            if not index.startswith("index"):
                continue
            with open(os.path.join(caches, index, "level")) as level, open(os.path.join(caches, index, "size")) as f:
                size = f.read().strip()
                units = {"K": 2**10, "M": 2**20, "G": 2**30}
                value = int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
                best = max(best, (int(level.read()), value))
    except (OSError, ValueError):
        return FALLBACK_CACHE_BYTES
    return best[1]


def block_rows(rank: int, rows: int, threads: int, cache_bytes: int | None = None) -> int:
    """How many users (or jokes) one block solves: at most as many as the solve buffers of all ``threads``
    fit the last-level cache, and evened out so every thread gets the same number of equal blocks."""
    cache = last_level_cache_bytes() if cache_bytes is None else cache_bytes
    most = max(MIN_BLOCK_ROWS, cache // (threads * 8 * (rank + 1) * rank))
    rounds = max(1, -(-rows // (most * threads)))
    return max(1, -(-rows // (rounds * threads)))


def uses_dense_path(users: int, jokes: int, ratings: int, dense_budget_mb: float) -> bool:
    """Dense BLAS products when the users x jokes pattern and ratings (two float32 arrays, built once per fit)
    fit ``dense_budget_mb`` and at least ``DENSE_MIN_DENSITY`` of the cells are rated; sparse otherwise."""
    cells = users * jokes
    return cells * 8 <= dense_budget_mb * 2**20 and ratings >= DENSE_MIN_DENSITY * cells


def engine_threads() -> int:
    """Worker threads for the fit: one per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


class _Solver:
    """Both half-steps of Spark's objective on one :class:`RatingMatrix`, in blocks of users on a thread pool.

    Users given jokes: each block of users gets its Gram matrices (upper triangle only: k(k+1)/2 columns) and
    right-hand sides from two products of the block's ratings with the jokes' factors, then one batched
    Cholesky solve. Jokes given users: the same block products, transposed, summed over the blocks (one
    accumulator per thread), then the jokes are solved in blocks. Products are float32 BLAS on dense blocks
    (Jester's 100 jokes) or SciPy sparse products (many jokes, sparse rows), the solves float64; all of them
    release the GIL, which is what lets the threads use every core.

    The dense layout builds, once per fit, the users x jokes pattern and ratings as float32 arrays (8 bytes a
    cell: 11 bytes a rating at Jester's density), which the blocks read in place; the sparse layout reads the
    CSR of the :class:`RatingMatrix` directly, with a shared buffer of ones as the pattern's values.
    """

    def __init__(self, data: RatingMatrix, rank: int, dense_budget_mb: float, threads: int):
        self.data, self.rank, self.threads = data, rank, threads
        n_users, n_jokes = data.shape
        self.block = block_rows(rank, n_users, threads)
        self.starts = list(range(0, n_users, self.block))
        self.dense = uses_dense_path(n_users, n_jokes, data.nnz, dense_budget_mb)
        self.offsets = packed_offsets(rank)
        self.width = rank * (rank + 1) // 2  # rows of a packed upper triangle
        self.user_counts = data.user_counts
        self.joke_counts = data.joke_counts
        if self.dense:  # the block products read these two in place: built once per fit
            self.pattern = np.zeros((n_users, n_jokes), dtype=np.float32)
            self.weighted = np.zeros((n_users, n_jokes), dtype=np.float32)
            pattern, weighted = self.pattern.reshape(-1), self.weighted.reshape(-1)
            for start in self.starts:  # block by block: the flat positions never exist for all ratings at once
                stop = min(start + self.block, n_users)
                lo, hi = int(data.indptr[start]), int(data.indptr[stop])
                flat = np.repeat(np.arange(start, stop, dtype=np.int64) * n_jokes, self.user_counts[start:stop])
                flat += data.jokes[lo:hi]
                pattern[flat] = 1.0
                weighted[flat] = data.ratings[lo:hi]
        else:
            widest = max(
                (int(data.indptr[min(s + self.block, n_users)] - data.indptr[s]) for s in self.starts), default=0
            )
            self.ones = np.ones(widest, dtype=np.float32)  # the pattern's values for any block: read-only, shared

    @property
    def layout(self) -> str:
        return "dense" if self.dense else "sparse"

    def _block(self, start: int):
        """(pattern, ratings) of the users in [start, start + block): dense float32 arrays or CSR matrices."""
        data = self.data
        stop = min(start + self.block, data.shape[0])
        if self.dense:
            return self.pattern[start:stop], self.weighted[start:stop]
        lo, hi = int(data.indptr[start]), int(data.indptr[stop])
        cols, values = data.jokes[lo:hi], data.ratings[lo:hi]
        indptr = (data.indptr[start : stop + 1] - lo).astype(np.int32)  # int32 like the indices: no index copies
        shape = (stop - start, data.shape[1])
        return (
            sp.csr_matrix((self.ones[: hi - lo], cols, indptr), shape=shape, copy=False),
            sp.csr_matrix((values, cols, indptr), shape=shape, copy=False),
        )

    def _outer_t(self, factors_t: np.ndarray) -> np.ndarray:
        """(k(k+1)/2, n) packed upper triangles of the n outer products x x^T, from factors as (k, n): one
        broadcast product of contiguous rows per factor row (symmetric, so half)."""
        k = self.rank
        out = np.empty((self.width, factors_t.shape[1]), dtype=factors_t.dtype)
        for i, start in enumerate(self.offsets):
            np.multiply(factors_t[i], factors_t[i:], out=out[start : start + k - i])
        return out

    def _solve(self, upper: np.ndarray, rhs: np.ndarray, counts: np.ndarray, reg: float) -> np.ndarray:
        """Solve (Gram + regParam n I) x = rhs for n rows given as packed upper triangles (k(k+1)/2, n) and
        right-hand sides (k, n)."""
        # ALS-WR: lambda scaled by each row's rating count
        return batched_cholesky_solve(upper, rhs, reg * np.maximum(counts, 1))

    def solve_users(self, pool, jokes: np.ndarray, reg: float) -> np.ndarray:
        out = np.empty((self.data.shape[0], self.rank))
        jokes32 = jokes.astype(np.float32)
        outer_t = self._outer_t(np.ascontiguousarray(jokes32.T))
        jokes_t = np.ascontiguousarray(jokes32.T)

        def work(start: int) -> None:
            pattern, weighted = self._block(start)
            stop = start + pattern.shape[0]
            if self.dense:  # (k(k+1)/2, n) and (k, n) straight from BLAS
                upper, rhs = outer_t @ pattern.T, jokes_t @ weighted.T
            else:
                upper, rhs = (pattern @ outer_t.T).T, (weighted @ jokes_t.T).T
            out[start:stop] = self._solve(upper, rhs, self.user_counts[start:stop], reg)

        list(pool.map(work, self.starts))
        return out

    def solve_jokes(self, pool, users: np.ndarray, reg: float) -> np.ndarray:
        n_jokes = self.data.shape[1]
        users32 = users.astype(np.float32)
        users_t = np.ascontiguousarray(users32.T)  # (k, n): each block's outer products from contiguous rows

        def accumulate(starts: list[int]) -> tuple[np.ndarray, np.ndarray]:
            upper = np.zeros((self.width, n_jokes), dtype=np.float64)
            rhs = np.zeros((self.rank, n_jokes), dtype=np.float64)
            for start in starts:
                pattern, weighted = self._block(start)
                stop = start + pattern.shape[0]
                block_users, outer_t = users32[start:stop], self._outer_t(users_t[:, start:stop])
                if self.dense:
                    upper += outer_t @ pattern
                    rhs += block_users.T @ weighted
                else:
                    upper += (pattern.T @ outer_t.T).T
                    rhs += (weighted.T @ block_users).T
            return upper, rhs

        shares = [self.starts[t :: self.threads] for t in range(self.threads)]
        parts = list(pool.map(accumulate, [share for share in shares if share]))
        upper = sum((p[0] for p in parts), np.zeros((self.width, n_jokes)))
        rhs = sum((p[1] for p in parts), np.zeros((self.rank, n_jokes)))
        out = np.empty((n_jokes, self.rank))

        def work(start: int) -> None:
            stop = min(start + self.block, n_jokes)
            out[start:stop] = self._solve(upper[:, start:stop], rhs[:, start:stop], self.joke_counts[start:stop], reg)

        list(pool.map(work, range(0, n_jokes, self.block)))
        return out


def _train_rmse(data: RatingMatrix, users: np.ndarray, jokes: np.ndarray) -> float:
    predicted = np.einsum("ij,ij->i", users[data.users], jokes[data.jokes])
    return float(np.sqrt(np.mean((data.ratings - predicted) ** 2)))


def _blas_limited(threads: int):
    """Our threads times BLAS's own threads must not exceed the cores: with more than one of ours, BLAS runs
    single-threaded inside each (threadpoolctl limits OpenBLAS/MKL, whichever NumPy and SciPy loaded)."""
    if threads <= 1:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


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


def rmse_mae(actual: np.ndarray, predicted: np.ndarray) -> dict:
    """RMSE and MAE over rows with a prediction (NaN = cold start, dropped as Spark's 'drop' does)."""
    ok = ~np.isnan(predicted)
    err = actual[ok] - predicted[ok]
    if err.size == 0:
        return {"rmse": None, "mae": None, "rows": 0}
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err))), "rows": int(err.size)}


def nmae(mae: float | None, rating_range) -> float | None:
    """MAE over the span of the rating scale (Goldberg et al. 2001), the measure Jester papers report."""
    return None if mae is None else mae / (float(rating_range[1]) - float(rating_range[0]))
