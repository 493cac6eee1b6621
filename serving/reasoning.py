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
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from serving.config import ModelConfig, ReasoningBudgets
from serving.errors import APIError

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


def pop_reasoning_fields(body: dict[str, Any]) -> dict[str, Any]:
    """Remove frugal's extra reasoning shapes from a request body before validation."""
    return {key: body.pop(key) for key in ("reasoning", "thinking") if key in body}


def plan_thinking(
    extra: dict[str, Any], request: Any, model: ModelConfig
) -> ThinkingPlan | None:
    """The thinking budget this request asks for, or None when it asks for nothing."""
    if "reasoning" in extra:
        reasoning = extra["reasoning"]
        if not isinstance(reasoning, dict):
            raise APIError(400, "reasoning must be an object", param="reasoning")
        if "max_tokens" in reasoning:
            budget = _non_negative_int(reasoning["max_tokens"], "reasoning.max_tokens")
            return ThinkingPlan(budget=budget, source="reasoning.max_tokens")
        if "effort" in reasoning:
            effort = reasoning["effort"]
            if not isinstance(effort, str):
                raise APIError(400, "reasoning.effort must be a string", param="reasoning.effort")
            return ThinkingPlan(
                budget=_from_effort(effort, model.frugal.reasoning), source="reasoning.effort"
            )
    if "thinking" in extra:
        thinking = extra["thinking"]
        if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled"):
            raise APIError(
                400, "thinking must be {type: enabled|disabled, budget_tokens: N}", param="thinking"
            )
        if thinking["type"] == "disabled":
            return ThinkingPlan(budget=0, source="thinking.disabled")
        budget = _non_negative_int(thinking.get("budget_tokens"), "thinking.budget_tokens")
        return ThinkingPlan(budget=budget, source="thinking.budget_tokens")
    if getattr(request, "thinking_token_budget", None) is not None:
        return ThinkingPlan(budget=request.thinking_token_budget, source="thinking_token_budget")
    effort = getattr(request, "reasoning_effort", None)
    if effort is not None:
        return ThinkingPlan(
            budget=_from_effort(effort, model.frugal.reasoning), source="reasoning_effort"
        )
    kwargs = getattr(request, "chat_template_kwargs", None) or {}
    if supports_reasoning(model) and "enable_thinking" not in kwargs:
        budgets = model.frugal.reasoning
        return ThinkingPlan(
            budget=_from_effort(budgets.default_effort, budgets), source="default_effort"
        )
    return None


def supports_reasoning(model: ModelConfig) -> bool:
    return bool(model.engine_kwargs.get("reasoning_parser"))


def apply_thinking(request: Any, plan: ThinkingPlan, model: ModelConfig) -> None:
    """Set vLLM's budget and the chat template's thinking switch on the request."""
    if not supports_reasoning(model):
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
