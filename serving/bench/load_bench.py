"""`frugal bench load`: the server past its nominal concurrency, on loopback, bounded in
count and time.

Nominal is what the deployment is sized to run at once: the target model's
`max_ongoing_requests` times its replicas. Each round runs phases at multiples of it (4x
for 2 minutes, then 16x for 30 s, by default) with closed-loop streaming clients. A
client that is shed (429/503 with `Retry-After`) waits as long as it is told, as the
OpenAI SDK does, then tries again. Every request ends one of three ways:

- `ok`: 200 and a whole stream (`[DONE]`, usage, `max_tokens` tokens);
- `shed`: 429 or 503 with `Retry-After` (the server said no and when to come back);
- `lost`: anything else: a reset or refused connection, a stream cut short or carrying
  an error, a 5xx without `Retry-After`, another status, no answer within the timeout.

The target is 0 lost. Between rounds the resident memory of every process of the
server is read (grouped by role), so a leak shows as growth from one round to the next.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import psutil
from pydantic import BaseModel

from serving.bench.loadgen import chat_body, has_text, percentile

#: How long a request may take before it counts as lost (queued at 16x, it waits for
#: the ones ahead of it: minutes are possible, forever is not).
REQUEST_TIMEOUT_S = 300.0
#: A shed client never waits longer than this, whatever Retry-After says.
MAX_RETRY_WAIT_S = 30.0


class Sample(BaseModel):
    """One request as the client saw it."""

    outcome: str  # ok | shed | lost
    status: int | None = None
    latency_s: float
    ttft_s: float | None = None
    retry_after_s: float | None = None
    error: str | None = None


class PhaseResult(BaseModel):
    """One phase of one round: `multiplier` x nominal clients for `duration_s`."""

    round: int
    multiplier: int
    concurrency: int
    duration_s: float
    wall_s: float
    sent: int
    ok: int
    shed: int
    lost: int
    shed_rate: float
    ok_per_s: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    lost_kinds: dict[str, int]
    first_lost: str | None = None


class MemorySnapshot(BaseModel):
    """Resident memory of the server's processes, MB, summed per role."""

    when: str
    rss_mb: dict[str, float]


class LoadReport(BaseModel):
    command: str
    model: str
    nominal: int
    max_tokens: int
    phases: list[PhaseResult]
    memory: list[MemorySnapshot]


def _lost_kind(error: str) -> str:
    """A short name for a lost request's cause, for the report's counts."""
    return re.split(r"[:(]", error, maxsplit=1)[0].strip()


async def send_one(http: aiohttp.ClientSession, url: str, body: dict[str, Any],
                   max_tokens: int) -> Sample:
    """One streaming request, classified; never raises (errors are data)."""
    started = time.perf_counter()
    ttft: float | None = None
    tokens: int | None = None
    done = False

    def lost(error: str, status: int | None = None) -> Sample:
        return Sample(outcome="lost", status=status, error=error,
                      latency_s=time.perf_counter() - started)

    try:
        async with http.post(url, json=body) as reply:
            if reply.status != 200:
                detail = (await reply.read()).decode(errors="replace")[:200]
                retry_after = reply.headers.get("Retry-After")
                if reply.status in (429, 503) and retry_after is not None:
                    return Sample(outcome="shed", status=reply.status,
                                  retry_after_s=float(retry_after),
                                  latency_s=time.perf_counter() - started)
                return lost(f"HTTP {reply.status} without Retry-After: {detail}", reply.status)
            async for raw in reply.content:  # one SSE line at a time
                if raw.startswith(b"data: [DONE]"):
                    done = True
                    continue
                if not raw.startswith(b"data: "):
                    continue
                if ttft is not None and b'"usage"' not in raw and b'"error"' not in raw:
                    continue  # the client shares the CPU: parse only what it needs
                chunk = json.loads(raw[6:])
                if "error" in chunk:
                    return lost(f"in-stream error: {chunk['error']}", 200)
                if ttft is None and has_text(chunk):
                    ttft = time.perf_counter() - started
                if chunk.get("usage"):
                    tokens = chunk["usage"].get("completion_tokens")
    except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError, ValueError) as exc:
        return lost(f"{type(exc).__name__}: {exc}")
    if not done or tokens != max_tokens:
        return lost(f"truncated stream: [DONE] {'seen' if done else 'missing'}, "
                    f"{tokens} of {max_tokens} tokens", 200)
    latency = time.perf_counter() - started
    return Sample(outcome="ok", status=200, latency_s=latency,
                  ttft_s=ttft if ttft is not None else latency)


