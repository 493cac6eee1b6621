"""`frugal serve FILE`: start Ray (or join a cluster), deploy the app, wait until every
model answers, print ready-to-paste examples, and block until interrupted."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True)

#: Logical CPUs for a local Ray on a CPU-only machine: more than the physical cores,
#: or the engines' reservations leave the gateway unschedulable (RUNTIME.md).
MIN_LOCAL_LOGICAL_CPUS = 8


def _examples(base_url: str, model: str) -> str:
    return f"""
[bold]curl[/bold]
curl {base_url}/chat/completions -H 'Content-Type: application/json' \\
  -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "What is 12 + 7?"}}]}}'

[bold]openai[/bold] (Python)
python -c "from openai import OpenAI; c = OpenAI(base_url='{base_url}', api_key='none'); \\
print(c.chat.completions.create(model='{model}', \\
messages=[{{'role': 'user', 'content': 'What is 12 + 7?'}}]).choices[0].message.content)"
"""


def _wait_ready(base_url: str, models: list[str], timeout_s: float) -> None:
    """Poll until each model answers a one-token request (engines compile on start)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    pending = list(models)
    with console.status("waiting for the engines to answer...") as status:
        while pending:
            model = pending[0]
            status.update(f"waiting for {model} to answer ({len(pending)} model(s) left)...")
            try:
                reply = httpx.post(
                    f"{base_url}/completions",
                    json={"model": model, "prompt": "1", "max_tokens": 1},
                    timeout=30,
                )
                if reply.status_code == 200:
                    pending.pop(0)
                    continue
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{model} did not answer within {timeout_s:.0f}s")
            time.sleep(1)


def serve(
    file: Path = typer.Argument(..., help="Deployments YAML, e.g. deployments/local.yaml."),
    host: str | None = typer.Option(None, help="Override http_options.host."),
    port: int | None = typer.Option(None, help="Override http_options.port."),
    ready_timeout: float = typer.Option(900, help="Seconds to wait for all engines."),
) -> None:
    """Serve the models of FILE on an OpenAI-compatible endpoint."""
    from serving.config import ConfigError, load_config

    try:
        config = load_config(file, check_engine_args=True)
    except ConfigError as exc:
        console.print(f"[red]invalid config[/red]\n{exc.render()}")
        raise typer.Exit(1) from None
    if host:
        config.http_options.host = host
    if port:
        config.http_options.port = port

    # One fresh directory per server for multiprocess Prometheus metrics (serving.metrics).
    metrics_dir = tempfile.mkdtemp(prefix="frugal-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

    import ray
    from ray import serve

    from serving.app import build_app

    if config.ray.address:
        ray.init(address=config.ray.address, log_to_driver=False)
    else:
        num_cpus = config.ray.num_cpus or max(MIN_LOCAL_LOGICAL_CPUS, 4 * (os.cpu_count() or 1))
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    http = config.http_options
    serve.start(
        http_options={
            "host": http.host,
            "port": http.port,
            **({"request_timeout_s": http.request_timeout_s} if http.request_timeout_s else {}),
        }
    )
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        console.print("shutting down...")
        serve.shutdown()
        ray.shutdown()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    serve.run(build_app(config), name="frugal", route_prefix="/", blocking=False)
    shown_host = "127.0.0.1" if http.host in ("0.0.0.0", "::") else http.host
    base_url = f"http://{shown_host}:{http.port}/v1"
    models = [m.model_id for m in config.models]
    try:
        _wait_ready(base_url, models, ready_timeout)
    except TimeoutError as exc:
        console.print(f"[red]{exc}[/red]")
        _stop()
    console.print(f"[green]frugal is serving[/green] {', '.join(models)} on {base_url}")
    console.print(_examples(base_url, models[0]), highlight=False)
    print(f"READY {base_url}", flush=True)
    while True:
        time.sleep(3600)
