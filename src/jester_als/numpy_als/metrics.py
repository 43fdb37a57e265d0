"""RMSE, MAE and NMAE of predictions against ratings."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("jester_als.numpy_als")  # one logger for the engine, as before it was a package


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
