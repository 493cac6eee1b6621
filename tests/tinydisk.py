"""A real small filesystem for the store, that the tests can fill up or make read-only.

A tmpfs of a few megabytes is mounted on a directory (this needs root, as the sandbox
and CI run); `fill()` writes a ballast file until the kernel says ENOSPC, `free()`
deletes it, `read_only()` and `writable()` remount it. SQLite and the blob directory
then get the kernel's own errors: nothing is mocked. A machine where mounting is
impossible fails the test with the reason, it is not skipped.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import sqlite3
import subprocess
import time
from pathlib import Path

from prometheus_client import REGISTRY
from sqlalchemy import Engine


def _sh(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip() or done.returncode}")


class TinyDisk:
    def __init__(self, root: Path, size_kb: int) -> None:
        self.root = root
        self.size_kb = size_kb
        self.ballast = root / "ballast"

    def mount(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _sh("mount", "-t", "tmpfs", "-o", f"size={self.size_kb}k", "tmpfs", str(self.root))

    def unmount(self) -> None:
        release_connections()
        _sh("umount", "-l", str(self.root))

    def fill(self, leave_kb: int = 0) -> None:
        """Leave no free block (or `leave_kb`). SQLite databases on it first move their
        WAL into the main file and truncate it: a WAL reuses its own space, so without
        this a few writes would still fit in it."""
        for db in self.root.rglob("*.db"):
            with contextlib.closing(sqlite3.connect(db)) as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        block = b"\0" * 4096
        with open(self.ballast, "ab", buffering=0) as out:
            try:
                while True:
                    out.write(block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
            if leave_kb:
                out.truncate(max(out.tell() - leave_kb * 1024, 0))
        stat = os.statvfs(self.root)
        assert stat.f_bavail * stat.f_frsize == leave_kb * 1024, stat

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def read_only(self) -> None:
        """Remount read-only. Linux refuses while a file is open for writing, so every
        pooled database connection of this process is closed first (they reopen); one
        in use by a worker thread at that moment is waited for (retried)."""
        for attempt in range(50):
            release_connections()
            try:
                _sh("mount", "-o", "remount,ro", str(self.root))
                return
            except RuntimeError:
                if attempt == 49:
                    raise
                time.sleep(0.1)

    def writable(self) -> None:
        _sh("mount", "-o", "remount,rw", str(self.root))

    def files(self) -> list[str]:
        return sorted(p.name for p in self.root.rglob("*") if p.is_file())


def release_connections() -> None:
    """Close the pooled connections of every SQLAlchemy engine in this process."""
    for obj in gc.get_objects():
        if issubclass(type(obj), Engine):
            obj.dispose()


def integrity(db: Path) -> str:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def store_errors(kind: str, where: str) -> float:
    """`frugal_store_errors_total{kind, where}` in this process."""
    return REGISTRY.get_sample_value(
        "frugal_store_errors_total", {"kind": kind, "where": where}) or 0.0
