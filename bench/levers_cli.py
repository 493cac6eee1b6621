"""`frugal bench levers`: start frugal on the demo zoo with the lever variants side by side,
run the reasoning, structured-output and prompt-cache benchmarks, write JSON + markdown."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import typer
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

    local = Path(__file__).resolve().parent.parent / "deployments" / "local.yaml"
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


def cache_config(zoo: Path, port: int) -> dict[str, Any]:
    """Two 2-replica deployments of one model: prefix affinity vs Ray's default router."""
    name = largest_zoo_model(zoo)
    return {
        "http_options": {"host": "127.0.0.1", "port": port},
        "models": [
            _model("affinity", zoo / name, replicas=2, deployment={"request_router_config": {}}),
            _model("default", zoo / name, replicas=2),
        ],
    }


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
    skip_cache: bool = typer.Option(False, help="Skip the 4-engine prompt-cache run."),
) -> None:
    """Reasoning budgets, structured output and prompt caching, measured side by side."""
    from bench.levers import bench_cache, bench_reasoning, bench_structured
    from bench.servers import frugal_server
    from serving.zoo.paths import default_zoo_dir

    zoo = zoo_dir or default_zoo_dir()
    name = largest_zoo_model(zoo)
    out.mkdir(parents=True, exist_ok=True)
    report = ["# Request levers, measured", "",
              f"Command: `frugal bench levers --per-family {per_family}`", ""]
    with frugal_server(request_levers_config(zoo, 0)) as server:
        base_url = server.url
        console.print("reasoning budgets...")
        effort = asyncio.run(bench_reasoning(base_url, "bench", per_family))
        console.print("structured output...")
        structured = asyncio.run(
            bench_structured(base_url, "bench", "bench", "bench-spaced", per_family))
    report += [f"## Reasoning effort ({name}, hardest level of each family)", "",
               _table(effort), "",
               f"## Structured output ({name}, easiest level, JSON answers {{task, answer}})", "",
               _table(structured), ""]
    (out / "reasoning.json").write_text(
        "[" + ",".join(row.model_dump_json() for row in effort) + "]\n")
    (out / "structured.json").write_text(
        "[" + ",".join(row.model_dump_json() for row in structured) + "]\n")
    if not skip_cache:
        with frugal_server(cache_config(zoo, 0)) as server:
            base_url = server.url
            console.print("prompt caching...")
            cache = asyncio.run(bench_cache(base_url, "affinity", "default"))
        (out / "cache.json").write_text(cache.model_dump_json(indent=2) + "\n")
        report += [f"## Prompt caching ({name}, 2 replicas per router)", "", _table([cache]), ""]
    (out / "results.md").write_text("\n".join(report))
    console.print("\n".join(report))
