"""Progress a person can follow: a line when a step starts and ends, and a heartbeat while a long one runs."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager

log = logging.getLogger("jester_als.progress")

HEARTBEAT_SECONDS = 20.0


@contextmanager
def step(
    index: int,
    total: int,
    what: str,
    heartbeat: float = HEARTBEAT_SECONDS,
    *,
    record: dict | None = None,
    name: str | None = None,
):
    """``with step(2, 4, "tuning"):`` logs ``step 2/4: tuning``, then every ``heartbeat`` seconds ``step 2/4:
    tuning, 40 s so far``, and ``step 2/4: tuning done in 52.3 s`` (or ``failed after``); with ``record`` and
    ``name``, the step's seconds are kept as ``record[name]``."""
    label = f"step {index}/{total}: {what}"
    log.info("%s", label)
    started = time.perf_counter()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(heartbeat):
            log.info("%s, %.0f s so far", label, time.perf_counter() - started)

    beater = threading.Thread(target=beat, name="heartbeat", daemon=True)
    beater.start()
    try:
        yield
    except BaseException:
        log.info("%s failed after %.1f s", label, time.perf_counter() - started)
        raise
    finally:
        done.set()
        beater.join()
    seconds = time.perf_counter() - started
    if record is not None and name:
        record[name] = round(seconds, 2)
    log.info("%s done in %.1f s", label, seconds)
