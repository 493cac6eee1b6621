"""Exit when the parent process dies, so a killed server leaves no vLLM engine behind.

vLLM's EngineCore and its workers are spawned by the model replica (a Ray worker). When
the replica is SIGKILLed (a killed `frugal serve`, `ray stop --force`, Ray killing a
replica that missed its health check), the engine processes were re-parented to init and
kept running, holding gigabytes each, and ignoring SIGTERM. Each spawned vLLM process
therefore watches its parent: once `getppid()` changes, the parent is gone and the
process exits at once.

Why a polling thread and not `prctl(PR_SET_PDEATHSIG)`: the death signal fires when the
parent *thread* that spawned the child exits, and vLLM may spawn from a short-lived
thread, which would kill a healthy engine. Polling `getppid()` once a second costs
nothing measurable. Written by hand: no library offers it.

Only processes started by `multiprocessing` (vLLM's spawned children) are watched: a
model replica's own parent is Ray's raylet, which already ends its workers, and a
driver process (`frugal serve`, a script using `vllm.LLM`) must not exit with its shell.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time

logger = logging.getLogger("frugal.watchdog")

#: How often a watched process checks its parent; an orphan lives at most this long.
POLL_INTERVAL_S = 1.0

_started = False


def watch_parent(interval_s: float = POLL_INTERVAL_S) -> bool:
    """Start the watchdog in this process if it is a spawned child; True if started."""
    global _started
    if _started or multiprocessing.parent_process() is None:
        return False
    parent = os.getppid()
    if parent == 1:  # already an orphan when it started: nothing to watch
        return False

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                logger.warning("parent %s of pid %s is gone: exiting", parent, os.getpid())
                os._exit(1)  # no cleanup to wait for: the engine's owner is dead

    threading.Thread(target=watch, name="frugal-parent-watchdog", daemon=True).start()
    _started = True
    return True
