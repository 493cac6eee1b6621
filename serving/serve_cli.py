"""`frugal serve FILE`: start Ray (or join a cluster), deploy the app, wait until every
model answers, print ready-to-paste examples, and block until interrupted."""

from __future__ import annotations

import os
import random
import re
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True)

#: Logical CPUs for a local Ray on a CPU-only machine: more than the physical cores,
#: or the engines' reservations leave the gateway unschedulable (docs/configuration.md,
#: `ray.num_cpus`).
MIN_LOCAL_LOGICAL_CPUS = 8

#: Ray Serve's throughput-optimized mode for a local Ray: the gateway replica serves HTTP
#: itself (no proxy actor between client and gateway), deployments talk gRPC, user code
#: runs on the replica's main loop. Measured on 2 cores at 64 concurrent streams: 0.51x
#: -> 0.94x raw vLLM throughput; the proxy alone used 0.23 cores (docs/serving.md).
#: Set before Ray starts so every actor inherits it; an operator's own value wins.
THROUGHPUT_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port. Checked up front because with direct
    ingress a busy port does not fail: the gateway quietly takes the next free one and
    clients (and the readiness wait) would be knocking on the wrong door."""
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _fast_ingress(host: str, port: int) -> int:
    """Direct ingress on `port` (the gateway replica binds it); returns a spare port for
    Ray's proxy, which Ray 2.60 still starts beside it. `port` itself when the operator
    turned direct ingress off."""
    for key, value in THROUGHPUT_ENV.items():
        os.environ.setdefault(key, value)
    direct = os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS",
                            os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED", "0"))
    if direct != "1":
        return port
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", str(port))
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT", str(port + 16))
    # Ray keeps a direct-ingress replica draining for 30 s on shutdown so that a load
    # balancer can take it out of rotation; a local server has none in front of it, and
    # the wait only made Ctrl-C / SIGTERM take 30-60 s (the controller then gave up and
    # force-killed the gateway). In-flight requests still finish: that is
    # graceful_shutdown_timeout_s, not this.
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
    return spare_port(host, avoid=range(port, port + 17))


def _ephemeral_ports() -> range:
    """The kernel's range for outgoing connections' local ports."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)  # Linux's default


def spare_port(host: str, avoid: range) -> int:
    """A free port for Ray's proxy, below the kernel's ephemeral range. A port the OS
    hands out for binding port 0 is an ephemeral one, and any outgoing connection may
    take it between this check and Ray's bind: it happened once in a CI-like run
    ("Failed to bind to address", the server never started). Outgoing connections never
    take ports below that range."""
    ephemeral = _ephemeral_ports()
    ceiling = ephemeral.start if ephemeral.start > 11_000 else 65_000
    choose = random.SystemRandom()  # two servers starting together choose apart
    for _ in range(200):
        candidate = choose.randrange(10_000, ceiling)
        if candidate not in avoid and port_is_free(host, candidate):
            return candidate
    import socket

    with socket.socket() as sock:  # nothing free there: let the OS choose after all
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _examples(base_url: str, model: str) -> str:
    return f"""
[bold]curl[/bold]
curl {base_url}/chat/completions -H 'Content-Type: application/json' \\
  -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "What is 3 + 4?"}}]}}'

[bold]openai[/bold] (Python)
python -c "from openai import OpenAI; c = OpenAI(base_url='{base_url}', api_key='none'); \\
print(c.chat.completions.create(model='{model}', \\
messages=[{{'role': 'user', 'content': 'What is 3 + 4?'}}]).choices[0].message.content)"
"""


def _wait_ready(base_url: str, models: list[str], timeout_s: float,
                api_key: str | None = None) -> None:
    """Poll until each model answers a one-token request (engines compile on start);
    with keys configured, the probe authenticates with one of them (else: 401 forever)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

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
                    headers=headers,
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


def _wait_engines(base_url: str, timeout_s: float) -> None:
    """Without a YAML key the HTTP probe would get 401s (tenants keep their keys in the
    store, hashed). `serve.run` returned once every replica was constructed, and a model
    replica's constructor starts its engine: what is left is the HTTP proxy."""
    import httpx

    deadline = time.monotonic() + timeout_s
    health = base_url.removesuffix("/v1") + "/health"
    with console.status("waiting for the HTTP proxy..."):
        while True:
            try:
                if httpx.get(health, timeout=10).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{health} did not answer within {timeout_s:.0f}s")
            time.sleep(1)


#: How often `frugal serve` asks Ray Serve whether a replica failed to start.
START_CHECK_INTERVAL_S = 2.0


#: A line that states an exception: `KindError: text` or pydantic's `Value error, text`.
_EXCEPTION_LINE = re.compile(r"^((?:\w+\.)*\w+(?:Error|Exception)\b|Value error,)")


def _last_error_line(message: str, limit: int = 300) -> str:
    """The exception line of a Ray Serve failure message (its traceback's last line that
    states one; pydantic's closing link skipped), cut to `limit` characters."""
    lines = [line.strip() for line in message.splitlines()
             if line.strip() and not line.strip().startswith("For further information")]
    found = next((line for line in reversed(lines) if _EXCEPTION_LINE.match(line)),
                 lines[-1] if lines else message)
    return found if len(found) <= limit else found[:limit] + "..."


