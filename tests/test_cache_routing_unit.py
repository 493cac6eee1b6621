"""The prefix-affinity router's text extraction, without Ray Serve: a prompt with no
text must mean "no prefix matching", never a division by its zero length (that left
the request unrouted for ever on the real server: tests/test_hostile_inputs.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from serving.cache_routing import PromptCacheAffinityRouter


def _router() -> PromptCacheAffinityRouter:
    return object.__new__(PromptCacheAffinityRouter)  # no Ray state needed here


def _pending(**fields: Any) -> Any:
    return SimpleNamespace(args=[SimpleNamespace(**fields)])


@pytest.mark.parametrize("fields", [
    {"prompt": [5, 6, 7]},                      # token ids
    {"prompt": []},
    {"prompt": None, "prompt_embeds": b"x"},    # embeds only: `prompt` is None
    {"messages": []},
    {"messages": [{"role": "user", "content": ""}]},
])
def test_a_prompt_without_text_is_not_prefix_matched(fields: dict[str, Any]) -> None:
    assert _router()._extract_text_from_request(_pending(**fields)) is None


def test_text_and_the_prompt_cache_key_are_matched() -> None:
    router = _router()
    assert router._extract_text_from_request(_pending(prompt="abc")) == "abc"
    chat = _pending(messages=[{"role": "user", "content": "hi"}], prompt_cache_key="k")
    assert router._extract_text_from_request(chat) == "prompt_cache_key:k"


def test_failed_prefix_matching_falls_back_to_power_of_two() -> None:
    """Whatever fails inside Ray's prefix matching, routing must still choose."""
    router = _router()
    router._extract_text_from_request = lambda _: 1 / 0  # type: ignore[method-assign]
    chosen = asyncio.run(router._prefix_match_best_replicas(_pending(prompt="abc"), []))
    assert chosen == [[]]
