"""The decision to fall back: when Spark ALS is not allowed (Databricks shared compute without ML
whitelisting), either stop with a message that says what to do, or, with ``als.fallback: numpy``, let the job
tune, evaluate and recommend with the NumPy engine on the driver (``driver``), saying so in the log and in
``metrics.json``.
"""

from __future__ import annotations

import logging

from jester_als.errors import JobError

log = logging.getLogger(__name__)

WHITELIST_MARKERS = ("is not whitelisted", "Py4JSecurityException")

WAYS_OUT = (
    "Spark ML's ALS cannot be constructed on this compute (Py4JSecurityException: the ALS class is not "
    "whitelisted). This happens on Databricks shared/standard access mode clusters before Runtime 17. "
    "Ways out: (1) run on a cluster in dedicated (single-user) access mode; (2) use Databricks Runtime 17 or "
    "later on standard compute; (3) use serverless compute with environment version 4 or later. Or set "
    "als.fallback: numpy to fit the NumPy engine on the driver instead."
)


class AlsNotAllowedError(JobError):
    """Spark ALS was refused by the platform (Py4J whitelisting)."""


def is_not_allowed(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return any(marker in text for marker in WHITELIST_MARKERS)


def not_allowed_reason(exc: BaseException) -> str:
    """The line of the error that says what was refused."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return next((line for line in lines if any(m in line for m in WHITELIST_MARKERS)), lines[0] if lines else "")
