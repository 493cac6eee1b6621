"""The parent watchdog (serving/parent_watchdog.py): a spawned process whose parent dies
exits; a process that was not spawned by multiprocessing is never watched."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import psutil

from serving.parent_watchdog import watch_parent


def _grandchild(ready) -> None:
    assert watch_parent(interval_s=0.1)
    ready.set()
    time.sleep(60)  # a stuck engine: only the watchdog ends it early


def _child(ready, pid_queue) -> None:
    ctx = multiprocessing.get_context("spawn")
    grandchild = ctx.Process(target=_grandchild, args=(ready,))
    grandchild.start()
    pid_queue.put(grandchild.pid)
    time.sleep(60)


def test_spawned_process_exits_when_its_parent_is_killed() -> None:
    ctx = multiprocessing.get_context("spawn")
    ready, pids = ctx.Event(), ctx.Queue()
    child = ctx.Process(target=_child, args=(ready, pids))
    child.start()
    grandchild = psutil.Process(pids.get(timeout=60))
    assert ready.wait(timeout=60)
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=10)
    gone, alive = psutil.wait_procs([grandchild], timeout=10)
    for process in alive:
        process.kill()
    assert not alive, "the orphan outlived its parent"


def test_a_process_not_spawned_by_multiprocessing_is_not_watched() -> None:
    assert multiprocessing.parent_process() is None
    assert watch_parent() is False
