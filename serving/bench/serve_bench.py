"""`frugal bench serve`: frugal vs the raw vLLM OpenAI server on the same model and the
same engine settings, side by side in one run, plus frugal at high concurrency vs one
request at a time.

Both servers stay up and every (round, level) runs raw and frugal back to back, the
order alternating by round, so the shared machine's noise hits both alike. That is
sound only if an idle server costs nothing while the other is measured: the run
measures each server's idle CPU first and records it in the results.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from serving.bench.loadgen import LoadResult, mean_result, run_load
from serving.serve_cli import THROUGHPUT_ENV

#: One source for the engine settings of both servers, so the comparison is engine vs
#: engine. Eager mode: torch.compile adds about 20 s per start on CPU and changes
#: nothing between the two servers.
ENGINE: dict[str, Any] = {
    "dtype": "bfloat16",
    "max_model_len": 1024,
    "enforce_eager": True,
    "enable_prefix_caching": True,
}
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}

#: The Ray Serve settings frugal runs with: `frugal serve`'s own default (Ray's
#: throughput-optimized bundle, docs/serving.md), recorded in the results, not re-set here.
FRUGAL_ENV: dict[str, str] = THROUGHPUT_ENV
GATEWAY_DEPLOYMENT: dict[str, Any] = {
    "num_replicas": 1,
    "max_ongoing_requests": 1024,
    "ray_actor_options": {"num_cpus": 0.5},
}
MODEL_DEPLOYMENT: dict[str, Any] = {
    "num_replicas": 1,
    "max_ongoing_requests": 256,
    "ray_actor_options": {"num_cpus": 1},
}

TARGET_THROUGHPUT_RATIO = 0.9
TARGET_TTFT_DELTA_MS = 20.0
TARGET_BATCHING_RATIO = 20.0


class LevelRow(BaseModel):
    """Both servers at one concurrency, averaged over rounds."""

    concurrency: int
    raw: LoadResult
    frugal: LoadResult
    throughput_ratio: float
    ttft_p50_delta_ms: float
    raw_rounds: list[LoadResult]
    frugal_rounds: list[LoadResult]


class ServeBench(BaseModel):
    """Everything `frugal bench serve` measured, with what it takes to reproduce it."""

    model: str
    model_path: str
    command: str
    engine: dict[str, Any]
    engine_env: dict[str, str]
    frugal_env: dict[str, str]
    frugal_config: dict[str, Any]
    max_tokens: int
    rounds: int
    stream: bool = True
    idle_cpu_cores: dict[str, float] = Field(
        description="CPU each idle server used (cores) while nothing was sent to it.")
    load_average: tuple[float, float] = Field(description="1-min load at start and end.")
    levels: list[LevelRow]
    sequential: LoadResult = Field(description="frugal, one request at a time.")
    batching_ratio: float = Field(description="frugal tok/s at the top level / sequential.")
    raw_batching_ratio: float

    def targets(self) -> dict[str, bool]:
        """The issue's acceptance targets, each met or not."""
        met = {
            f"frugal/raw throughput >= {TARGET_THROUGHPUT_RATIO} at every level": all(
                row.throughput_ratio >= TARGET_THROUGHPUT_RATIO for row in self.levels),
            f"{self.levels[-1].concurrency} concurrent >= {TARGET_BATCHING_RATIO:.0f}x "
            "sequential": self.batching_ratio >= TARGET_BATCHING_RATIO,
        }
        if self.stream:  # without streaming there is no first token to time
            met[f"TTFT p50 within raw + {TARGET_TTFT_DELTA_MS:.0f} ms at every level"] = all(
                row.ttft_p50_delta_ms <= TARGET_TTFT_DELTA_MS for row in self.levels)
        return met


def raw_args(engine: dict[str, Any]) -> list[str]:
    """The raw server's command-line flags for `engine` (plus cached-token usage, which
    frugal always turns on)."""
    args = ["--dtype", engine["dtype"], "--max-model-len", str(engine["max_model_len"]),
            "--enable-prompt-tokens-details"]
    if engine.get("stream_interval", 1) > 1:
        args += ["--stream-interval", str(engine["stream_interval"])]
    if engine.get("enforce_eager"):
        args.append("--enforce-eager")
    if engine.get("enable_prefix_caching"):
        args.append("--enable-prefix-caching")
    return args


def frugal_config(
    model_path: Path, model_id: str, engine: dict[str, Any], colocate: bool = True
) -> dict[str, Any]:
    """The deployments YAML (as a dict) for one model behind the gateway: inside the
    gateway's process (`gateway.colocated_model`, what one hot model on a node should
    run) unless `colocate` is False (a model replica of its own, one hop away)."""
    gateway: dict[str, Any] = {"deployment_config": GATEWAY_DEPLOYMENT}
    if colocate:
        gateway["colocated_model"] = model_id
    return {
        "ray": {"num_cpus": 8},
        "gateway": gateway,
        "models": [{
            "model_loading_config": {"model_id": model_id,
                                     "model_source": str(model_path.resolve())},
            "engine_kwargs": engine,
            "deployment_config": MODEL_DEPLOYMENT,
            "runtime_env": {"env_vars": ENGINE_ENV},
        }],
    }