def failed_start(app: str = "frugal") -> str | None:
    """What failed, naming the model, once any replica of `app` failed to start: Ray Serve
    retries a failing constructor (each retry a whole engine start) before it gives up,
    minutes later and naming no model; the first failure already says it all."""
    from ray import serve

    try:
        status = serve.status().applications.get(app)
    except Exception:  # the controller is still starting: nothing failed yet
        return None
    for name, deployment in (status.deployments if status else {}).items():
        message = deployment.message or ""
        if deployment.status in ("DEPLOY_FAILED", "UNHEALTHY") or "failed to start" in message:
            what = f"model {name.removeprefix('model-')!r}" if name.startswith("model-") \
                else f"deployment {name!r}"
            cause = _root_cause(name) or _last_error_line(message)
            return f"{what} failed to start: {cause}"
    return None


#: An exception line as vLLM's engine processes log it: `... ERROR ... ] KindError: text`.
_LOGGED_EXCEPTION = re.compile(r"ERROR .*?\] ((?:\w+\.)*\w+(?:Error|Exception): .+)$")
#: vLLM's wrappers around the root cause ("see root cause above").
_WRAPPERS = ("initialization failed", "failed to start", "See root cause", "See stack trace")


def _root_cause(deployment: str) -> str | None:
    """The engine's own exception (a shape mismatch, an unknown architecture), which
    vLLM logs from its engine processes into the replica's Ray log while the replica's
    exception only says "Engine core initialization failed. See root cause above"."""
    try:
        from ray._private.worker import _global_node

        logs = Path(_global_node.get_logs_dir_path())
    except Exception:  # not the Ray that this process started: no logs to read
        return None
    marker = f":actor_name:ServeReplica:frugal:{deployment}"
    for log in sorted(logs.glob("worker-*.out"), key=lambda path: path.stat().st_mtime):
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        if marker not in lines[:5]:
            continue
        for line in lines:
            found = _LOGGED_EXCEPTION.search(line)
            if found and not any(wrapper in found.group(1) for wrapper in _WRAPPERS):
                return f"{found.group(1)} (log: {log})"
    return None


def _watch_start(done: threading.Event, on_failure: Callable[[str], None]) -> None:
    """Until `done`: report the first replica that fails to start."""
    while not done.wait(START_CHECK_INTERVAL_S):
        failure = failed_start()
        if failure:
            on_failure(failure)
            return


def _print_kernels(models: list[str]) -> None:
    """Which CPU kernels each engine runs (CPU backend only; docs/serving.md)."""
    from ray import serve

    gateway = serve.get_app_handle("frugal")
    for model in models:
        try:
            info = gateway.engine_info.remote(model).result(timeout_s=30)
        except Exception as exc:  # informational only: never block serving on it
            console.print(f"{model}: engine info unavailable ({type(exc).__name__})")
            continue
        if info.get("cpu_kernels"):
            console.print(f"{model}: {info['cpu_kernels']}", highlight=False)


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

    http = config.http_options
    if not port_is_free(http.host, http.port):
        console.print(
            f"[red]port {http.port} on {http.host} is in use[/red] (another frugal or server "
            "still running?): stop it or pass --port"
        )
        raise typer.Exit(1)
    proxy_port = http.port
    if not config.ray.address:  # a cluster's own env decides there (KubeRay: HAProxy)
        proxy_port = _fast_ingress(http.host, http.port)

    import ray
    from ray import serve

    from serving.app import build_app
    from serving.reaper import start_reaper

    if config.ray.address:
        ray.init(address=config.ray.address, log_to_driver=False)
    else:
        # Whatever kills this process, the Ray and vLLM processes it starts go too.
        start_reaper()
        num_cpus = config.ray.num_cpus or max(MIN_LOCAL_LOGICAL_CPUS, 4 * (os.cpu_count() or 1))
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    serve.start(
        http_options={
            "host": http.host,
            "port": proxy_port,
            **({"request_timeout_s": http.request_timeout_s} if http.request_timeout_s else {}),
        }
    )
    stopping = False
    failure: list[str] = []

    def _stop(*_: object) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        if failure:
            console.print(f"[red]{failure[0]}[/red]", highlight=False, soft_wrap=True)
        console.print("shutting down...")
        if not failure:  # a graceful stop lets requests in flight finish; a failed
            serve.shutdown()  # start has none, and Ray's shutdown ends it all at once
        ray.shutdown()
        raise SystemExit(1 if failure else 0)

    def _fail(message: str) -> None:  # from the start watcher's thread: stop in main
        failure.append(message)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    started = threading.Event()
    threading.Thread(target=_watch_start, args=(started, _fail), daemon=True).start()
    try:
        serve.run(build_app(config), name="frugal", route_prefix="/", blocking=False)
    except RuntimeError as exc:  # Ray Serve gave up on a deployment
        failure.append(failed_start() or f"deploying failed: {exc}")
        _stop()
    shown_host = "127.0.0.1" if http.host in ("0.0.0.0", "::") else http.host
    base_url = f"http://{shown_host}:{http.port}/v1"
    models = [m.model_id for m in config.models]
    try:
        keys = config.gateway.api_keys
        if config.tenants.enabled and not keys:  # store keys only: none to probe with
            _wait_engines(base_url, ready_timeout)
        else:
            _wait_ready(base_url, models, ready_timeout, keys[0] if keys else None)
    except TimeoutError as exc:
        failure.append(str(exc))
        _stop()
    started.set()
    _print_kernels(models)
    console.print(f"[green]frugal is serving[/green] {', '.join(models)} on {base_url}")
    console.print(_examples(base_url, models[0]), highlight=False)
    print(f"READY {base_url}", flush=True)
    while True:
        time.sleep(3600)
