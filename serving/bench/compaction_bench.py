"""`frugal bench compaction`: long chats replayed turn by turn, as a chat client sends them,
with and without compaction (lever 8), on one server, side by side.

The chats are the zoo's multi-turn family (serving/zoo/chat.py) on a held-out seed: four
scores stated among filler turns, "who leads?" asked last, so the final answer is right
only if the scores survived. Every turn is one request carrying the whole history so far
(the scripted replies, so every mode sees the same chats); the last is streamed for its
time to first token. Modes, each a deployment of the same weights:
- `none`: compaction off for the request (`frugal.compact: false`); past the model's
  context the engine rejects the chat (400);
- `summary`: the model writes the note itself (it is the zoo's summariser), checked
  against the turns (`verify_note`); `summary-raw`: the same without the check;
- `facts` / `truncate`: the fallbacks, no summariser.
Input tokens and $ are the responses' own `usage` (summariser calls included in $);
"uncompacted" tokens are the full history counted with the model's tokenizer, also where
the engine refused it.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

MODES = ("none", "summary", "summary-raw", "facts", "truncate")
DEPLOYMENT = {"none": "chat", "summary": "chat", "summary-raw": "chat-raw",
              "facts": "chat-facts", "truncate": "chat-truncate"}


def bench_config(source: Path, budget_tokens: int, keep_last_turns: int) -> dict[str, Any]:
    """Four deployments of the chat model: summariser with and without `verify_note`,
    `facts` and `truncate`."""
    def model(model_id: str, **compaction: Any) -> dict[str, Any]:
        return {
            "model_loading_config": {"model_id": model_id, "model_source": str(source)},
            "engine_kwargs": {"dtype": "bfloat16", "enforce_eager": True},
            "deployment_config": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 1}},
            "runtime_env": {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
            "frugal": {"compaction": {"enabled": True, "budget_tokens": budget_tokens,
                                      "keep_last_turns": keep_last_turns, **compaction}},
        }

    return {"ray": {"num_cpus": 8}, "models": [
        model("chat", summariser="chat"),
        model("chat-raw", summariser="chat-raw", verify_note=False),
        model("chat-facts", fallback="facts"),
        model("chat-truncate", fallback="truncate"),
    ]}


class Turn(BaseModel):
    """One request of a replayed chat."""

    status: int
    prompt_tokens: int = 0  # as billed (compacted, if it was)
    uncompacted_tokens: int  # the full history, counted client-side
    cost_usd: float = 0.0
    compaction_usd: float = 0.0
    summariser_calls: int = 0
    note_repairs: int = 0
    method: str = ""


class Conversation(BaseModel):
    mode: str
    turns: int
    requests: list[Turn]
    answer: str | None  # the final answer; None when the request was refused
    expected: str
    ttft_s: float | None


class ModeRow(BaseModel):
    """One (mode, chat length) cell of the table, per conversation where it says so."""

    mode: str
    turns: int
    conversations: int
    input_tokens: float  # per conversation, as billed
    uncompacted_tokens: float  # per conversation, the whole history every turn
    token_ratio: float  # input_tokens / uncompacted_tokens
    final_prompt_ratio: float  # the last request's prompt / its uncompacted prompt
    cost_usd: float  # per conversation, summariser included
    summariser_calls: float  # per conversation
    note_repairs: float = 0.0  # per conversation: summary lines dropped or facts added
    rejected: float  # requests refused per conversation
    answered: float  # share of final questions answered (not refused)
    accuracy: float  # right final answers / conversations
    ttft_p50_ms: float | None


def _header_calls(header: str) -> tuple[str, int, int]:
    """`x-frugal-compaction`'s method, summariser calls and note repairs."""
    if not header:
        return "", 0, 0
    parts = dict(p.split("=", 1) for p in header.split("; ")[1:] if "=" in p)
    return (header.split(";")[0], int(parts.get("calls", 0)),
            int(parts.get("repaired", 0)))


