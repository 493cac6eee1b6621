"""`frugal bench batch`: lever 4 measured side by side in one run (docs/batch.md).

(a) Throughput of one batch on an idle server, against vLLM's offline `LLM.chat` on the
    same prompts (a subprocess, while the server idles) and against the same requests
    sent online at 64 concurrent. Every request asks for exactly `max_tokens` tokens
    (ignore_eos), so tokens per second compare like with like. Rounds alternate the
    order, so the shared machine's noise hits each alike.
(b) Interactive TTFT at a steady 4 concurrent streams, alone and with a batch running:
    `--sharing-rounds` rounds, each a run alone then a run beside a fresh batch that was
    at its idle cap when the streams arrived; percentiles over each side's pooled
    requests (one round's p95 rests on its ten slowest requests, and this shared 2-core
    machine stalls every process for 0.1-0.5 s every few seconds). Also the first
    requests' TTFT (they arrive while batch lines fill the engine) and the batch's own
    throughput while it shares the engine.
(c) The crash test (`serving.bench.batch_crash`): N kills, lines lost, lines run twice.

The server and the offline engine share one engine configuration (`BATCH_ENGINE`):
`frugal bench serve`'s, with vLLM's offline scheduler limits pinned on both, since vLLM
otherwise gives `LLM` (256 sequences, 4096 tokens a step on CPU) more than a server (128,
2048).
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from serving.bench.batch_crash import CrashReport, crash_run
from serving.bench.batch_work import (
    client,
    done_lines,
    finished,
    jsonl,
    line_bodies,
    submit,
    wait_for,
)
from serving.bench.loadgen import (
    LoadResult,
    RequestSample,
    load_samples,
    percentile,
    summarize,
)
from serving.bench.serve_bench import ENGINE, ENGINE_ENV, frugal_config
from serving.config import BatchConfig

BATCH_ENGINE: dict[str, Any] = {**ENGINE, "max_num_seqs": 256, "max_num_batched_tokens": 4096}
TARGET_OFFLINE_RATIO = 0.9
TARGET_TTFT_P95_RATIO = 1.3
INTERACTIVE_CONCURRENCY = 4
ONLINE_CONCURRENCY = 64
_BATCH = BatchConfig()  # the bench server runs the default admission
#: Its idle cap, from the engine's sequence slots (docs/batch.md).
_IDLE_CAP = _BATCH.idle_in_flight or int(BATCH_ENGINE["max_num_seqs"] * _BATCH.idle_per_slot)
#: How long after its last interactive request a server is idle for batches: the quiet
#: period, then the slow start from busy_in_flight up to the idle cap (docs/batch.md).
IDLE_AFTER_S = _BATCH.quiet_s + _BATCH.ramp_s * math.log2(
    _IDLE_CAP / max(1, _BATCH.busy_in_flight))


class Throughput(BaseModel):
    """One way of running the lines: output tokens over wall time."""

    way: str
    round: int
    lines: int
    output_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds if self.seconds else 0.0


class Sharing(BaseModel):
    """(b): interactive streams alone and beside a running batch, rounds pooled."""

    alone: LoadResult = Field(description="Every alone round's requests pooled.")
    alone_runs: list[LoadResult]
    with_batch: LoadResult = Field(description="Every with-batch round's requests pooled.")
    with_runs: list[LoadResult] = Field(default_factory=list)
    alone_ttft_p99_ms: float = 0.0
    with_ttft_p99_ms: float = 0.0
    first_ttft_ms: list[float] = Field(
        default_factory=list, description="Each with-batch round's first requests (sent "
        "together while batch lines filled the engine): the preemption's cost.")
    batch_lines_per_s: float = Field(description="The batch's lines done per second while "
                                                 "it shared the engine.")
    batch_lines_per_s_idle: float = Field(description="The same batch's rate on the idle "
                                                      "engine, from part (a).")
    preempted_lines: int = Field(0, description="Batch lines preempted for the interactive "
                                                "requests (they ran again later).")

    @property
    def p95_ratio(self) -> float:
        return self.with_batch.ttft_p95_ms / self.alone.ttft_p95_ms if self.alone.ttft_p95_ms \
            else 0.0

    @property
    def p50_ratio(self) -> float:
        return self.with_batch.ttft_p50_ms / self.alone.ttft_p50_ms if self.alone.ttft_p50_ms \
            else 0.0


class BatchBench(BaseModel):
    model: str
    model_path: str
    command: str
    engine: dict[str, Any]
    batch_config: dict[str, Any]
    lines: int
    max_tokens: int
    load_average: tuple[float, float]
    runs: list[Throughput]
    sharing: Sharing
    crash: CrashReport | None = None

    def mean_tps(self, way: str) -> float:
        rates = [r.tokens_per_s for r in self.runs if r.way == way]
        return sum(rates) / len(rates) if rates else 0.0

    def ratio(self, way: str) -> float:
        offline = self.mean_tps("offline")
        return self.mean_tps(way) / offline if offline else 0.0

    def targets(self) -> dict[str, bool]:
        met = {
            f"batch >= {TARGET_OFFLINE_RATIO}x offline LLM.chat":
                self.ratio("batch") >= TARGET_OFFLINE_RATIO,
            f"interactive TTFT p95 with a batch <= {TARGET_TTFT_P95_RATIO}x alone":
                0 < self.sharing.p95_ratio <= TARGET_TTFT_P95_RATIO,
        }
        if self.crash is not None:
            met["crash: no line lost, none run twice"] = self.crash.ok
        return met


# -- (a) offline: vLLM's LLM in a subprocess ------------------------------------------------

def _offline_worker(model: str, n: int, max_tokens: int) -> dict[str, Any]:
    """In the subprocess: the engine of `BATCH_ENGINE`, warm, then every line at once."""
    from vllm import LLM, SamplingParams

    from serving.config import DEFAULT_ENGINE_KWARGS

    kwargs = {**DEFAULT_ENGINE_KWARGS, **BATCH_ENGINE}
    kwargs.pop("structured_outputs_config", None)  # no guided decoding in these lines
    llm = LLM(model=model, **kwargs)
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    conversations = [body["messages"] for body in line_bodies(n, model, max_tokens)]
    llm.chat(conversations[:16], params, use_tqdm=False)  # warm-up
    started = time.perf_counter()
    outputs = llm.chat(conversations, params, use_tqdm=False)
    seconds = time.perf_counter() - started
    tokens = sum(len(out.outputs[0].token_ids) for out in outputs)
    return {"lines": len(outputs), "output_tokens": tokens, "seconds": seconds}


def offline_run(model_path: Path, n: int, max_tokens: int, round_: int) -> Throughput:
    env = {**os.environ, **ENGINE_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "serving.bench.batch_bench", str(model_path), str(n),
         str(max_tokens)], capture_output=True, text=True, env=env, timeout=1800, check=False)
    found = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode != 0 or not found:
        raise RuntimeError(f"offline run failed:\n{done.stderr[-3000:]}")
    return Throughput(way="offline", round=round_, **json.loads(found[-1][7:]))


# -- (a) through frugal: one batch, and the same lines online ------------------------------

def batch_run(url: str, model_id: str, n: int, max_tokens: int, round_: int) -> Throughput:
    sdk = client(url)
    data = jsonl(line_bodies(n, model_id, max_tokens))
    started = time.perf_counter()
    batch = submit(sdk, data)
    final = wait_for(sdk, batch.id, finished, timeout_s=3600, poll_s=0.25)
    seconds = time.perf_counter() - started
    if final.status != "completed" or final.request_counts.failed:
        raise RuntimeError(f"batch {final.id} ended {final.status}: {final.request_counts}")
    return Throughput(way="batch", round=round_, lines=n,
                      output_tokens=final.usage.output_tokens, seconds=seconds)


async def _online(url: str, model_id: str, n: int, max_tokens: int) -> tuple[int, float]:
    """The lines as online requests, 64 at a time, through aiohttp: the `openai` SDK's
    httpx pool measures the client at this concurrency (docs/serving.md)."""
    import aiohttp

    from serving.bench.loadgen import send_one

    bodies = line_bodies(n, model_id, max_tokens)
    gate = asyncio.Semaphore(ONLINE_CONCURRENCY)
    connector = aiohttp.TCPConnector(limit=ONLINE_CONCURRENCY + 4)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=1800)) as http:

        async def one(body: dict[str, Any]) -> int:
            async with gate:
                sample = await send_one(http, f"{url}/chat/completions", body)
            if not sample.ok:
                raise RuntimeError(f"online request failed: {sample.error}")
            return sample.completion_tokens

        started = time.perf_counter()
        tokens = await asyncio.gather(*(one(b) for b in bodies))
        seconds = time.perf_counter() - started
    return sum(tokens), seconds


def online_run(url: str, model_id: str, n: int, max_tokens: int, round_: int) -> Throughput:
    tokens, seconds = asyncio.run(_online(url, model_id, n, max_tokens))
    return Throughput(way=f"online x{ONLINE_CONCURRENCY}", round=round_, lines=n,
                      output_tokens=tokens, seconds=seconds)


# -- (b) sharing -----------------------------------------------------------------------------

def interactive(url: str, model_id: str, requests: int,
                max_tokens: int) -> tuple[list[RequestSample], float]:
    return asyncio.run(load_samples(url, model_id, concurrency=INTERACTIVE_CONCURRENCY,
                                    requests=requests, max_tokens=max_tokens, stream=True))


def sharing_run(url: str, model_id: str, n: int, max_tokens: int, requests: int,
                idle_rate: float, rounds: int) -> Sharing:
    """`rounds` times: the streams alone, then beside a fresh batch of `n` lines that is at
    its idle cap when they arrive (cancelled after); each side's requests pooled."""
    sdk = client(url)
    alone: list[tuple[list[RequestSample], float]] = []
    shared: list[tuple[list[RequestSample], float]] = []
    lines_done, seconds = 0, 0.0
    for _ in range(rounds):
        time.sleep(IDLE_AFTER_S + 0.5)  # as idle as the batch will find it
        alone.append(interactive(url, model_id, requests, max_tokens))
        batch = submit(sdk, jsonl(line_bodies(n, model_id, max_tokens)))
        wait_for(sdk, batch.id, lambda b: finished(b) or done_lines(b) > 0, timeout_s=600)
        time.sleep(IDLE_AFTER_S + 0.5)  # the batch climbs to its idle cap
        start_done, started = done_lines(sdk.batches.retrieve(batch.id)), time.perf_counter()
        shared.append(interactive(url, model_id, requests, max_tokens))
        state = sdk.batches.retrieve(batch.id)
        lines_done += done_lines(state) - start_done
        seconds += time.perf_counter() - started
        if finished(state):
            raise RuntimeError("the batch ended while interactive requests were measured: "
                               "give it more lines (--lines)")
        sdk.batches.cancel(batch.id)
        wait_for(sdk, batch.id, finished, timeout_s=600)
    preempted = metric_total(url, "frugal_batch_lines_preempted_total")

    def pooled(runs: list[tuple[list[RequestSample], float]]) -> LoadResult:
        return summarize([x for samples, _ in runs for x in samples], INTERACTIVE_CONCURRENCY,
                         sum(wall for _, wall in runs))

    def p99(runs: list[tuple[list[RequestSample], float]]) -> float:
        return percentile([x.ttft_s for samples, _ in runs for x in samples if x.ok], 99) * 1000

    return Sharing(
        alone=pooled(alone), alone_runs=[pooled([run]) for run in alone],
        with_batch=pooled(shared), with_runs=[pooled([run]) for run in shared],
        alone_ttft_p99_ms=p99(alone), with_ttft_p99_ms=p99(shared),
        first_ttft_ms=[round(x.ttft_s * 1000, 1) for samples, _ in shared
                       for x in samples[:INTERACTIVE_CONCURRENCY]],
        batch_lines_per_s=lines_done / seconds, batch_lines_per_s_idle=idle_rate,
        preempted_lines=int(preempted))


