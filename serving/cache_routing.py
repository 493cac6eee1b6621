"""Lever 3, prompt caching across replicas: send requests that share a prefix to the
replica whose vLLM prefix cache holds it.

Ray Serve LLM's `PrefixCacheAffinityRouter` does the work (a prefix tree of what each
replica has seen, with power-of-two-choices fallback when the best replica is busy);
it reads the prompt from the request's `messages`/`prompt`. This subclass adds only
OpenAI's `prompt_cache_key`: when a request carries one, the key stands for the
prompt, so all requests with the same key go to the same replica even when their
shared part is short or comes late.
"""

from __future__ import annotations

from typing import Any

from ray.serve.llm.request_router import PrefixCacheAffinityRouter


class PromptCacheAffinityRouter(PrefixCacheAffinityRouter):
    def _extract_text_from_request(self, pending_request: Any) -> str:
        for arg in pending_request.args or ():
            key = getattr(arg, "prompt_cache_key", None)
            if isinstance(key, str) and key:
                return f"prompt_cache_key:{key}"
        return super()._extract_text_from_request(pending_request)