async def _send(http: httpx.AsyncClient, body: dict[str, Any], uncompacted: int,
                stream: bool) -> tuple[Turn, str | None, float | None]:
    started = time.perf_counter()
    if not stream:
        response = await http.post("/chat/completions", json=body)
        if response.status_code != 200:
            return Turn(status=response.status_code, uncompacted_tokens=uncompacted), None, None
        data = response.json()
        text, usage, headers, ttft = (data["choices"][0]["message"]["content"], data["usage"],
                                      response.headers, None)
    else:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        text, usage, ttft = "", {}, None
        async with http.stream("POST", "/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return (Turn(status=response.status_code, uncompacted_tokens=uncompacted),
                        None, None)
            headers = response.headers
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line.removeprefix("data: "))
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    piece = choice.get("delta", {}).get("content")
                    if piece:
                        ttft = ttft or time.perf_counter() - started
                        text += piece
    method, calls, repairs = _header_calls(headers.get("x-frugal-compaction", ""))
    cost = usage.get("cost") or {}
    turn = Turn(status=200, prompt_tokens=usage.get("prompt_tokens", 0),
                uncompacted_tokens=uncompacted, cost_usd=cost.get("total_usd", 0.0),
                compaction_usd=cost.get("compaction_usd", 0.0), summariser_calls=calls,
                note_repairs=repairs, method=method)
    return turn, text.strip(), ttft


async def replay(http: httpx.AsyncClient, mode: str, item: Any, count: Any) -> Conversation:
    """Send the chat turn by turn; the final question streamed."""
    users = [i for i, m in enumerate(item.messages) if m["role"] == "user"]
    requests, answer, ttft = [], None, None
    for u in users:
        history = item.messages[: u + 1]
        body: dict[str, Any] = {"model": DEPLOYMENT[mode], "messages": history,
                                "max_tokens": 4, "temperature": 0}
        if mode == "none":
            body["frugal"] = {"compact": False}
        final = u == users[-1]
        turn, text, first = await _send(http, body, count(history), stream=final)
        requests.append(turn)
        if final:
            answer, ttft = text, first
    return Conversation(mode=mode, turns=item.difficulty, requests=requests, answer=answer,
                        expected=item.expected, ttft_s=ttft)


async def run_bench(base_url: str, model_source: Path, turns: list[int], per_length: int,
                    seed: int, concurrency: int, say: Any = print) -> list[Conversation]:
    from transformers import AutoTokenizer

    from serving.zoo.chat import generate_chats

    tok = AutoTokenizer.from_pretrained(str(model_source))

    def count(messages: list[dict[str, str]]) -> int:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return len(tok(text, add_special_tokens=False, verbose=False)["input_ids"])

    gate = asyncio.Semaphore(concurrency)
    results: list[Conversation] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as http:
        for mode in MODES:
            started = time.perf_counter()

            async def one(item: Any, mode: str = mode) -> Conversation:
                async with gate:
                    return await replay(http, mode, item, count)

            items = [item for t in turns for item in generate_chats(t, per_length, seed)]
            done = await asyncio.gather(*(one(item) for item in items))
            results += done
            say(f"{mode}: {len(done)} chats, {sum(len(c.requests) for c in done)} requests "
                f"in {time.perf_counter() - started:.0f} s")
    return results


def summarise(conversations: list[Conversation]) -> list[ModeRow]:
    rows = []
    cells = sorted({(c.mode, c.turns) for c in conversations},
                   key=lambda k: (MODES.index(k[0]), k[1]))
    for mode, turns in cells:
        group = [c for c in conversations if c.mode == mode and c.turns == turns]
        n = len(group)
        billed = sum(t.prompt_tokens for c in group for t in c.requests)
        full = sum(t.uncompacted_tokens for c in group for t in c.requests)
        finals = [c.requests[-1] for c in group]
        answered = [f for f in finals if f.status == 200]
        ttfts = [c.ttft_s for c in group if c.ttft_s is not None]
        rows.append(ModeRow(
            mode=mode, turns=turns, conversations=n, input_tokens=billed / n,
            uncompacted_tokens=full / n, token_ratio=billed / full if full else 0.0,
            final_prompt_ratio=(statistics.mean(f.prompt_tokens / f.uncompacted_tokens
                                                for f in answered) if answered else 0.0),
            cost_usd=sum(t.cost_usd for c in group for t in c.requests) / n,
            summariser_calls=sum(t.summariser_calls for c in group for t in c.requests) / n,
            note_repairs=sum(t.note_repairs for c in group for t in c.requests) / n,
            rejected=sum(t.status != 200 for c in group for t in c.requests) / n,
            answered=len(answered) / n,
            accuracy=sum(c.answer == c.expected for c in group) / n,
            ttft_p50_ms=statistics.median(ttfts) * 1000 if ttfts else None))
    return rows


