"""The test PostgreSQL server of tests/postgres.py: it starts both ways (PostgreSQL's
binaries, the pgserver package), leaves no process or directory behind, also when the
test fails, and when it cannot start at all it says why instead of skipping."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

from tests import postgres


def _pid_and_dir(url: str) -> tuple[int, Path]:
    socket_dir = Path(make_url(url).query["host"])
    data = next(p for p in (socket_dir / "data", socket_dir) if (p / "PG_VERSION").exists())
    return int((data / "postmaster.pid").read_text().splitlines()[0]), socket_dir


@pytest.mark.parametrize("way", ["binaries", "pgserver"])
def test_the_server_starts_and_leaves_nothing_behind(way, monkeypatch):
    if way == "binaries" and postgres.find_binaries() is None:
        pytest.fail("no PostgreSQL binaries on this machine (apt-get install postgresql)")
    monkeypatch.setenv("FRUGAL_TEST_POSTGRES", way)
    with pytest.raises(RuntimeError, match="the test failed"):
        with postgres.postgres_server() as url:
            assert url.startswith("postgresql+psycopg://")
            engine = create_engine(url)
            with engine.connect() as conn:
                assert conn.execute(text("select 1")).scalar() == 1
            engine.dispose()
            pid, where = _pid_and_dir(url)
            assert postgres._alive(pid)
            raise RuntimeError("the test failed")
    assert not postgres._alive(pid), f"postmaster {pid} outlived the server"
    assert not where.exists()


def test_no_server_at_all_fails_with_the_reasons(monkeypatch):
    monkeypatch.delenv("FRUGAL_TEST_POSTGRES", raising=False)
    monkeypatch.setattr(postgres, "find_binaries", lambda: None)
    monkeypatch.setitem(sys.modules, "pgserver", None)  # import pgserver fails
    with pytest.raises(postgres.PostgresUnavailable) as caught:
        with postgres.postgres_server():
            pass
    message = str(caught.value)
    assert "no initdb on PATH" in message and "pgserver is not installed" in message
