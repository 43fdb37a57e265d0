"""Directories a run owns while it lives (its staging directory, its checkpoint directory), and the sweep that
removes those a killed run left behind.

A run holds an exclusive ``flock`` on ``<dir>/.owner`` for as long as it runs; the kernel releases it when the
process ends, however it ends (SIGKILL included). A later run that can take the lock of such a directory knows
its owner is gone and removes it; a directory whose lock is held belongs to a live run and is never touched.
Where ``fcntl`` is missing (Windows) or the file system refuses ``flock``, nothing is swept.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

log = logging.getLogger(__name__)

OWNER_FILE = ".owner"
_HELD: dict[str, object] = {}  # directory -> the open file whose lock this process holds


def claim(directory: str) -> None:
    """Hold ``directory``'s owner lock until :func:`release` (or the process's end)."""
    if fcntl is None:
        return
    handle = open(os.path.join(directory, OWNER_FILE), "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        log.debug("owner lock not supported in %s (%s)", directory, exc)
        return
    _HELD[directory] = handle


def release(directory: str) -> None:
    handle = _HELD.pop(directory, None)
    if handle is not None:
        handle.close()  # closing drops the lock


def orphaned(directory: str) -> bool:
    """True when ``directory`` has an owner file whose lock nobody holds: its run is gone."""
    if fcntl is None or directory in _HELD:
        return False
    path = os.path.join(directory, OWNER_FILE)
    try:
        handle = open(path)
    except OSError:
        return False  # no owner file: an older version's directory, or one still being created
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # held: a live run
    finally:
        handle.close()
    return True


def sweep(pattern: str) -> list[str]:
    """Remove every directory matching ``pattern`` whose run is gone; the ones removed."""
    removed = []
    for directory in sorted(glob.glob(pattern)):
        if os.path.isdir(directory) and orphaned(directory):
            shutil.rmtree(directory, ignore_errors=True)
            if not os.path.exists(directory):
                removed.append(directory)
    if removed:
        log.warning(
            "removed %d director%s left by runs that no longer run: %s",
            len(removed),
            "y" if len(removed) == 1 else "ies",
            ", ".join(removed),
        )
    return removed
