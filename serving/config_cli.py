"""`frugal config ...`: check a deployments YAML before anything is started."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(help="Inspect and validate deployments YAML files.", no_args_is_help=True)


@app.command("validate")
def validate(
    file: Path = typer.Argument(..., help="A deployments YAML, e.g. deployments/local.yaml."),
    engine_args: bool = typer.Option(
        True, help="Also check engine_kwargs names against the installed vLLM."
    ),
) -> None:
    """Print every problem with its key path and what was expected; exit 1 if any."""
    from serving.config import ConfigError, load_config

    console = Console()
    try:
        config = load_config(file, check_engine_args=engine_args)
    except ConfigError as exc:
        console.print(f"[red]invalid[/red] {exc.path}: {len(exc.problems)} problem(s)")
        typer.echo(exc.render(), err=False)
        raise typer.Exit(1) from None
    names = ", ".join(m.model_id for m in config.models)
    console.print(f"[green]valid[/green] {file}: {len(config.models)} model(s): {names}")
