"""A full or read-only store on a real filesystem: a 2 MB tmpfs (`tiny_disk`) that
a test fills up or remounts read-only, so SQLite and the blob directory get the
kernel's own ENOSPC and EROFS. Every write is refused as `StoreUnavailable` saying what
is wrong; nothing half-written is left (no temp file, no row without its bytes, the
SQLite file passes `PRAGMA integrity_check`); what was stored before stays readable;
and the same calls succeed once the disk takes writes again, without a restart.
PostgreSQL's codes: the classifier with psycopg's own exception classes, and a real
PostgreSQL database set read-only.

The batch runner and budget tests run their requests on the fake engine
(tests/fake_engine.py), as fast unit tests of the bookkeeping; the store is real.
"""

from __future__ import annotations

import asyncio
import errno
import io
import json
import sqlite3
import time
from pathlib import Path

import psycopg.errors
import pytest
import sqlalchemy.exc
from sqlalchemy import create_engine, func, make_url, select, text

from serving.batch.admission import BatchAdmission
from serving.batch.runner import BatchRunner
from serving.batch.store import BatchStore
from serving.compaction.notes import NoteCache
from serving.config import BatchConfig
from serving.responses.store import ResponseStore
from serving.store.blobs import LocalBlobStore
from serving.store.db import open_engine, session_factory
from serving.store.faults import StoreFault, StoreUnavailable, classify
from serving.store.tables import CompactionNoteRow, KeyLedgerRow, KeySpendRow
from serving.tenants.keys import KeySettings
from serving.tenants.store import KeyStore
from tests.tinydisk import integrity, store_errors

FULL, READ_ONLY = StoreFault.FULL, StoreFault.READ_ONLY


class Stores:
    """Every store of frugal on one SQLite file and blob directory."""

    def __init__(self, root: Path) -> None:
        self.db = root / "frugal.db"
        self.sessions = session_factory(open_engine(f"sqlite:///{self.db}"))
        self.batches = BatchStore(self.sessions, LocalBlobStore(root / "files"))
        self.responses = ResponseStore(self.sessions)
        self.keys = KeyStore(self.sessions)


# --- the classifier ------------------------------------------------------------------


@pytest.mark.parametrize(("error", "fault"), [
    (psycopg.errors.DiskFull("could not extend file: No space left on device"), FULL),
    (psycopg.errors.ReadOnlySqlTransaction(
        "cannot execute INSERT in a read-only transaction"), READ_ONLY),
    (OSError(errno.ENOSPC, "No space left on device"), FULL),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), FULL),
    (OSError(errno.EROFS, "Read-only file system"), READ_ONLY),
    (sqlite3.OperationalError("database or disk is full"), FULL),
    (sqlite3.OperationalError("attempt to write a readonly database"), READ_ONLY),
    (psycopg.errors.UniqueViolation("duplicate key value"), None),
    (psycopg.errors.OutOfMemory("out of memory"), None),  # class 53, not the disk
    (sqlite3.OperationalError("database is locked"), None),
    (OSError(errno.ENOENT, "No such file or directory"), None),
    (ValueError("not a store error"), None),
])
def test_the_classifier_names_full_and_read_only_stores_and_nothing_else(error, fault):
    assert classify(error) == fault
    # as SQLAlchemy raises a driver's error, and as a cause further down a chain
    assert classify(sqlalchemy.exc.OperationalError("INSERT ...", {}, error)) == fault
    try:
        raise RuntimeError("while writing") from error
    except RuntimeError as outer:
        assert classify(outer) == fault


def test_a_real_postgresql_database_set_read_only_refuses_writes(postgres_url):
    from tests.postgres import fresh_database

    with fresh_database(postgres_url) as url:
        name = make_url(url).database
        admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
        store = BatchStore(session_factory(open_engine(url)), LocalBlobStore("/nonexistent"))
        engine = store.sessions.kw["bind"]
        try:
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" SET '
                                  "default_transaction_read_only = on"))
            engine.dispose()  # new sessions get the setting
            with pytest.raises(StoreUnavailable) as info:
                store.create_batch("anonymous", "file-x", "/v1/chat/completions", "24h", None)
            assert info.value.fault is READ_ONLY
            assert "read-only" in str(info.value)
            assert store.list_batches("anonymous", 10, None) == ([], False)  # reads work
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" RESET '
                                  "default_transaction_read_only"))
            engine.dispose()
            store.create_batch("anonymous", "file-x", "/v1/chat/completions", "24h", None)
        finally:
            engine.dispose()
            admin.dispose()


# --- the stores on a full or read-only disk -----------------------------------------


