"""`frugal zoo ...`: build the demo zoo, print its model cards, export the task suite.

Heavy imports (torch, transformers, vLLM) happen inside the commands so the CLI starts fast.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from serving.zoo.paths import default_zoo_dir
from serving.zoo.tasks import EVAL_SEED

app = typer.Typer(
    help="The demo zoo: small Llama models trained on a checkable task suite.",
    no_args_is_help=True,
)

ZooDir = typer.Option(None, "--zoo-dir", help="Zoo directory [default: FRUGAL_ZOO_DIR, repo zoo/]")


@app.command()
def build(
    zoo_dir: Path | None = ZooDir,
    force: bool = typer.Option(False, "--force", help="Rebuild even when the cache is valid."),
    only: list[str] | None = typer.Option(None, "--only", help="Build only this model."),
    monitor_every: int = typer.Option(
        0, "--monitor-every", help="Print held-out accuracy every N steps (recipe tuning)."
    ),
) -> None:
    """Train the zoo models that are missing or stale (deterministic, cached)."""
    from rich.console import Console

    from serving.zoo.build import build_zoo

    target = zoo_dir or default_zoo_dir()
    start = time.monotonic()
    try:
        result = build_zoo(target, force=force, only=only or None, monitor_every=monitor_every)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--only") from exc
    console = Console()
    for name, status in result.items():
        console.print(f"{name}: {status}")
    console.print(f"zoo at {target} ({time.monotonic() - start:.0f} s)")


@app.command()
def cards(
    zoo_dir: Path | None = ZooDir,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of cards."),
    n: int = typer.Option(50, "--n", min=1, help="Items per family and difficulty."),
    seed: int = typer.Option(EVAL_SEED, "--seed", help="Held-out seed for the items."),
) -> None:
    """Accuracy per family and difficulty (thinking off / on), measured through vLLM."""
    from rich.console import Console

    from serving.zoo.cards import markdown_table, zoo_cards

    target = zoo_dir or default_zoo_dir()
    if not target.is_dir():
        raise typer.BadParameter(f"{target} does not exist: run `frugal zoo build`")
    err = Console(stderr=True)
    result = zoo_cards(target, n, seed, on_model=lambda m: err.print(f"evaluating {m} ..."))
    if as_json:
        typer.echo(json.dumps([c.model_dump() for c in result], indent=2))
    else:
        typer.echo(markdown_table(result))


@app.command("export-suite")
def export_suite(
    out: Path = typer.Option(..., "--out", help="Output JSONL file."),
    seed: int = typer.Option(EVAL_SEED, "--seed", help="Generator seed (held-out by default)."),
    n: int = typer.Option(50, "--n", min=1, help="Items per family and difficulty."),
) -> None:
    """Write the task suite as JSONL (one TaskItem per line)."""
    from serving.evaluation.items import export_jsonl
    from serving.zoo.tasks import mixed_suite

    count = export_jsonl(mixed_suite(n, seed), out)
    typer.echo(f"wrote {count} items to {out}")


@app.command("tools-eval")
def tools_eval(
    zoo_dir: Path | None = ZooDir,
    model: str = typer.Option("zoo-tools", "--model", help="Zoo model to measure."),
    n: int = typer.Option(50, "--n", min=1, help="Items per kind and digits."),
    seed: int = typer.Option(EVAL_SEED, "--seed", help="Held-out seed for the items."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as JSON."),
) -> None:
    """Tool-call rate, argument exactness and answers after the tool result, through vLLM."""
    from serving.zoo.tools_eval import measure, totals

    model_dir = (zoo_dir or default_zoo_dir()) / model
    if not (model_dir / "config.json").exists():
        raise typer.BadParameter(f"{model_dir} does not exist: run `frugal zoo build`")
    start = time.monotonic()
    result = measure(model_dir, n, seed)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo("| cell | n | called | exact |\n|---|---|---|---|")
    for name, cell in result["cells"].items():
        called = f"{cell['called']:.2f}" if "called" in cell else "-"
        typer.echo(f"| {name} | {cell['n']} | {called} | {cell['exact']:.2f} |")
    typer.echo(f"totals: {json.dumps(totals(result))} ({time.monotonic() - start:.0f} s)")
