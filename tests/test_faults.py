"""Overload, client disconnects and a dead engine, on a real server.

`zoo-s-tight` (one request at a time, a queue of one) exists for these tests; the
last one kills its engine, so it runs last in this module and nothing else uses it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import psutil
import pytest
from helpers import assert_disconnect_aborts, chat_body

pytestmark = pytest.mark.server
TIGHT = "zoo-s-tight"


def test_overload_is_503_with_retry_after(server) -> None:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as http:
            body = chat_body(TIGHT, max_tokens=200, ignore_eos=True)
            return await asyncio.gather(*(
                http.post(f"{server.base_url}/chat/completions", json=body) for _ in range(8)))

    replies = asyncio.run(run())
    codes = sorted(reply.status_code for reply in replies)
    assert 200 in codes and 503 in codes, codes
    assert set(codes) <= {200, 503}
    rejected = next(reply for reply in replies if reply.status_code == 503)
    assert int(rejected.headers["retry-after"]) >= 1
    assert rejected.json()["error"]["type"] == "ServiceUnavailableError"


def test_client_disconnect_aborts_the_generation(server) -> None:
    model = "zoo-s"
    models = httpx.get(f"{server.base_url}/models").json()["data"]
    context = next(m["max_model_len"] for m in models if m["id"] == model)
    assert_disconnect_aborts(server.base_url, model, max_tokens=context - 64)


def _engine_core_of(deployment: str) -> psutil.Process:
    for process in psutil.process_iter(["cmdline"]):
        if any(deployment in part for part in process.info["cmdline"] or []):
            for child in process.children(recursive=True):
                if "EngineCore" in " ".join(child.cmdline()) or "EngineCore" in child.name():
                    return child
    raise AssertionError(f"no engine process found for {deployment}")


def test_dead_engine_is_503_not_a_hang(server) -> None:
    engine = _engine_core_of(f"model-{TIGHT}")
    os.kill(engine.pid, signal.SIGKILL)
    engine.wait(timeout=30)
    started = time.monotonic()
    reply = httpx.post(f"{server.base_url}/chat/completions", timeout=60,
                       json=chat_body(TIGHT, max_tokens=4))
    assert reply.status_code == 503, reply.text
    assert "retry-after" in reply.headers
    assert time.monotonic() - started < 30
    # The healthy model is unaffected.
    ok = httpx.post(f"{server.base_url}/chat/completions", timeout=60,
                    json=chat_body("zoo-s", max_tokens=4))
    assert ok.status_code == 200
