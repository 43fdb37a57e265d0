"""Peaks over a block of code, sampled by a background thread: this process's resident memory, and (in
``jester_als.harness.sparkrest``) what Spark's block managers hold."""

from __future__ import annotations

import threading


class Sampler:
    """``with sampler: ...`` calls ``read()`` every ``interval`` seconds on a daemon thread while the block runs,
    and once more when it ends; a subclass's ``read`` keeps whatever peaks it wants."""

    def __init__(self, interval: float, name: str):
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name=name, daemon=True)

    def read(self) -> None:
        raise NotImplementedError

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self.read()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.read()


class PeakRSS(Sampler):
    """``with PeakRSS() as peak: ...`` then ``peak.peak_mb`` (largest RSS seen, MB) and ``peak.start_mb``.
    Sampled every ``interval`` seconds plus once at each end, so a spike shorter than the interval can be
    missed; good enough for the collect + fit of a driver-side engine, which lasts far longer."""

    def __init__(self, interval: float = 0.02):
        import psutil

        super().__init__(interval, "peak-rss")
        self._process = psutil.Process()
        self.start_mb = self.peak_mb = self._rss_mb()

    def _rss_mb(self) -> float:
        return self._process.memory_info().rss / 2**20

    def read(self) -> None:
        self.peak_mb = max(self.peak_mb, self._rss_mb())
