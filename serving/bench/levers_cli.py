"""`frugal bench levers`: start frugal on the demo zoo with the lever variants side by side,
run the reasoning, structured-output and prompt-cache benchmarks, write JSON + markdown."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel
from rich.console import Console

console = Console(stderr=True)


def _model(model_id: str, source: Path, *, replicas: int = 1, **extra: Any) -> dict[str, Any]:
    engine = {"dtype": "bfloat16", "enforce_eager": True, **extra.pop("engine", {})}
    deployment: dict[str, Any] = {"num_replicas": replicas, "ray_actor_options": {"num_cpus": 1}}
    deployment.update(extra.pop("deployment", {}))
    return {
        "model_loading_config": {"model_id": model_id, "model_source": str(source)},
        "engine_kwargs": engine,
        "deployment_config": deployment,
        "runtime_env": {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
        **extra,
    }


def largest_zoo_model(zoo: Path) -> str:
    return next(n for n in ("zoo-l", "zoo-m", "zoo-s") if (zoo / n / "config.json").exists())


def shipped_lever_settings(name: str) -> dict[str, Any]:
    """The `frugal:` section `deployments/local.yaml` gives this zoo model (its reasoning
    budgets), so the benchmark measures the budgets users get."""
    import yaml

    local = Path(__file__).resolve().parents[2] / "deployments" / "local.yaml"
    for entry in yaml.safe_load(local.read_text())["models"]:
        if entry["model_loading_config"]["model_id"] == name:
            return entry.get("frugal", {})
    return {}


def request_levers_config(zoo: Path, port: int) -> dict[str, Any]:
    """The largest zoo model with reasoning (the shipped budgets), and the same weights
    with vLLM's default JSON grammar (whitespace allowed)."""
    name = largest_zoo_model(zoo)
    reasoning = {"reasoning_parser": "qwen3"}
    spaced = {"structured_outputs_config": {"backend": "xgrammar"}}
    return {
        "http_options": {"host": "127.0.0.1", "port": port},
        "models": [
            _model("bench", zoo / name, engine=reasoning, frugal=shipped_lever_settings(name)),
            _model("bench-spaced", zoo / name, engine=spaced),
        ],
    }


def cache_config(source: Path, port: int) -> dict[str, Any]:
    """Two 2-replica deployments of one model: prefix affinity vs Ray's default router."""
    return {
        "http_options": {"host": "127.0.0.1", "port": port},
        "models": [
            _model("affinity", source, replicas=2, deployment={"request_router_config": {}}),
            _model("default", source, replicas=2),
        ],
    }


class CacheRun(BaseModel):
    """One prompt-cache measurement: which weights, how long the shared prompt."""

    label: str
    source: Path
    prompt_chars: int


def cache_runs(zoo: Path, scratch: Path, prefill_model: bool) -> list[CacheRun]:
    """The largest zoo model, and optionally a random-weight model whose prefill cost is
    that of a real model (see `SHAPES["prefill"]`): on the zoo's tiny models the fixed
    serving cost, not the prefill, is most of the TTFT, so the cache cannot show its size."""
    from serving.zoo.checkpoint import SHAPES, write_checkpoint

    name = largest_zoo_model(zoo)
    runs = [CacheRun(label=name, source=zoo / name, prompt_chars=800)]
    if prefill_model:
        shape = SHAPES["prefill"]
        label = f"random weights, {shape.hidden_size} wide, {shape.num_layers} layers"
        runs.append(CacheRun(label=label, source=write_checkpoint("prefill", scratch / "prefill"),
                             prompt_chars=3000))
    return runs


def _request_lever_tables(out: Path, name: str) -> list[str]:
    """The reasoning and structured-output tables, from the JSON files in `out`."""
    sections = [("reasoning.json", f"Reasoning effort ({name}, hardest level of each family)"),
                ("structured.json",
                 f"Structured output ({name}, easiest level, JSON answers {{task, answer}})")]
    lines: list[str] = []
    for file, title in sections:
        if (out / file).exists():
            rows = [_Row(**row) for row in json.loads((out / file).read_text())]
            lines += [f"## {title}", "", _table(rows), ""]
    return lines


def _cache_tables(out: Path) -> list[str]:
    """The prompt-cache tables, from `cache.json` in `out` (one per model measured)."""
    if not (out / "cache.json").exists():
        return []
    lines: list[str] = []
    for entry in json.loads((out / "cache.json").read_text()):
        label, chars = entry.pop("model"), entry.pop("prompt_chars")
        lines += [f"## Prompt caching ({label}, {chars}-token shared system prompt, "
                  "2 replicas per router)", "", _table([_Row(**entry)]), ""]
    return lines


class _Row(BaseModel, extra="allow"):
    """A result row read back from JSON (for the markdown table only)."""


def _table(rows: list[Any]) -> str:
    dumped = [row.model_dump() for row in rows]
    head = list(dumped[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in dumped:
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def levers(
    out: Path = typer.Option(Path("docs/bench/levers"), help="Output folder."),
    zoo_dir: Path | None = typer.Option(None, help="Zoo folder (default: the project's)."),
    per_family: int = typer.Option(20, help="Items per task family."),
    skip_cache: bool = typer.Option(False, help="Skip the 4-engine prompt-cache runs."),
    cache_only: bool = typer.Option(False, help="Only the prompt-cache runs (keeps the other "
                                                "results already in --out)."),
    prefill_model: bool = typer.Option(
        True, help="Also measure the cache on a random-weight model whose prefill is as "
                   "costly as a real model's (3,000-token shared prompt)."),
) -> None:
    """Reasoning budgets, structured output and prompt caching, measured side by side."""
    from serving.bench.levers import bench_cache, bench_reasoning, bench_structured
    from serving.evaluation.launcher import frugal_server
    from serving.zoo.paths import default_zoo_dir

    zoo = zoo_dir or default_zoo_dir()
    name = largest_zoo_model(zoo)
    out.mkdir(parents=True, exist_ok=True)
    report = ["# Request levers, measured", "",
              f"Command: `frugal bench levers --per-family {per_family}`", ""]
    if not cache_only:
        with frugal_server(request_levers_config(zoo, 0)) as server:
            base_url = server.url
            console.print("reasoning budgets...")
            effort = asyncio.run(bench_reasoning(base_url, "bench", per_family))
            console.print("structured output...")
            structured = asyncio.run(
                bench_structured(base_url, "bench", "bench", "bench-spaced", per_family))
        (out / "reasoning.json").write_text(
            "[" + ",".join(row.model_dump_json() for row in effort) + "]\n")
        (out / "structured.json").write_text(
            "[" + ",".join(row.model_dump_json() for row in structured) + "]\n")
    report += _request_lever_tables(out, name)
    if not skip_cache:
        results = []
        with tempfile.TemporaryDirectory() as scratch:
            for run in cache_runs(zoo, Path(scratch), prefill_model):
                with frugal_server(cache_config(run.source, 0)) as server:
                    console.print(f"prompt caching on {run.label}...")
                    cache = asyncio.run(bench_cache(server.url, "affinity", "default",
                                                    prompt_chars=run.prompt_chars))
                results.append(
                    {"model": run.label, "prompt_chars": run.prompt_chars, **cache.model_dump()}
                )
        (out / "cache.json").write_text(json.dumps(results, indent=2) + "\n")
    # With --skip-cache the tables come from the last cache run, as --cache-only keeps the
    # request-lever tables.
    report += _cache_tables(out)
    (out / "results.md").write_text("\n".join(report))
    console.print("\n".join(report))
