"""The worker harness the benchmarks share (``jester-als bench`` and ``jester-als scale``): a table generated and
split to Parquet (``data``), one engine fitted on it in a fresh process (``worker``; the cluster measurements'
own worker in ``cluster_worker``, Spark's REST readings in ``sparkrest``), and the parent that starts a worker,
samples its process tree's memory and stops it at its budgets (``runner``)."""
