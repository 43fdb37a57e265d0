"""The peak resident memory of this process over a block of code, sampled by a background thread."""

from __future__ import annotations

import threading


class PeakRSS:
    """``with PeakRSS() as peak: ...`` then ``peak.peak_mb`` (largest RSS seen, MB) and ``peak.start_mb``.
    Sampled every ``interval`` seconds plus once at each end, so a spike shorter than the interval can be
    missed; good enough for the collect + fit of a driver-side engine, which lasts far longer."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self.start_mb = self.peak_mb = self._rss_mb()

    def _rss_mb(self) -> float:
        return self._process.memory_info().rss / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss_mb())
