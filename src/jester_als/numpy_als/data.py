"""The ratings as the NumPy engine holds them: a CSR matrix over the distinct users and jokes with the id lookups, and
Arrow columns read into arrays without copies where Arrow allows."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("jester_als.numpy_als")  # one logger for the engine, as before it was a package


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
