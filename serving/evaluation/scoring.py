"""Scoring one model through an OpenAI endpoint, the way a client sees it: the harness
behind `frugal bench eval` (the scorecard), the quantization gate and `frugal bench quantize`.

`evaluate_model` sends every item to one model (streaming chat completions, greedy, token
log-probabilities on) at a fixed concurrency and returns a `ModelScore`
(`serving.router.scorecard`): accuracy per family and difficulty, token counts, TTFT and
inter-token latency p50/p95 at that concurrency, measured prefill/decode throughput and the
per-item results (correctness, tokens, answer log-probabilities) that the router's
predictor trains on. Answers are graded by `serving.evaluation.items.grade`.

Throughput is measured in two short extra passes, because a mixed run cannot split one
wall-clock second between prefill and decode without charging the node twice:
prefill = prompt tokens / wall time of the same prompts with `max_tokens=1`;
decode = generated tokens / wall time of `ignore_eos` generations from a short prompt.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from serving.evaluation.items import TaskItem, grade
from serving.pricing import Throughput
from serving.router.scorecard import ItemResult, ModelScore, Percentiles

__all__ = [
    "DECODE_PASS_TOKENS",
    "MAX_TOKENS",
    "THINK_MAX_TOKENS",
    "ProgressHook",
    "evaluate_model",
    "measure_throughput",
]

#: Enough for any zoo answer without thinking; thinking gets the `high` budget on top.
MAX_TOKENS = 64
THINK_MAX_TOKENS = 320
DECODE_PASS_TOKENS = 64


# --- measuring ------------------------------------------------------------------------


def _percentiles(values: list[float]) -> Percentiles:
    if not values:
        return Percentiles(p50=None, p95=None)
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return Percentiles(p50=at(0.5), p95=at(0.95))


class _Streamed(BaseModel):
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    logprobs: list[float] = []
    latency_s: float = 0.0


async def _stream_chat(client: Any, body: dict[str, Any]) -> _Streamed:
    """One streamed chat completion: answer text, usage, TTFT and answer logprobs."""
    out = _Streamed()
    started = time.perf_counter()
    async with client.stream("POST", "/chat/completions", json=body) as response:
        if response.status_code != 200:
            detail = (await response.aread()).decode(errors="replace")[:300]
            raise RuntimeError(f"HTTP {response.status_code}: {detail}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if "error" in data:
                raise RuntimeError(str(data["error"]))
            if data.get("usage"):
                out.prompt_tokens = data["usage"].get("prompt_tokens") or 0
                out.completion_tokens = data["usage"].get("completion_tokens") or 0
            for choice in data.get("choices") or []:
                delta = choice.get("delta") or {}
                piece = delta.get("content") or ""
                thought = delta.get("reasoning") or delta.get("reasoning_content") or ""
                if not piece and not thought:
                    continue
                if out.ttft_s is None:
                    out.ttft_s = time.perf_counter() - started
                if piece:  # thinking arrives as `reasoning` and is not part of the answer
                    out.text += piece
                    content = (choice.get("logprobs") or {}).get("content") or []
                    out.logprobs += [round(t["logprob"], 4) for t in content]
    out.latency_s = time.perf_counter() - started
    return out


def _request_body(model: str, messages: list[dict[str, str]], think: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "temperature": 0.0,
        "max_tokens": THINK_MAX_TOKENS if think else MAX_TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logprobs": True,
    }
    if think:
        body["reasoning_effort"] = "high"
    return body


ProgressHook = Callable[[int], None]


async def _run_bounded(
    jobs: list[Callable[[], Any]], concurrency: int, advance: ProgressHook | None
) -> list[Any]:
    gate = asyncio.Semaphore(concurrency)

    async def one(job: Callable[[], Any]) -> Any:
        async with gate:
            try:
                return await job()
            finally:
                if advance is not None:
                    advance(1)

    return await asyncio.gather(*(one(job) for job in jobs))


async def measure_throughput(
    client: Any, model: str, items: list[TaskItem], concurrency: int
) -> Throughput:
    """Prefill and decode tokens per second at `concurrency` (see the module docstring)."""
    sample = items[: max(concurrency * 4, 32)]

    async def prefill(item: TaskItem) -> int:
        body = {"model": model, "messages": item.messages, "max_tokens": 1, "temperature": 0}
        response = await client.post("/chat/completions", json=body)
        response.raise_for_status()
        return response.json()["usage"]["prompt_tokens"]

    started = time.perf_counter()
    prompt_tokens = await _run_bounded(
        [lambda i=i: prefill(i) for i in sample], concurrency, None
    )
    prefill_tps = sum(prompt_tokens) / (time.perf_counter() - started)

    async def decode(_: int) -> int:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "Count."}],
            "max_tokens": DECODE_PASS_TOKENS,
            "ignore_eos": True,
            "temperature": 0,
        }
        response = await client.post("/chat/completions", json=body)
        response.raise_for_status()
        return response.json()["usage"]["completion_tokens"]

    started = time.perf_counter()
    generated = await _run_bounded(
        [lambda i=i: decode(i) for i in range(concurrency * 2)], concurrency, None
    )
    decode_tps = sum(generated) / (time.perf_counter() - started)
    return Throughput(prefill_tokens_per_s=prefill_tps, decode_tokens_per_s=decode_tps)


def _accuracy_tables(
    items: list[TaskItem], results: list[ItemResult]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    by_family: dict[str, list[bool]] = defaultdict(list)
    by_cell: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for item, result in zip(items, results, strict=True):
        by_family[item.family].append(result.correct)
        by_cell[item.family][str(item.difficulty)].append(result.correct)
    family = {f: sum(v) / len(v) for f, v in by_family.items()}
    cell = {
        f: {d: sum(v) / len(v) for d, v in sorted(cells.items(), key=lambda kv: int(kv[0]))}
        for f, cells in by_cell.items()
    }
    return family, cell


async def evaluate_model(
    base_url: str,
    model: str,
    items: list[TaskItem],
    *,
    concurrency: int = 16,
    think: bool = False,
    throughput: bool = True,
    progress: ProgressHook | None = None,
    api_key: str | None = None,
) -> ModelScore:
    """Score `model` on `items` through the OpenAI endpoint at `base_url` (ends in /v1).

    Failed requests count as wrong and are counted in `errors` (a model that times out
    is not a good answer). `throughput=False` skips the two throughput passes (the
    quantization gate only needs quality); `progress` is called once per item.
    """
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=600, limits=limits, headers=headers
    ) as client:

        async def one(item: TaskItem) -> tuple[ItemResult, list[float]]:
            started = time.perf_counter()
            try:
                streamed = await _stream_chat(client, _request_body(model, item.messages, think))
            except (httpx.HTTPError, RuntimeError) as exc:
                result = ItemResult(
                    id=item.id,
                    correct=False,
                    prompt_tokens=0,
                    completion_tokens=0,
                    latency_s=time.perf_counter() - started,
                    error=str(exc)[:300],
                )
                return result, []
            result = ItemResult(
                id=item.id,
                correct=grade(item, streamed.text),
                prompt_tokens=streamed.prompt_tokens,
                completion_tokens=streamed.completion_tokens,
                ttft_s=streamed.ttft_s,
                latency_s=streamed.latency_s,
                logprobs=streamed.logprobs,
            )
            # Time per output token after the first, per request: chunks reach the client
            # in bunches (the gateway relays the engine's stream in batches), so gaps
            # between chunks would under-state it.
            itl = []
            if streamed.ttft_s is not None and streamed.completion_tokens > 1:
                itl = [
                    (streamed.latency_s - streamed.ttft_s) / (streamed.completion_tokens - 1)
                ]
            return result, itl

        started = time.perf_counter()
        pairs = await _run_bounded([lambda i=i: one(i) for i in items], concurrency, progress)
        wall = time.perf_counter() - started
        measured = None
        if throughput:
            measured = await measure_throughput(client, model, items, concurrency)

    results = [r for r, _ in pairs]
    gaps = [g for _, gs in pairs for g in gs]
    family, cell = _accuracy_tables(items, results)
    return ModelScore(
        model=model,
        think=think,
        concurrency=concurrency,
        items=len(items),
        accuracy=sum(r.correct for r in results) / max(1, len(results)),
        accuracy_by_family=family,
        accuracy_by_difficulty=cell,
        prompt_tokens=sum(r.prompt_tokens for r in results),
        completion_tokens=sum(r.completion_tokens for r in results),
        ttft_s=_percentiles([r.ttft_s for r in results if r.ttft_s is not None]),
        itl_s=_percentiles(gaps),
        requests_per_s=len(items) / wall if wall > 0 else 0.0,
        throughput=measured,
        errors=sum(r.error is not None for r in results),
        results=results,
    )
