"""The solver: batched Cholesky solves of each block's k x k systems, blocks sized to the CPU cache, a thread pool, and
the dense or sparse rating pattern the Gram matrices are built from."""

from __future__ import annotations

import contextlib
import functools
import logging
import os

import numpy as np
import scipy.sparse as sp

from jester_als.numpy_als.data import RatingMatrix

log = logging.getLogger("jester_als.numpy_als")  # one logger for the engine, as before it was a package


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


def _blas_limited(threads: int):
    """Our threads times BLAS's own threads must not exceed the cores: with more than one of ours, BLAS runs
    single-threaded inside each (threadpoolctl limits OpenBLAS/MKL, whichever NumPy and SciPy loaded)."""
    if threads <= 1:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")
