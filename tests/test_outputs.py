"""The output directory's lock without fcntl (Windows): the lock directory excludes a second holder and is
released, and a run still commits."""

from __future__ import annotations

import json
import os
import threading

import jester_als.outputs as outputs


def test_the_lock_works_where_fcntl_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "fcntl", None)
    order: list[str] = []
    held = threading.Event()
    release = threading.Event()

    def first() -> None:
        with outputs.output_lock(str(tmp_path)):
            order.append("first in")
            held.set()
            release.wait(10)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    assert held.wait(10)
    assert os.path.isdir(tmp_path / (outputs.LOCK_FILE + ".d"))  # the lock directory is what excludes
    waiter = threading.Thread(
        target=lambda: (outputs.output_lock(str(tmp_path)).__enter__(), order.append("second in"))
    )
    waiter.start()
    waiter.join(0.5)
    assert order == ["first in"]  # the second holder waits while the first holds the lock
    release.set()
    thread.join(10)
    waiter.join(10)
    assert order == ["first in", "first out", "second in"]


def test_a_run_commits_without_fcntl(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "fcntl", None)
    out = outputs.RunOutputs(str(tmp_path / "out"), "overwrite", ["ratings"])
    out.check()
    os.makedirs(out.path("ratings"))
    metrics = out.commit(lambda previous: ({"data": {"ratings": 3}}, "# report\n"))
    assert metrics == {"data": {"ratings": 3}}
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == {"data": {"ratings": 3}}
    assert not os.path.exists(tmp_path / "out" / (outputs.LOCK_FILE + ".d"))
