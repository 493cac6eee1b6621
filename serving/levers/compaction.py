"""Lever 8: context compaction. A chat over its model's token budget has its older turns
replaced by a note before the model sees it (serving/compaction/plan.py decides how).

Runs after the router (the budget and tokenizer are the chosen model's) and before the
levers that shape the engine request. The summariser is another served model, called
through the pipeline's model caller, so its calls are in `ctx.calls` (purpose
`compaction`): billed, counted in the key's tokens and metrics, and priced into
`usage.cost.compaction_usd` by the accounting lever. The client sees
`x-frugal-compaction` (method, tokens before and after, summariser calls, fallback).
"""

from __future__ import annotations

import asyncio
from typing import Any

from serving import metrics
from serving.compaction.plan import Compactor, Messages, Summarise
from serving.config import CompactionSettings, FrugalConfig, ModelConfig
from serving.errors import APIError
from serving.pipeline.context import Endpoint, RequestContext
from serving.pipeline.engine_call import is_error
from serving.pipeline.lever import Lever
from serving.pipeline.parse import CompactOptions


def plain_messages(messages: Any) -> Messages | None:
    """The chat as role/content strings, or None when some message is more than text
    (images, tool calls): those chats are left whole."""
    out: Messages = []
    for message in messages or []:
        if not isinstance(message, dict) or set(message) - {"role", "content", "name"}:
            return None
        content = message.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                return None
            content = "".join(p.get("text", "") for p in content)
        if not isinstance(content, str) or message.get("role") not in (
                "system", "developer", "user", "assistant"):
            return None
        out.append({"role": message["role"], "content": content})
    return out


class CompactionLever(Lever):
    name = "compaction"

    def __init__(self, config: FrugalConfig, compactor: Compactor) -> None:
        self.config = config
        self.compactor = compactor

    def settings(self, ctx: RequestContext) -> CompactionSettings | None:
        """The model's settings with the request's override; None when off."""
        try:
            base = self.config.model(ctx.model).frugal.compaction
        except KeyError:
            return None  # an unknown model: the pipeline answers 404
        ask = ctx.options.compact if ctx.options is not None else None
        if ask is False or (ask is None and not base.enabled):
            return None
        if isinstance(ask, CompactOptions):
            return base.model_copy(update=ask.model_dump(exclude_none=True))
        return base

    async def before(self, ctx: RequestContext) -> None:
        if ctx.endpoint is not Endpoint.CHAT:
            return
        settings = self.settings(ctx)
        if settings is None:
            return
        messages = plain_messages(getattr(ctx.request, "messages", None))
        if messages is None:
            return
        summarise = self._summariser(ctx, settings) if settings.summariser else None
        # Notes are shared only within one key and one `user`: another tenant's identical
        # chat never reads this one's note.
        scope = f"{ctx.tenant.id if ctx.tenant else ''}\n{getattr(ctx.request, 'user', None) or ''}"
        result = await self.compactor.compact(ctx.model, messages, settings, summarise,
                                              scope=scope)
        if result is None:
            return
        ctx.compaction = result
        ctx.response_headers["x-frugal-compaction"] = result.header()
        metrics.COMPACTIONS.labels(ctx.model, result.method).inc()
        metrics.COMPACTION_TOKENS_REMOVED.labels(ctx.model).inc(result.removed_tokens)
        if result.note_repairs:
            metrics.COMPACTION_NOTE_REPAIRS.labels(ctx.model).inc(result.note_repairs)
        if result.fallback_reason is not None:
            metrics.COMPACTION_FALLBACKS.labels(ctx.model, result.fallback_reason).inc()

    def shape(self, ctx: RequestContext, request: Any, model: ModelConfig) -> Any:
        if ctx.compaction is not None:
            request.messages = [dict(m) for m in ctx.compaction.messages]
        return request

    def _summariser(self, ctx: RequestContext, settings: CompactionSettings) -> Summarise:
        async def summarise(messages: Messages) -> str:
            from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

            assert ctx.call_engine is not None and settings.summariser is not None
            # The caller's cache_salt goes with it: a client that isolates its prefix
            # cache (vLLM's per-request salt) gets its summaries isolated too.
            request = ChatCompletionRequest(
                model=settings.summariser, messages=messages, temperature=0.0,
                max_completion_tokens=settings.summariser_max_tokens,
                cache_salt=getattr(ctx.request, "cache_salt", None))
            first = len(ctx.calls)
            try:
                result = await asyncio.wait_for(ctx.call_engine(ctx, request),
                                                settings.summariser_timeout_s)
            finally:
                for call in ctx.calls[first:]:
                    call.purpose = "compaction"
            if is_error(result):
                raise APIError(result.error.code, result.error.message)
            choice = result.choices[0]
            if choice.finish_reason == "length":
                raise APIError(502, "the note reached summariser_max_tokens")
            return (choice.message.content or "").split("</think>")[-1]

        return summarise
