"""A real PostgreSQL server for the tests: started once per session in a temporary
directory, reached on a Unix socket only (no TCP port to collide with), stopped after.

Where the server comes from, first that works:
1. PostgreSQL's own binaries: `initdb`/`pg_ctl` on PATH, else the newest
   /usr/lib/postgresql/<version>/bin (Debian's `postgresql` package);
2. the `pgserver` pip package (the `test` extra), which bundles binaries.
`FRUGAL_TEST_POSTGRES` picks one instead: `binaries`, `pgserver`, or the URL of a server
you run yourself (`postgresql+psycopg://...`; the tests create and drop databases in it).

initdb refuses to run as root, and tests run as root here and in CI: then the server
runs as an unprivileged system user (`postgres` if it exists, else `nobody`, else a
`frugal-pg` user made with `useradd`) that owns the data directory; pgserver does the
same with a user of its own. The directory lives under /tmp (pytest's tmp_path is
private to root), and is removed with the server. When no server can be started the
caller gets `PostgresUnavailable` saying why each way failed: the tests then fail
rather than skip, since the PostgreSQL code path must be exercised.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 60
SOCKET_PORT = 5432  # names the socket file (.s.PGSQL.5432); nothing listens on TCP
_CANDIDATE_USERS = ("postgres", "nobody")
_CREATED_USER = "frugal-pg"


class PostgresUnavailable(RuntimeError):
    pass


def find_binaries() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None."""
    on_path = shutil.which("initdb")
    if on_path:
        folder = Path(on_path).resolve().parent
        if all((folder / name).exists() for name in ("pg_ctl", "postgres")):
            return folder

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", path.parent.name)) or (0,)

    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=version)
    for initdb in reversed(found):
        if (initdb.parent / "pg_ctl").exists() and (initdb.parent / "postgres").exists():
            return initdb.parent
    return None


def _server_user() -> pwd.struct_passwd:
    """An unprivileged account for the server when we are root."""
    for name in (*_CANDIDATE_USERS, _CREATED_USER):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            if entry.pw_uid != 0:
                return entry
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
         _CREATED_USER], capture_output=True, text=True)
    if result.returncode != 0:
        raise PostgresUnavailable(f"running as root and no unprivileged user for the "
                                  f"server: useradd {_CREATED_USER}: {result.stderr.strip()}")
    return pwd.getpwnam(_CREATED_USER)


