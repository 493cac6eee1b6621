"""Lever 2, reasoning control: turn the request's reasoning knobs into a thinking budget.

Accepted shapes (the first that is present wins, in this order):
- `reasoning: {"max_tokens": N}` (OpenRouter-style exact budget, via `extra_body`);
- `thinking: {"type": "enabled", "budget_tokens": N}` or `{"type": "disabled"}`
  (Anthropic's shape);
- `thinking_token_budget: N` (vLLM's own field);
- `reasoning_effort`: `none` / `minimal` / `low` / `medium` / `high` / `xhigh` / `max`,
  mapped to the per-model budgets of the YAML (`frugal.reasoning`);
- nothing: the model's `frugal.reasoning.default_effort` (default `none`).

Enforcement is vLLM's engine-level thinking budget (`thinking_token_budget`): when the
budget is spent the sampler forces the reasoning end token, so the model closes its
`<think>` block and answers. It is not a post-hoc truncation. The model must be served
with a `reasoning_parser` (e.g. `qwen3` for `<think>...</think>` models).

The ask is read once per request (`before`); the budget is resolved per model call
(`shape`), because effort levels map to each model's own budgets and `model="auto"` or
a cascade retry decide the model after the ask is read. "No thinking" (effort `none`,
`thinking.disabled`, budget 0) is always satisfiable: on a model without a reasoning
mode it leaves the request as it is instead of failing.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from serving.config import ModelConfig, ReasoningBudgets
from serving.errors import APIError
from serving.pipeline.context import Endpoint, RequestContext
from serving.pipeline.lever import Lever

#: The ask's source when the request stated nothing about thinking.
DEFAULT_EFFORT = "default_effort"

#: vLLM's `reasoning_effort` values, onto the three configured budgets.
EFFORT_LEVELS = {
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
    "max": "high",
}


class ThinkingPlan(BaseModel):
    """What the engine is told: think or not, and for at most how many tokens."""

    budget: int
    source: str

    @property
    def enabled(self) -> bool:
        return self.budget > 0


class ThinkingAsk(BaseModel):
    """What the request asked for, before the model is known: an exact budget, an
    effort level, or nothing (then the model's `default_effort` applies)."""

    source: str
    budget: int | None = None
    effort: str | None = None

    def plan(self, model: ModelConfig) -> ThinkingPlan | None:
        """The budget on `model`; None when the request asked nothing and the model has
        no reasoning mode (or the client set `enable_thinking` itself)."""
        if self.budget is not None:
            return ThinkingPlan(budget=self.budget, source=self.source)
        if self.effort is not None:
            return ThinkingPlan(
                budget=_from_effort(self.effort, model.frugal.reasoning), source=self.source
            )
        if not supports_reasoning(model):
            return None
        budgets = model.frugal.reasoning
        return ThinkingPlan(budget=_from_effort(budgets.default_effort, budgets),
                            source=DEFAULT_EFFORT)


def _non_negative_int(value: Any, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise APIError(400, f"{param} must be a non-negative integer, got {value!r}", param=param)
    return value


def _from_effort(effort: str, budgets: ReasoningBudgets) -> int:
    if effort == "none":
        return 0
    level = EFFORT_LEVELS.get(effort)
    if level is None:  # vLLM's schema rejects these first; kept for direct callers
        raise APIError(400, f"unknown reasoning_effort {effort!r}", param="reasoning_effort")
    return getattr(budgets, level)


def read_ask(extra: dict[str, Any], request: Any) -> ThinkingAsk | None:
    """The reasoning ask of a request (validated), or None when it leaves it to the
    client's own `chat_template_kwargs.enable_thinking`."""
    if "reasoning" in extra:
        reasoning = extra["reasoning"]
        if not isinstance(reasoning, dict):
            raise APIError(400, "reasoning must be an object", param="reasoning")
        if "max_tokens" in reasoning:
            budget = _non_negative_int(reasoning["max_tokens"], "reasoning.max_tokens")
            return ThinkingAsk(budget=budget, source="reasoning.max_tokens")
        if "effort" in reasoning:
            effort = reasoning["effort"]
            if not isinstance(effort, str):
                raise APIError(400, "reasoning.effort must be a string", param="reasoning.effort")
            _from_effort(effort, ReasoningBudgets())  # validate the level now
            return ThinkingAsk(effort=effort, source="reasoning.effort")
    if "thinking" in extra:
        thinking = extra["thinking"]
        if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled"):
            raise APIError(
                400, "thinking must be {type: enabled|disabled, budget_tokens: N}", param="thinking"
            )
        if thinking["type"] == "disabled":
            return ThinkingAsk(budget=0, source="thinking.disabled")
        budget = _non_negative_int(thinking.get("budget_tokens"), "thinking.budget_tokens")
        return ThinkingAsk(budget=budget, source="thinking.budget_tokens")
    if getattr(request, "thinking_token_budget", None) is not None:
        return ThinkingAsk(budget=request.thinking_token_budget, source="thinking_token_budget")
    effort = getattr(request, "reasoning_effort", None)
    if effort is not None:
        return ThinkingAsk(effort=effort, source="reasoning_effort")
    kwargs = getattr(request, "chat_template_kwargs", None) or {}
    if "enable_thinking" in kwargs:
        return None
    return ThinkingAsk(source=DEFAULT_EFFORT)


def supports_reasoning(model: ModelConfig) -> bool:
    return bool(model.engine_kwargs.get("reasoning_parser"))


def apply_thinking(request: Any, plan: ThinkingPlan, model: ModelConfig) -> None:
    """Set vLLM's budget and the chat template's thinking switch on the request."""
    if not supports_reasoning(model):
        if not plan.enabled:  # "no thinking" needs no reasoning mode
            request.reasoning_effort = None
            return
        raise APIError(
            400,
            f"model {model.model_id!r} has no reasoning mode (serve it with "
            "engine_kwargs.reasoning_parser to enable reasoning budgets)",
            param="reasoning_effort",
        )
    request.thinking_token_budget = plan.budget if plan.enabled else None
    kwargs = dict(request.chat_template_kwargs or {})
    kwargs["enable_thinking"] = plan.enabled
    request.chat_template_kwargs = kwargs


def add_reasoning_content(data: dict[str, Any]) -> None:
    """Mirror vLLM's `reasoning` field as `reasoning_content`, the name most reasoning
    clients (and earlier vLLM releases) read."""
    for choice in data.get("choices") or []:
        for key in ("message", "delta"):
            part = choice.get(key)
            if isinstance(part, dict) and "reasoning" in part:
                part["reasoning_content"] = part["reasoning"]


class ReasoningLever(Lever):
    """Chat requests: read the ask, apply each model's budget, mirror `reasoning`."""

    name = "reasoning"
    extra_fields = frozenset({"reasoning", "thinking"})

    async def before(self, ctx: RequestContext) -> None:
        if ctx.endpoint is Endpoint.CHAT:
            ctx.thinking = read_ask(ctx.extras, ctx.request)

    def shape(self, ctx: RequestContext, request: Any, model: ModelConfig) -> Any:
        ask = ctx.thinking
        if ask is not None and ask.source == DEFAULT_EFFORT and ctx.route_effort is not None:
            # `auto` chose a cell with thinking for a request that stated no effort.
            ask = ThinkingAsk(effort=ctx.route_effort, source="route")
        plan = ask.plan(model) if ask is not None else None
        ctx.reasoning = plan is not None and plan.enabled
        if plan is not None:
            apply_thinking(request, plan, model)
        return request

    async def after(self, ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
        if ctx.reasoning:
            add_reasoning_content(body)
        return body

    def on_chunk(self, ctx: RequestContext, chunk: str) -> str | None:
        if not ctx.reasoning or '"reasoning"' not in chunk:
            return chunk
        data = json.loads(chunk.removeprefix("data: "))
        add_reasoning_content(data)
        return f"data: {json.dumps(data)}\n\n"