def test_a_full_disk_refuses_every_write_and_corrupts_nothing(tiny_disk):
    stores = Stores(tiny_disk.root)
    data = b'{"custom_id": "a"}\n' * 100
    kept = stores.batches.create_file("anonymous", "batch", "in.jsonl", io.BytesIO(data))
    batch = stores.batches.create_batch("anonymous", kept.id, "/v1/chat/completions",
                                        "24h", None)
    stores.responses.save("resp_1", "anonymous", {"id": "resp_1"}, [])
    key, _ = stores.keys.create(KeySettings(name="team", budget_usd=10.0))
    writes = {
        "upload": lambda: stores.batches.create_file(
            "anonymous", "batch", "big.jsonl", io.BytesIO(b"x" * 300_000)),
        "create a batch": lambda: stores.batches.create_batch(
            "anonymous", kept.id, "/v1/chat/completions", "24h", None),
        "cancel a batch": lambda: stores.batches.cancel_batch("anonymous", batch.id),
        "store a response": lambda: stores.responses.save(
            "resp_2", "anonymous", {"id": "resp_2"}, [{"role": "user", "content": "x" * 9000}]),
        "reserve a budget": lambda: stores.keys.reserve(key, 0.5),
    }
    tiny_disk.fill()
    for what, write in writes.items():
        with pytest.raises(StoreUnavailable) as info:
            write()
        assert info.value.fault is FULL, what
        assert str(info.value).startswith("the store's disk is full"), what
    # What was stored before reads back whole; nothing half-written was left.
    assert stores.batches.get_file("anonymous", kept.id).bytes == len(data)
    assert b"".join(stores.batches.file_bytes("anonymous", kept.id)) == data
    assert stores.batches.get_batch("anonymous", batch.id).status == "validating"
    assert stores.responses.get("resp_1", "anonymous").body == {"id": "resp_1"}
    assert [p.name for p in (tiny_disk.root / "files").iterdir()] == [kept.id]
    tiny_disk.free()
    assert integrity(stores.db) == "ok"
    for write in writes.values():  # the same calls, no restart
        write()
    assert stores.batches.get_batch("anonymous", batch.id).status == "cancelling"
    assert stores.responses.get("resp_2", "anonymous") is not None
    assert integrity(stores.db) == "ok"


def test_an_upload_whose_bytes_fit_but_whose_row_does_not_leaves_no_file(tiny_disk):
    stores = Stores(tiny_disk.root)
    tiny_disk.fill(leave_kb=16)  # room for the bytes, none for the database's write
    with pytest.raises(StoreUnavailable):
        stores.batches.create_file("anonymous", "batch", "in.jsonl",
                                   io.BytesIO(b"x" * 16 * 1024))
    assert list((tiny_disk.root / "files").iterdir()) == []  # no bytes without a row
    assert stores.batches.list_files("anonymous", None, 10, None, False) == ([], False)
    tiny_disk.free()
    stores.batches.create_file("anonymous", "batch", "in.jsonl", io.BytesIO(b"x" * 16 * 1024))
    assert integrity(stores.db) == "ok"


def test_a_read_only_store_refuses_writes_and_takes_them_once_writable(tiny_disk):
    stores = Stores(tiny_disk.root)
    data = b'{"custom_id": "a"}\n'
    kept = stores.batches.create_file("anonymous", "batch", "in.jsonl", io.BytesIO(data))
    stores.responses.save("resp_1", "anonymous", {"id": "resp_1"}, [])
    writes = {
        "upload": lambda: stores.batches.create_file(
            "anonymous", "batch", "b.jsonl", io.BytesIO(data)),
        "create a batch": lambda: stores.batches.create_batch(
            "anonymous", kept.id, "/v1/chat/completions", "24h", None),
        "store a response": lambda: stores.responses.save(
            "resp_2", "anonymous", {"id": "resp_2"}, []),
    }
    tiny_disk.read_only()
    for what, write in writes.items():
        with pytest.raises(StoreUnavailable) as info:
            write()
        assert info.value.fault is READ_ONLY, what
        assert str(info.value).startswith("the store is read-only"), what
    # SQLite cannot read a WAL database on a read-only mount either: said the same way.
    with pytest.raises(StoreUnavailable) as info:
        stores.responses.get("resp_1", "anonymous")
    assert info.value.fault is READ_ONLY
    assert b"".join(stores.batches.blobs.iter_bytes(kept.id)) == data  # bytes are there
    tiny_disk.writable()
    for write in writes.values():
        write()
    assert stores.responses.get("resp_1", "anonymous").body == {"id": "resp_1"}
    assert b"".join(stores.batches.file_bytes("anonymous", kept.id)) == data
    assert integrity(stores.db) == "ok"


def test_compaction_notes_are_not_cached_in_a_full_store_and_requests_go_on(tiny_disk):
    stores = Stores(tiny_disk.root)
    notes = NoteCache(stores.sessions)
    asyncio.run(notes.put("before", "an old note"))
    counted = store_errors("full", "compaction")
    tiny_disk.fill()
    asyncio.run(notes.put("during", "a new note"))  # no exception: the request goes on
    assert store_errors("full", "compaction") == counted + 1
    assert asyncio.run(notes.longest(["during"])) == (0, "a new note")  # this replica's
    tiny_disk.free()
    with stores.sessions() as session:
        assert session.scalar(select(func.count()).select_from(CompactionNoteRow)) == 1
    tiny_disk.read_only()
    fresh = NoteCache(stores.sessions)  # nothing in memory: it must ask the store
    assert asyncio.run(fresh.longest(["before"])) is None  # refused reads are misses
    assert store_errors("read_only", "compaction") >= 1
    tiny_disk.writable()
    assert asyncio.run(fresh.longest(["before"])) == (0, "an old note")


