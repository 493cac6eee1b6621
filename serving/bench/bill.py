"""The bill: one reference workload sent naive, frugal, and frugal minus each lever, side
by side against one live server (docs/bill.md).

Every figure is read from the server's own answers: `usage.cost.total_usd` of every
response (batch results included, at their discount), the final answers graded by the
exact checkers, tokens from `usage`. Nothing is re-priced here.

How a request is sent with a lever on, and off (the naive deployment has every one off):
- routing: `model="auto"`; off, the largest model (the cost account's baseline);
- reasoning: effort from the request's needs (`high` on the hardest cells, else `none`);
  off, `high` on every request;
- cache: an application's prefix and a chat's history are reused from vLLM's prefix
  cache within the run (one `cache_salt`, vLLM's prefix-cache salt, per run, so no run
  reads what an earlier run of the same texts left); off, every request has its own salt,
  so nothing is reused and the text is unchanged;
- structured: a JSON request carries `response_format` json_schema; off, it asks in words;
- batch: the batchable share goes through /v1/files + /v1/batches; off, online;
- compaction: long chats are compacted by the server; off, `frugal.compact: false`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import BaseModel

from serving.bench import batch_work
from serving.bench.bill_workload import BillRequest
from serving.evaluation.items import final_answer, json_fields
from serving.zoo.tasks import JSON_INSTRUCTION, JSON_SCHEMA

LEVERS: tuple[str, ...] = ("routing", "reasoning", "cache", "structured", "batch",
                           "compaction")
MAX_TOKENS = 96


class Outcome(BaseModel):
    """One piece of traffic, as the server answered and billed it."""

    id: str
    correct: bool
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int
    requests: int
    refused: int = 0  # requests answered with an error (billed nothing)
    cached_tokens: int = 0
    compaction_usd: float = 0.0
    saved_by_lever: dict[str, float]


class RunTotals(BaseModel):
    """One scenario of the bill: which levers were on, and what the workload cost."""

    levers: list[str]
    cost_usd: float
    accuracy: float
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    compaction_usd: float
    requests: int
    refused: int
    wall_s: float
    saved_by_lever: dict[str, float]


def cache_salt(run: str, on: frozenset[str], *parts: object) -> str:
    """vLLM's `cache_salt`: one per run with the cache lever on (prefixes are reused
    within the run, never from an earlier run of the same texts), one per request off."""
    if "cache" in on:
        return f"bill-{run}"
    return "-".join(["bill", run, *map(str, parts), uuid.uuid4().hex])


def task_body(req: BillRequest, on: frozenset[str], baseline: str,
              run: str = "", min_quality: float | None = None) -> dict[str, Any]:
    """The chat request for one task with the levers `on`, in run `run`; with routing on,
    `min_quality` is the request's quality target (None: the server's)."""
    messages = [dict(m) for m in req.messages]
    if req.wants_json:
        messages[-1]["content"] += JSON_INSTRUCTION
    effort = ("high" if req.needs_reasoning else "none") if "reasoning" in on else "high"
    body: dict[str, Any] = {
        "model": "auto" if "routing" in on else baseline,
        "messages": [{"role": "system", "content": req.system}, *messages],
        "max_tokens": MAX_TOKENS, "temperature": 0, "reasoning_effort": effort,
    }
    body["cache_salt"] = cache_salt(run, on, req.id)
    if "routing" in on and min_quality is not None:
        body["frugal"] = {"min_quality": min_quality}
    if req.wants_json and "structured" in on:
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "answer", "schema": JSON_SCHEMA, "strict": True}}
    return body


def graded(req: BillRequest, text: str | None) -> bool:
    """Exact check of a final answer; a JSON request is right when its object holds the
    task and the expected answer (indentation is not graded)."""
    answer = final_answer(text or "")
    if answer is None:
        return False
    if req.wants_json:
        fields = json_fields(answer)
        return fields == {"task": req.family, "answer": req.expected}
    return answer == req.expected


def _outcome(req: BillRequest, data: dict[str, Any] | None, requests: int = 1) -> Outcome:
    if data is None:  # refused: costs nothing, and is wrong
        return Outcome(id=req.id, correct=False, cost_usd=0.0, prompt_tokens=0,
                       completion_tokens=0, requests=requests, refused=requests,
                       saved_by_lever={})
    usage = data.get("usage") or {}
    cost = usage.get("cost") or {}
    text = data["choices"][0]["message"].get("content")
    details = usage.get("prompt_tokens_details") or {}
    return Outcome(id=req.id, correct=graded(req, text), cost_usd=cost.get("total_usd", 0.0),
                   prompt_tokens=usage.get("prompt_tokens", 0),
                   completion_tokens=usage.get("completion_tokens", 0), requests=requests,
                   cached_tokens=details.get("cached_tokens") or 0,
                   compaction_usd=cost.get("compaction_usd", 0.0),
                   saved_by_lever=cost.get("saved_by_lever") or {})


async def _post(http: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any] | None:
    response = await http.post("/chat/completions", json=body)
    return response.json() if response.status_code == 200 else None


async def _chat(http: httpx.AsyncClient, req: BillRequest, on: frozenset[str],
                chat_model: str, user: str) -> Outcome:
    """Replay a chat turn by turn (the scripted replies); cost and tokens of every turn,
    accuracy of the last. `user` scopes the server's note cache to this run, so each run
    compacts its chats from a cold cache, as a new conversation would be."""
    users = [i for i, m in enumerate(req.messages) if m["role"] == "user"]
    total = Outcome(id=req.id, correct=False, cost_usd=0.0, prompt_tokens=0,
                    completion_tokens=0, requests=0, saved_by_lever={})
    for u in users:
        body: dict[str, Any] = {"model": chat_model, "messages": req.messages[: u + 1],
                                "max_tokens": 4, "temperature": 0, "user": user}
        if "compaction" not in on:
            body["frugal"] = {"compact": False}
        body["cache_salt"] = cache_salt(user, on, req.id, u)
        turn = _outcome(req, await _post(http, body))
        total = _add(total, turn)
        total.correct = turn.correct
    return total


def _add(a: Outcome, b: Outcome) -> Outcome:
    levers = {k: a.saved_by_lever.get(k, 0.0) + b.saved_by_lever.get(k, 0.0)
              for k in {*a.saved_by_lever, *b.saved_by_lever}}
    return Outcome(id=a.id, correct=a.correct and b.correct, cost_usd=a.cost_usd + b.cost_usd,
                   prompt_tokens=a.prompt_tokens + b.prompt_tokens,
                   completion_tokens=a.completion_tokens + b.completion_tokens,
                   requests=a.requests + b.requests, refused=a.refused + b.refused,
                   cached_tokens=a.cached_tokens + b.cached_tokens,
                   compaction_usd=a.compaction_usd + b.compaction_usd,
                   saved_by_lever=levers)


def _batch(base_url: str, bodies: dict[str, dict[str, Any]], timeout_s: float
           ) -> dict[str, dict[str, Any] | None]:
    """Send `bodies` (by request id) as one batch; each line's response body, or None."""
    sdk = batch_work.client(base_url)
    rows = [json.dumps({"custom_id": rid, "method": "POST", "url": "/v1/chat/completions",
                        "body": body}) for rid, body in bodies.items()]
    batch = batch_work.submit(sdk, ("\n".join(rows) + "\n").encode())
    batch = batch_work.wait_for(sdk, batch.id, batch_work.finished, timeout_s, poll_s=1.0)
    answers: dict[str, dict[str, Any] | None] = dict.fromkeys(bodies)
    for row in batch_work.result_lines(sdk, batch):
        response = row.get("response") or {}
        if response.get("status_code") == 200:
            answers[row["custom_id"]] = response.get("body")
    return answers


