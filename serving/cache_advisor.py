"""The cache advisor's data: which prompt prefixes hit the prefix cache, per API key, and
which prompts put their varying part before their fixed part.

A prefix cache only helps when the repeated part of a prompt comes first. A team that
writes "User question: ... Context: <the same 2 pages>" pays full price for the pages on
every call. The gateway feeds every prompt to `PromptShapes.observe`; the counters it
returns go to Prometheus, and `frugal cache report` reads them back.

Written by hand: no library tracks prompt shape; it is two string comparisons against a
small window of recent prompts per key.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict, deque
from typing import Any

#: A shared tail at least this long, with almost no shared head, marks a cache-unfriendly
#: prompt (characters; about a hundred tokens for typical tokenizers).
MIN_SHARED_TAIL = 400
MAX_SHARED_HEAD = 32
PREFIX_CHARS = 64


def prompt_text(request: Any) -> str:
    """The text a request's prompt is made of, in order (chat messages or a prompt)."""
    messages = getattr(request, "messages", None)
    if messages is not None:
        parts = []
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):  # content parts: keep the text ones
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(f"{message.get('role', '')}:{content or ''}\n")
        return "".join(parts)
    prompt = getattr(request, "prompt", "")
    return prompt if isinstance(prompt, str) else str(prompt)


def _common_prefix(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


def _common_suffix(a: str, b: str) -> int:
    return len(os.path.commonprefix([a[::-1], b[::-1]]))


class PromptShapes:
    """Per-key window of recent prompts; bounded in keys and prefixes it remembers."""

    def __init__(self, window: int = 16, max_keys: int = 256, max_prefixes: int = 200) -> None:
        self.window = window
        self.max_keys = max_keys
        self.max_prefixes = max_prefixes
        self.recent: OrderedDict[str, deque[str]] = OrderedDict()
        self.prefixes: set[str] = set()

    def prefix_label(self, text: str) -> str:
        """A short stable name for the prompt's first characters (bounded cardinality)."""
        label = hashlib.sha256(text[:PREFIX_CHARS].encode()).hexdigest()[:10]
        if label in self.prefixes:
            return label
        if len(self.prefixes) >= self.max_prefixes:
            return "other"
        self.prefixes.add(label)
        return label

    def observe(self, api_key: str, text: str) -> bool:
        """Remember `text`; True when it repeats a long tail of a recent prompt of the same
        key while differing from it right at the start."""
        window = self.recent.get(api_key)
        if window is None:
            window = self.recent[api_key] = deque(maxlen=self.window)
            if len(self.recent) > self.max_keys:
                self.recent.popitem(last=False)
        self.recent.move_to_end(api_key)
        late_fixed = any(
            _common_prefix(text, other) <= MAX_SHARED_HEAD
            and _common_suffix(text, other) >= MIN_SHARED_TAIL
            for other in window
        )
        window.append(text[:PREFIX_CHARS] + text[-2 * MIN_SHARED_TAIL :])
        return late_fixed
