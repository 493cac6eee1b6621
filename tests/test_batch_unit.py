"""Unit tests of lever 4's store, runner and admission, on a fake engine (no vLLM).

The real-server flow through the `openai` SDK, and the kill -9 crash test, are in
tests/test_batch_server.py; these check the bookkeeping fast and in detail.
"""

from __future__ import annotations

import asyncio
import io
import json
import time

import pytest

from serving.batch.admission import BatchAdmission, InteractiveLoad
from serving.batch.runner import BatchRunner
from serving.batch.store import BatchStore, LineResult
from serving.config import BatchConfig
from serving.store.blobs import LocalBlobStore
from serving.store.db import open_engine, session_factory
from tests.fake_engine import FakeEngine, chat, fake_pipeline


def make_store(url: str, files: str) -> BatchStore:
    return BatchStore(session_factory(open_engine(url)), LocalBlobStore(files))


@pytest.fixture
def store(tmp_path) -> BatchStore:
    return make_store(f"sqlite:///{tmp_path}/frugal.db", str(tmp_path / "files"))


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
                     config: BatchConfig | None = None, timeout_s: float = 20) -> dict:
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
    assert (row.completed, row.input_tokens) == (1, 3)


def test_a_lease_is_held_by_one_runner_until_it_lapses(store):
    batch = store.create_batch("anonymous", upload(store, [line("a")]),
                               "/v1/chat/completions", "24h", None)
    assert store.claim("runner-1", lease_s=0.3, limit=5) == [batch.id]
    assert store.claim("runner-2", lease_s=0.3, limit=5) == []
    assert store.renew("runner-1", batch.id, 0.3)
    time.sleep(0.35)  # runner-1 died: its lease lapses
    assert store.claim("runner-2", lease_s=5, limit=5) == [batch.id]
    assert not store.renew("runner-1", batch.id, 5)


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
    admission = BatchAdmission(BatchConfig(idle_in_flight=64, busy_in_flight=2, quiet_s=0.2),
                               load)
    assert admission.cap() == 64
    load.enter()
    assert admission.cap() == 2
    load.leave()
    assert admission.cap() == 2  # within quiet_s of the last interactive request
    time.sleep(0.25)
    assert admission.cap() == 64
