"""`frugal bench load`'s verdict on each way a request can end (ok, shed, lost), against
a fake HTTP server (aiohttp) that answers each way on purpose: no engine involved."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web

from serving.bench.load_bench import markdown, run_phase, send_one, summarize

MAX_TOKENS = 4


def _chunk(content: str | None = None, usage: int | None = None) -> bytes:
    body: dict = {"choices": [{"delta": {"content": content}}] if content else []}
    if usage is not None:
        body["usage"] = {"completion_tokens": usage}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def _fake_server(request: web.Request) -> web.StreamResponse:
    """The fake: the request's `model` says how to answer."""
    way = (await request.json())["model"]
    if way == "shed":
        return web.json_response({"error": {"message": "busy"}}, status=503,
                                 headers={"Retry-After": "1"})
    if way == "500":
        return web.json_response({"error": {"message": "boom"}}, status=500)
    if way == "503-no-retry-after":
        return web.json_response({"error": {"message": "busy"}}, status=503)
    reply = web.StreamResponse()
    await reply.prepare(request)
    await reply.write(_chunk("4"))
    if way == "reset":
        request.transport.abort()  # the connection dies mid-stream
        return reply
    if way == "in-stream-error":
        await reply.write(b'data: {"error": {"message": "engine died"}}\n\n')
    if way != "truncated":
        await reply.write(_chunk(usage=MAX_TOKENS if way != "short" else 1))
        await reply.write(b"data: [DONE]\n\n")
    return reply


@pytest.fixture
def fake_url():
    async def start() -> tuple[web.AppRunner, str]:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", _fake_server)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return runner, f"http://127.0.0.1:{port}/v1"

    loop = asyncio.new_event_loop()
    runner, url = loop.run_until_complete(start())
    yield loop, url
    loop.run_until_complete(runner.cleanup())
    loop.close()


@pytest.mark.parametrize(("way", "outcome"), [
    ("ok", "ok"), ("shed", "shed"), ("500", "lost"), ("503-no-retry-after", "lost"),
    ("reset", "lost"), ("in-stream-error", "lost"), ("truncated", "lost"), ("short", "lost"),
])
def test_every_way_a_request_ends_is_classified(fake_url, way: str, outcome: str) -> None:
    loop, url = fake_url

    async def one():
        async with aiohttp.ClientSession() as http:
            body = {"model": way, "messages": [], "max_tokens": MAX_TOKENS, "stream": True}
            return await send_one(http, f"{url}/chat/completions", body, MAX_TOKENS)

    sample = loop.run_until_complete(one())
    assert sample.outcome == outcome, sample
    if outcome == "shed":
        assert sample.retry_after_s == 1.0


def test_a_phase_counts_what_it_sent_and_stops_on_time(fake_url) -> None:
    loop, url = fake_url
    samples, wall = loop.run_until_complete(
        run_phase(url, "ok", concurrency=4, duration_s=0.5, max_tokens=MAX_TOKENS))
    assert samples and all(s.outcome == "ok" for s in samples)
    assert wall < 10
    result = summarize(samples, round_index=1, multiplier=4, concurrency=4, duration_s=0.5,
                       wall_s=wall)
    assert result.sent == result.ok == len(samples) and result.lost == 0
    assert result.latency_p50_ms <= result.latency_p99_ms


def test_shed_clients_wait_retry_after_and_lost_ones_are_named(fake_url) -> None:
    loop, url = fake_url
    shed, _ = loop.run_until_complete(
        run_phase(url, "shed", concurrency=2, duration_s=1.5, max_tokens=MAX_TOKENS))
    assert 2 <= len(shed) <= 6  # each client waits Retry-After (1 s) between tries
    lost, wall = loop.run_until_complete(
        run_phase(url, "500", concurrency=1, duration_s=0.2, max_tokens=MAX_TOKENS))
    result = summarize(lost, round_index=1, multiplier=1, concurrency=1, duration_s=0.2,
                       wall_s=wall)
    assert result.lost == result.sent and "HTTP 500 without Retry-After" in result.lost_kinds
    from serving.bench.load_bench import LoadReport

    text = markdown(LoadReport(command="x", model="m", nominal=1, max_tokens=MAX_TOKENS,
                               phases=[result], memory=[]))
    assert "HTTP 500 without Retry-After" in text