async def run_phase(base_url: str, model: str, *, concurrency: int, duration_s: float,
                    max_tokens: int, prompt: str = "What is 12 + 34?",
                    request_timeout_s: float = REQUEST_TIMEOUT_S) -> tuple[list[Sample], float]:
    """`concurrency` clients for `duration_s`: no request starts after that, and the ones
    in flight get `request_timeout_s` to finish; a request still open then is lost."""
    body = chat_body(model, prompt, max_tokens)
    url = f"{base_url}/chat/completions"
    samples: list[Sample] = []
    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    timeout = aiohttp.ClientTimeout(total=request_timeout_s)
    started = time.perf_counter()
    stop_at = started + duration_s
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def client() -> None:
            while time.perf_counter() < stop_at:
                sample = await send_one(http, url, body, max_tokens)
                samples.append(sample)
                if sample.outcome == "shed":
                    wait = min(sample.retry_after_s or 1.0, MAX_RETRY_WAIT_S,
                               max(0.0, stop_at - time.perf_counter()))
                    await asyncio.sleep(wait)

        tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
        _, stuck = await asyncio.wait(tasks, timeout=duration_s + request_timeout_s + 30)
        for task in stuck:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    samples += [Sample(outcome="lost", latency_s=request_timeout_s,
                       error="client still waiting at the phase's end")] * len(stuck)
    return samples, time.perf_counter() - started


def summarize(samples: list[Sample], *, round_index: int, multiplier: int, concurrency: int,
              duration_s: float, wall_s: float) -> PhaseResult:
    ok = [s for s in samples if s.outcome == "ok"]
    shed = [s for s in samples if s.outcome == "shed"]
    lost = [s for s in samples if s.outcome == "lost"]
    latencies = [s.latency_s * 1000 for s in ok]
    ttfts = [(s.ttft_s or 0) * 1000 for s in ok]
    return PhaseResult(
        round=round_index, multiplier=multiplier, concurrency=concurrency,
        duration_s=duration_s, wall_s=wall_s, sent=len(samples), ok=len(ok), shed=len(shed),
        lost=len(lost), shed_rate=len(shed) / len(samples) if samples else 0.0,
        ok_per_s=len(ok) / wall_s if wall_s else 0.0,
        latency_p50_ms=percentile(latencies, 50), latency_p95_ms=percentile(latencies, 95),
        latency_p99_ms=percentile(latencies, 99), ttft_p50_ms=percentile(ttfts, 50),
        ttft_p95_ms=percentile(ttfts, 95),
        lost_kinds=dict(collections.Counter(_lost_kind(s.error or "?") for s in lost)),
        first_lost=lost[0].error if lost else None)


#: Process roles by command line, most specific first.
_ROLES = (
    ("ServeReplica:frugal:gateway", "gateway replicas"),
    ("ServeReplica:frugal:model-", "model replicas"),
    ("EngineCore", "vLLM engine cores"),
    ("VLLM::Worker", "vLLM workers"),
    ("ServeController", "Serve controller"),
    ("ProxyActor", "Serve proxy"),
    ("raylet", "raylet"),
    ("gcs_server", "GCS"),
    ("serve ", "frugal serve"),
)


def _role(process: psutil.Process) -> str:
    try:
        line = " ".join(process.cmdline()) or process.name()
    except psutil.Error:
        return "other"
    return next((role for marker, role in _ROLES if marker in line), "other Ray processes")


def memory_snapshot(session_id: int, when: str) -> MemorySnapshot:
    """RSS of every live process of the server's session, MB per role."""
    from serving.evaluation.launcher import session_pids

    totals: dict[str, float] = collections.defaultdict(float)
    for pid in session_pids(session_id):
        try:
            process = psutil.Process(pid)
            totals[_role(process)] += process.memory_info().rss / 1e6
        except psutil.Error:
            continue
    return MemorySnapshot(when=when, rss_mb=dict(sorted(totals.items())))


