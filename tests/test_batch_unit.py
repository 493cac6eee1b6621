"""Unit tests of lever 4's store, runner and admission, on a fake engine (no vLLM).

Every test that takes the `store` fixture runs twice: on SQLite and on a real PostgreSQL
server (the `postgres_url` session fixture), the two databases the store supports.

The real-server flow through the `openai` SDK, and the kill -9 crash test, are in
tests/test_batch_server.py; these check the bookkeeping fast and in detail.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections.abc import Iterator

import pytest

from serving.batch.admission import PROVISIONAL_IDLE_CAP, BatchAdmission, InteractiveLoad
from serving.batch.runner import BatchRunner
from serving.batch.store import BatchStore, LineResult
from serving.config import BatchConfig
from serving.store.blobs import LocalBlobStore
from serving.store.db import open_engine, session_factory
from tests.fake_engine import FakeEngine, chat, fake_pipeline
from tests.postgres import fresh_database


def make_store(url: str, files: str) -> BatchStore:
    return BatchStore(session_factory(open_engine(url)), LocalBlobStore(files))


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path) -> Iterator[str]:
    """The store's database: a SQLite file, or a fresh database on the session's real
    PostgreSQL server (tests/postgres.py), dropped after the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/frugal.db"
        return
    with fresh_database(request.getfixturevalue("postgres_url")) as url:
        yield url


@pytest.fixture
def store(store_url, tmp_path) -> Iterator[BatchStore]:
    """Every test taking `store` runs on SQLite and on PostgreSQL."""
    made = make_store(store_url, str(tmp_path / "files"))
    yield made
    made.sessions.kw["bind"].dispose()


def line(custom_id: str, body: dict | None = None, url: str = "/v1/chat/completions") -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url,
                       "body": body or chat()})


def upload(store: BatchStore, lines: list[str], owner: str = "anonymous") -> str:
    data = ("\n".join(lines) + "\n").encode()
    return store.create_file(owner, "batch", "in.jsonl", io.BytesIO(data)).id


