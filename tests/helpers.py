"""Small helpers shared by the server tests."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from serving.evaluation.launcher import gateway_urls

__all__ = ["assert_disconnect_aborts", "chat_body", "gateway_urls", "metric"]


def metric(root_url: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 if none)."""
    text = httpx.get(f"{root_url}/metrics", timeout=30).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def chat_body(model: str, content: str = "What is 2 + 3?", **extra: object) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def _idle(root_url: str, model: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while metric(root_url, "vllm:num_requests_running", model_name=model) > 0:
        assert time.monotonic() < deadline, f"{model} still running after {timeout_s} s"
        time.sleep(0.2)


def _disconnect_once(base_url: str, model: str, max_tokens: int) -> tuple[float, float]:
    """One long stream hung up after its first chunks: (requests of `model` that ran to
    max_tokens meanwhile, tokens the engines generated meanwhile), once nothing runs."""
    root_url = base_url.removesuffix("/v1")
    _idle(root_url, model)
    generated_before = metric(root_url, "vllm:generation_tokens_total", model_name=model)
    ran_to_length_before = metric(root_url, "vllm:request_success_total",
                                  model_name=model, finished_reason="length")
    body = chat_body(model, max_tokens=max_tokens, ignore_eos=True, stream=True)
    with httpx.stream("POST", f"{base_url}/chat/completions", json=body, timeout=60) as reply:
        assert reply.status_code == 200
        lines = reply.iter_lines()
        for _ in range(4):  # the role chunk and the first token (both sent at once)
            next(lines)
    # Closing the stream is the disconnect. Once nothing is running, count what it generated.
    _idle(root_url, model)
    generated = metric(root_url, "vllm:generation_tokens_total", model_name=model)
    ran_to_length = metric(root_url, "vllm:request_success_total",
                           model_name=model, finished_reason="length")
    return ran_to_length - ran_to_length_before, generated - generated_before


def assert_disconnect_aborts(base_url: str, model: str, max_tokens: int,
                             attempts: int = 5) -> None:
    """Open a long stream, read its first chunks, hang up: the engine must drop the
    request, not run it to the end. Checked on vLLM's own counters once nothing runs.

    Aborted means it never reached max_tokens (vLLM counts no abort in request_success)
    and stopped well short of it. How far it gets depends on how loaded the machine is:
    on an idle server the abort lands within a token or two, but on a busy 2-core CI
    machine the cancellation crossing three processes has taken longer than the whole
    generation. So a run that went to the end is tried again, up to `attempts` times; a
    gateway that never aborts fails every attempt."""
    seen = []
    for _ in range(attempts):
        ran_to_length, generated = _disconnect_once(base_url, model, max_tokens)
        if ran_to_length == 0 and generated < max_tokens * 0.75:
            return
        seen.append((ran_to_length, generated))
    raise AssertionError(f"never aborted in {attempts} attempts (ran to length, tokens "
                         f"generated): {seen}")
