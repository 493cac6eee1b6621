"""A store that cannot take writes: its disk is full, or it is read-only.

This is the one place that recognises the condition, from whichever layer reported it:
SQLite (SQLITE_FULL, SQLITE_READONLY), PostgreSQL (SQLSTATE 53100 disk_full, 25006
read_only_sql_transaction) and the blob directory (ENOSPC, EDQUOT, EROFS). The store
raises `StoreUnavailable` in their place (the database engine's `handle_error` hook,
`LocalBlobStore.put`), so that the gateway answers 503 and background work waits and
retries, instead of a 500 or a batch line marked failed for a disk problem.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

#: Seconds a client is told to wait (`Retry-After`): a disk is freed or remounted by an
#: operator, not in the engine-overload's couple of seconds.
RETRY_AFTER_S = 30
#: The OpenAI error `code` of the 503 (clients and alerts key on it).
CODE = "store_unavailable"


class StoreFault(StrEnum):
    FULL = "full"
    READ_ONLY = "read_only"

    @property
    def message(self) -> str:
        what = {StoreFault.FULL: "the store's disk is full",
                StoreFault.READ_ONLY: "the store is read-only"}[self]
        until = {StoreFault.FULL: "space is freed",
                 StoreFault.READ_ONLY: "it is writable again"}[self]
        return (f"{what}: frugal cannot save files, batches, stored responses or key "
                f"usage until {until}; nothing stored before is lost. Retry later.")


class StoreUnavailable(Exception):
    """A store operation refused for a full or read-only disk (not a bug, not lost data)."""

    def __init__(self, fault: StoreFault) -> None:
        super().__init__(fault.message)
        self.fault = fault


@contextlib.contextmanager
def os_faults() -> Iterator[None]:
    """File work in a block: a full or read-only disk comes out as `StoreUnavailable`."""
    try:
        yield
    except OSError as exc:
        fault = classify(exc)
        if fault is None:
            raise
        raise StoreUnavailable(fault) from exc


_OS_ERRNOS = {errno.ENOSPC: StoreFault.FULL, errno.EDQUOT: StoreFault.FULL,
              errno.EROFS: StoreFault.READ_ONLY}
_SQLSTATES = {"53100": StoreFault.FULL, "25006": StoreFault.READ_ONLY}
_SQLITE_FULL, _SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CANTOPEN = 13, 8, 10, 14
_SQLITE_MESSAGES = {"database or disk is full": StoreFault.FULL,
                    "attempt to write a readonly database": StoreFault.READ_ONLY}


def classify(exc: BaseException, path: str | Path | None = None) -> StoreFault | None:
    """The fault behind `exc` (or anything it wraps: SQLAlchemy's `.orig`, causes), or
    None when it is something else. `path`, the SQLite file, lets an I/O or "cannot
    open" error count as read-only when that file's filesystem is mounted read-only
    (SQLite reports EROFS that way, and a WAL database cannot even be read there)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        fault = _one(err, path)
        if fault is not None:
            return fault
        todo += [getattr(err, "orig", None), err.__cause__, err.__context__]
    return None


def _one(err: BaseException, path: str | Path | None) -> StoreFault | None:
    if isinstance(err, StoreUnavailable):
        return err.fault
    if isinstance(err, OSError):
        return _OS_ERRNOS.get(err.errno)  # type: ignore[arg-type]
    state = getattr(err, "sqlstate", None)  # psycopg's errors carry it
    if isinstance(state, str):
        return _SQLSTATES.get(state)
    if isinstance(err, sqlite3.Error):
        code = getattr(err, "sqlite_errorcode", 0) & 0xFF  # the primary result code
        if code == _SQLITE_FULL:
            return StoreFault.FULL
        if code == _SQLITE_READONLY:
            return StoreFault.READ_ONLY
        if code in (_SQLITE_IOERR, _SQLITE_CANTOPEN) and path is not None:
            return _filesystem_fault(Path(path))
        return _SQLITE_MESSAGES.get(str(err))
    return None


def _filesystem_fault(path: Path) -> StoreFault | None:
    """READ_ONLY when the filesystem holding `path` is mounted read-only."""
    for candidate in (path, *path.parents):
        try:
            flags = os.statvfs(candidate).f_flag
        except OSError:
            continue
        return StoreFault.READ_ONLY if flags & os.ST_RDONLY else None
    return None