def markdown(rows: list[ModeRow], command: str, budget: int, keep: int) -> str:
    head = ("| mode | turns | input tokens / chat | x uncompacted | last prompt x | $ / chat "
            "| summariser calls / chat | note repairs / chat | refused / chat | answered "
            "| accuracy | TTFT p50 ms |")
    lines = ["# Context compaction, measured", "", f"Command: `{command}`", "",
             f"Budget {budget} tokens, last {keep} turns kept; the model's context is 1,024 "
             "tokens. Per chat: every turn's request summed (the whole history each time). "
             "`x uncompacted`: billed input tokens over the full history's; `last prompt x`: "
             "the final request alone. Accuracy: right final answers over all chats (a "
             "refused chat counts as wrong). Note repairs: summary lines dropped or fact "
             "sentences added by `verify_note`.", "", head, "|" + "---|" * 12]
    for r in rows:
        ttft = f"{r.ttft_p50_ms:.0f}" if r.ttft_p50_ms is not None else "-"
        lines.append(
            f"| {r.mode} | {r.turns} | {r.input_tokens:.0f} | {r.token_ratio:.2f} | "
            f"{r.final_prompt_ratio:.2f} | {r.cost_usd:.2e} | {r.summariser_calls:.1f} | "
            f"{r.note_repairs:.1f} | {r.rejected:.1f} | {r.answered:.2f} | "
            f"{r.accuracy:.2f} | {ttft} |")
    lines += ["", "## Targets", ""]
    lines += [f"- {'met' if ok else 'NOT met'}: {name}" for name, ok in targets(rows).items()]
    return "\n".join(lines) + "\n"


#: Issue targets: tokens at 20+ turns, and accuracy against the uncompacted chat.
TARGET_TOKEN_RATIO = 0.3
TARGET_ACCURACY_SHARE = 0.95


def targets(rows: list[ModeRow]) -> dict[str, bool]:
    """Per compacting mode: input tokens (each chat's requests summed) at most 0.3x the
    uncompacted at 20+ turns, and accuracy at least 95% of `none`'s wherever `none` was
    answered (the chat fits the context)."""
    none = {r.turns: r for r in rows if r.mode == "none"}
    out: dict[str, bool] = {}
    for mode in ("summary", "facts"):
        group = [r for r in rows if r.mode == mode]
        long = [r for r in group if r.turns >= 20]
        if long:
            worst = max(r.token_ratio for r in long)
            out[f"{mode}: input tokens <= {TARGET_TOKEN_RATIO}x at 20+ turns "
                f"(worst {worst:.2f}x)"] = worst <= TARGET_TOKEN_RATIO
        fits = [r for r in group if r.turns in none and none[r.turns].answered == 1.0]
        if fits:
            share = min(r.accuracy / none[r.turns].accuracy if none[r.turns].accuracy else 1.0
                        for r in fits)
            out[f"{mode}: accuracy >= {TARGET_ACCURACY_SHARE:.0%} of uncompacted where it "
                f"fits (lowest {share:.1%})"] = share >= TARGET_ACCURACY_SHARE
    return out


def plot(conversations: list[Conversation], rows: list[ModeRow], path: Path,
         budget: int) -> None:
    """Left: prompt tokens per request along the longest chats, per mode. Right: accuracy
    per chat length and mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    longest = max(c.turns for c in conversations)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for mode in MODES:
        group = [c for c in conversations if c.mode == mode and c.turns == longest]
        if not group:
            continue
        steps = range(len(group[0].requests))
        means = [statistics.mean(c.requests[i].prompt_tokens for c in group) for i in steps]
        left.plot([i + 1 for i in steps], means, label=mode)
    full = [c for c in conversations if c.turns == longest][0]
    left.plot([i + 1 for i in range(len(full.requests))],
              [t.uncompacted_tokens for t in full.requests], "k:", label="full history")
    left.axhline(1024, color="red", lw=0.8, label="context (1,024)")
    left.axhline(budget, color="grey", lw=0.8, ls="--", label=f"budget ({budget})")
    left.set(xlabel="turn", ylabel="prompt tokens billed",
             title=f"{longest}-turn chats (refused = 0)")
    left.legend(fontsize=8)
    lengths = sorted({r.turns for r in rows})
    width = 0.8 / len(MODES)
    for k, mode in enumerate(MODES):
        acc = [next((r.accuracy for r in rows if r.mode == mode and r.turns == t), 0.0)
               for t in lengths]
        right.bar([i + k * width for i in range(len(lengths))], acc, width, label=mode)
    right.set_xticks([i + 0.4 - width / 2 for i in range(len(lengths))],
                     [str(t) for t in lengths])
    right.set(xlabel="turns in the chat", ylabel="final answer accuracy", ylim=(0, 1.05),
              title="accuracy on the last question")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
