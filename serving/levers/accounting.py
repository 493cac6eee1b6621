"""Accounting: the one writer of usage, cost and request metrics.

Runs last in the chain, so it sees every decision. It prices each model call of the
request (a cascade bills both) with `serving.cost.CostModel`, puts the bill in
`usage.cost` and the `x-frugal-*` cost headers, and writes every Prometheus metric of
the request in `on_usage`, which the chain runs exactly once, for answered, failed and
abandoned requests alike. Streams always ask the engine for usage (the final
usage-only chunk); the client gets that chunk only if it asked for it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from serving import metrics
from serving.config import ModelConfig
from serving.cost import Cost, CostModel, TokenUsage, combine_costs, cost_headers
from serving.pipeline.context import Priority, RequestContext
from serving.pipeline.lever import Lever


def _is_usage_chunk(chunk: str) -> bool:
    return '"choices":[]' in chunk and '"usage"' in chunk


class AccountingLever(Lever):
    name = "accounting"

    def __init__(self, cost_model: CostModel) -> None:
        self.cost_model = cost_model

    async def before(self, ctx: RequestContext) -> None:
        options = getattr(ctx.request, "stream_options", None)
        ctx.client_wants_usage = bool(ctx.stream and options and options.include_usage)
        ctx.in_flight_model = ctx.model
        metrics.IN_FLIGHT.labels(ctx.model).inc()

    def shape(self, ctx: RequestContext, request: Any, model: ModelConfig) -> Any:
        if ctx.stream:
            from vllm.entrypoints.generate.base.protocol import StreamOptions

            options = request.stream_options
            request.stream_options = StreamOptions(
                include_usage=True,
                continuous_usage_stats=bool(options and options.continuous_usage_stats),
            )
        return request

    def settle(self, ctx: RequestContext) -> Cost | None:
        """Price every call that reported usage; the request's bill is their sum."""
        batch = ctx.priority is Priority.BATCH
        for call in ctx.calls:
            if call.usage is not None and call.cost is None:
                call.cost = self.cost_model.cost(call.model, call.usage, batch=batch)
        known = [call.cost for call in ctx.answer_calls if call.cost is not None]
        ctx.cost = combine_costs(known) if known else None
        if ctx.cost is not None and ctx.compaction is not None:
            summariser = [call.cost for call in ctx.calls
                          if call.purpose == "compaction" and call.cost is not None]
            ctx.cost = self.cost_model.with_compaction(
                ctx.cost, ctx.compaction.removed_tokens, summariser)
        return ctx.cost

    async def after(self, ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
        cost = self.settle(ctx)
        if cost is not None and body.get("usage") is not None:
            body["usage"]["cost"] = cost.model_dump()
            ctx.response_headers.update(cost_headers(cost))
        return body

    def on_chunk(self, ctx: RequestContext, chunk: str) -> str | None:
        if not _is_usage_chunk(chunk):
            return chunk
        data = json.loads(chunk.removeprefix("data: "))
        call = ctx.last_call
        if call is not None and data.get("usage"):
            call.usage = TokenUsage.from_usage(data["usage"])
        cost = self.settle(ctx)
        if not ctx.client_wants_usage:
            return None
        data["usage"]["cost"] = cost.model_dump() if cost else None
        return f"data: {json.dumps(data)}\n\n"

    async def on_usage(self, ctx: RequestContext) -> None:
        if ctx.in_flight_model is not None:
            metrics.IN_FLIGHT.labels(ctx.in_flight_model).dec()
        endpoint = ctx.endpoint.value
        for call in ctx.calls:
            metrics.REQUESTS.labels(call.model, endpoint, str(call.status)).inc()
            if ctx.priority is Priority.BATCH:
                metrics.BATCH_LINES.labels(call.model, str(call.status)).inc()
            if call.usage is None:
                continue
            metrics.record_tokens(call.model, call.usage)
            metrics.PREFIX_PROMPT_TOKENS.labels(ctx.key_label, ctx.prefix_label).inc(
                call.usage.prompt_tokens)
            metrics.PREFIX_CACHED_TOKENS.labels(ctx.key_label, ctx.prefix_label).inc(
                call.usage.cached_tokens)
        if ctx.cost is not None:  # the request's one bill (a cascade's calls combined)
            reasoning = sum(c.usage.reasoning_tokens for c in ctx.calls if c.usage is not None)
            metrics.record_cost(ctx.cost, ctx.key_label, reasoning)
        if not ctx.calls:
            return
        metrics.LATENCY.labels(ctx.model, endpoint).observe(time.perf_counter() - ctx.started)
        if ctx.ttft_s is not None:
            metrics.TTFT.labels(ctx.model).observe(ctx.ttft_s)
        metrics.PROMPTS.labels(ctx.key_label).inc()
        if ctx.late_fixed_prompt:
            metrics.LATE_FIXED_PROMPTS.labels(ctx.key_label).inc()
        last = ctx.calls[-1]
        if ctx.structured_truncated:
            metrics.STRUCTURED_TRUNCATED.labels(last.model).inc()
            if last.usage is not None:
                metrics.STRUCTURED_WASTED_TOKENS.labels(last.model).inc(
                    last.usage.completion_tokens)
        if ctx.route is not None:
            chosen = ctx.route.cell or ctx.route.model  # MODEL@EFFORT for a cell with thinking
            metrics.ROUTER_DECISIONS.labels(chosen).inc()
            metrics.ROUTER_PREDICTED.labels(chosen).observe(ctx.route.predicted[chosen])
            if ctx.confidence is not None:
                metrics.ROUTER_CONFIDENCE.labels(chosen).observe(ctx.confidence)
            if ctx.escalated_to is not None:
                metrics.ROUTER_ESCALATIONS.labels(chosen, ctx.escalated_to).inc()