def metric_total(url: str, name: str) -> float:
    """The sum of one metric's samples on the server's /metrics."""
    import httpx

    text = httpx.get(f"{url.removesuffix('/v1')}/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"))


# -- the run ---------------------------------------------------------------------------------

def bench_config(model_path: Path, model_id: str, state_dir: Path) -> dict[str, Any]:
    """`frugal bench serve`'s deployment (the model inside the gateway's process) plus a
    store of its own and a short lease for the crash part."""
    config = frugal_config(model_path, model_id, BATCH_ENGINE, colocate=True)
    config["store"] = {"state_dir": str(state_dir)}
    config["batch"] = {"lease_s": 3, "poll_s": 0.2}
    return config


def run_batch_bench(
    model_path: Path, *, model_id: str, lines: int, max_tokens: int, rounds: int,
    interactive_requests: int, kills: int, seed: int, out: Path, command: str,
    sharing_rounds: int = 4, say: Callable[[str], None] = print,
) -> BatchBench:
    from serving.evaluation.launcher import frugal_server

    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="frugal-bench-batch-"))  # logs and stores
    say(f"logs and stores in {scratch}")
    config = bench_config(model_path, model_id, scratch / "state")
    load_start = os.getloadavg()[0]
    runs: list[Throughput] = []
    with frugal_server(config, log_dir=scratch / "logs") as server:
        online_run(server.url, model_id, ONLINE_CONCURRENCY, 8, -1)  # warm-up
        for round_ in range(rounds):
            ways = ["offline", "batch", "online"]
            for way in ways if round_ % 2 == 0 else ways[::-1]:
                say(f"round {round_ + 1}/{rounds}: {way}, {lines} lines")
                if way == "offline":
                    run = offline_run(model_path, lines, max_tokens, round_)
                elif way == "batch":
                    # Online requests are interactive: wait until the server is idle
                    # for batches (quiet_s and the slow start), or (a) would time the
                    # ramp up from busy_in_flight rather than an idle server.
                    time.sleep(IDLE_AFTER_S + 0.5)
                    run = batch_run(server.url, model_id, lines, max_tokens, round_)
                else:
                    run = online_run(server.url, model_id, lines, max_tokens, round_)
                say(f"  {run.tokens_per_s:,.0f} tok/s ({run.seconds:.1f} s)")
                runs.append(run)
        idle = [r for r in runs if r.way == "batch"]
        idle_rate = sum(r.lines / r.seconds for r in idle) / len(idle)
        say(f"interactive at {INTERACTIVE_CONCURRENCY} concurrent: {sharing_rounds} rounds "
            "of alone, then with a batch")
        sharing = sharing_run(server.url, model_id, lines * 2, max_tokens,
                              interactive_requests, idle_rate, sharing_rounds)
    crash = None
    if kills:
        say(f"crash test: {kills} kills (seed {seed})")
        crash_config = copy.deepcopy(config)
        crash_config["store"] = {"state_dir": str(scratch / "crash-state")}
        crash = crash_run(crash_config, model=model_id, lines=lines, kills=kills, seed=seed,
                          max_tokens=max_tokens, log_dir=scratch / "logs", say=say)
    bench = BatchBench(
        model=model_id, model_path=str(model_path), command=command, engine=BATCH_ENGINE,
        batch_config=config["batch"], lines=lines, max_tokens=max_tokens,
        load_average=(load_start, os.getloadavg()[0]), runs=runs, sharing=sharing,
        crash=crash)
    (out / "results.json").write_text(bench.model_dump_json(indent=2) + "\n")
    (out / "results.md").write_text(markdown(bench) + "\n")
    plot(bench, out / "batch.png")
    return bench


