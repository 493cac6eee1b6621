"""The one `frugal serve` launcher (`serving.evaluation.launcher`), without a real server:
session-scoped clean-up and the failure path, on stand-in processes (seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving.evaluation import launcher

# A leader that starts a child in a process group of its own (as Ray does with its
# workers) and waits; the child's pid goes to stdout.
LEADER = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen(['sleep', '120'], process_group=0)\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(120)\n"
)


def test_stop_session_kills_children_in_other_process_groups() -> None:
    leader = subprocess.Popen([sys.executable, "-c", LEADER], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    assert leader.stdout is not None
    child = int(leader.stdout.readline())
    # What signalling the leader's process group alone would have left behind.
    assert os.getpgid(child) != leader.pid
    assert set(launcher.session_pids(leader.pid)) >= {leader.pid, child}

    launcher.stop_session(leader, grace_s=5)

    assert leader.poll() is not None
    deadline = time.monotonic() + 10
    while launcher.session_pids(leader.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert launcher.session_pids(leader.pid) == []


def test_a_server_that_exits_raises_with_its_log_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `frugal serve FILE` replaced by a script that fails the way a bad config does.
    fails = [sys.executable, "-c", "import sys; print('no such model', file=sys.stderr); "
             "sys.exit(3)"]
    monkeypatch.setattr(launcher, "frugal_command", lambda: fails)
    with pytest.raises(RuntimeError, match="exited with 3") as raised:
        with launcher.frugal_server({"models": []}, log_dir=tmp_path, timeout_s=60):
            pass
    assert "no such model" in str(raised.value)
    [config] = tmp_path.glob("frugal-*.yaml")
    assert "127.0.0.1" in config.read_text()  # the launcher picked host and port


def test_frugal_command_falls_back_to_the_module(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    monkeypatch.setattr(launcher, "BIN", tmp_path)
    assert launcher.frugal_command() == [sys.executable, "-m", "serving.cli"]
    (tmp_path / "frugal").write_text("")
    assert launcher.frugal_command() == [str(tmp_path / "frugal")]
