"""Lever 4 on the real session server, driven by the unmodified `openai` SDK: upload,
create, poll, download, list, cancel, and every 4xx the API promises.

The session server has two gateway replicas, so two batch runners share the SQLite store
and its leases here."""

from __future__ import annotations

import io
import json
import time

import openai
import pytest

from tests.helpers import metric

pytestmark = pytest.mark.server

BATCH_TIMEOUT_S = 300


def lines_file(n: int, *, prefix: str = "q", extra: list[str] = ()) -> bytes:
    rows = [json.dumps({
        "custom_id": f"{prefix}-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "zoo-s", "max_tokens": 8,
                 "messages": [{"role": "user", "content": f"What is {i} + 3?"}]},
    }) for i in range(n)]
    return ("\n".join([*rows, *extra]) + "\n").encode()


def wait_done(client, batch_id: str, timeout_s: float = BATCH_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch}"
        time.sleep(0.5)


def jsonl(client, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines()]


def test_the_openai_sdk_runs_a_batch_end_to_end(client, server):
    extra = [
        "{not json",
        json.dumps({"custom_id": "ghost", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "no-such-model", "messages": [
                        {"role": "user", "content": "hi"}]}}),
    ]
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(lines_file(24, extra=extra))),
                                   purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes > 0
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"team": "tests"})
    assert batch.status == "validating" and batch.metadata == {"team": "tests"}
    done = wait_done(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.model_dump() == {"total": 26, "completed": 24, "failed": 2}
    for stamp in ("created_at", "in_progress_at", "finalizing_at", "completed_at"):
        assert getattr(done, stamp), stamp
    out, errors = jsonl(client, done.output_file_id), jsonl(client, done.error_file_id)
    assert sorted(o["custom_id"] for o in out) == sorted(f"q-{i}" for i in range(24))
    assert all(o["response"]["status_code"] == 200 for o in out)
    body = out[0]["response"]["body"]
    assert body["choices"][0]["message"]["content"] is not None
    assert body["usage"]["cost"]["saved_by_lever"]["batch"] > 0  # the 50% batch discount
    assert done.usage.input_tokens == sum(o["response"]["body"]["usage"]["prompt_tokens"]
                                          for o in out)
    codes = {e["custom_id"]: e for e in errors}
    assert codes[None]["error"]["code"] == "invalid_json" and codes[None]["error"]["line"] == 25
    assert codes["ghost"]["response"]["status_code"] == 404
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"
    assert batch.id in [b.id for b in client.batches.list(limit=100)]
    assert uploaded.id in [f.id for f in client.files.list(purpose="batch")]
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
    # The lines and the batch discount's saving are in the metrics.
    assert metric(server.root_url, "frugal_batch_lines_total", status="200") >= 24
    assert metric(server.root_url, "frugal_saved_usd_total", lever="batch") > 0
    # The idle cap was sized to the engines: 2 lines per sequence slot, shared by the 2
    # gateway replicas (vLLM's max_num_seqs default depends on the platform).
    assert metric(server.root_url, "frugal_batch_idle_cap") in {128, 256, 512, 1024}


def test_a_cancelled_batch_reports_what_ran_and_what_did_not(client):
    uploaded = client.files.create(file=("c.jsonl", io.BytesIO(lines_file(400, prefix="c"))),
                                   purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    time.sleep(1.0)
    assert client.batches.cancel(batch.id).status in ("cancelling", "cancelled", "completed")
    done = wait_done(client, batch.id)
    assert done.status in ("cancelled", "completed")
    out, errors = jsonl(client, done.output_file_id), jsonl(client, done.error_file_id)
    ids = [o["custom_id"] for o in out + errors]
    assert sorted(ids) == sorted(f"c-{i}" for i in range(400))  # each once
    if done.status == "cancelled":
        assert {e["error"]["code"] for e in errors} <= {"batch_cancelled"}


def test_bad_batch_requests_get_openai_shaped_4xx(client, server):
    import httpx

    with pytest.raises(openai.BadRequestError):  # wrong purpose
        client.files.create(file=("x.jsonl", io.BytesIO(b"{}\n")), purpose="fine-tune")
    good = client.files.create(file=("x.jsonl", io.BytesIO(lines_file(1))), purpose="batch")
    with pytest.raises(openai.BadRequestError) as bad_endpoint:
        client.batches.create(input_file_id=good.id, endpoint="/v1/embeddings",
                              completion_window="24h")
    assert bad_endpoint.value.body["param"] == "endpoint"
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions",
                              completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        client.batches.cancel("batch_nope")
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-nope")
    big = io.BytesIO(b"x" * (1024 * 1024 + 1))  # the session server's limit is 1 MiB
    with pytest.raises(openai.APIStatusError) as too_big:
        client.files.create(file=("big.jsonl", big), purpose="batch")
    assert too_big.value.status_code == 413
    # A batch whose lines repeat a custom_id is refused at validation.
    dup = lines_file(2).replace(b'"q-1"', b'"q-0"')
    dup_file = client.files.create(file=("d.jsonl", io.BytesIO(dup)), purpose="batch")
    failed = wait_done(client, client.batches.create(
        input_file_id=dup_file.id, endpoint="/v1/chat/completions",
        completion_window="24h").id)
    assert failed.status == "failed" and failed.errors.data[0].code == "duplicate_custom_id"
    # Not multipart at all: 400, never a 500.
    reply = httpx.post(f"{server.base_url}/files", content=b"plain", timeout=30)
    assert reply.status_code == 400 and reply.json()["error"]["message"]


def test_frugal_batch_submit_wait_against_the_real_server(server, client, tmp_path):
    from typer.testing import CliRunner

    from serving.cli import app

    source = tmp_path / "cli.jsonl"
    source.write_bytes(lines_file(6, prefix="cli"))
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, [
        "batch", "submit", str(source), "--wait", "--output", str(out),
        "--base-url", server.base_url, "--poll-interval", "0.5",
        "--wait-timeout", str(BATCH_TIMEOUT_S)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    batch_id = result.stdout.strip()
    assert client.batches.retrieve(batch_id).status == "completed"
    assert "6 total, 6 completed, 0 failed" in result.stderr
    assert "saved by batch" in result.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["custom_id"] for r in rows] == [f"cli-{i}" for i in range(6)]  # input order
    assert all(r["response"]["status_code"] == 200 for r in rows)