class _Binaries:
    """initdb + pg_ctl from a bin directory, as an unprivileged user when root."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.user = _server_user() if os.geteuid() == 0 else None
        # Short path (a Unix socket path has ~107 bytes) that the server's user can reach.
        base = Path(tempfile.gettempdir())
        if len(str(base)) > 40 or not os.access(base, os.W_OK):
            base = Path("/tmp")
        self.root = Path(tempfile.mkdtemp(prefix="frugal-pg-", dir=base))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.started = False
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)

    def _run(self, name: str, *args: str, timeout: float = START_TIMEOUT_S
             ) -> subprocess.CompletedProcess[str]:
        extra: dict[str, Any] = {}
        if self.user is not None:
            extra = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        # stdout/stderr to a file: pg_ctl's postmaster inherits them, and a pipe would
        # keep subprocess.run waiting for the server to exit.
        with tempfile.TemporaryFile("w+") as out:
            result = subprocess.run([str(self.bindir / name), *args], stdout=out,
                                    stderr=subprocess.STDOUT, text=True, env=env,
                                    cwd=self.root, timeout=timeout, **extra)
            out.seek(0)
            result.stdout = out.read()
        return result

    def start(self) -> str:
        result = self._run("initdb", "-D", str(self.data), "-U", "postgres",
                           "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync")
        if result.returncode != 0:
            raise PostgresUnavailable(f"initdb failed:\n{result.stdout[-3000:]}")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# tests/postgres.py: a throwaway server on a Unix socket\n"
                "listen_addresses = ''\n"
                f"unix_socket_directories = '{self.root}'\n"
                f"port = {SOCKET_PORT}\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "shared_buffers = 32MB\nmax_connections = 200\n"
            )
        self.started = True  # from here on a postmaster may exist: stop() must run
        result = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w",
                           "-t", str(START_TIMEOUT_S), "start", timeout=START_TIMEOUT_S + 10)
        if result.returncode != 0:
            log = self.log.read_text()[-3000:] if self.log.exists() else ""
            raise PostgresUnavailable(f"pg_ctl start failed:\n{result.stdout[-2000:]}\n{log}")
        return (f"postgresql+psycopg://postgres@/postgres"
                f"?host={self.root}&port={SOCKET_PORT}")

    def _postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        return None

    def stop(self) -> None:
        try:
            if self.started:
                pid = self._postmaster_pid()
                with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                    self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30",
                              "stop", timeout=40)
                if pid is not None:
                    _kill_and_wait(pid)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie is dead (its parent reaps it)
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    return True


def _kill_and_wait(pid: int) -> None:
    """Make sure the postmaster is gone: quit (its children go with it), then kill."""
    for sig, wait_s in ((signal.SIGQUIT, 10.0), (signal.SIGKILL, 10.0)):
        if not _alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


class _PgServer:
    """The pgserver package's bundled PostgreSQL (it handles root on its own)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="frugal-pgs-", dir="/tmp"))
        self.server: Any = None

    def start(self) -> str:
        try:
            import pgserver
        except ImportError as exc:
            raise PostgresUnavailable(f"pgserver is not installed ({exc}); install the "
                                      "test extra: pip install -e '.[test]'") from exc
        try:
            self.server = pgserver.get_server(self.root / "data", cleanup_mode="stop")
            uri = self.server.get_uri()
        except Exception as exc:  # noqa: BLE001 (any failure means: no server this way)
            raise PostgresUnavailable(f"pgserver failed: {exc!r}") from exc
        return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", uri)

    def stop(self) -> None:
        try:
            if self.server is not None:
                pid = self.server.get_pid()
                self.server.cleanup()
                if pid is not None:
                    _kill_and_wait(pid)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _check(url: str) -> None:
    """Fail early with the reason if the server does not answer."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    finally:
        engine.dispose()


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A running server's SQLAlchemy URL (database `postgres`); stopped on exit."""
    choice = os.environ.get("FRUGAL_TEST_POSTGRES", "auto").strip()
    if choice.startswith("postgres"):
        try:
            _check(choice)
        except Exception as exc:  # noqa: BLE001
            raise PostgresUnavailable(f"FRUGAL_TEST_POSTGRES={choice}: {exc}") from exc
        yield choice
        return
    if choice not in ("auto", "binaries", "pgserver"):
        raise PostgresUnavailable(f"FRUGAL_TEST_POSTGRES={choice!r}: expected auto, "
                                  "binaries, pgserver or a postgresql+psycopg:// URL")
    reasons: list[str] = []
    ways: list[Any] = []
    if choice in ("auto", "binaries"):
        bindir = find_binaries()
        if bindir is None:
            reasons.append("binaries: no initdb on PATH nor in /usr/lib/postgresql/*/bin "
                           "(apt-get install postgresql)")
        else:
            ways.append(lambda: _Binaries(bindir))
    if choice in ("auto", "pgserver"):
        ways.append(_PgServer)
    for make in ways:
        server = make()
        stop = _once(server.stop)
        atexit.register(stop)  # also when the session ends without teardown
        try:
            url = server.start()
            _check(url)
        except Exception as exc:  # noqa: BLE001
            stop()
            atexit.unregister(stop)
            reasons.append(f"{type(server).__name__.strip('_').lower()}: {exc}")
            continue
        try:
            yield url
        finally:
            stop()
            atexit.unregister(stop)
        return
    raise PostgresUnavailable("cannot start PostgreSQL for the tests:\n" + "\n".join(reasons))


def _once(fn: Any) -> Any:
    done = False

    def call() -> None:
        nonlocal done
        if not done:
            done = True
            fn()
    return call


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new empty database on the server, dropped afterwards (connections and all)."""
    from sqlalchemy import create_engine, make_url, text

    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
