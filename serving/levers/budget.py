"""Budget: a key's spend, reserved before the model call and settled on its usage.

Runs after accounting, so `before` sees the chosen model and `on_usage` the request's
priced bill (`ctx.cost`, the number the client got in `usage.cost`).
- `before`: reserve an estimate of the request's cost (`serving.tenants.store`): the
  prompt's UTF-8 bytes (an upper bound on its tokens for byte-level tokenizers) at the
  model's input price, plus `max_tokens` (else `tenants.estimate_output_tokens`) at
  its output price; a cascade may bill a second model, so its largest candidate's
  price is added. A key whose period's spend plus reservations has reached its budget
  gets 429 `insufficient_quota`.
- `on_usage`: exactly once, the reservation is settled with the real cost into the
  ledger (cost, savings, tokens); a request that ended without usage (failed,
  preempted batch line, abandoned before its usage chunk) is billed nothing, as in
  `usage.cost`, and its reservation is released without a ledger row.

The reservation, not a read of the spend, is what keeps 16 concurrent requests from
all passing a nearly spent budget: each one in flight is counted before it answers.
A stream in flight when the budget runs out finishes; the next request is refused.
"""

from __future__ import annotations

import asyncio
import json
import logging

from serving import metrics
from serving.config import Price
from serving.cost import PER_MILLION
from serving.errors import APIError
from serving.pipeline.context import Priority, RequestContext
from serving.pipeline.lever import Lever
from serving.tenants.store import KeyStore

logger = logging.getLogger("frugal.tenants")


def prompt_bytes(request: object) -> int:
    """The prompt's size in UTF-8 bytes (messages as JSON, or the completion prompt)."""
    messages = getattr(request, "messages", None)
    if messages is not None:
        return len(json.dumps(messages, default=str).encode())
    return len(str(getattr(request, "prompt", "")).encode())


def output_limit(request: object, default: int) -> int:
    limit = getattr(request, "max_completion_tokens", None) or getattr(request, "max_tokens", None)
    return int(limit) if limit else default


class BudgetLever(Lever):
    """Per-key budgets with reservations; keys without a budget only write the ledger."""

    name = "budget"

    def __init__(self, store: KeyStore, prices: dict[str, Price],
                 estimate_output_tokens: int) -> None:
        self.store = store
        self.prices = prices
        self.estimate_output_tokens = estimate_output_tokens
        self.dearest = max(prices.values(), key=lambda p: p.output_per_million, default=None)

    def estimate_usd(self, ctx: RequestContext) -> float:
        prompt = prompt_bytes(ctx.request)
        output = output_limit(ctx.request, self.estimate_output_tokens)
        prices = [self.prices.get(ctx.model)]
        if ctx.cascade:
            prices.append(self.dearest)
        return sum(
            (prompt * price.input_per_million + output * price.output_per_million)
            * PER_MILLION
            for price in prices if price is not None
        )

    async def before(self, ctx: RequestContext) -> None:
        key = ctx.tenant
        if key is None:
            return
        reservation = await asyncio.to_thread(self.store.reserve, key, self.estimate_usd(ctx))
        if reservation is None:
            metrics.TENANT_REFUSALS.labels(key.id, "budget").inc()
            raise APIError(
                429,
                f"You exceeded your current quota: the budget of key {key.name} "
                f"(${key.budget_usd:.2f} per {key.budget_period}) is spent.",
                code="insufficient_quota",
            )
        ctx.reservation = reservation

    async def on_usage(self, ctx: RequestContext) -> None:
        reservation = ctx.reservation
        if reservation is None:
            return
        ctx.reservation = None
        calls = [call.usage for call in ctx.calls if call.usage is not None]
        cost = ctx.cost
        if cost is None and not calls:  # refused, failed or preempted before any usage:
            # nothing billed (as in accounting), so no ledger row; give the budget back
            await asyncio.to_thread(self.store.release, reservation)
            return
        await asyncio.to_thread(
            self.store.settle,
            reservation,
            model=ctx.model,
            cost_usd=cost.total_usd if cost is not None else 0.0,
            saved_usd=cost.saved_usd if cost is not None else 0.0,
            prompt_tokens=sum(u.prompt_tokens for u in calls),
            cached_tokens=sum(u.cached_tokens for u in calls),
            completion_tokens=sum(u.completion_tokens for u in calls),
            reasoning_tokens=sum(u.reasoning_tokens for u in calls),
            batch=ctx.priority is Priority.BATCH,
        )
