"""Fast unit test of `frugal batch`'s HTTP logic (serving/batch_cli.py): the commands run
through typer's CliRunner against a tiny fake Files/Batches server (FastAPI on a free
localhost port, in a thread), so the real `openai` SDK sends real requests. No vLLM, no
Ray; the whole file takes a few seconds.

The fake moves a batch one step per retrieve (validating, in progress one line at a
time, finalizing, completed) and writes its output file in reverse input order, so the
CLI's input-order merge is visible. Metadata `fake=fail` makes a batch fail validation.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from typer.testing import CliRunner

from serving.cli import app

FAST = ["--poll-interval", "0.01"]


class FakeBatchServer:
    """In-memory /v1/files and /v1/batches in OpenAI's shapes (plus frugal's `cost`)."""

    def __init__(self) -> None:
        self.files: dict[str, dict] = {}
        self.blobs: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.creates: list[dict] = []
        self.retrieves = 0
        self.base_url = ""
        api = FastAPI()

        def missing(what: str, ident: str) -> JSONResponse:
            return JSONResponse(status_code=404, content={"error": {
                "message": f"No such {what}: '{ident}'", "type": "invalid_request_error",
                "param": what, "code": None}})

        @api.post("/v1/files")
        async def create_file(raw: Request):
            form = await raw.form()
            file, purpose = form["file"], form["purpose"]
            if purpose != "batch":
                return JSONResponse(status_code=400, content={"error": {
                    "message": "purpose must be 'batch'", "type": "invalid_request_error",
                    "param": "purpose", "code": None}})
            return self.add_file(file.filename or "upload.jsonl", await file.read(), purpose)

        @api.get("/v1/files/{file_id}/content")
        async def content(file_id: str):
            if file_id not in self.blobs:
                return missing("file", file_id)
            return Response(self.blobs[file_id], media_type="application/octet-stream")

        @api.post("/v1/batches")
        async def create_batch(body: dict):
            self.creates.append(body)
            if body["endpoint"] not in ("/v1/chat/completions", "/v1/completions"):
                return JSONResponse(status_code=400, content={"error": {
                    "message": "endpoint must be one of /v1/chat/completions, "
                    "/v1/completions", "type": "invalid_request_error",
                    "param": "endpoint", "code": None}})
            if body["input_file_id"] not in self.files:
                return missing("input_file_id", body["input_file_id"])
            ident = f"batch_{len(self.batches) + 1:04d}"
            self.batches[ident] = {
                "id": ident, "object": "batch", "endpoint": body["endpoint"],
                "input_file_id": body["input_file_id"],
                "completion_window": body["completion_window"], "status": "validating",
                "created_at": int(time.time()), "metadata": body.get("metadata"),
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
                "output_file_id": None, "error_file_id": None, "errors": None,
                "cost": {"total_usd": 0.0, "saved_by_batch_usd": 0.0},
            }
            return self.batches[ident]

        @api.get("/v1/batches")
        async def list_batches(limit: int = 20):
            data = list(reversed(self.batches.values()))
            return {"object": "list", "data": data[:limit], "has_more": len(data) > limit,
                    "first_id": None, "last_id": None}

        @api.get("/v1/batches/{batch_id}")
        async def retrieve(batch_id: str):
            if batch_id not in self.batches:
                return missing("batch", batch_id)
            self.retrieves += 1
            self.step(self.batches[batch_id])
            return self.batches[batch_id]

        @api.post("/v1/batches/{batch_id}/cancel")
        async def cancel(batch_id: str):
            if batch_id not in self.batches:
                return missing("batch", batch_id)
            batch = self.batches[batch_id]
            batch.update(status="cancelled", cancelled_at=int(time.time()))
            return batch

        self.app = api

    def add_file(self, name: str, data: bytes, purpose: str) -> dict:
        ident = f"file-{len(self.files) + 1:04d}"
        self.files[ident] = {"id": ident, "object": "file", "bytes": len(data),
                             "created_at": int(time.time()), "filename": name,
                             "purpose": purpose, "status": "processed"}
        self.blobs[ident] = data
        return self.files[ident]

    def lines(self, batch: dict) -> list[str]:
        return [x for x in self.blobs[batch["input_file_id"]].decode().split("\n") if x]

    def step(self, batch: dict) -> None:
        """One state change per retrieve, as a slow server would show them."""
        now = int(time.time())
        counts = batch["request_counts"]
        if batch["status"] == "validating":
            if (batch["metadata"] or {}).get("fake") == "fail":
                batch.update(status="failed", failed_at=now, errors={"object": "list", "data": [
                    {"code": "duplicate_custom_id", "message": "custom_id 'a' repeats",
                     "line": 2, "param": None}]})
                return
            counts["total"] = len(self.lines(batch))
            batch.update(status="in_progress", in_progress_at=now)
        elif batch["status"] == "in_progress":
            if counts["completed"] + counts["failed"] < counts["total"]:
                counts["completed"] += 1
            else:
                batch.update(status="finalizing", finalizing_at=now)
        elif batch["status"] == "finalizing":
            self.finish(batch, now)

    def finish(self, batch: dict, now: int) -> None:
        out, errors = [], []
        for number, raw in enumerate(self.lines(batch), 1):
            try:
                line = json.loads(raw)
            except ValueError:
                errors.append({"id": f"req_{number}", "custom_id": None, "response": None,
                               "error": {"code": "invalid_json", "message": "not JSON",
                                         "line": number}})
                continue
            model = line["body"].get("model")
            if model == "no-such-model":
                errors.append({"id": f"req_{number}", "custom_id": line["custom_id"],
                               "response": {"status_code": 404, "body": {}},
                               "error": {"code": "not_found", "message": "no model",
                                         "line": number}})
                continue
            out.append({"id": f"req_{number}", "custom_id": line["custom_id"],
                        "response": {"status_code": 200, "body": {
                            "model": model, "choices": [{"message": {
                                "role": "assistant", "content": f"answer {number}"}}]}},
                        "error": None})
        counts = batch["request_counts"]
        counts.update(completed=len(out), failed=len(errors))
        dump = "".join(json.dumps(x) + "\n" for x in reversed(out))  # not input order
        batch["output_file_id"] = self.add_file("out.jsonl", dump.encode(),
                                                "batch_output")["id"] if out else None
        dump = "".join(json.dumps(x) + "\n" for x in reversed(errors))
        batch["error_file_id"] = self.add_file("err.jsonl", dump.encode(),
                                               "batch_output")["id"] if errors else None
        batch.update(status="completed", completed_at=now,
                     cost={"total_usd": 0.000123 * len(out),
                           "saved_by_batch_usd": 0.000123 * len(out)})


@pytest.fixture(scope="module")
def fake():
    import uvicorn

    state = FakeBatchServer()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(state.app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "fake server did not start"
        time.sleep(0.01)
    state.base_url = f"http://127.0.0.1:{port}/v1"
    yield state
    server.should_exit = True
    thread.join(10)
    sock.close()


def frugal(fake: FakeBatchServer, *args: str):
    """Run `frugal batch ARGS` with the fake as OPENAI_BASE_URL (as a user would set it)."""
    env = {"OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "k", "COLUMNS": "200"}
    return CliRunner().invoke(app, ["batch", *args], env=env)


def request(custom_id: str, model: str = "zoo-s", content: str = "hi") -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": model, "messages": [
                           {"role": "user", "content": content}]}})


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_submit_wait_rewrites_the_model_shows_progress_and_writes_ordered_results(
        fake, tmp_path):
    source = write(tmp_path / "in.jsonl", [request("a"), request("b", content="héllo"),
                                           "{not json", request("c")])
    out = tmp_path / "res" / "out.jsonl"
    result = frugal(fake, "submit", str(source), "--model", "auto", "--metadata", "team=t",
                    "--metadata", "run=1", "--wait", "--output", str(out), *FAST)
    assert result.exit_code == 0, result.output
    batch_id = result.stdout.strip()  # stdout is the batch id alone, for scripts
    assert batch_id.startswith("batch_") and batch_id in fake.batches
    # What was uploaded: every JSON line's body.model rewritten, the bad line untouched.
    batch = fake.batches[batch_id]
    uploaded = fake.blobs[batch["input_file_id"]].decode().split("\n")
    assert [json.loads(x)["body"]["model"] for x in uploaded if x.startswith('{"')] == [
        "auto"] * 3
    assert uploaded[2] == "{not json" and "héllo" in uploaded[1]
    assert fake.files[batch["input_file_id"]]["purpose"] == "batch"
    assert fake.creates[-1] == {"input_file_id": batch["input_file_id"],
                                "endpoint": "/v1/chat/completions",
                                "completion_window": "24h",
                                "metadata": {"team": "t", "run": "1"}}
    assert "warning: 1 line(s) are not JSON objects (line 3)" in result.stderr
    # The progress bar's last frame and the summary.
    assert "4/4" in result.stderr and "failed 1" in result.stderr
    assert "completed" in result.stderr and "3 completed, 1 failed" in result.stderr
    assert "$0.000369" in result.stderr and "saved by batch" in result.stderr
    # The output file in input order (the fake wrote it reversed).
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["custom_id"] for r in rows] == ["a", "b", "c"]
    assert all(r["response"]["body"]["model"] == "auto" for r in rows)


def test_submit_without_model_uploads_the_bytes_as_they_are(fake, tmp_path):
    raw = (request("x") + "\r\n" + request("y", model="zoo-m") + "\r\n").encode()
    source = tmp_path / "crlf.jsonl"
    source.write_bytes(raw)
    result = frugal(fake, "submit", str(source))  # no --wait: returns at once
    assert result.exit_code == 0, result.output
    batch = fake.batches[result.stdout.strip()]
    assert batch["status"] == "validating"  # nobody polled it
    assert fake.blobs[batch["input_file_id"]] == raw


def test_results_merge_in_input_order_and_errors_go_to_their_own_stream(fake, tmp_path):
    source = write(tmp_path / "in.jsonl", [
        request("q0"), "oops", request("q1", model="no-such-model"), request("q2"),
        request("q3")])
    submitted = frugal(fake, "submit", str(source), "--wait", *FAST)
    assert submitted.exit_code == 0, submitted.output
    batch_id = submitted.stdout.strip()

    ok = frugal(fake, "results", batch_id)
    assert ok.exit_code == 0, ok.output
    assert [json.loads(x)["custom_id"] for x in ok.stdout.splitlines()] == ["q0", "q2", "q3"]
    server_order = frugal(fake, "results", batch_id, "--server-order")
    assert [json.loads(x)["custom_id"] for x in server_order.stdout.splitlines()] == [
        "q3", "q2", "q0"]
    errors = frugal(fake, "results", batch_id, "--errors")
    assert [(e["custom_id"], e["error"]["line"]) for e in map(
        json.loads, errors.stdout.splitlines())] == [(None, 2), ("q1", 3)]
    everything = tmp_path / "all.jsonl"
    both = frugal(fake, "results", batch_id, "--all", "--output", str(everything))
    assert both.exit_code == 0 and f"wrote 5 line(s) to {everything}" in both.stderr
    rows = [json.loads(x) for x in everything.read_text().splitlines()]
    assert [(r["custom_id"], r["error"] is None) for r in rows] == [
        ("q0", True), (None, False), ("q1", False), ("q2", True), ("q3", True)]


def test_status_list_and_cancel(fake, tmp_path):
    source = write(tmp_path / "in.jsonl", [request("s0"), request("s1")])
    batch_id = frugal(fake, "submit", str(source), "--metadata", "team=ops").stdout.strip()

    shown = frugal(fake, "status", batch_id)
    assert shown.exit_code == 0, shown.output
    for text in (batch_id, "in_progress", "/v1/chat/completions", "team=ops",
                 "2 total, 0 completed, 0 failed", "created", "in progress"):
        assert text in shown.stdout, text
    as_json = json.loads(frugal(fake, "status", batch_id, "--json").stdout)
    assert as_json["id"] == batch_id and as_json["cost"]["total_usd"] == 0.0

    listed = frugal(fake, "list", "--limit", "2")
    assert listed.exit_code == 0, listed.output
    assert batch_id in listed.stdout and "(more: --limit 4)" in listed.stdout

    cancelled = frugal(fake, "cancel", batch_id)
    assert cancelled.exit_code == 0, cancelled.output
    assert f"{batch_id}: cancelled" in cancelled.stdout
    assert fake.batches[batch_id]["status"] == "cancelled"
    # Ended before any line ran: no results, and saying so is not an error.
    results = frugal(fake, "results", batch_id)
    assert results.exit_code == 0 and "has no result lines" in results.stderr


def test_a_failed_batch_exits_non_zero_with_its_errors(fake, tmp_path):
    source = write(tmp_path / "in.jsonl", [request("a"), request("a")])
    result = frugal(fake, "submit", str(source), "--metadata", "fake=fail", "--wait", *FAST)
    assert result.exit_code == 1
    assert result.stdout.strip() in fake.batches  # the id was printed before the wait
    assert "duplicate_custom_id" in result.stderr and "custom_id 'a' repeats" in result.stderr
    assert f"error: batch {result.stdout.strip()} failed" in result.stderr


def test_wait_timeout_gives_up_but_leaves_the_batch(fake, tmp_path):
    source = write(tmp_path / "in.jsonl", [request(f"t{i}") for i in range(50)])
    result = frugal(fake, "submit", str(source), "--wait", "--wait-timeout", "0", *FAST)
    assert result.exit_code == 1
    batch_id = result.stdout.strip()
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: still validating after 0 s; {batch_id} goes on on the server: "
        f"`frugal batch status {batch_id}`")
    assert fake.batches[batch_id]["status"] == "validating"


@pytest.mark.parametrize("command", [["status", "batch_nope"], ["cancel", "batch_nope"],
                                     ["results", "batch_nope"]])
def test_an_unknown_id_is_one_red_line_and_exit_1(fake, command):
    result = frugal(fake, *command)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: 404 No such batch: 'batch_nope' ({'POST' if command[0] == 'cancel' else 'GET'}"
        f" /v1/batches/batch_nope{'/cancel' if command[0] == 'cancel' else ''})"]
    assert "Traceback" not in result.output and result.exception.__class__ is SystemExit


def test_a_server_400_is_reported_with_its_message(fake, tmp_path):
    source = write(tmp_path / "in.jsonl", [request("a")])
    result = frugal(fake, "submit", str(source), "--endpoint", "/v1/embeddings")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: 400 endpoint must be one of /v1/chat/completions, /v1/completions "
        "(POST /v1/batches)")
    assert "Traceback" not in result.output


def test_a_server_that_is_not_there(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = CliRunner().invoke(app, ["batch", "status", "batch_x", "--base-url",
                                      f"http://127.0.0.1:{port}/v1"])
    assert result.exit_code == 1
    line, = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot reach http://127.0.0.1:{port}/v1 (Connection error")
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("content", "message"), [
    (b"", "is empty"),
    (b"\n  \n", "is empty"),
    (b"\xff\xfe{}", "is not UTF-8 text"),
    (b'[{"custom_id": "a"}]\n', "no line is a JSON object (it is one JSON array"),
    (b"a,b\n1,2\n", "is not JSONL: no line is a JSON object"),
])
def test_a_file_that_is_not_jsonl_is_refused_before_any_upload(fake, tmp_path, content,
                                                                message):
    source = tmp_path / "bad.jsonl"
    source.write_bytes(content)
    uploads = len(fake.files)
    result = frugal(fake, "submit", str(source))
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert len(fake.files) == uploads


def test_bad_metadata_and_a_missing_file_are_usage_errors(fake, tmp_path):
    source = write(tmp_path / "in.jsonl", [request("a")])
    bad = frugal(fake, "submit", str(source), "--metadata", "novalue")
    assert bad.exit_code == 2 and "--metadata 'novalue': expected KEY=VALUE" in bad.stderr
    missing = frugal(fake, "submit", str(tmp_path / "nope.jsonl"))
    assert missing.exit_code == 2 and "does not exist" in missing.output
