"""Benchmarks of the request levers (issue: reasoning, structured output, prompt caching),
each measured side by side in one run against one running frugal endpoint.

- reasoning: thinking tokens and accuracy per `reasoning_effort` on hard demo items;
- structured: validity and completion tokens, free text vs `json_schema` with the engine
  default (whitespace allowed) vs frugal's compact default, on few-field answers;
- cache: TTFT of a long shared system prompt cold vs warm, and the cache hit ratio of
  repeated prompts with prefix-affinity routing vs Ray's default (power of two choices),
  two replicas each.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from typing import Any

from pydantic import BaseModel

from serving.evaluation.items import check_answer, json_fields
from serving.zoo.tasks import (
    DIFFICULTIES,
    FAMILIES,
    JSON_SCHEMA,
    as_json_request,
    generate_items,
)

BENCH_SEED = 1_000_000_901  # an evaluation seed: never used in training


class EffortRow(BaseModel):
    effort: str
    items: int
    accuracy: float
    mean_reasoning_tokens: float
    mean_completion_tokens: float


class StructuredRow(BaseModel):
    mode: str
    items: int
    valid_json: float
    accuracy: float
    mean_completion_tokens: float


class CacheResult(BaseModel):
    cold_ttft_ms_p50: float
    warm_ttft_ms_p50: float
    warm_over_cold: float
    hit_ratio_affinity: float
    hit_ratio_default_router: float
    requests_per_router: int


def _client(base_url: str) -> Any:
    """Use as `async with`: closed inside the event loop. Left to the garbage collector,
    its connections were torn down after `asyncio.run` ended ("Event loop is closed")."""
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600)


async def _bounded(coros: list[Any], concurrency: int) -> list[Any]:
    gate = asyncio.Semaphore(concurrency)

    async def run(coro: Any) -> Any:
        async with gate:
            return await coro

    return await asyncio.gather(*(run(c) for c in coros))


def hard_items(per_family: int) -> list[Any]:
    items = []
    for family in FAMILIES:
        items += generate_items(family, DIFFICULTIES[family][-1], per_family, seed=BENCH_SEED)
    return items


async def bench_reasoning(
    base_url: str, model: str, per_family: int = 20, concurrency: int = 16
) -> list[EffortRow]:
    """Accuracy and thinking tokens per effort level, same items for every level."""
    async with _client(base_url) as client:
        items = hard_items(per_family)
        rows = []
        for effort in ("none", "low", "medium", "high"):

            async def one(item: Any, effort: str = effort) -> tuple[bool, int, int]:
                reply = await client.chat.completions.create(
                    model=model, messages=item.messages, max_tokens=600, temperature=0,
                    reasoning_effort=effort)
                details = reply.usage.completion_tokens_details
                thought = (details.reasoning_tokens if details else 0) or 0
                text = reply.choices[0].message.content or ""
                return check_answer(item, text), thought, reply.usage.completion_tokens

            results = await _bounded([one(item) for item in items], concurrency)
            rows.append(EffortRow(
                effort=effort,
                items=len(items),
                accuracy=sum(r[0] for r in results) / len(results),
                mean_reasoning_tokens=statistics.fmean(r[1] for r in results),
                mean_completion_tokens=statistics.fmean(r[2] for r in results),
            ))
        return rows


async def bench_structured(
    base_url: str, model: str, compact_model: str, spaced_model: str | None,
    per_family: int = 20, concurrency: int = 16,
) -> list[StructuredRow]:
    """Prompt-only JSON vs schema-guided JSON on easy demo items asking for {task, answer}.

    "free text" is what a model writes when only the prompt asks for JSON (the zoo, like
    chat models, indents it); `compact_model` is served with frugal's default (no
    optional JSON whitespace); `spaced_model`, if given, is the same weights with vLLM's
    default grammar. Valid = one JSON object with exactly the schema's fields.
    """
    async with _client(base_url) as client:
        items = []
        for family in FAMILIES:
            easy = generate_items(family, DIFFICULTIES[family][0], per_family, seed=BENCH_SEED + 1)
            items += [as_json_request(item) for item in easy]
        schema_format = {"type": "json_schema",
                         "json_schema": {"name": "answer", "schema": JSON_SCHEMA, "strict": True}}
        modes = [("free text (JSON asked in the prompt)", model, None),
                 ("json_schema, compact", compact_model, schema_format)]
        if spaced_model:
            modes.append(("json_schema, whitespace allowed", spaced_model, schema_format))
        rows = []
        for mode, served, response_format in modes:

            async def one(item: Any, served: str = served, fmt: Any = response_format) -> Any:
                extra = {"response_format": fmt} if fmt else {}
                reply = await client.chat.completions.create(
                    model=served, messages=item.messages, max_tokens=96, temperature=0, **extra)
                fields = json_fields(reply.choices[0].message.content or "")
                valid = fields is not None and set(fields) == {"task", "answer"}
                return valid, fields == json.loads(item.expected), reply.usage.completion_tokens

            results = await _bounded([one(item) for item in items], concurrency)
            rows.append(StructuredRow(
                mode=mode,
                items=len(items),
                valid_json=sum(r[0] for r in results) / len(results),
                accuracy=sum(r[1] for r in results) / len(results),
                mean_completion_tokens=statistics.fmean(r[2] for r in results),
            ))
        return rows


def _system_prompt(tenant: int, chars: int) -> str:
    rng = random.Random(tenant)
    words = ["policy", "refund", "order", "shipping", "invoice", "warranty", "account"]
    text = f"Tenant {tenant} handbook. "
    while len(text) < chars:
        text += f"Rule {rng.randint(0, 999)}: {rng.choice(words)} {rng.choice(words)}. "
    return text[:chars]


async def _ttft_ms(client: Any, model: str, messages: list[dict[str, str]]) -> float:
    started = time.perf_counter()
    stream = await client.chat.completions.create(
        model=model, messages=messages, max_tokens=1, stream=True)
    async for _ in stream:
        break
    elapsed = (time.perf_counter() - started) * 1000
    await stream.close()
    return elapsed


async def bench_cache(
    base_url: str, affinity_model: str, default_model: str, *, tenants: int = 24,
    repeats: int = 2, prompt_chars: int = 800, trials: int = 8,
) -> CacheResult:
    """Cold vs warm TTFT, then hit ratio of repeated tenant prompts on two routers."""
    async with _client(base_url) as client:
        cold, warm = [], []
        for trial in range(trials):
            system = _system_prompt(10_000 + trial, prompt_chars)
            messages = [{"role": "system", "content": system},
                        {"role": "user", "content": "What is 1 + 1?"}]
            cold.append(await _ttft_ms(client, affinity_model, messages))
            warm.append(await _ttft_ms(client, affinity_model, messages))

        async def hit_ratio(model: str) -> float:
            prompts = [_system_prompt(tenant, prompt_chars) for tenant in range(tenants)]
            order = [t for t in range(tenants) for _ in range(repeats)]
            random.Random(7).shuffle(order)
            seen: set[int] = set()
            hits = repeats_sent = 0
            for index, tenant in enumerate(order):
                reply = await client.chat.completions.create(
                    model=model, max_tokens=1,
                    messages=[{"role": "system", "content": prompts[tenant]},
                              {"role": "user", "content": f"Question {index}?"}])
                if tenant in seen:
                    repeats_sent += 1
                    cached = reply.usage.prompt_tokens_details.cached_tokens or 0
                    hits += cached >= 0.8 * prompt_chars  # char-level tokens: one per character
                seen.add(tenant)
            return hits / max(repeats_sent, 1)

        return CacheResult(
            cold_ttft_ms_p50=statistics.median(cold),
            warm_ttft_ms_p50=statistics.median(warm),
            warm_over_cold=statistics.median(warm) / statistics.median(cold),
            hit_ratio_affinity=await hit_ratio(affinity_model),
            hit_ratio_default_router=await hit_ratio(default_model),
            requests_per_router=tenants * repeats,
        )
