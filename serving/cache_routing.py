"""Lever 3, prompt caching across replicas: send requests that share a prefix to the
replica whose vLLM prefix cache holds it.

Ray Serve LLM's `PrefixCacheAffinityRouter` does the work (a prefix tree of what each
replica has seen, with power-of-two-choices fallback when the best replica is busy);
it reads the prompt from the request's `messages`/`prompt`. This subclass adds only
OpenAI's `prompt_cache_key`: when a request carries one, the key stands for the
prompt, so all requests with the same key go to the same replica even when their
shared part is short or comes late.

It also keeps routing from ever stranding a request. Ray's router divides by the
prompt text's length, and a prompt with no text (token ids, no messages) made that a
ZeroDivisionError (`prompt_embeds` alone: a ValueError), which Ray Serve logs and
retries for ever: the client hung until it gave up. Such a request has no prefix to
match, so it goes by power of two choices; so does any request whose prefix matching
fails.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.serve.llm.request_router import PrefixCacheAffinityRouter

logger = logging.getLogger("frugal.routing")


class PromptCacheAffinityRouter(PrefixCacheAffinityRouter):
    def _extract_text_from_request(self, pending_request: Any) -> str | None:
        """The text to match; None (no prefix matching) when the prompt has none."""
        for arg in pending_request.args or ():
            key = getattr(arg, "prompt_cache_key", None)
            if isinstance(key, str) and key:
                return f"prompt_cache_key:{key}"
        try:
            return super()._extract_text_from_request(pending_request) or None
        except ValueError:  # neither `messages` nor a `prompt` (only `prompt_embeds`)
            return None

    async def _prefix_match_best_replicas(self, pending_request: Any,
                                          candidate_replicas: list[Any]) -> list[list[Any]]:
        """Ray's choice, or none (its caller then takes power of two choices) when it
        fails: an error here would leave the request unrouted for ever."""
        try:
            return await super()._prefix_match_best_replicas(pending_request,
                                                             candidate_replicas)
        except Exception:
            logger.exception("prefix matching failed; routing by power of two choices")
            return [[]]
