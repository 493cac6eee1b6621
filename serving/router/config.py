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
    scorecard: str | None = Field(
        None, description="Scorecard JSON from `frugal bench eval` (relative to the YAML)."
    )
    predictor: str | None = Field(
        None, description="Trained predictor from `frugal router train` (relative to the YAML)."
    )
    cascade: bool = Field(True, description="Escalate low-confidence answers to a larger model.")