def run_load_bench(base_url: str, session_id: int | None, model: str, *, nominal: int,
                   phases: list[tuple[int, float]], rounds: int, max_tokens: int,
                   command: str, say: Callable[[str], Any] = print,
                   settle_s: float = 10.0) -> LoadReport:
    """Every round runs every phase in order; memory is read before the first round and
    after each (once the server has been idle `settle_s`)."""
    memory: list[MemorySnapshot] = []
    results: list[PhaseResult] = []
    if session_id is not None:
        memory.append(memory_snapshot(session_id, "before"))
    for round_index in range(1, rounds + 1):
        for multiplier, duration_s in phases:
            concurrency = multiplier * nominal
            say(f"round {round_index}: {multiplier}x nominal = {concurrency} clients for "
                f"{duration_s:.0f} s...")
            samples, wall = asyncio.run(run_phase(base_url, model, concurrency=concurrency,
                                                  duration_s=duration_s,
                                                  max_tokens=max_tokens))
            result = summarize(samples, round_index=round_index, multiplier=multiplier,
                               concurrency=concurrency, duration_s=duration_s, wall_s=wall)
            say(f"  {result.sent} sent: {result.ok} ok, {result.shed} shed, "
                f"{result.lost} lost; latency p50/p95/p99 {result.latency_p50_ms:.0f}/"
                f"{result.latency_p95_ms:.0f}/{result.latency_p99_ms:.0f} ms")
            results.append(result)
        if session_id is not None:
            time.sleep(settle_s)
            memory.append(memory_snapshot(session_id, f"after round {round_index}"))
    return LoadReport(command=command, model=model, nominal=nominal, max_tokens=max_tokens,
                      phases=results, memory=memory)


def markdown(report: LoadReport) -> str:
    lines = [
        "# Load past nominal, measured",
        "",
        f"Command: `{report.command}`",
        "",
        f"Model `{report.model}`, nominal concurrency {report.nominal} (its "
        "`max_ongoing_requests` x replicas), streaming chat completions of "
        f"{report.max_tokens} tokens each. A shed client waits `Retry-After`, then tries "
        "again. Lost = a reset or refused connection, a cut stream, a 5xx without "
        "`Retry-After`, or no answer within "
        f"{REQUEST_TIMEOUT_S:.0f} s. Latency percentiles are over the requests answered.",
        "",
        "| round | load | clients | s | sent | ok | shed | lost | shed rate | ok/s | "
        "latency p50 / p95 / p99 ms | TTFT p50 / p95 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in report.phases:
        lines.append(
            f"| {p.round} | {p.multiplier}x | {p.concurrency:,} | {p.duration_s:.0f} | "
            f"{p.sent:,} | {p.ok:,} | {p.shed:,} | {p.lost:,} | {p.shed_rate:.1%} | "
            f"{p.ok_per_s:.0f} | {p.latency_p50_ms:,.0f} / {p.latency_p95_ms:,.0f} / "
            f"{p.latency_p99_ms:,.0f} | {p.ttft_p50_ms:,.0f} / {p.ttft_p95_ms:,.0f} |")
    lost = [p for p in report.phases if p.lost]
    lines += ["", "Lost requests: " + ("none." if not lost else "; ".join(
        f"round {p.round} {p.multiplier}x: {p.lost_kinds} (first: {p.first_lost})"
        for p in lost))]
    if report.memory:
        roles = sorted({role for snap in report.memory for role in snap.rss_mb})
        lines += ["", "Resident memory of the server's processes, MB:", "",
                  "| process | " + " | ".join(s.when for s in report.memory) + " |",
                  "|---|" + "---|" * len(report.memory)]
        for role in roles:
            lines.append(f"| {role} | " + " | ".join(
                f"{s.rss_mb.get(role, 0):,.0f}" for s in report.memory) + " |")
        lines.append("| **total** | " + " | ".join(
            f"{sum(s.rss_mb.values()):,.0f}" for s in report.memory) + " |")
    return "\n".join(lines) + "\n"
