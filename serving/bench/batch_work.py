"""A batch workload and the client steps around it, shared by `frugal bench batch` and the
crash test: the input lines, upload + create, waiting, and reading both result files.

Everything goes through the unmodified `openai` SDK, as a user's code would.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

TERMINAL = ("completed", "failed", "expired", "cancelled")


def prompt(i: int) -> str:
    """Distinct short prompts (a shared instruction, so the prefix cache has work)."""
    return f"Answer with the sum only. What is {i % 97} + {i * 7 % 89}?"


def line_bodies(n: int, model: str, max_tokens: int) -> list[dict[str, Any]]:
    """`n` chat requests of exactly `max_tokens` output tokens each (ignore_eos), so a
    batch, the offline engine and online clients generate the same number of tokens."""
    return [{"model": model, "messages": [{"role": "user", "content": prompt(i)}],
             "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
            for i in range(n)]


def jsonl(bodies: list[dict[str, Any]], endpoint: str = "/v1/chat/completions") -> bytes:
    rows = [json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": endpoint,
                        "body": body}) for i, body in enumerate(bodies)]
    return ("\n".join(rows) + "\n").encode()


def client(base_url: str, timeout_s: float = 120) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key="bench", max_retries=2, timeout=timeout_s)


def submit(sdk: Any, data: bytes, endpoint: str = "/v1/chat/completions") -> Any:
    uploaded = sdk.files.create(file=("bench.jsonl", io.BytesIO(data)), purpose="batch")
    return sdk.batches.create(input_file_id=uploaded.id, endpoint=endpoint,
                              completion_window="24h")


def wait_for(sdk: Any, batch_id: str, until: Callable[[Any], bool], timeout_s: float,
             poll_s: float = 0.25) -> Any:
    """Poll the batch until `until(batch)` holds; TimeoutError with its last state."""
    deadline = time.monotonic() + timeout_s
    while True:
        batch = sdk.batches.retrieve(batch_id)
        if until(batch):
            return batch
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch_id} still {batch.status} after {timeout_s:.0f}s "
                               f"({batch.request_counts})")
        time.sleep(poll_s)


def finished(batch: Any) -> bool:
    return batch.status in TERMINAL


def done_lines(batch: Any) -> int:
    counts = batch.request_counts
    return (counts.completed + counts.failed) if counts else 0


def result_lines(sdk: Any, batch: Any) -> list[dict[str, Any]]:
    """Every line of the output and the error file."""
    rows: list[dict[str, Any]] = []
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            rows += [json.loads(x) for x in sdk.files.content(file_id).text.splitlines() if x]
    return rows


class Tally(BaseModel):
    """Each input custom_id against the result files: the exactly-once check."""

    lines: int
    answered: int
    failed: int
    lost: list[str]
    duplicated: list[str]
    unknown: list[str]

    @property
    def exactly_once(self) -> bool:
        return not (self.lost or self.duplicated or self.unknown)


def tally(expected: list[str], rows: list[dict[str, Any]]) -> Tally:
    seen = Counter(row.get("custom_id") for row in rows)
    wanted = set(expected)
    return Tally(
        lines=len(expected),
        answered=sum(1 for r in rows if (r.get("response") or {}).get("status_code") == 200),
        failed=sum(1 for r in rows if (r.get("response") or {}).get("status_code") != 200),
        lost=sorted(c for c in wanted if seen[c] == 0),
        duplicated=sorted(str(c) for c, n in seen.items() if n > 1),
        unknown=sorted(str(c) for c in seen if c not in wanted),
    )
