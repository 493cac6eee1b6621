"""Shared fixtures: one real frugal server (Ray Serve + vLLM) for the whole session.

Starting engines costs tens of seconds on 2 cores, so every test that needs a server
shares this one. It serves the demo zoo's smallest model twice over:
- `zoo-s` with two replicas (metrics must add up across replicas),
- `zoo-s-tight`, the same weights with a one-request queue, for overload and engine
  failure tests (they break it on purpose; nothing else uses it).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SERVER_START_TIMEOUT_S = 900


def zoo_model_path(name: str) -> Path:
    """A zoo checkpoint, or FRUGAL_TEST_MODEL when a developer points elsewhere."""
    override = os.environ.get("FRUGAL_TEST_MODEL")
    if override:
        return Path(override)
    from serving.zoo.paths import default_zoo_dir

    path = default_zoo_dir() / name
    if not (path / "config.json").exists():
        pytest.fail(f"{path} is missing: run `frugal zoo build` (make test does it first)")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_config(port: int, model_path: Path) -> dict:
    engine = {"dtype": "bfloat16", "enforce_eager": True}
    env = {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}}
    return {
        "http_options": {"host": "127.0.0.1", "port": port},
        "ray": {"num_cpus": 8},
        "gateway": {"deployment_config": {"num_replicas": 2, "max_ongoing_requests": 1024}},
        # The tight model doubles as the expensive baseline of the cost account.
        "cost": {"baseline_model": "zoo-s-tight"},
        "models": [
            {
                "model_loading_config": {"model_id": "zoo-s", "model_source": str(model_path)},
                "engine_kwargs": {**engine, "reasoning_parser": "qwen3"},
                "deployment_config": {
                    "num_replicas": 2,
                    "ray_actor_options": {"num_cpus": 1},
                    "request_router_config": {},  # prefix-cache affinity (the default class)
                },
                "runtime_env": env,
                "frugal": {
                    "price": {"input_per_million": 0.1, "output_per_million": 0.4},
                    "reasoning": {"low": 16, "medium": 64, "high": 256},
                },
            },
            {
                "model_loading_config": {
                    "model_id": "zoo-s-tight",
                    "model_source": str(model_path),
                },
                "engine_kwargs": engine,
                "deployment_config": {
                    "num_replicas": 1,
                    "max_ongoing_requests": 1,
                    "max_queued_requests": 1,
                    "ray_actor_options": {"num_cpus": 1},
                    # Restart quickly after the fault test kills the engine.
                    "health_check_period_s": 2,
                },
                "runtime_env": env,
                "frugal": {"price": {"input_per_million": 1.0, "output_per_million": 4.0}},
            },
        ],
    }


class ServerHandle:
    def __init__(self, base_url: str, process: subprocess.Popen, log_path: Path) -> None:
        self.base_url = base_url  # ends in /v1
        self.root_url = base_url.removesuffix("/v1")
        self.process = process
        self.log_path = log_path


def _stop_ray() -> None:
    subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    workdir = tmp_path_factory.mktemp("server")
    port = free_port()
    config_path = workdir / "frugal.yaml"
    config_path.write_text(yaml.safe_dump(server_config(port, zoo_model_path("zoo-s"))))
    log_path = workdir / "server.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [str(BIN / "frugal"), "serve", str(config_path)],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,
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
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not ready:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            _stop_ray()
            tail = log_path.read_text()[-4000:]
            pytest.fail(f"frugal serve did not become ready:\n{tail}")
        time.sleep(1)
    try:
        yield ServerHandle(ready[0], process, log_path)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:  # a clean shutdown also stops its local Ray
            os.killpg(process.pid, signal.SIGKILL)
            _stop_ray()


@pytest.fixture(scope="session")
def client(server: ServerHandle):
    from openai import OpenAI

    return OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
