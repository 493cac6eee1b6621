"""Scoring an artifact and its 16-bit source on the same held-out items.

Two backends, one grading rule (`serving.evaluation.items.check_answer`):
- `served`: the artifact is a model entry in a deployments YAML, started with `frugal serve`
  and scored by the scorecard harness (`serving.evaluation.scoring.evaluate_model`) through
  the OpenAI API, exactly as it will be served. Used for every method vLLM runs on this device.
- `transformers`: greedy `generate()` in the tool venv, for methods vLLM runs only on GPU
  (bitsandbytes, GPTQ 8-bit on CPU). The source is scored the same way, so the delta compares
  like with like.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from serving.evaluation.items import TaskItem, check_answer
from serving.evaluation.scoring import evaluate_model
from serving.zoo.tasks import EVAL_SEED, mixed_suite

#: Held-out gate suite: items per (family, difficulty) cell; 9 cells.
DEFAULT_EVAL_PER_CELL = 20
SERVE_READY_TIMEOUT_S = 600
MAX_NEW_TOKENS = 64

Progress = Callable[[str, int, int], None]


class Score(BaseModel):
    accuracy: float
    items: int


def eval_items(per_cell: int = DEFAULT_EVAL_PER_CELL, seed: int = EVAL_SEED) -> list[TaskItem]:
    return mixed_suite(per_cell, seed)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def model_entry(model_id: str, path: Path, quantization: str | None) -> dict[str, Any]:
    """A deployments-YAML model entry for an artifact (or its source when unquantized)."""
    engine: dict[str, Any] = {"dtype": "bfloat16", "enforce_eager": True}
    if quantization:
        engine["quantization"] = quantization
    return {
        "model_loading_config": {"model_id": model_id, "model_source": str(path)},
        "engine_kwargs": engine,
        "deployment_config": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 1}},
        "runtime_env": {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
    }


def deployments_yaml(entries: list[dict[str, Any]], port: int) -> dict[str, Any]:
    return {
        "http_options": {"host": "127.0.0.1", "port": port},
        "ray": {"num_cpus": 8},
        "models": entries,
    }


class Server:
    """`frugal serve FILE` in its own process group; stopped with SIGTERM to that group only
    (never `ray stop`: other servers share the machine)."""

    def __init__(self, config: dict[str, Any], workdir: Path, log_name: str = "serve.log"):
        self.config = config
        self.workdir = workdir
        self.log_path = workdir / log_name
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> Server:
        path = self.workdir / "deployments.yaml"
        path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        frugal = Path(sys.executable).parent / "frugal"
        cmd = (
            [str(frugal), "serve", str(path)]
            if frugal.exists()
            else [sys.executable, "-m", "serving.cli", "serve", str(path)]
        )
        log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True
        )
        deadline = time.monotonic() + SERVE_READY_TIMEOUT_S
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("READY "):
                self.base_url = line.split()[1]
                return self
            if time.monotonic() > deadline:
                break
        self.__exit__(None, None, None)
        tail = "\n".join(self.log_path.read_text().splitlines()[-20:])
        raise RuntimeError(f"frugal serve did not become ready (log {self.log_path}):\n{tail}")

    def __exit__(self, *_: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def score_endpoint(base_url: str, model: str, items: list[TaskItem]) -> Score:
    """Accuracy of one served model with the scorecard harness (`evaluate_model`)."""
    # The gate needs quality only: skip the harness's throughput passes.
    score = asyncio.run(evaluate_model(base_url, model, items, throughput=False))
    return Score(accuracy=float(score.accuracy), items=len(items))


OnServed = Callable[[str], None]


def score_served(
    models: dict[str, tuple[Path, str | None]],
    items: list[TaskItem],
    workdir: Path,
    on_served: OnServed | None = None,
) -> dict[str, Score]:
    """Serve every model (id -> (path, quantization)) in one `frugal serve` and score each.

    `on_served(base_url)` runs while the server is still up (tests talk to the artifact
    through it instead of paying for a second engine start)."""
    entries = [model_entry(mid, path, q) for mid, (path, q) in models.items()]
    with Server(deployments_yaml(entries, free_port()), workdir) as server:
        scores = {mid: score_endpoint(server.base_url, mid, items) for mid in models}
        if on_served is not None:
            on_served(server.base_url)
        return scores


def score_transformers(
    paths: list[Path], items: list[TaskItem], workdir: Path, progress: Progress | None = None
) -> dict[Path, Score]:
    """Score checkpoints with transformers in the tool venv (GPU-only methods on CPU)."""
    from quantize.workers_run import run_worker

    spec = {
        "models": [str(p) for p in paths],
        "prompts": [item.messages for item in items],
        "max_new_tokens": MAX_NEW_TOKENS,
    }
    out = run_worker("hf_eval_worker.py", spec, workdir, progress)
    scores = {}
    for path in paths:
        answers = out["answers"][str(path)]
        right = sum(check_answer(i, a) for i, a in zip(items, answers, strict=True))
        scores[path] = Score(accuracy=right / len(items), items=len(items))
    return scores


def scratch_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
