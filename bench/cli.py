"""`frugal bench ...`: side-by-side benchmarks."""

from __future__ import annotations

import typer

app = typer.Typer(help="Benchmarks measured side by side in one run.", no_args_is_help=True)
