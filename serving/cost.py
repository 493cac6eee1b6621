"""Cost account: what each response cost, what the naive baseline would have cost, and
which lever saved the difference.

The baseline is the same request on the baseline model (the largest 16-bit model by
default, `cost.baseline_model`), with no prefix cache and no batch discount: the bill a
team pays when it sends everything to its best model. Token counts are the response's
own (a counterfactual run is not made on the hot path), so routing and caching savings
are exact for this response and reasoning-budget savings show up as fewer reasoning
tokens over time (the `frugal_reasoning_tokens_total` metric).
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel

from serving.config import FrugalConfig, Price

PER_MILLION = 1e-6


class TokenUsage(BaseModel):
    """The token counts of one response, from its OpenAI `usage` object."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0

    @classmethod
    def from_usage(cls, usage: Any) -> TokenUsage:
        data = usage if isinstance(usage, dict) else usage.model_dump()
        prompt_details = data.get("prompt_tokens_details") or {}
        completion_details = data.get("completion_tokens_details") or {}
        return cls(
            prompt_tokens=data.get("prompt_tokens") or 0,
            cached_tokens=prompt_details.get("cached_tokens") or 0,
            completion_tokens=data.get("completion_tokens") or 0,
            reasoning_tokens=completion_details.get("reasoning_tokens") or 0,
        )


class Cost(BaseModel):
    """US dollars; `total_usd` = input + cached input + output (reasoning is in output)."""

    model: str
    input_usd: float
    cached_input_usd: float
    output_usd: float
    reasoning_usd: float
    total_usd: float
    baseline_model: str
    baseline_usd: float
    saved_usd: float
    saved_by_lever: dict[str, float]
    #: What the summariser calls of context compaction cost (lever 8); in `total_usd`.
    compaction_usd: float = 0.0


class CostModel:
    """Prices responses; one instance per gateway replica (pure arithmetic, no I/O)."""

    def __init__(self, config: FrugalConfig, prices: dict[str, Price]) -> None:
        self.prices = prices
        self.cache_discount = config.cost.cached_input_discount
        self.batch_discount = config.cost.batch_discount
        self.baseline_model = config.baseline_model

    def cost(self, model: str, usage: TokenUsage, *, batch: bool = False) -> Cost:
        price = self.prices[model]
        base = self.prices[self.baseline_model]
        uncached = max(usage.prompt_tokens - usage.cached_tokens, 0)
        factor = (1 - self.batch_discount) if batch else 1.0
        input_usd = uncached * price.input_per_million * PER_MILLION * factor
        cached_usd = (
            usage.cached_tokens
            * price.input_per_million
            * (1 - self.cache_discount)
            * PER_MILLION
            * factor
        )
        output_usd = usage.completion_tokens * price.output_per_million * PER_MILLION * factor
        reasoning_usd = usage.reasoning_tokens * price.output_per_million * PER_MILLION * factor
        total = input_usd + cached_usd + output_usd
        baseline = (
            usage.prompt_tokens * base.input_per_million
            + usage.completion_tokens * base.output_per_million
        ) * PER_MILLION
        # The same tokens on this model without cache or batch discount: the gap to the
        # baseline is what picking this model saved; the rest is cache and batch.
        list_cost = (
            usage.prompt_tokens * price.input_per_million
            + usage.completion_tokens * price.output_per_million
        ) * PER_MILLION
        cache_saved = usage.cached_tokens * price.input_per_million * self.cache_discount
        cache_saved *= PER_MILLION * factor
        levers = {
            "routing": baseline - list_cost,
            "cache": cache_saved,
            "batch": list_cost - cache_saved - total if batch else 0.0,
            "compaction": 0.0,
        }
        return Cost(
            model=model,
            input_usd=input_usd,
            cached_input_usd=cached_usd,
            output_usd=output_usd,
            reasoning_usd=reasoning_usd,
            total_usd=total,
            baseline_model=self.baseline_model,
            baseline_usd=baseline,
            saved_usd=baseline - total,
            saved_by_lever=levers,
        )


    def with_compaction(self, cost: Cost, removed_tokens: int, summariser: list[Cost]) -> Cost:
        """The bill of a compacted request: its answer's cost plus the summariser's, and
        a baseline that sends the whole history. `saved_by_lever.compaction` is the
        removed tokens at this model's input price minus the summariser's cost (negative
        when summarising cost more than it removed); routing keeps the rest of the gap."""
        price, base = self.prices[cost.model], self.prices[cost.baseline_model]
        summary_usd = sum(c.total_usd for c in summariser)
        baseline = cost.baseline_usd + removed_tokens * base.input_per_million * PER_MILLION
        total = cost.total_usd + summary_usd
        levers = dict(cost.saved_by_lever)
        levers["compaction"] = (
            removed_tokens * price.input_per_million * PER_MILLION - summary_usd)
        saved = baseline - total
        levers["routing"] = saved - sum(v for k, v in levers.items() if k != "routing")
        return cost.model_copy(update={
            "baseline_usd": baseline, "total_usd": total, "saved_usd": saved,
            "saved_by_lever": levers, "compaction_usd": summary_usd,
        })


def combine_costs(costs: list[Cost]) -> Cost:
    """One bill for several calls of one request (a cascade's first try and its retry):
    amounts add up; the model and baseline are the last call's."""
    last = costs[-1]
    summed = {
        field: sum(getattr(cost, field) for cost in costs)
        for field in ("input_usd", "cached_input_usd", "output_usd", "reasoning_usd", "total_usd")
    }
    levers = {
        lever: sum(cost.saved_by_lever.get(lever, 0.0) for cost in costs)
        for lever in last.saved_by_lever
    }
    # Savings are against one baseline call, not one per try.
    saved = last.baseline_usd - summed["total_usd"]
    levers["routing"] += saved - sum(levers.values())
    return Cost(
        model=last.model,
        compaction_usd=sum(cost.compaction_usd for cost in costs),
        baseline_model=last.baseline_model,
        baseline_usd=last.baseline_usd,
        saved_usd=saved,
        saved_by_lever=levers,
        **summed,
    )


def key_label(api_key: str | None) -> str:
    """A metrics label for an API key that does not reveal it."""
    if not api_key:
        return "anonymous"
    return "key-" + hashlib.sha256(api_key.encode()).hexdigest()[:8]


def cost_headers(cost: Cost) -> dict[str, str]:
    return {
        "x-frugal-cost-usd": f"{cost.total_usd:.10f}",
        "x-frugal-baseline-cost-usd": f"{cost.baseline_usd:.10f}",
        "x-frugal-saved-usd": f"{cost.saved_usd:.10f}",
    }
