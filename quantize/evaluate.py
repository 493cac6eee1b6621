"""Scoring an artifact and its 16-bit source on the same held-out items.

Two backends, one grading rule (`serving.evaluation.items.check_answer`):
- `served`: the artifact is a model entry in a deployments YAML, started with `frugal serve`
  and scored by the scorecard harness (`serving.evaluation.scoring.evaluate_model`) through
  the OpenAI API, exactly as it will be served. Used for every method vLLM runs on this
  device. The server is started and stopped by `serving.evaluation.launcher.frugal_server`
  (everything in its session, Ray workers included).
- `transformers`: greedy `generate()` in the tool venv, for methods vLLM runs only on GPU
  (bitsandbytes, GPTQ 8-bit on CPU). The source is scored the same way, so the delta compares
  like with like.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from serving.evaluation.items import TaskItem, check_answer
from serving.evaluation.launcher import frugal_server
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


def deployments_yaml(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The deployments YAML (as a dict) for `frugal_server`, which picks the port."""
    return {"ray": {"num_cpus": 8}, "models": entries}


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
    config = deployments_yaml(entries)
    with frugal_server(config, log_dir=workdir, timeout_s=SERVE_READY_TIMEOUT_S) as server:
        scores = {mid: score_endpoint(server.url, mid, items) for mid in models}
        if on_served is not None:
            on_served(server.url)
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