def read_file(store: BatchStore, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    text = b"".join(store.blobs.iter_bytes(file_id)).decode()
    return [json.loads(x) for x in text.splitlines()]


async def run_to_end(store: BatchStore, engines: dict, batch_id: str,
                     config: BatchConfig | None = None, timeout_s: float = 180) -> dict:
    config = config or BatchConfig(poll_s=0.05)
    pipeline = fake_pipeline(engines)
    runner = BatchRunner(store, pipeline, config,
                         BatchAdmission(config, pipeline.chain.lever("batch").load))
    runner.start()
    deadline = time.monotonic() + timeout_s
    try:
        while store.get_batch(None, batch_id).status not in (
                "completed", "failed", "expired", "cancelled"):
            assert time.monotonic() < deadline, store.get_batch(None, batch_id).status
            await asyncio.sleep(0.05)
    finally:
        await runner.stop()
    return store.get_batch(None, batch_id).__dict__


def test_a_batch_runs_every_line_once_and_reports_bad_lines_by_number(store):
    engine = FakeEngine("small")
    lines = [line(f"ok-{i}") for i in range(5)]
    lines += ['{"custom_id": "broken", not json',                       # line 6
              json.dumps({"custom_id": "no-body", "method": "POST",      # line 7
                          "url": "/v1/chat/completions"}),
              line("unknown-model", chat(model="nope")),                # line 8
              line("wrong-url", url="/v1/embeddings"),                  # line 9
              line("bad-field", chat(temperature="hot"))]               # line 10
    file_id = upload(store, lines)
    batch = store.create_batch("anonymous", file_id, "/v1/chat/completions", "24h", None)
    row = asyncio.run(run_to_end(store, {"small": engine}, batch.id))
    assert row["status"] == "completed"
    assert (row["total"], row["completed"], row["failed"]) == (10, 5, 5)
    out = read_file(store, row["output_file_id"])
    errors = read_file(store, row["error_file_id"])
    assert sorted(o["custom_id"] for o in out) == [f"ok-{i}" for i in range(5)]
    assert all(o["response"]["status_code"] == 200 for o in out)
    by_id = {e["custom_id"]: e for e in errors}
    assert by_id[None]["error"]["code"] == "invalid_json" and by_id[None]["error"]["line"] == 6
    assert by_id["no-body"]["error"]["code"] == "invalid_request"
    assert by_id["no-body"]["error"]["line"] == 7
    assert by_id["unknown-model"]["response"]["status_code"] == 404
    assert by_id["unknown-model"]["error"]["line"] == 8
    assert by_id["wrong-url"]["error"]["code"] == "invalid_url"
    assert by_id["bad-field"]["response"]["status_code"] == 400
    # Billed at the batch discount, and the saving is named in each line's usage.
    usage = out[0]["response"]["body"]["usage"]
    assert usage["cost"]["saved_by_lever"]["batch"] > 0
    assert row["saved_usd"] == pytest.approx(5 * usage["cost"]["saved_by_lever"]["batch"])
    assert row["input_tokens"] == 50 and row["output_tokens"] == 10
    # The engine got batch lines at the lower vLLM priority.
    assert len(engine.requests) == 5 and {r.priority for r in engine.requests} == {10}


def test_lines_finishing_while_results_are_committed_run_once_each(store):
    """Answers that arrive while a group commit is under way are kept for the next one:
    a line whose answer was dropped would run again (it did, up to 9 times)."""
    engine = FakeEngine("small", delay_s=0.3)
    batch = store.create_batch("anonymous", upload(store, [line(f"x{i}") for i in range(300)]),
                               "/v1/chat/completions", "24h", None)
    row = asyncio.run(run_to_end(store, {"small": engine}, batch.id,
                                 BatchConfig(poll_s=0.05, idle_in_flight=64)))
    assert (row["status"], row["completed"], row["duplicate_results"]) == ("completed", 300, 0)
    assert len(engine.requests) == 300
    assert sorted(o["custom_id"] for o in read_file(store, row["output_file_id"])) == sorted(
        f"x{i}" for i in range(300))


def test_interactive_traffic_preempts_the_lines_above_the_busy_cap(store):
    """An interactive request takes its slots back at once: the lines above
    `busy_in_flight` are aborted and run again later, each still answered once."""
    engine = FakeEngine("small", delay_s=1.0)
    batch = store.create_batch("anonymous", upload(store, [line(f"x{i}") for i in range(40)]),
                               "/v1/chat/completions", "24h", None)
    config = BatchConfig(poll_s=0.05, idle_in_flight=20, busy_in_flight=2, quiet_s=0.2)

    async def scenario() -> tuple[dict, int, int]:
        pipeline = fake_pipeline({"small": engine})
        load = pipeline.chain.lever("batch").load
        admission = BatchAdmission(config, load)
        runner = BatchRunner(store, pipeline, config, admission)
        runner.start()
        try:
            deadline = time.monotonic() + 30
            while len(engine.requests) < 20:  # 20 lines are generating
                assert time.monotonic() < deadline, admission.in_use
                await asyncio.sleep(0.01)
            load.enter()  # an interactive request arrives
            preempted = admission.preempted_count
            await asyncio.sleep(0.1)
            busy_in_use = admission.in_use
            load.leave()
            while store.get_batch(None, batch.id).status != "completed":
                assert time.monotonic() < deadline, store.get_batch(None, batch.id).status
                await asyncio.sleep(0.05)
        finally:
            await runner.stop()
        return store.get_batch(None, batch.id).__dict__, preempted, busy_in_use

    row, preempted, busy_in_use = asyncio.run(scenario())
    assert preempted == 18 and busy_in_use == 2
    assert (row["completed"], row["duplicate_results"]) == (40, 0)
    assert sorted(o["custom_id"] for o in read_file(store, row["output_file_id"])) == sorted(
        f"x{i}" for i in range(40))
    assert len(engine.requests) == 40 + 18  # the preempted lines were asked for again


def test_a_line_preempted_before_it_started_gives_its_slot_back():
    """A task cancelled before its first step never runs its body: its slot comes back
    through the done callback, or the batch would stall with every slot leaked."""
    config = BatchConfig(idle_in_flight=4, busy_in_flight=0, quiet_s=10)
    load = InteractiveLoad()
    admission = BatchAdmission(config, load)

    async def scenario() -> tuple[int, int]:
        await admission.acquire()
        task = asyncio.create_task(asyncio.sleep(10))
        admission.hold(task)
        task.add_done_callback(admission.release)
        load.enter()  # preempts it before it ever ran
        await asyncio.gather(task, return_exceptions=True)
        return admission.preempted_count, admission.in_use

    assert asyncio.run(scenario()) == (1, 0)


def test_duplicate_custom_ids_and_too_many_lines_fail_validation(store):
    dup = upload(store, [line("a"), line("b"), line("a")])
    batch = store.create_batch("anonymous", dup, "/v1/chat/completions", "24h", None)
    row = asyncio.run(run_to_end(store, {"small": FakeEngine("small")}, batch.id))
    assert row["status"] == "failed" and row["failed_at"]
    assert row["errors"][0]["code"] == "duplicate_custom_id" and row["errors"][0]["line"] == 3

    many = upload(store, [line(f"x{i}") for i in range(4)])
    batch = store.create_batch("anonymous", many, "/v1/chat/completions", "24h", None)
    row = asyncio.run(run_to_end(store, {"small": FakeEngine("small")}, batch.id,
                                 BatchConfig(poll_s=0.05, max_lines=3)))
    assert row["status"] == "failed" and row["errors"][0]["code"] == "too_many_lines"


def test_a_result_is_committed_once_however_often_it_is_offered(store):
    batch = store.create_batch("anonymous", upload(store, [line("a")]),
                               "/v1/chat/completions", "24h", None)
    from serving.store.tables import BatchLineRow

    store.start_batch(batch.id, [BatchLineRow(batch_id=batch.id, line=1, custom_id="a",
                                              request="{}", state="pending", attempts=0)], [])
    result = LineResult(1, 200, {"custom_id": "a"}, {"prompt_tokens": 3})
    assert store.commit_results(batch.id, [result]) == 1
    assert store.commit_results(batch.id, [result, result]) == 0
    row = store.get_batch(None, batch.id)
    assert (row.completed, row.input_tokens, row.duplicate_results) == (1, 3, 2)


def test_a_lease_is_held_by_one_runner_until_it_lapses(store):
    batch = store.create_batch("anonymous", upload(store, [line("a")]),
                               "/v1/chat/completions", "24h", None)
    assert store.claim("runner-1", lease_s=0.3, limit=5) == [batch.id]
    assert store.claim("runner-2", lease_s=0.3, limit=5) == []
    assert store.renew("runner-1", batch.id, 0.3)
    time.sleep(0.35)  # runner-1 died: its lease lapses
    assert store.claim("runner-2", lease_s=5, limit=5) == [batch.id]
    assert not store.renew("runner-1", batch.id, 5)


def test_two_replicas_on_one_database_lease_a_batch_to_one_of_them(store_url, tmp_path):
    """Two gateway replicas (two stores, two engines, one database): however many
    runners claim at once, each batch is leased once; a lapsed lease moves over."""
    files = str(tmp_path / "files")
    replicas = [make_store(store_url, files), make_store(store_url, files)]
    a, b = replicas
    try:
        file_id = upload(a, [line("x")])
        # Claims racing from both replicas, several runners each: every batch once.
        batches = [a.create_batch("anonymous", file_id, "/v1/chat/completions", "24h", None)
                   .id for _ in range(6)]
        start = threading.Barrier(8)
        won: dict[str, list[str]] = {}

        def claim(store: BatchStore, runner: str) -> None:
            start.wait()
            won[runner] = store.claim(runner, lease_s=30, limit=len(batches))

        threads = [threading.Thread(target=claim, args=(replicas[i % 2], f"runner-{i}"))
                   for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        claimed = [batch_id for ids in won.values() for batch_id in ids]
        assert sorted(claimed) == sorted(batches), won
        for runner, ids in won.items():
            for batch_id in ids:
                assert b.get_batch(None, batch_id).lease_owner == runner

        # One replica holds a fresh batch; the other cannot take it until it lapses.
        batch = a.create_batch("anonymous", file_id, "/v1/chat/completions", "24h", None)
        assert a.claim("replica-a", lease_s=0.5, limit=10) == [batch.id]
        assert b.claim("replica-b", lease_s=5, limit=10) == []
        assert a.renew("replica-a", batch.id, 0.5)
        assert b.get_batch(None, batch.id).lease_owner == "replica-a"
        time.sleep(0.6)  # replica-a died: it renews no more
        assert b.claim("replica-b", lease_s=5, limit=10) == [batch.id]
        assert not a.renew("replica-a", batch.id, 5)  # it learns it lost the batch
        assert a.claim("replica-a", lease_s=5, limit=10) == []
        assert a.get_batch(None, batch.id).lease_owner == "replica-b"
    finally:
        for replica in replicas:
            replica.sessions.kw["bind"].dispose()


def test_a_runner_takes_over_the_batch_of_a_dead_replica(store_url, tmp_path):
    files = str(tmp_path / "files")
    dead, alive = make_store(store_url, files), make_store(store_url, files)
    try:
        batch = dead.create_batch("anonymous", upload(dead, [line(f"t{i}") for i in range(4)]),
                                  "/v1/chat/completions", "24h", None)
        assert dead.claim("dead-replica", lease_s=1.0, limit=1) == [batch.id]
        began = time.monotonic()
        row = asyncio.run(run_to_end(alive, {"small": FakeEngine("small")}, batch.id,
                                     BatchConfig(poll_s=0.05, lease_s=1.0)))
        assert time.monotonic() - began > 0.8, "ran while the dead replica's lease held"
        assert (row["status"], row["completed"], row["failed"]) == ("completed", 4, 0)
        out = read_file(alive, row["output_file_id"])
        assert sorted(o["custom_id"] for o in out) == [f"t{i}" for i in range(4)]
    finally:
        dead.sessions.kw["bind"].dispose()
        alive.sessions.kw["bind"].dispose()


def test_lines_no_database_can_store_fail_alone(store):
    """A custom_id PostgreSQL cannot hold (NUL, over 512 characters) fails its line on
    every store; the batch runs, and the output echoes the custom_id as sent."""
    nul, long = "nul\x00id", "x" * 600
    file_id = upload(store, [line("fine"), line(nul), line(long)])
    batch = store.create_batch("anonymous", file_id, "/v1/chat/completions", "24h",
                               {"note": "a\x00b"})
    row = asyncio.run(run_to_end(store, {"small": FakeEngine("small")}, batch.id))
    assert (row["status"], row["completed"], row["failed"]) == ("completed", 1, 2)
    errors = {e["custom_id"]: e["error"] for e in read_file(store, row["error_file_id"])}
    assert errors.keys() == {nul, long}
    assert all(e["code"] == "invalid_request" for e in errors.values())
    assert store.get_batch(None, batch.id).metadata_ == {"note": "a\x00b"}
    # Ids no row can have are simply not found (PostgreSQL refuses a NUL parameter).
    from serving.batch.store import NotFound

    for bad in ("file-\x00", "f" * 65):
        with pytest.raises(NotFound):
            store.get_file("anonymous", bad)
        with pytest.raises(NotFound):
            store.get_batch(None, bad)
    assert store.list_batches("anonymous", 10, "batch_\x00")[0]
    named = store.create_file("anonymous", "batch", "in\x00.jsonl", io.BytesIO(b"{}"))
    assert store.get_file("anonymous", named.id).filename == "in.jsonl"


def test_replicas_starting_together_create_the_tables_once(store_url):
    """Every replica opens the store at start; the table creation must not race."""
    errors: list[BaseException] = []
    engines = []
    start = threading.Barrier(4)

    def open_one() -> None:
        start.wait()
        try:
            engines.append(open_engine(store_url))
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for engine in engines:
        engine.dispose()
    assert not errors, errors


def test_postgresql_urls_use_the_installed_driver():
    from serving.store.db import normalize_url

    for url in ("postgresql://app:pw@db:5432/frugal", "postgres://app:pw@db:5432/frugal"):
        assert normalize_url(url) == "postgresql+psycopg://app:pw@db:5432/frugal"
    for url in ("postgresql+psycopg://app@/frugal?host=/tmp/s", "sqlite:////var/lib/f.db"):
        assert normalize_url(url) == url


def test_cancel_and_expiry_report_the_lines_not_run(store):
    class Slow(FakeEngine):
        async def chat(self, request):
            await asyncio.sleep(0.2)
            return await super().chat(request)

    file_id = upload(store, [line(f"c{i}") for i in range(40)])
    batch = store.create_batch("anonymous", file_id, "/v1/chat/completions", "24h", None)
    config = BatchConfig(poll_s=0.05, idle_in_flight=2)

    async def both():
        runner_done = asyncio.create_task(run_to_end(store, {"small": Slow("small")},
                                                     batch.id, config))
        await asyncio.sleep(0.6)
        store.cancel_batch("anonymous", batch.id)
        return await runner_done

    row = asyncio.run(both())
    assert row["status"] == "cancelled" and row["cancelling_at"] and row["cancelled_at"]
    out, errors = read_file(store, row["output_file_id"]), read_file(store, row["error_file_id"])
    assert 0 < len(out) < 40
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert sorted(o["custom_id"] for o in out + errors) == sorted(f"c{i}" for i in range(40))

    late = store.create_batch("anonymous", upload(store, [line("e1"), line("e2")]),
                              "/v1/chat/completions", "24h", None)
    with store.sessions.begin() as session:
        from serving.store.tables import BatchRow

        session.get(BatchRow, late.id).expires_at = int(time.time()) - 1
    row = asyncio.run(run_to_end(store, {"small": FakeEngine("small")}, late.id))
    assert row["status"] == "expired" and row["expired_at"]
    assert {e["error"]["code"] for e in read_file(store, row["error_file_id"])} == {
        "batch_expired"}


def test_a_key_sees_only_its_own_files_and_batches(store):
    from serving.batch.store import NotFound

    mine = upload(store, [line("a")], owner="key-aaaa")
    with pytest.raises(NotFound):
        store.get_file("key-bbbb", mine)
    batch = store.create_batch("key-aaaa", mine, "/v1/chat/completions", "24h", None)
    with pytest.raises(NotFound):
        store.get_batch("key-bbbb", batch.id)
    assert store.list_batches("key-bbbb", 10, None) == ([], False)
    assert [b.id for b in store.list_batches("key-aaaa", 10, None)[0]] == [batch.id]


def test_admission_gives_batches_the_idle_cap_only_after_quiet_s():
    load = InteractiveLoad()
    admission = BatchAdmission(BatchConfig(idle_in_flight=64, busy_in_flight=2, quiet_s=0.2,
                                           ramp_s=0), load)
    assert admission.cap() == 64
    load.enter()
    assert admission.cap() == 2
    load.leave()
    assert admission.cap() == 2  # within quiet_s of the last interactive request
    time.sleep(0.25)
    assert admission.cap() == 64


def test_the_idle_cap_follows_the_engine_slots_unless_set():
    """Unset, the idle cap is `idle_per_slot` times the smallest engine's max_num_seqs,
    shared among the gateway replicas; a provisional cap holds until the engines answer."""
    load = InteractiveLoad()
    admission = BatchAdmission(BatchConfig(), load)
    assert admission.cap() == PROVISIONAL_IDLE_CAP
    assert admission.size_to_engines([256, 128], gateway_replicas=1) == 256
    assert admission.cap() == 256
    assert BatchAdmission(BatchConfig(), load).size_to_engines([256], 3) == 512 // 3
    assert BatchAdmission(BatchConfig(idle_per_slot=0.001), load).size_to_engines([8], 1) == 1
    fixed = BatchAdmission(BatchConfig(idle_in_flight=500), load)
    assert fixed.size_to_engines([256], 1) == 500 == fixed.cap()


def test_by_default_batches_yield_to_interactive_traffic():
    load = InteractiveLoad()
    admission = BatchAdmission(BatchConfig(idle_in_flight=64, ramp_s=0), load)
    load.enter()
    assert admission.cap() == 0


def test_after_quiet_s_the_cap_doubles_every_ramp_s_up_to_the_idle_cap():
    load = InteractiveLoad()
    config = BatchConfig(idle_in_flight=512, busy_in_flight=1, quiet_s=2.0, ramp_s=0.25)
    admission = BatchAdmission(config, load)
    now = time.monotonic()
    caps = []
    for quiet in (1.9, 2.0, 2.25, 2.5, 3.0, 5.0, 3600.0):
        load.last_seen = now - quiet
        caps.append(admission.cap())
    assert caps[0] == 1  # still within quiet_s
    assert caps[1] in (1, 2) and 2 <= caps[2] <= 3 and 4 <= caps[3] <= 5
    assert 16 <= caps[4] <= 17 and caps[5] == caps[6] == 512


def test_preemption_keeps_the_oldest_lines_and_restarts_the_quiet_period():
    """The oldest lines run in the engine and are nearly done: they stay. The others are
    cancelled over the next loop turns, and quiet counts from when the last is gone."""
    config = BatchConfig(idle_in_flight=40, busy_in_flight=3, quiet_s=10, ramp_s=0)
    load = InteractiveLoad()
    admission = BatchAdmission(config, load)

    async def scenario() -> tuple[list[bool], float, float]:
        load.last_seen = float("-inf")
        tasks = []
        for _ in range(40):
            await admission.acquire()
            task = asyncio.create_task(asyncio.sleep(10))
            admission.hold(task)
            task.add_done_callback(admission.release)
            tasks.append(task)
        load.enter()
        load.leave()
        left_at = load.last_seen
        await asyncio.gather(*tasks[3:], return_exceptions=True)
        kept = [not t.done() for t in tasks]
        for task in tasks[:3]:
            task.cancel()
        await asyncio.gather(*tasks[:3], return_exceptions=True)
        return kept, left_at, load.last_seen

    kept, left_at, quiet_from = asyncio.run(scenario())
    assert kept == [True] * 3 + [False] * 37
    assert admission.preempted_count == 37 and admission.in_use == 0
    assert quiet_from > left_at  # touched when the last preempted line was gone