def test_a_settlement_the_full_store_refuses_is_written_later(tiny_disk):
    """The answer reaches the client; its bill waits in memory and reaches the ledger
    with the next settlement after space is freed (fake engine)."""
    from serving.pipeline.context import Endpoint, RequestContext
    from serving.pipeline.parse import parse_request
    from serving.tenants.app import Tenants
    from serving.tenants.resolver import KeyResolver
    from tests.fake_engine import FakeEngine, chat, fake_pipeline

    stores = Stores(tiny_disk.root)
    record, token = stores.keys.create(KeySettings(name="team", budget_usd=10.0))
    engine = FakeEngine("small", delay_s=2.0)
    pipeline = fake_pipeline(
        {"small": engine, "large": FakeEngine("large")},
        tenants=Tenants(keys=KeyResolver([], stores.keys, cache_s=60.0), store=stores.keys))

    async def ask(fill_during: bool) -> int:
        ctx = RequestContext(endpoint=Endpoint.CHAT, api_key=token)
        await pipeline.admit(ctx)
        ctx.request, ctx.extras, ctx.options = parse_request(
            chat(), Endpoint.CHAT, pipeline.chain.extra_fields)
        call = asyncio.create_task(pipeline.run(ctx))
        if fill_during:  # the budget is reserved; the disk fills while the model runs
            while not engine.requests or ctx.reservation is None:
                await asyncio.sleep(0.01)
            tiny_disk.fill()
        return (await call).status

    counted = store_errors("full", "ledger")
    engine.requests.clear()
    assert asyncio.run(ask(fill_during=True)) == 200
    assert store_errors("full", "ledger") == counted + 1
    assert len(pipeline.chain.lever("budget").unsettled) == 1
    tiny_disk.free()
    engine.requests.clear()
    assert asyncio.run(ask(fill_during=False)) == 200
    assert not pipeline.chain.lever("budget").unsettled
    with stores.sessions() as session:
        assert session.scalar(select(func.count()).select_from(KeyLedgerRow)) == 2
        spend = session.scalars(select(KeySpendRow)).one()
        assert spend.spent_usd > 0 and spend.reserved_usd == pytest.approx(0.0)
    assert integrity(stores.db) == "ok"


def test_a_batch_pauses_while_the_disk_is_full_and_ends_with_every_line_once(tiny_disk):
    """Lines answered while the store refuses commits are neither failed nor lost nor
    run again: the job pauses with its answers in memory and resumes by itself once
    space is freed (fake engine)."""
    from tests.fake_engine import FakeEngine, chat, fake_pipeline

    stores = Stores(tiny_disk.root)
    lines = [json.dumps({"custom_id": f"c{i}", "method": "POST",
                         "url": "/v1/chat/completions", "body": chat()}) for i in range(60)]
    source = stores.batches.create_file("anonymous", "batch", "in.jsonl",
                                        io.BytesIO("\n".join(lines).encode()))
    batch = stores.batches.create_batch("anonymous", source.id, "/v1/chat/completions",
                                        "24h", None)
    config = BatchConfig(poll_s=0.05, idle_in_flight=4, quiet_s=0.0)
    engine = FakeEngine("small", delay_s=0.2)
    pipeline = fake_pipeline({"small": engine})
    runner = BatchRunner(stores.batches, pipeline, config,
                         BatchAdmission(config, pipeline.chain.lever("batch").load))
    counted = store_errors("full", "batch")

    def row() -> dict:
        return stores.batches.get_batch(None, batch.id).__dict__

    async def run() -> dict:
        runner.start()
        try:
            while row()["completed"] < 5:  # some lines are in, most are still to run
                await asyncio.sleep(0.02)
            tiny_disk.fill()
            deadline = time.monotonic() + 60
            while len(engine.requests) < 60 or runner.jobs:  # all answered, job paused
                assert time.monotonic() < deadline, (len(engine.requests), row())
                await asyncio.sleep(0.05)
            paused = row()
            assert paused["status"] == "in_progress" and paused["failed"] == 0
            assert paused["completed"] < 60 and runner.unsaved[batch.id]
            assert store_errors("full", "batch") > counted
            tiny_disk.free()
            while row()["status"] != "completed":
                assert time.monotonic() < deadline, row()["status"]
                await asyncio.sleep(0.05)
        finally:
            await runner.stop()
        return row()

    done = asyncio.run(run())
    assert (done["total"], done["completed"], done["failed"]) == (60, 60, 0)
    assert done["duplicate_results"] == 0 and len(engine.requests) == 60  # none ran twice
    out = b"".join(stores.batches.blobs.iter_bytes(done["output_file_id"])).decode()
    assert sorted(json.loads(x)["custom_id"] for x in out.splitlines()) == sorted(
        f"c{i}" for i in range(60))
    assert done["error_file_id"] is None
    assert integrity(stores.db) == "ok"
    assert not [name for name in tiny_disk.files() if name.endswith(".tmp")]
