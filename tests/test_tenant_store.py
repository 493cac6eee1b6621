"""The key store (serving/tenants/store.py) on SQLite and on a real PostgreSQL server:
keys by hash only, the budget reservation under concurrency (threads, and processes on
SQLite), stale reservations, periods, and the `frugal keys` CLI."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from serving.store.db import open_engine, session_factory
from serving.tenants.keys import BudgetPeriod, KeySettings, period_of
from serving.tenants.store import KeyStore


def open_store(url: str) -> KeyStore:
    return KeyStore(session_factory(open_engine(url)))


@pytest.fixture
def store(store_url) -> KeyStore:
    return open_store(store_url)


def test_keys_are_found_by_hash_revoked_and_updated(store) -> None:
    record, key = store.create(KeySettings(name="team-a", rpm=5, models=["zoo-s"]))
    assert key.startswith("frg-") and len(key) > 40 and record.hint.endswith(key[-4:])
    assert store.find(key) == record and store.find(key + "x") is None
    assert store.resolve("team-a") == record == store.resolve(record.id)
    with pytest.raises(ValueError, match="exists"):
        store.create(KeySettings(name="team-a"))
    updated = store.update(record.id, rpm=None, tpm=100, min_quality=0.9)
    assert (updated.rpm, updated.tpm, updated.min_quality) == (None, 100, 0.9)
    assert updated.models == ["zoo-s"]
    with pytest.raises(ValueError):
        store.update(record.id, rpm=0)
    assert store.revoke(record.id).active is False
    assert store.find(key).active is False
    assert store.list() == [] and [k.id for k in store.list(include_revoked=True)] == [record.id]


def test_the_key_itself_is_never_in_the_sqlite_files(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/frugal.db")
    keys = [store.create(KeySettings(name=f"k{i}"))[1] for i in range(5)]
    data = b"".join(p.read_bytes() for p in tmp_path.glob("frugal.db*"))
    from serving.tenants.keys import hash_key

    for key in keys:
        assert key.encode() not in data
        assert hash_key(key).encode() in data


def test_a_key_without_budget_is_never_refused_and_still_ledgered(store) -> None:
    record, _ = store.create(KeySettings(name="free"))
    reservation = store.reserve(record, 5.0)
    assert reservation is not None and reservation.id is None
    store.settle(reservation, model="zoo-s", cost_usd=0.25, prompt_tokens=10,
                 completion_tokens=3)
    (row,) = store.usage()
    assert (row.requests, row.cost_usd, row.prompt_tokens) == (1, 0.25, 10)


def _spend_concurrently(url: str, key_id: str, workers: int, per_worker: int,
                        estimate: float, cost: float) -> int:
    store = open_store(url)
    key = store.get(key_id)
    admitted = 0
    for _ in range(per_worker):
        reservation = store.reserve(key, estimate)
        if reservation is None:
            continue
        admitted += 1
        store.settle(reservation, model="m", cost_usd=cost)
    return admitted


def test_sixteen_threads_cannot_overspend_more_than_what_is_in_flight(store, store_url) -> None:
    """Each request reserves 0.30 and costs 0.25; budget 1.00. Admission while spend plus
    reservations is below the budget bounds the spend by budget + one reservation per
    worker in flight; the ledger and the spend agree and nothing stays reserved."""
    record, _ = store.create(KeySettings(name="capped", budget_usd=1.0))
    admitted: list[int] = []
    threads = [threading.Thread(target=lambda: admitted.append(
        _spend_concurrently(store_url, record.id, 1, 10, 0.30, 0.25))) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    spend = store.spend(record)
    assert spend.reserved_usd == pytest.approx(0, abs=1e-9)
    assert spend.spent_usd == pytest.approx(0.25 * sum(admitted))
    assert spend.spent_usd >= 1.0  # the budget was used up, not refused early
    assert spend.spent_usd <= 1.0 + 16 * 0.25  # overspend: at most the requests in flight
    assert store.reserve(record, 0.3) is None
    (row,) = store.usage()
    assert row.cost_usd == pytest.approx(spend.spent_usd)


def _worker(args: tuple[str, str]) -> int:
    url, key_id = args
    return _spend_concurrently(url, key_id, 1, 10, 0.30, 0.25)


def test_four_processes_share_one_budget_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/frugal.db"
    store = open_store(url)
    record, _ = store.create(KeySettings(name="capped", budget_usd=1.0))
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        admitted = sum(pool.map(_worker, [(url, record.id)] * 4))
    spend = store.spend(record)
    assert spend.spent_usd == pytest.approx(0.25 * admitted)
    assert 1.0 <= spend.spent_usd <= 1.0 + 4 * 0.25
    assert spend.reserved_usd == pytest.approx(0, abs=1e-9)


def test_stale_reservations_are_released_once(store) -> None:
    record, _ = store.create(KeySettings(name="crashy", budget_usd=1.0))
    old = store.reserve(record, 0.6)  # its gateway "dies" holding it
    assert store.release_stale(older_than_s=60, now=time.time() + 120) == 1
    assert store.spend(record).reserved_usd == pytest.approx(0)
    fresh = store.reserve(record, 0.3)
    assert fresh is not None
    store.settle(old, model="m", cost_usd=0.1)  # the "dead" request's late answer
    spend = store.spend(record)
    assert spend.reserved_usd == pytest.approx(0.3)  # old's estimate not given back twice
    assert spend.spent_usd == pytest.approx(0.1)
    assert store.release_stale(older_than_s=60) == 0  # fresh is young


def test_a_new_period_starts_at_zero(store) -> None:
    record, _ = store.create(KeySettings(name="monthly", budget_usd=1.0))
    november, december = 1_793_000_000.0, 1_796_000_000.0
    assert period_of(BudgetPeriod.MONTH, november) != period_of(BudgetPeriod.MONTH, december)
    spent = store.reserve(record, 0.5, now=november)
    store.settle(spent, model="m", cost_usd=1.5, now=november)
    assert store.reserve(record, 0.5, now=november) is None
    assert store.reserve(record, 0.5, now=december) is not None


def test_periods_are_utc_calendar_periods() -> None:
    moment = 1_796_256_000.0  # 2026-12-03 00:00 UTC
    assert period_of(BudgetPeriod.DAY, moment) == "2026-12-03"
    assert period_of(BudgetPeriod.WEEK, moment) == "2026-W49"
    assert period_of(BudgetPeriod.MONTH, moment) == "2026-12"
    assert period_of(BudgetPeriod.TOTAL, moment) == "total"


def test_the_keys_cli(tmp_path: Path) -> None:
    from serving.cli import app

    url = f"sqlite:///{tmp_path}/frugal.db"
    runner = CliRunner()

    def keys(*args: str):
        return runner.invoke(app, ["keys", *args, "--store-url", url])

    made = keys("create", "--name", "team-a", "--budget-usd", "5", "--rpm", "10",
                "--models", "zoo-s,auto", "--min-quality", "0.9")
    assert made.exit_code == 0, made.output
    key = made.stdout.strip().splitlines()[0]
    assert key.startswith("frg-")
    store = open_store(url)
    record = store.find(key)
    assert record is not None and record.models == ["zoo-s", "auto"] and record.rpm == 10
    listed = keys("list")
    assert listed.exit_code == 0 and key not in listed.stdout
    assert keys("update", "team-a", "--no-rpm", "--tpm", "100").exit_code == 0
    assert (store.get(record.id).rpm, store.get(record.id).tpm) == (None, 100)
    assert keys("create", "--name", "team-a").exit_code == 1
    assert keys("create", "--name", "bad name").exit_code == 2
    assert keys("revoke", "nobody").exit_code == 1
    store.settle(store.reserve(record, 0.1), model="zoo-s", cost_usd=0.02, batch=True)
    usage = keys("usage", "--json")
    assert usage.exit_code == 0, usage.output
    (row,) = json.loads(usage.stdout)
    assert row["name"] == "team-a" and row["cost_usd"] == pytest.approx(0.02)
    assert row["batch_requests"] == 1
    assert keys("revoke", "team-a").exit_code == 0
    assert not store.get(record.id).active
