"""Lever 3's advisor: observe each prompt's shape for `frugal cache report`.

Prefix caching itself is vLLM's (on for every engine) and prefix-affinity routing is
Ray Serve's request router (`serving.cache_routing`); what the gateway adds is the
per-key, per-prefix view: which prompt prefixes hit, and which prompts put their varying
part first (`serving.cache_advisor`). The accounting lever writes the metrics.
"""

from __future__ import annotations

from serving.cache_advisor import PromptShapes, prompt_text
from serving.pipeline.context import RequestContext
from serving.pipeline.lever import Lever


class PromptCacheLever(Lever):
    name = "prompt_cache"

    def __init__(self) -> None:
        self.shapes = PromptShapes()

    async def before(self, ctx: RequestContext) -> None:
        text = prompt_text(ctx.request)
        ctx.prefix_label = self.shapes.prefix_label(text)
        ctx.late_fixed_prompt = self.shapes.observe(ctx.key_label, text)