async def run_scenario(base_url: str, workload: list[BillRequest], on: frozenset[str],
                       baseline: str, chat_model: str, concurrency: int = 8,
                       batch_timeout_s: float = 600, label: str = "",
                       min_quality: float | None = None) -> tuple[RunTotals, list[Outcome]]:
    """The whole workload with the levers `on`; online requests `concurrency` at a time,
    the batchable share (batch on) as one batch submitted first."""
    started = time.perf_counter()
    run = f"{label}-{uuid.uuid4().hex[:8]}"  # this run's caches start cold
    tasks = [r for r in workload if r.kind == "task"]
    batched = [r for r in tasks if r.batchable and "batch" in on]
    online = [r for r in workload if r not in batched]
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as http:

        async def one(req: BillRequest) -> Outcome:
            async with gate:
                if req.kind == "chat":
                    return await _chat(http, req, on, chat_model, run)
                body = task_body(req, on, baseline, run, min_quality)
                return _outcome(req, await _post(http, body))

        pending = None
        if batched:
            bodies = {r.id: task_body(r, on, baseline, run, min_quality) for r in batched}
            pending = asyncio.to_thread(_batch, base_url, bodies, batch_timeout_s)
        outcomes, answers = await asyncio.gather(
            asyncio.gather(*(one(r) for r in online)),
            pending if pending is not None else asyncio.sleep(0, result={}))
    outcomes = list(outcomes) + [_outcome(r, answers.get(r.id)) for r in batched]
    return totals(sorted(on), outcomes, time.perf_counter() - started), outcomes