def markdown(bench: BatchBench) -> str:
    ways = ["offline", "batch", f"online x{ONLINE_CONCURRENCY}"]
    share = bench.sharing
    lines = [
        f"# `frugal bench batch` on {bench.model}", "",
        f"Command: `{bench.command}`. {bench.lines} lines of {bench.max_tokens} output tokens "
        f"each; load average {bench.load_average[0]:.1f} at the start, "
        f"{bench.load_average[1]:.1f} at the end.", "",
        "## (a) Throughput on an idle server", "",
        "| way | tok/s (mean) | x offline | rounds (tok/s) |", "|---|---:|---:|---|",
    ]
    for way in ways:
        rounds = ", ".join(f"{r.tokens_per_s:,.0f}" for r in bench.runs if r.way == way)
        lines.append(f"| {way} | {bench.mean_tps(way):,.0f} | {bench.ratio(way):.2f}x | "
                     f"{rounds} |")
    lines += [
        "", f"## (b) Interactive TTFT at {INTERACTIVE_CONCURRENCY} concurrent streams", "",
        f"{len(share.alone_runs)} rounds, each {share.alone_runs[0].requests} requests alone "
        "then as many beside a batch at its idle cap; percentiles over each side's pooled "
        "requests.", "",
        "| | requests | TTFT p50 ms | TTFT p95 ms | TTFT p99 ms | interactive tok/s | "
        "p95 per round (ms) |", "|---|---:|---:|---:|---:|---:|---|",
        f"| alone | {share.alone.requests} | {share.alone.ttft_p50_ms:.0f} | "
        f"{share.alone.ttft_p95_ms:.0f} | {share.alone_ttft_p99_ms:.0f} | "
        f"{share.alone.tokens_per_s:,.0f} | "
        f"{', '.join(f'{r.ttft_p95_ms:.0f}' for r in share.alone_runs)} |",
        f"| with a batch running | {share.with_batch.requests} | "
        f"{share.with_batch.ttft_p50_ms:.0f} | {share.with_batch.ttft_p95_ms:.0f} | "
        f"{share.with_ttft_p99_ms:.0f} | {share.with_batch.tokens_per_s:,.0f} | "
        f"{', '.join(f'{r.ttft_p95_ms:.0f}' for r in share.with_runs)} |",
        f"| ratio | | {share.p50_ratio:.2f}x | {share.p95_ratio:.2f}x | | | |", "",
        f"The first {INTERACTIVE_CONCURRENCY} requests of each with-batch round arrived "
        "while batch lines filled the engine; their TTFT (ms): "
        f"{', '.join(f'{t:.0f}' for t in share.first_ttft_ms)}. "
        f"The batch ran {share.batch_lines_per_s:.1f} lines/s beside the interactive "
        f"streams ({share.batch_lines_per_s_idle:.1f} lines/s on the idle engine); "
        f"{share.preempted_lines} of its lines were preempted when the streams arrived and "
        "ran again later.",
    ]
    if bench.crash is not None:
        crash = bench.crash
        points = ", ".join(f"{k.lines_done}/{crash.lines} ({k.status})" for k in crash.kills)
        lines += [
            "", "## (c) Crash test", "",
            f"{len(crash.kills)} kills (`kill -9` of every process of `frugal serve`, seed "
            f"{crash.seed}) at {points} lines done; final status **{crash.final_status}** "
            f"after {crash.seconds:.0f} s.", "",
            "| lines | answered | failed | lost | in the files twice | run twice | "
            "read again after a kill |", "|---:|---:|---:|---:|---:|---:|---:|",
            f"| {crash.lines} | {crash.tally.answered} | {crash.tally.failed} | "
            f"{len(crash.tally.lost)} | {len(crash.tally.duplicated)} | "
            f"{crash.lines_run_twice} | {crash.lines_read_again} |",
        ]
    lines += ["", "## Targets", ""]
    lines += [f"- {'met' if ok else 'NOT met'}: {name}" for name, ok in bench.targets().items()]
    return "\n".join(lines)


def plot(bench: BatchBench, path: Path) -> None:
    from serving.bench.plots import _pyplot

    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    ways = ["offline", "batch", f"online x{ONLINE_CONCURRENCY}"]
    left.bar(ways, [bench.mean_tps(w) for w in ways], color=["#888", "#2a7", "#27a"])
    left.set_ylabel("output tokens / s")
    left.set_title(f"(a) {bench.lines} lines on an idle {bench.model}")
    share = bench.sharing
    x = [0, 1]
    left_bars = [share.alone.ttft_p50_ms, share.alone.ttft_p95_ms]
    right_bars = [share.with_batch.ttft_p50_ms, share.with_batch.ttft_p95_ms]
    right.bar([i - 0.2 for i in x], left_bars, width=0.4, label="alone", color="#27a")
    right.bar([i + 0.2 for i in x], right_bars, width=0.4, label="with a batch", color="#2a7")
    right.set_xticks(x, ["TTFT p50", "TTFT p95"])
    right.set_ylabel("ms")
    right.set_title(f"(b) interactive, {INTERACTIVE_CONCURRENCY} concurrent streams")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":  # the offline worker (offline_run)
    result = _offline_worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    print("RESULT " + json.dumps(result), flush=True)
