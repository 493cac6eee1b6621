"""The one launcher of `frugal serve` as a subprocess (`frugal_server`), for the benchmarks,
the quantization gate and the tests: on a free loopback port, its log in a file, yielding
the base URL once the server answers, and always stopping everything it started.

Clean-up is scoped to the server's own session (it starts in a new session): Ray puts
its workers and vLLM's engine processes in process groups of their own but in the
session of `frugal serve`, so killing the session's processes (`stop_session`) stops
exactly this server, Ray workers included; signalling only the leader's process group
would leave them behind. `ray stop --force` would also kill every other Ray cluster on a
shared machine, so it is opt-in (`ray_stop=True`) for machines where the caller is alone.
The raw vLLM baseline server of `frugal bench serve` (`serving.bench.raw_vllm`) reuses
these helpers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 900.0
STOP_GRACE_S = 60.0
LOG_TAIL_LINES = 20

__all__ = [
    "START_TIMEOUT_S",
    "Running",
    "Spawned",
    "free_port",
    "frugal_command",
    "frugal_server",
    "gateway_urls",
    "kill_session",
    "log_file",
    "session_pids",
    "stop_session",
    "wait_port_free",
]


def free_port() -> int:
    """A loopback port nobody listens on now, below the kernel's ephemeral range (an
    outgoing connection cannot take it before the server binds it)."""
    from serving.serve_cli import spare_port

    return spare_port("127.0.0.1", avoid=range(0))


def session_pids(session_id: int) -> list[int]:
    """Live processes in a session: the server and everything it spawned, whatever
    group."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp session ...
        fields = stat.rsplit(")", 1)[1].split()
        # A zombie has already exited (its parent has not reaped it yet): not running.
        if int(fields[3]) == session_id and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def stop_session(process: subprocess.Popen[Any], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the leader (frugal and vLLM shut down cleanly on it), wait, then SIGKILL
    whatever is left in its session."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_s)
    deadline = time.monotonic() + 10
    while (left := session_pids(process.pid)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


def kill_session(session_id: int, timeout_s: float = 10.0) -> int:
    """SIGKILL every process of a session at once, as a machine losing power would: no
    process gets to clean up (the crash tests of lever 4). Returns how many there were."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while (left := session_pids(session_id)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        time.sleep(0.2)
    return len(killed)


def wait_port_free(port: int, timeout_s: float = 30) -> None:
    """After a stop: the next server may want the same port."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.5)


#: `frugal serve` lets the gateway's direct ingress take `http_options.port` and the
#: ports after it, one per gateway replica (serving/serve_cli.py).
DIRECT_INGRESS_PORTS = 16


def gateway_urls(base_url: str) -> list[str]:
    """The base URL (ending in /v1) of every gateway replica of the server at `base_url`.
    With direct ingress each replica serves HTTP on a port of its own, from the server's
    port upwards (a replica that Ray Serve restarts may take another port of the range),
    so a client picks its replica by port."""
    import httpx

    host, port = base_url.removesuffix("/v1").rsplit(":", 1)
    urls = []
    for candidate in range(int(port), int(port) + DIRECT_INGRESS_PORTS):
        try:
            if httpx.get(f"{host}:{candidate}/health", timeout=5).status_code == 200:
                urls.append(f"{host}:{candidate}/v1")
        except httpx.HTTPError:
            continue
    return urls


@dataclass(frozen=True)
class Running:
    """A started server: its base URL (ending in /v1), session id (= leader pid), log."""

    url: str
    session_id: int
    log: Path


def log_file(log_dir: Path | None, name: str) -> Path:
    """`log_dir/name`, the folder created; a fresh temporary folder when `log_dir` is None."""
    folder = log_dir or Path(tempfile.mkdtemp(prefix="frugal-server-"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def frugal_command() -> list[str]:
    """`frugal` from this interpreter's environment, else `python -m serving.cli` (a source
    tree that is not installed has no console script)."""
    script = BIN / "frugal"
    return [str(script)] if script.exists() else [sys.executable, "-m", "serving.cli"]


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Spawned:
    """`frugal serve` started in a session of its own: its process, port, log, and the
    URL of its READY line once printed (`ready`)."""

    def __init__(self, config: dict[str, Any], *, log_dir: Path | None = None,
                 env: dict[str, str] | None = None, cwd: Path | None = None,
                 port: int | None = None) -> None:
        import yaml

        self.port = port or free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.config = {**config, "http_options": {**config.get("http_options", {}),
                                                  "host": "127.0.0.1", "port": self.port}}
        self.log_path = log_file(log_dir, f"frugal-{self.port}.log")
        config_path = self.log_path.with_suffix(".yaml")
        config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self._log = self.log_path.open("a")
        self.process = subprocess.Popen([*frugal_command(), "serve", str(config_path)],
                                        stdout=subprocess.PIPE, stderr=self._log, text=True,
                                        start_new_session=True, env=env, cwd=cwd)
        self.ready: list[str] = []
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:  # the READY line arrives on stdout; keep the rest in the log
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._log.write(line)
            self._log.flush()
            if line.startswith("READY "):
                self.ready.append(line.split()[1].strip())

    @property
    def session_id(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """The READY URL; RuntimeError with the log's tail if it exits or times out."""
        deadline = time.monotonic() + timeout_s
        while not self.ready:
            if self.process.poll() is not None:
                raise RuntimeError(f"frugal serve exited with {self.process.returncode}; "
                                   f"log: {self.log_path}:\n{_tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"frugal serve not ready after {timeout_s:.0f}s; log: "
                                   f"{self.log_path}:\n{_tail(self.log_path)}")
            time.sleep(1)
        return self.ready[0]

    def close_log(self) -> None:
        self._log.close()


@contextlib.contextmanager
def frugal_server(
    config: dict[str, Any], *, log_dir: Path | None = None, env: dict[str, str] | None = None,
    timeout_s: float = START_TIMEOUT_S, ray_stop: bool = False, cwd: Path | None = None,
) -> Iterator[Running]:
    """`frugal serve` on a deployments YAML built from `config` (its port is replaced by a
    free one); yields the URL of its `READY http://HOST:PORT/v1` line. The YAML and the log
    are `frugal-PORT.yaml` / `.log` in `log_dir` (default: a new temporary folder). A
    server that exits or is not ready within `timeout_s` raises RuntimeError with the
    log's tail.

    `frugal serve` itself puts the gateway's direct ingress on `http_options.port` (and
    Ray's proxy elsewhere), so READY's URL is the direct path. `cwd` selects the code: Ray
    puts the driver's working directory first on its workers' path, so a copy of the
    repository there is what runs.
    """
    import httpx

    spawned = Spawned(config, log_dir=log_dir, env=env, cwd=cwd)
    process, port, log_path = spawned.process, spawned.port, spawned.log_path
    try:
        url = spawned.wait_ready(timeout_s)
        keys = (config.get("gateway") or {}).get("api_keys") or []
        auth = {"Authorization": f"Bearer {keys[0]}"} if keys else {}
        tenants_only = bool((config.get("tenants") or {}).get("enabled")) and not keys
        check = url.removesuffix("/v1") + "/health" if tenants_only else f"{url}/models"
        if httpx.get(check, headers=auth, timeout=30).status_code != 200:
            raise RuntimeError(f"frugal printed READY but {check} fails; log: {log_path}")
        yield Running(url, process.pid, log_path)
    finally:
        stop_session(process)
        if ray_stop:
            subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, check=False)
        wait_port_free(port)
        spawned.close_log()
