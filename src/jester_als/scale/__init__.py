"""``jester-als scale``: when does Spark become necessary? A measured scaling study and a cost model.

For each size along two axes (more users with 100 jokes; more jokes with a fixed number of users, each rating
few of them) the project's generator streams a Jester-shaped table to Parquet, split over ratings, and each
engine fits it with the same rank, regParam and iterations in a fresh worker process: NumPy ALS on the
driver, and Spark ALS in local mode (driver and executor in one JVM). The parent samples the resident memory
of the worker's whole process tree every 0.1 s (peak RSS) and enforces the time and memory budgets: an engine
that exceeds one is stopped, the limit is recorded with its reason, and that engine's axis ends there.

A cost model, fitted to the measured points by least squares, gives per-iteration time as
``c0 + c1 * nnz * k^2 + c2 * (users + jokes) * k^3`` and peak memory as
``m0 + m1 * nnz + m2 * (users + jokes) * k + m3 * users * jokes`` (the last term is NumPy's dense rating
pattern, used while it fits ``scale.numpy_dense_budget_mb``) per engine, plus Spark's shuffle volume per
iteration; it is checked against a measured point left out of the fit and then used to predict sizes this
machine cannot hold.

Modules: ``data`` (generated tables, split and written as Parquet), ``worker`` (one engine on one point, in
its own process), ``runner`` (starts a worker, samples its memory, enforces the budgets), ``study`` (the axes
and the run), ``costmodel`` (the fitted cost model and predictions), ``render`` (scale.md and scale.png).
"""

from jester_als.scale.study import scale_job

__all__ = ["scale_job"]