def totals(levers: list[str], outcomes: list[Outcome], wall_s: float) -> RunTotals:
    saved: dict[str, float] = {}
    for outcome in outcomes:
        for lever, usd in outcome.saved_by_lever.items():
            saved[lever] = saved.get(lever, 0.0) + usd
    return RunTotals(
        levers=levers, cost_usd=sum(o.cost_usd for o in outcomes),
        accuracy=sum(o.correct for o in outcomes) / max(len(outcomes), 1),
        prompt_tokens=sum(o.prompt_tokens for o in outcomes),
        completion_tokens=sum(o.completion_tokens for o in outcomes),
        cached_tokens=sum(o.cached_tokens for o in outcomes),
        compaction_usd=sum(o.compaction_usd for o in outcomes),
        requests=sum(o.requests for o in outcomes), refused=sum(o.refused for o in outcomes),
        wall_s=wall_s, saved_by_lever=saved)


class BillReport(BaseModel):
    """The bill's machine-readable result (`--json`)."""

    naive: RunTotals
    frugal: RunTotals
    ratio: float  # naive cost over frugal cost
    by_lever: dict[str, RunTotals]  # frugal minus that lever
    absent: dict[str, str]  # levers this run could not turn on, and why


async def run_bill(base_url: str, workload: list[BillRequest], baseline: str,
                   chat_model: str, levers: tuple[str, ...] = LEVERS,
                   absent: dict[str, str] | None = None, concurrency: int = 8,
                   say: Callable[[str], Any] = print,
                   min_quality: float | None = None) -> BillReport:
    """naive, frugal, then frugal minus each lever, one after the other on one server."""
    runs: dict[str, RunTotals] = {}
    plans = {"naive": frozenset(), "frugal": frozenset(levers)}
    plans |= {lever: frozenset(levers) - {lever} for lever in levers}
    for name, on in plans.items():
        result, _ = await run_scenario(base_url, workload, on, baseline, chat_model,
                                       concurrency, label=name, min_quality=min_quality)
        runs[name] = result
        say(f"{name}: ${result.cost_usd:.6f}, accuracy {result.accuracy:.2f}, "
            f"{result.requests} requests ({result.refused} refused) in {result.wall_s:.0f} s")
    naive, frugal = runs.pop("naive"), runs.pop("frugal")
    return BillReport(naive=naive, frugal=frugal,
                      ratio=naive.cost_usd / frugal.cost_usd if frugal.cost_usd else 0.0,
                      by_lever=runs, absent=absent or {})
