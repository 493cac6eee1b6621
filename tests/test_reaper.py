"""The reaper (serving/reaper.py) on real processes: once its server is gone it kills
every process the server left, in any process group, and spares everything else."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from serving.reaper import reap, start_reaper

#: A stand-in for `frugal serve`: it starts two children, one in a process group of its
#: own (as Ray's workers are) that itself starts a grandchild, prints their pids, sleeps.
SERVER = """
import subprocess, sys, time
sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
child = subprocess.Popen(sleeper)
nested = subprocess.Popen([sys.executable, "-c",
    "import subprocess, sys, time; g = subprocess.Popen(sys.argv[1:]); print(g.pid, flush=True); "
    "time.sleep(120)", *sleeper], stdout=subprocess.PIPE, text=True, process_group=0)
grandchild = nested.stdout.readline().strip()
print(child.pid, nested.pid, grandchild, flush=True)
time.sleep(120)
"""


def _server() -> tuple[subprocess.Popen[str], list[psutil.Process]]:
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    assert server.stdout is not None
    pids = [int(pid) for pid in server.stdout.readline().split()]
    return server, [psutil.Process(pid) for pid in pids]


def test_everything_the_killed_server_left_is_killed() -> None:
    server, left = _server()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    reaper = start_reaper(server.pid)
    try:
        time.sleep(1.5)  # the reaper has looked at the tree at least once
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
        killed_at = time.monotonic()
        gone, alive = psutil.wait_procs(left, timeout=10)
        assert not alive, f"outlived their server: {[p.pid for p in alive]}"
        print(f"reaped {len(gone)} processes in {time.monotonic() - killed_at:.1f} s")
        assert reaper.wait(timeout=10) == 0  # and the reaper itself is gone
        assert bystander.poll() is None  # a process the server did not start is spared
    finally:
        for process in [*left, psutil.Process(bystander.pid)]:
            if process.is_running():
                process.kill()
        reaper.kill()


def test_a_reused_pid_is_spared() -> None:
    """A noted pid whose process is now another one (another start time) is not killed."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = psutil.Process(other.pid).create_time()
        assert reap({other.pid: started - 100.0}) == []
        assert other.poll() is None
        assert reap({other.pid: started}) == [other.pid]
        other.wait(timeout=10)  # (reap already collected its exit status)
        assert not psutil.pid_exists(other.pid)
    finally:
        if other.poll() is None:
            other.kill()


def test_a_server_that_stops_by_itself_leaves_nothing_to_kill() -> None:
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"],
                              start_new_session=True)
    reaper = start_reaper(server.pid)
    server.wait(timeout=10)
    assert reaper.wait(timeout=10) == 0
    assert os.getpid()  # this process (not the server's) is untouched
