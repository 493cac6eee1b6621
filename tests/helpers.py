"""Small helpers shared by the server tests."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


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
