"""Whatever kills `frugal serve`, the processes it started go with it, within seconds.

`frugal serve` starts a local Ray (GCS, raylet, Ray's agents, Serve's actors) and the
model replicas start vLLM engines. Killed with SIGKILL, or by a supervisor that signals
its process group and gives up on the graceful stop, the server gets no chance to stop
them. Ray shares the fate of its GCS and raylet with the driver, and the engines watch
their replica (serving/parent_watchdog.py), but Ray's dashboard and runtime-env agents
were measured living on 60-80 s, re-parented to init.

So `frugal serve` first starts this reaper: a small process in a process group of its
own (a signal to the server's group does not reach it) that notes the server's
descendants twice a second and, once the server is gone, kills every one of them still
alive (and whatever they spawned since the last look). After a graceful stop there is
nothing left to kill and it just exits. Written by hand: Ray's own fate sharing covers
only the processes it starts directly, and no library watches a process tree this way.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time

import psutil

#: How often the reaper looks at the server's process tree.
POLL_INTERVAL_S = 0.5
#: The promise (docs/reliability.md): this long after `frugal serve` is killed, however,
#: none of its processes is left. Measured 1.6-3 s on 2 cores (`frugal bench faults`);
#: the margin is for a loaded machine.
ORPHANS_GONE_WITHIN_S = 15.0


def start_reaper(server_pid: int | None = None) -> subprocess.Popen[bytes]:
    """Start a reaper for `server_pid` (default: this process) in its own process group."""
    return subprocess.Popen(
        [sys.executable, "-m", "serving.reaper", str(server_pid or os.getpid())],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, process_group=0)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def watch(server_pid: int, interval_s: float = POLL_INTERVAL_S) -> dict[int, float]:
    """Note the server's descendants (pid -> start time) until the server is gone."""
    me = os.getpid()
    known: dict[int, float] = {}
    try:
        server = psutil.Process(server_pid)
    except psutil.NoSuchProcess:
        return known
    while _alive(server):
        with contextlib.suppress(psutil.Error):
            for child in server.children(recursive=True):
                if child.pid != me:
                    with contextlib.suppress(psutil.Error):
                        known.setdefault(child.pid, child.create_time())
        time.sleep(interval_s)
    return known


def reap(known: dict[int, float], timeout_s: float = 5.0) -> list[int]:
    """SIGKILL each noted process still alive (the same process: its start time matches,
    so a reused pid is spared) and its descendants; returns the pids killed."""
    victims: dict[int, psutil.Process] = {}
    for pid, created in known.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() != created:
                continue
            victims[pid] = process
            for child in process.children(recursive=True):
                victims[child.pid] = child
        except psutil.Error:
            continue
    for process in victims.values():
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(list(victims.values()), timeout=timeout_s)
    return sorted(victims)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("server_pid", type=int)
    parser.add_argument("--interval", type=float, default=POLL_INTERVAL_S)
    args = parser.parse_args()
    known = watch(args.server_pid, args.interval)
    killed = reap(known)
    if killed:
        print(f"frugal reaper: server {args.server_pid} is gone; killed {len(killed)} "
              f"processes it left: {killed}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
