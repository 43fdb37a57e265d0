"""The fitted NumPy model: factors (and offsets) with their ids, predictions, and saving and loading as one ``.npz``."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from jester_als.errors import JobError
from jester_als.numpy_als.biases import Biases
from jester_als.numpy_als.data import positions

log = logging.getLogger("jester_als.numpy_als")  # one logger for the engine, as before it was a package


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
