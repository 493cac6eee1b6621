"""A closed-loop load generator for OpenAI chat endpoints.

`concurrency` clients each send streaming chat completions back to back until
`requests` have been sent. Every request asks for exactly `max_tokens` tokens
(`ignore_eos`, vLLM's extension), so throughput compares like with like across servers.
Per request it records TTFT (first chunk that carries text), end-to-end latency, the
completion tokens from the usage chunk, and the error if any. Bounded in count and in
time: it stops by itself and reports what finished.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

import aiohttp
from pydantic import BaseModel


class RequestSample(BaseModel):
    """One request as the client saw it."""

    ttft_s: float
    latency_s: float
    completion_tokens: int
    ok: bool
    error: str | None = None


class LoadResult(BaseModel):
    """Aggregates of one load level (one server, one concurrency, one round or more)."""

    concurrency: int
    requests: int
    errors: int
    wall_s: float
    tokens_per_s: float
    requests_per_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    latency_p50_ms: float
    latency_p95_ms: float
    first_error: str | None = None


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100], numpy's default); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(samples: list[RequestSample], concurrency: int, wall_s: float) -> LoadResult:
    """Throughput is completion tokens of good requests over the level's wall time (the
    closed loop keeps `concurrency` requests in flight); percentiles use good requests."""
    good = [s for s in samples if s.ok]
    bad = [s for s in samples if not s.ok]
    tokens = sum(s.completion_tokens for s in good)
    return LoadResult(
        concurrency=concurrency,
        requests=len(samples),
        errors=len(bad),
        wall_s=wall_s,
        tokens_per_s=tokens / wall_s if wall_s else 0.0,
        requests_per_s=len(good) / wall_s if wall_s else 0.0,
        ttft_p50_ms=percentile([s.ttft_s for s in good], 50) * 1000,
        ttft_p95_ms=percentile([s.ttft_s for s in good], 95) * 1000,
        latency_p50_ms=percentile([s.latency_s for s in good], 50) * 1000,
        latency_p95_ms=percentile([s.latency_s for s in good], 95) * 1000,
        first_error=bad[0].error if bad else None,
    )


def mean_result(results: list[LoadResult]) -> LoadResult:
    """Average several rounds of the same level (rates and percentiles alike), so each
    round weighs the same whatever its length."""
    first = results[0]
    fields = {
        name: statistics.fmean(getattr(r, name) for r in results)
        for name in ("wall_s", "tokens_per_s", "requests_per_s", "ttft_p50_ms", "ttft_p95_ms",
                     "latency_p50_ms", "latency_p95_ms")
    }
    errors = [r.first_error for r in results if r.first_error]
    return LoadResult(concurrency=first.concurrency, requests=sum(r.requests for r in results),
                      errors=sum(r.errors for r in results),
                      first_error=errors[0] if errors else None, **fields)


def chat_body(model: str, prompt: str, max_tokens: int, stream: bool = True) -> dict[str, Any]:
    """A chat request of exactly `max_tokens` output tokens, with usage."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def has_text(chunk: dict[str, Any]) -> bool:
    """True for a chunk carrying generated text (answer or reasoning); vLLM's first
    chunk only announces the role and does not count as the first token."""
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("reasoning") or delta.get("reasoning_content"):
            return True
    return False


async def send_one(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> RequestSample:
    """One request, streaming or whole (TTFT is then the whole latency); never raises
    (errors are data)."""
    started = time.perf_counter()
    ttft: float | None = None
    tokens: int | None = None
    try:
        async with http.post(url, json=body) as reply:
            if reply.status != 200:
                detail = (await reply.read()).decode(errors="replace")[:200]
                return _failed(started, f"HTTP {reply.status}: {detail}")
            if not body.get("stream"):
                tokens = (await reply.json())["usage"]["completion_tokens"]
            else:
                async for raw in reply.content:  # one SSE line at a time
                    if not raw.startswith(b"data: ") or raw.startswith(b"data: [DONE]"):
                        continue
                    # Parse only what is needed (the client shares the CPU with the servers):
                    # every chunk until the first token, then usage and error chunks.
                    if ttft is not None and b'"usage"' not in raw and b'"error"' not in raw:
                        continue
                    chunk = json.loads(raw[6:])
                    if "error" in chunk:
                        return _failed(started, f"in-stream error: {chunk['error']}")
                    if ttft is None and has_text(chunk):
                        ttft = time.perf_counter() - started
                    if chunk.get("usage"):
                        tokens = chunk["usage"].get("completion_tokens")
    except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError, KeyError, TypeError) as exc:
        return _failed(started, f"{type(exc).__name__}: {exc}")
    latency = time.perf_counter() - started
    if tokens is None:
        return _failed(started, "no usage chunk (stream_options.include_usage ignored?)")
    return RequestSample(ttft_s=ttft if ttft is not None else latency, latency_s=latency,
                         completion_tokens=tokens, ok=True)


def _failed(started: float, error: str) -> RequestSample:
    return RequestSample(ttft_s=0.0, latency_s=time.perf_counter() - started,
                         completion_tokens=0, ok=False, error=error)


async def run_load(
    base_url: str, model: str, *, concurrency: int, requests: int, max_tokens: int = 64,
    prompt: str = "What is 12 + 34?", timeout_s: float = 600, stream: bool = True,
) -> LoadResult:
    """`requests` chat completions (streaming unless `stream` is False), `concurrency` at a
    time (closed loop).

    After `timeout_s` no new request starts and the ones in flight are cancelled and
    counted as errors, so a stuck server cannot hang the benchmark.
    """
    samples, wall = await load_samples(base_url, model, concurrency=concurrency,
                                       requests=requests, max_tokens=max_tokens,
                                       prompt=prompt, timeout_s=timeout_s, stream=stream)
    return summarize(samples, concurrency, wall)


async def load_samples(
    base_url: str, model: str, *, concurrency: int, requests: int, max_tokens: int = 64,
    prompt: str = "What is 12 + 34?", timeout_s: float = 600, stream: bool = True,
) -> tuple[list[RequestSample], float]:
    """`run_load`'s requests, each as the client saw it, in the order they were sent,
    and the wall time (for pooling several rounds before taking percentiles)."""
    body = chat_body(model, prompt, max_tokens, stream)
    url = f"{base_url}/chat/completions"
    # More connections than clients: a pool smaller than the concurrency would queue
    # requests inside the client and measure the pool, not the server. aiohttp, not httpx:
    # at 64 streams httpx's pool capped raw vLLM at about half of what aiohttp measured
    # (docs/serving.md), i.e. it measured the client.
    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    sent: list[RequestSample | None] = []  # by the order they were sent
    remaining = requests
    deadline = time.perf_counter() + timeout_s

    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as http:

        async def client() -> None:
            nonlocal remaining
            while remaining > 0 and time.perf_counter() < deadline:
                remaining -= 1
                index = len(sent)
                sent.append(None)
                sent[index] = await send_one(http, url, body)

        started = time.perf_counter()
        tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
        try:
            await asyncio.wait(tasks, timeout=timeout_s)
        finally:  # also when interrupted: no request may outlive the client
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        wall = time.perf_counter() - started
    timed_out = RequestSample(ttft_s=0, latency_s=timeout_s, completion_tokens=0, ok=False,
                              error=f"timed out after {timeout_s:.0f}s")
    # A request still in flight at the deadline (its client stuck) counts as timed out.
    return [sample or timed_out for sample in sent], wall