def _session_cpu_s(session_id: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of a session."""
    from serving.evaluation.launcher import session_pids

    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in session_pids(session_id):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def idle_cpu(session_ids: dict[str, int], seconds: float = 10.0) -> dict[str, float]:
    """Cores each server burns while idle (vLLM's CPU engine polls; Ray has heartbeats)."""
    before = {name: _session_cpu_s(sid) for name, sid in session_ids.items()}
    time.sleep(seconds)
    return {name: round((_session_cpu_s(sid) - before[name]) / seconds, 3)
            for name, sid in session_ids.items()}


def markdown(result: ServeBench) -> str:
    """The results table, the batching ratio and the targets, with the command."""
    lines = [
        f"# frugal vs raw vLLM: `{result.model}`", "",
        f"Command: `{result.command}`", "",
        f"Both servers up side by side, same engine settings ({_engine_words(result)}); "
        f"{result.rounds} interleaved rounds per level, {result.max_tokens} output tokens per "
        "request (`ignore_eos`), "
        + ("streaming chat completions" if result.stream else
           "whole-response (non-streaming) chat completions, so TTFT columns are full latency")
        + ". Idle CPU while the other was "
        f"measured: raw {result.idle_cpu_cores['raw']:.2f}, frugal "
        f"{result.idle_cpu_cores['frugal']:.2f} cores. 1-min load average "
        f"{result.load_average[0]:.1f} at start, {result.load_average[1]:.1f} at end "
        "(2-core shared machine).", "",
        "| concurrency | raw tok/s | frugal tok/s | frugal / raw | raw TTFT p50 / p95 ms "
        "| frugal TTFT p50 / p95 ms | TTFT p50 delta ms | errors raw / frugal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result.levels:
        raw, fr = row.raw, row.frugal
        lines.append(
            f"| {row.concurrency} | {raw.tokens_per_s:,.0f} | {fr.tokens_per_s:,.0f} | "
            f"{row.throughput_ratio:.2f} | {raw.ttft_p50_ms:.0f} / {raw.ttft_p95_ms:.0f} | "
            f"{fr.ttft_p50_ms:.0f} / {fr.ttft_p95_ms:.0f} | {row.ttft_p50_delta_ms:+.0f} | "
            f"{raw.errors} / {fr.errors} |")
    top = result.levels[-1].concurrency
    lines += [
        "", "Per-round frugal/raw throughput: " + "; ".join(
            f"c={row.concurrency}: " + ", ".join(
                f"{f.tokens_per_s / r.tokens_per_s:.2f}" if r.tokens_per_s else "n/a"
                for r, f in zip(row.raw_rounds, row.frugal_rounds, strict=True))
            for row in result.levels),
        "", f"Batching: frugal at {top} concurrent gives {result.batching_ratio:.1f}x the "
        f"tokens/s of one request at a time ({result.sequential.tokens_per_s:,.0f} tok/s "
        f"sequential); raw vLLM {result.raw_batching_ratio:.1f}x.", "",
        "| target | met |", "|---|---|",
        *(f"| {name} | {'yes' if met else 'no'} |" for name, met in result.targets().items()),
    ]
    if result.frugal_env:
        env = " ".join(f"{k}={v}" for k, v in result.frugal_env.items())
        lines += ["", f"frugal ran with `{env}`."]
    colocated = result.frugal_config.get("gateway", {}).get("colocated_model")
    lines += ["", f"frugal served `{result.model}` "
                  + ("inside the gateway's process (`gateway.colocated_model`)." if colocated
                     else "from a model replica of its own, one hop behind the gateway.")]
    if result.stream:
        from serving.config import ModelLevers

        levers = result.frugal_config["models"][0].get("frugal", {})
        flush = levers.get("stream_flush_ms", ModelLevers().stream_flush_ms)
        interval = result.engine.get("stream_interval", 1)
        lines += ["", f"frugal's `stream_flush_ms` was {flush:g} (first two chunks at once, "
                      "then at most one message per interval); raw vLLM sent "
                      + ("every chunk as produced." if interval == 1 else
                         f"a chunk per {interval} tokens (`--stream-interval`).")]
    return "\n".join(lines)


def _engine_words(result: ServeBench) -> str:
    return ", ".join(f"{k}={v}" for k, v in result.engine.items()) + ", " + ", ".join(
        f"{k}={v}" for k, v in result.engine_env.items())


def plot(result: ServeBench, path: Path) -> None:
    """Throughput and TTFT p50 vs concurrency for both servers (PNG, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [row.concurrency for row in result.levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(levels, [r.raw.tokens_per_s for r in result.levels], "o-", label="raw vLLM")
    left.plot(levels, [r.frugal.tokens_per_s for r in result.levels], "s-", label="frugal")
    left.set(xscale="log", xlabel="concurrent requests", ylabel="output tokens / s",
             title="Throughput")
    right.plot(levels, [r.raw.ttft_p50_ms for r in result.levels], "o-", label="raw vLLM")
    right.plot(levels, [r.frugal.ttft_p50_ms for r in result.levels], "s-", label="frugal")
    right.set(xscale="log", xlabel="concurrent requests", ylabel="TTFT p50 (ms)",
              title="Time to first token")
    for axis in (left, right):
        axis.set_xticks(levels, [str(level) for level in levels])
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle(f"frugal vs raw vLLM, {result.model}, same engine settings")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _requests_for(level: int, requests_per_level: int) -> int:
    """Enough requests for several waves at high concurrency (one wave measures the ramp,
    not the steady state); fewer one-at-a-time, where each takes a full generation."""
    if level == 1:
        return min(requests_per_level, 32)
    return max(requests_per_level, 4 * level)


def run_serve_bench(
    model_path: Path, *, model_id: str, levels: list[int], requests_per_level: int, rounds: int,
    max_tokens: int, out: Path, command: str, progress: Any,
    say: Callable[[str], None] = print, stream: bool = True, stream_interval: int = 1,
    colocate: bool = True,
) -> ServeBench:
    """Start both servers, measure every level interleaved, write the three outputs.

    `stream_interval` (vLLM's engine argument, set alike on both servers) sends a stream's
    first token at once and then every N tokens in one chunk: fewer chunks, less host work.
    """
    from serving.bench.raw_vllm import raw_vllm
    from serving.evaluation.launcher import frugal_server

    out.mkdir(parents=True, exist_ok=True)
    engine = {**ENGINE, **({"stream_interval": stream_interval} if stream_interval > 1 else {})}
    config = frugal_config(model_path, model_id, engine, colocate)
    results: dict[tuple[str, int], list[LoadResult]] = {}
    load_start = os.getloadavg()[0]
    logs = Path(tempfile.mkdtemp(prefix="frugal-bench-serve-"))  # not into docs/
    say(f"starting raw vLLM and frugal (about a minute each); logs in {logs}")
    with (raw_vllm(model_path, model_id, raw_args(engine), log_dir=logs, env=ENGINE_ENV) as raw,
          frugal_server(config, log_dir=logs) as frugal):
        urls = {"raw": raw.url, "frugal": frugal.url}
        idle = idle_cpu({"raw": raw.session_id, "frugal": frugal.session_id})
        say(f"idle CPU (cores): {idle}")
        def load(server: str, level: int, requests: int, tokens: int = max_tokens) -> LoadResult:
            return asyncio.run(run_load(urls[server], model_id, concurrency=level,
                                        requests=requests, max_tokens=tokens, stream=stream))

        for server in urls:  # warm-up: first batches allocate and fill caches
            load(server, max(levels), max(levels), 8)
        total = rounds * len(levels) * 2 + 1
        task = progress.add_task("measuring", total=total)
        for round_index in range(rounds):
            order = ("raw", "frugal") if round_index % 2 == 0 else ("frugal", "raw")
            for level in levels:
                for server in order:
                    progress.update(task, description=f"round {round_index + 1}: {server} "
                                                      f"at {level} concurrent")
                    result = load(server, level, _requests_for(level, requests_per_level))
                    results.setdefault((server, level), []).append(result)
                    progress.advance(task)
        progress.update(task, description="frugal, one request at a time")
        sequential = load("frugal", 1, _requests_for(1, requests_per_level))
        progress.advance(task)
    rows = []
    for level in levels:
        raw_rounds, frugal_rounds = results[("raw", level)], results[("frugal", level)]
        raw_mean, frugal_mean = mean_result(raw_rounds), mean_result(frugal_rounds)
        rows.append(LevelRow(
            concurrency=level, raw=raw_mean, frugal=frugal_mean,
            throughput_ratio=(frugal_mean.tokens_per_s / raw_mean.tokens_per_s
                              if raw_mean.tokens_per_s else 0.0),
            ttft_p50_delta_ms=frugal_mean.ttft_p50_ms - raw_mean.ttft_p50_ms,
            raw_rounds=raw_rounds, frugal_rounds=frugal_rounds))
    sequential_all = mean_result([sequential, *results.get(("frugal", 1), [])])
    raw_one = results.get(("raw", 1))
    bench = ServeBench(
        model=model_id, model_path=str(model_path), command=command, engine=engine,
        engine_env=ENGINE_ENV, frugal_env=FRUGAL_ENV, frugal_config=config,
        max_tokens=max_tokens, rounds=rounds, stream=stream, idle_cpu_cores=idle,
        load_average=(load_start, os.getloadavg()[0]), levels=rows, sequential=sequential_all,
        batching_ratio=_ratio(rows[-1].frugal, sequential_all),
        raw_batching_ratio=_ratio(rows[-1].raw, mean_result(raw_one)) if raw_one else 0.0,
    )
    (out / "results.json").write_text(bench.model_dump_json(indent=2) + "\n")
    (out / "results.md").write_text(markdown(bench) + "\n")
    plot(bench, out / "serve.png")
    return bench


def _ratio(top: LoadResult, one: LoadResult) -> float:
    return top.tokens_per_s / one.tokens_per_s if one.tokens_per_s else 0.0
