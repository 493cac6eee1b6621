"""`frugal quantize MODEL --method M --bits B ...`, `frugal quantize list [--json]`,
`frugal quantize methods` and `frugal quantize env`.

MODEL is not a sub-command name, so the group routes any first argument that is not one of
its commands to `run`: `frugal quantize zoo/zoo-l --method gptq --bits 4` is
`frugal quantize run zoo/zoo-l ...`.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

console = Console(stderr=True)


class DefaultToRun(TyperGroup):
    """A group whose unknown first argument is the MODEL of the default `run` command."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().resolve_command(ctx, args)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=DefaultToRun,
    help="Quantize a 16-bit model (GPTQ, compressed-tensors, bitsandbytes), score it against "
    "the original and register it if it passes the quality gate.",
    no_args_is_help=True,
)


@app.command("run")
def run(
    model: Path = typer.Argument(..., help="16-bit checkpoint directory, e.g. zoo/zoo-l."),
    method: str = typer.Option(..., "--method", "-m", help="gptq, w8a8, w4a16 or bnb."),
    bits: int = typer.Option(..., "--bits", "-b", help="Weight bits (method-dependent)."),
    group_size: int | None = typer.Option(
        None, help="Weights per scale (grouped methods); default: largest of 128/64/32 that fits."
    ),
    calib: Path | None = typer.Option(
        None, help="Calibration JSONL (`text` or `messages` per line); default: the task suite."
    ),
    out: Path | None = typer.Option(None, help="Artifact directory (default: the registry)."),
    tolerance: float = typer.Option(3.0, help="Largest accuracy drop accepted, in points."),
    force: bool = typer.Option(False, help="Keep an artifact that fails the gate (marked)."),
    eval_per_cell: int = typer.Option(20, help="Held-out items per task cell (9 cells)."),
    no_eval: bool = typer.Option(False, "--no-eval", help="Skip scoring and the gate."),
    json_out: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Quantize MODEL, score it against the original, and register it if the gate passes."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from quantize.methods import QuantizeError
    from quantize.pipeline import Refused, Request
    from quantize.pipeline import run as run_pipeline
    from quantize.workers_run import WorkerError

    request = Request(
        model=model,
        method=method,
        bits=bits,
        group_size=group_size,
        calib=calib,
        out=out,
        tolerance_points=tolerance,
        force=force,
        eval_per_cell=eval_per_cell,
        evaluate=not no_eval,
    )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bars:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(stage, total=total)
            bars.update(tasks[stage], completed=done, total=total)

        try:
            path, manifest = run_pipeline(request, say=bars.console.print, progress=progress)
        except QuantizeError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
        except Refused as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
        except WorkerError as exc:
            console.print(f"[red]quantization failed:[/red] {exc}")
            raise typer.Exit(1) from None
    if json_out:
        print(manifest.model_dump_json(indent=2))
    gate = manifest.gate.label if manifest.gate else "not evaluated"
    colour = "green" if manifest.gate and manifest.gate.passed else "yellow"
    console.print(f"[{colour}]registered[/{colour}] {path} (gate: {gate})")
    if manifest.quality:
        q = manifest.quality
        console.print(
            f"accuracy {q.accuracy:.1%} vs {q.source_accuracy:.1%} 16-bit "
            f"({q.delta_points:+.1f} points, {q.items} items, {q.evaluated_with})"
        )
    where = ", ".join(manifest.servable_on) or "no device: vLLM cannot load it"
    console.print(
        f"serve it: model_source: {path}  engine_kwargs: {{quantization: "
        f"{manifest.vllm_quantization}}}  (servable on {where})"
    )


@app.command("list")
def list_artifacts(
    json_out: bool = typer.Option(False, "--json", help="One JSON array of manifests."),
) -> None:
    """Registered artifacts with size, accuracy against the source and gate result."""
    from quantize.registry import artifacts

    found = artifacts()
    if json_out:
        print(json.dumps([m.summary() | {"path": str(p)} for p, m in found], indent=2))
        return
    table = Table(
        "name",
        "method",
        "bits",
        "group",
        "MB",
        "x16-bit",
        "accuracy",
        "16-bit",
        "gate",
        "servable on",
    )
    for _, m in found:
        q = m.quality
        table.add_row(
            m.name,
            m.method,
            str(m.bits),
            str(m.group_size),
            f"{m.bytes / 1e6:.2f}",
            f"{m.bytes / m.source_bytes:.2f}",
            f"{q.accuracy:.1%}" if q else "-",
            f"{q.source_accuracy:.1%}" if q else "-",
            m.gate.label if m.gate else "not evaluated",
            ", ".join(m.servable_on),
        )
    Console().print(table)


@app.command("methods")
def methods() -> None:
    """Methods, bit widths and where vLLM serves each (with the evidence)."""
    from quantize.methods import METHODS

    table = Table("method", "bits", "tool", "vLLM name", "servable on", "evidence")
    for m in METHODS.values():
        for bits in m.bits:
            table.add_row(
                m.name,
                str(bits),
                m.tool,
                m.vllm_quantization,
                ", ".join(m.devices(bits)),
                m.evidence.get(bits, ""),
            )
    Console().print(table)


@app.command("env")
def env_command() -> None:
    """Create (or check) the quantize tool venv; `run` does this on first use."""
    import time

    from quantize import env

    started = time.monotonic()
    python = env.ensure(on_step=console.print)
    console.print(f"tool venv: {python} ({time.monotonic() - started:.0f}s)")
