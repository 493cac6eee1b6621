"""The `router:` section of the deployments YAML."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RouterConfig(BaseModel):
    """Settings of `model="auto"` (lever 1)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Accept model='auto'.")
    min_quality: float = Field(
        0.95, gt=0, le=1, description="Default predicted success a chosen model must reach."
    )
    hopeless_below: float = Field(
        0.5,
        ge=0,
        le=1,
        description="When no model meets the target and even the best prediction is below "
        "this, send the request to the cheapest model (0: always the best-predicted one).",
    )
    scorecard: str | None = Field(
        None, description="Scorecard JSON from `frugal bench eval` (relative to the YAML)."
    )
    predictor: str | None = Field(
        None, description="Trained predictor from `frugal router train` (relative to the YAML)."
    )
    choose_effort: bool = Field(
        True,
        description="For a request that states no reasoning effort, choose the cell (model "
        "and effort) among all the scorecard's cells, MODEL@high ones included, and apply "
        "its effort; off: such requests go to a model as measured without thinking.",
    )
    reload_check_s: float = Field(
        5.0,
        ge=0,
        description="How often (at most, on model='auto' requests) each gateway replica "
        "checks whether the scorecard or predictor file changed, and reloads the router "
        "without restarting anything (`frugal bench promote`); 0: never.",
    )
    cascade: bool = Field(True, description="Escalate low-confidence answers to a larger model.")
    escalate_below: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Escalate when the answer's confidence (P(correct | its token logprobs)) "
        "is below this; default: the request's quality target.",
    )
