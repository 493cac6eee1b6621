"""Prometheus metrics of `model="auto"`: decisions, escalations, predicted vs observed.

The gateway calls `record_decision` after `Router.choose`, `record_escalation` when the
cascade retries, and `record_outcome` when it learns how good the answer was (a checker
verdict, or the cascade's answer confidence). Mean predicted vs mean observed success per
model is `frugal_router_predicted_success_total / frugal_router_outcomes_total` against
`frugal_router_observed_success_total / frugal_router_outcomes_total`: when they drift
apart the predictor is stale and `frugal bench eval` is due.
"""

from __future__ import annotations

from prometheus_client import Counter

from serving.router.runtime import RouteDecision

DECISIONS = Counter(
    "frugal_router_decisions",
    "model='auto' decisions, by chosen model and whether any model met the target.",
    ["model", "met_target"],
)
ESCALATIONS = Counter(
    "frugal_router_escalations",
    "Cascade retries on a larger model after a low-confidence answer.",
    ["from_model", "to_model"],
)
OUTCOMES = Counter(
    "frugal_router_outcomes", "Routed answers whose quality was observed.", ["model", "source"]
)
PREDICTED = Counter(
    "frugal_router_predicted_success",
    "Sum of the predicted success probability of observed routed answers.",
    ["model", "source"],
)
OBSERVED = Counter(
    "frugal_router_observed_success",
    "Sum of the observed success (checker: 0/1; confidence: P(correct | logprobs)).",
    ["model", "source"],
)


def record_decision(decision: RouteDecision) -> None:
    met = decision.predicted.get(decision.model, 0.0) >= decision.min_quality
    DECISIONS.labels(decision.model, str(met).lower()).inc()


def record_escalation(from_model: str, to_model: str) -> None:
    ESCALATIONS.labels(from_model, to_model).inc()


def record_outcome(decision: RouteDecision, model: str, observed: float, source: str) -> None:
    """`source` is `checker` (observed is 0 or 1) or `confidence` (a probability)."""
    OUTCOMES.labels(model, source).inc()
    PREDICTED.labels(model, source).inc(decision.predicted.get(model, 0.0))
    OBSERVED.labels(model, source).inc(observed)
