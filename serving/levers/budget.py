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

A store that cannot take writes (disk full, read-only) refuses the reservation: the
client gets the gateway's 503 `store_unavailable`. A settlement it refuses is kept in
this replica's memory and written with the next settlement that goes through (its
reservation holds the budget meanwhile, and the sweeper's release of it is no
obstacle: settling a released reservation only adds the cost and the ledger row).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from functools import partial

from serving import metrics
from serving.config import Price
from serving.cost import PER_MILLION
from serving.errors import APIError
from serving.pipeline.context import Priority, RequestContext
from serving.pipeline.lever import Lever
from serving.store.faults import StoreUnavailable
from serving.tenants.store import KeyStore

logger = logging.getLogger("frugal.tenants")

#: Settlements kept for a store that refuses writes; past this, the oldest are dropped
#: (logged), and the sweeper releases their reservations.
UNSETTLED_MAX = 100_000


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
        #: Settlements the store refused (full or read-only disk), oldest first.
        self.unsettled: deque[partial[None]] = deque()

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
            # (if the store refuses, the sweeper releases it later)
            await self._write(partial(self.store.release, reservation), keep=False)
            return
        await self._write(partial(
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
            now=time.time(),  # the ledger row's time, also when written later
        ), keep=True)

    async def _write(self, write: partial[None], keep: bool) -> None:
        """Run `write` (in a thread); one the store refuses is counted and, with `keep`,
        kept for later. After one that went through, the kept ones are written."""
        try:
            await asyncio.to_thread(write)
        except StoreUnavailable as exc:
            metrics.STORE_ERRORS.labels(exc.fault, "ledger").inc()
            if not keep:
                return
            if not self.unsettled:
                logger.error("settling a key's spend: %s Settlements wait in this "
                             "replica's memory.", exc.fault.message)
            if len(self.unsettled) >= UNSETTLED_MAX:
                self.unsettled.popleft()
                logger.error("more than %d settlements wait: the oldest is dropped",
                             UNSETTLED_MAX)
            self.unsettled.append(write)
            return
        if self.unsettled:
            await self._settle_kept()

    async def _settle_kept(self) -> None:
        kept = list(self.unsettled)
        self.unsettled.clear()
        for index, write in enumerate(kept):
            try:
                await asyncio.to_thread(write)
            except StoreUnavailable:
                self.unsettled.extendleft(reversed(kept[index:]))
                return
            except Exception:
                logger.exception("a kept settlement failed; dropped")
        logger.warning("the store takes writes again: %d kept settlements written",
                       len(kept))
