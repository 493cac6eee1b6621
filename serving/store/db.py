"""The database: one SQLAlchemy engine per process, SQLite or PostgreSQL by URL.

SQLite runs in WAL mode with `synchronous=NORMAL`: a commit survives the process being
killed (the crash the batch guarantees are about); only a power cut may lose the last
commits. Several gateway processes on one machine share the file (busy timeout 30 s).
PostgreSQL is for clusters, where gateway pods on several nodes share the rows; its
URLs always use psycopg 3 (`normalize_url`). A full or read-only disk surfaces as
`StoreUnavailable` from every statement (`serving.store.faults`), whichever database.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.orm import Session, sessionmaker

from serving.store.faults import StoreUnavailable, classify
from serving.store.tables import Base


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 (DB-API objects)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    # Turning a new file to WAL needs it to itself, and while another connection writes
    # SQLite says "locked" at once instead of waiting (processes opening a new store
    # together): wait here. Once the file is WAL, this is a no-op.
    deadline = time.monotonic() + 30
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


# Key of the PostgreSQL advisory lock that serializes table creation across replicas.
_SCHEMA_LOCK = 0x66727567616C  # "frugal"


def _raise_store_faults(engine: Engine, path: str | None) -> None:
    """Turn the database's disk-full and read-only errors into `StoreUnavailable`, for
    every statement, commit and connect of `engine` (SQLAlchemy rolls back first)."""

    def handle_error(context) -> None:  # noqa: ANN001 (sqlalchemy's ExceptionContext)
        fault = classify(context.original_exception, path)
        if fault is not None:
            raise StoreUnavailable(fault) from context.sqlalchemy_exception

    event.listen(engine, "handle_error", handle_error)


def normalize_url(url: str) -> str:
    """PostgreSQL URLs go through psycopg 3, the driver frugal installs: `postgres://`
    and `postgresql://` (what Heroku-style and operator-made Secrets hold; SQLAlchemy 2.0
    reads the latter as psycopg2) become `postgresql+psycopg://`."""
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(
            hide_password=False)
    return url


def open_engine(url: str) -> Engine:
    """An engine for `url` with the tables created (idempotent, safe to race)."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        _raise_store_faults(engine, path if path and path != ":memory:" else None)
        # Gateway processes starting together would each see no tables and CREATE them
        # ("table already exists" for all but one): create them under the write lock.
        with engine.begin() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            Base.metadata.create_all(conn)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
        _raise_store_faults(engine, None)
        if engine.dialect.name == "postgresql":
            # Replicas starting together would all see no tables and all CREATE them;
            # all but one then fail (duplicate pg_type row). One at a time, in one
            # transaction: the others find the tables made.
            with engine.begin() as conn:
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                             {"key": _SCHEMA_LOCK})
                Base.metadata.create_all(conn)
        else:
            Base.metadata.create_all(engine)
    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
