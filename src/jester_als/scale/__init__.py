"""``jester-als scale``: when does Spark become necessary? A measured scaling study and a cost model.

For each size along three axes (more users with Jester's 100 jokes; more ratings per user with fixed users and
jokes; more jokes with fixed users, up to a Netflix-shaped 17,770) the project's generator streams a table to
Parquet, split over ratings, and each engine fits it with the same rank, regParam and iterations in a fresh
worker process: NumPy ALS on the driver, and Spark ALS in local mode (driver and executor in one JVM). The parent
samples the resident memory of the worker's whole process tree every 0.1 s (peak RSS) and enforces the time and
memory budgets: an engine that exceeds one is stopped, the limit is recorded with its reason, and that engine's
axis ends there.

The cost model (``costmodel``) fits each engine's time per iteration and peak memory to named terms by
non-negative least squares, with standard errors, checks it on two points left out (above and inside the
measured range), finds the size at which the memory model meets the budget beside the largest size measured to
fit, and predicts sizes this machine cannot hold.

Modules: ``study`` (the axes and the run: each point's table and each engine in a worker process of its own,
run by :mod:`jester_als.harness`), ``cluster`` (the measurements on the project's standalone cluster),
``costmodel`` (the fitted cost models, one machine's and the cluster's, and their predictions), ``analysis``
(what the measurements say: limits, probes, crossovers, why a check missed), ``render`` (scale.md and scale.png).
"""

from jester_als.scale.study import scale_job

__all__ = ["scale_job"]
