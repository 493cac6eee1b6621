"""The `frugal` command line: one entry point, one sub-command per job.

This module is the composition root, and the only one that knows every layer: it adds
`serve`, `openapi` and each sub-app (config, zoo, bench, cache, quantize, router, batch, keys),
each defined with its commands in its own module. No package module imports this one.

Sub-command modules import their heavy dependencies (torch, vLLM, Ray) inside the
command functions so that `frugal --help` and `frugal config validate` stay instant.
"""

from __future__ import annotations

import typer

from quantize.cli import app as quantize_app
from serving.batch_cli import app as batch_app
from serving.bench.cli import app as bench_app
from serving.cache_cli import app as cache_app
from serving.config_cli import app as config_app
from serving.openapi import openapi_command
from serving.router.cli import app as router_app
from serving.serve_cli import serve
from serving.tenants.cli import app as keys_app
from serving.zoo.cli import app as zoo_app

app = typer.Typer(
    name="frugal",
    help="Self-hosted LLM inference that cuts the cost per good answer.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("serve")(serve)
app.command("openapi")(openapi_command)
app.add_typer(config_app, name="config")
app.add_typer(zoo_app, name="zoo")
app.add_typer(bench_app, name="bench")
app.add_typer(cache_app, name="cache")
app.add_typer(quantize_app, name="quantize")
app.add_typer(router_app, name="router")
app.add_typer(batch_app, name="batch")
app.add_typer(keys_app, name="keys")


if __name__ == "__main__":
    app()
