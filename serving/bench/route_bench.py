"""`frugal bench route`: routing policies side by side on one held-out workload.

Every candidate cell, a model without thinking or a model at an effort (`MODEL@high`),
answers every item once (through the endpoint, greedy), then each policy is applied to
those real per-item results:

- `auto`: `Router.choose` per item among every cell (the request states no effort, so
  the router chooses model and effort) and that cell's real answer; when the cascade
  fires (`Router.escalation` on the answer's logprobs: more effort first, then a larger
  model) the retry's real answer is used and both calls are billed;
- `auto-no-cascade`: `auto` without escalation, to show what the cascade adds;
- `auto-models`: `auto` among the cells without thinking only (`router.choose_effort:
  false`, what routing on models alone gives), with its cascade;
- `largest` / `largest@high` / `smallest`: always the dearest model without thinking,
  the dearest model at high effort, the cheapest model without thinking;
- `random`: a uniformly random cell per item (seeded);
- `oracle-models` / `oracle`: the cheapest cell without thinking / of all cells that
  answered the item correctly, known after the fact (the cheapest when none did): the
  floors a router on models alone / on models and effort cannot beat.

Greedy decoding makes a cell's answer to an item the same whether it was asked directly
or by `auto`, so applying policies offline is exact for these results. `--via-http` sends
`model="auto"` through the gateway too, and reports how often its route matches the
offline decision.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from serving.bench.bill_prices import weight_bytes
from serving.evaluation.items import TaskItem
from serving.router.runtime import ANY_EFFORT, Router
from serving.router.scorecard import ItemResult, Scorecard, base_model, cell_effort, cell_id


class PolicyResult(BaseModel):
    cost_usd: float
    accuracy: float
    share: dict[str, float]
    escalations: int = 0
    requests: int


class Outcome(BaseModel):
    """One item under one policy: who answered, what it cost, whether it was right."""

    answered_by: str
    cost_usd: float
    correct: bool
    escalated: bool = False


def item_cost(prices: dict[str, Any], cell: str, result: ItemResult) -> float:
    """One answer's $ at its model's price (a cell's thinking tokens are in `result`)."""
    price = prices[base_model(cell)]
    return (
        result.prompt_tokens * price.input_per_million
        + result.completion_tokens * price.output_per_million
    ) * 1e-6


def _single(model: str, prices: dict[str, Any], result: ItemResult) -> Outcome:
    return Outcome(
        answered_by=model, cost_usd=item_cost(prices, model, result), correct=result.correct
    )


def auto_outcome(
    router: Router,
    item: TaskItem,
    results: dict[str, dict[str, ItemResult]],
    prices: dict[str, Any],
    min_quality: float | None,
    cascade: bool = True,
    effort: str | None = ANY_EFFORT,
) -> Outcome:
    """What `model="auto"` does with this item (at most one escalation, as the gateway);
    `effort` as the request states it (default: none stated, the router chooses)."""
    decision = router.choose(item.messages, min_quality, effort)
    first = results[decision.cell][item.id]
    outcome = _single(decision.cell, prices, first)
    if not cascade:
        return outcome
    retry = router.escalation(decision, decision.cell, first.logprobs)
    if retry is None:
        return outcome
    second = results[retry][item.id]
    return Outcome(
        answered_by=retry,
        cost_usd=outcome.cost_usd + item_cost(prices, retry, second),
        correct=second.correct,
        escalated=True,
    )


def oracle_outcome(
    candidates: list[str], item: TaskItem, results: dict[str, dict[str, ItemResult]],
    prices: dict[str, Any],
) -> Outcome:
    outcomes = [_single(m, prices, results[m][item.id]) for m in candidates]
    right = [o for o in outcomes if o.correct]
    if right:
        return min(right, key=lambda o: o.cost_usd)
    return min(outcomes, key=lambda o: o.cost_usd)


def summarise(outcomes: list[Outcome], candidates: list[str]) -> PolicyResult:
    counts = Counter(o.answered_by for o in outcomes)
    n = max(1, len(outcomes))
    return PolicyResult(
        cost_usd=sum(o.cost_usd for o in outcomes),
        accuracy=sum(o.correct for o in outcomes) / n,
        share={m: counts.get(m, 0) / n for m in candidates},
        escalations=sum(o.escalated for o in outcomes),
        requests=len(outcomes),
    )


def fixed_cells(candidates: list[str]) -> dict[str, str]:
    """The always-one-cell policies: `largest` and `smallest` among the cells without
    thinking (cheapest first, so last and first), `largest@high` the dearest model's
    high-effort cell (`largest` when it has none)."""
    plain = [c for c in candidates if cell_effort(c) is None] or candidates
    largest = plain[-1]
    high = cell_id(base_model(largest), "high")
    return {"largest": largest, "largest@high": high if high in candidates else largest,
            "smallest": plain[0]}


def apply_policies(
    router: Router,
    items: list[TaskItem],
    results: dict[str, dict[str, ItemResult]],
    prices: dict[str, Any],
    *,
    min_quality: float | None = None,
    seed: int = 0,
) -> dict[str, PolicyResult]:
    """Every policy over the same per-item results of every candidate cell."""
    candidates = router.candidates
    plain = [c for c in candidates if cell_effort(c) is None] or candidates
    fixed = fixed_cells(candidates)
    rng = random.Random(seed)
    per_policy: dict[str, list[Outcome]] = {
        "auto": [], "auto-no-cascade": [], "auto-models": [], "largest": [],
        "largest@high": [], "smallest": [], "random": [], "oracle-models": [], "oracle": [],
    }
    for item in items:
        per_policy["auto"].append(auto_outcome(router, item, results, prices, min_quality))
        per_policy["auto-no-cascade"].append(
            auto_outcome(router, item, results, prices, min_quality, cascade=False)
        )
        per_policy["auto-models"].append(
            auto_outcome(router, item, results, prices, min_quality, effort=None)
        )
        for name, cell in fixed.items():
            per_policy[name].append(_single(cell, prices, results[cell][item.id]))
        pick = rng.choice(candidates)
        per_policy["random"].append(_single(pick, prices, results[pick][item.id]))
        per_policy["oracle-models"].append(oracle_outcome(plain, item, results, prices))
        per_policy["oracle"].append(oracle_outcome(candidates, item, results, prices))
    return {name: summarise(outs, candidates) for name, outs in per_policy.items()}


def cell_points(
    candidates: list[str], items: list[TaskItem], results: dict[str, dict[str, ItemResult]],
    prices: dict[str, Any],
) -> dict[str, PolicyResult]:
    """Each cell alone on the whole workload: the points of the Pareto plot."""
    return {
        cell: summarise([_single(cell, prices, results[cell][i.id]) for i in items], [cell])
        for cell in candidates
    }


class RouteResults(BaseModel):
    """Every candidate's real answers to one workload, kept next to the report.

    Why: the policies are applied offline to these, so a policy or price change is
    re-measured in seconds on exactly the same answers (`--reuse-results`) instead of
    asking every model every item again.
    """

    seed: int
    per_cell: int
    models: dict[str, list[ItemResult]]

    @classmethod
    def load_matching(
        cls, path: Path, seed: int, per_cell: int, models: list[str]
    ) -> RouteResults | None:
        """The answers saved at `path`, if they are this workload's; else None."""
        if not path.exists():
            return None
        saved = cls.model_validate_json(path.read_text())
        return saved if saved.matches(seed, per_cell, models) else None

    def matches(self, seed: int, per_cell: int, models: list[str]) -> bool:
        return self.seed == seed and self.per_cell == per_cell and set(models) <= set(self.models)

    def result_maps(self) -> dict[str, dict[str, ItemResult]]:
        return {m: {r.id: r for r in rows} for m, rows in self.models.items()}


class RouteReport(BaseModel):
    """What `frugal bench route --out` writes."""

    seed: int
    items: int
    min_quality: float
    scorecard: str
    candidates: list[str]
    prices: dict[str, dict[str, float]]
    measured: str
    policies: dict[str, PolicyResult]
    #: Each cell alone on the workload (the Pareto plot's points).
    cells: dict[str, PolicyResult] = {}
    ratios: dict[str, float]
    targets_met: dict[str, bool]
    #: `--via-http`: the share of items whose gateway route named the offline cell.
    http_route_match: float | None = None


def ratios(policies: dict[str, PolicyResult]) -> tuple[dict[str, float], dict[str, bool]]:
    """The targets of joint routing: `auto` costs less than the models-only oracle, at
    >= 0.97x the accuracy of always-largest at high effort, and within 1.2x of the joint
    oracle's cost."""
    auto = policies["auto"]

    def over(value: float, other: float) -> float:
        return value / other if other else 0.0

    values = {
        "auto_cost_over_oracle_models": over(auto.cost_usd, policies["oracle-models"].cost_usd),
        "auto_accuracy_over_largest_high": over(auto.accuracy,
                                                policies["largest@high"].accuracy),
        "auto_cost_over_oracle": over(auto.cost_usd, policies["oracle"].cost_usd),
        "auto_cost_over_largest_high": over(auto.cost_usd, policies["largest@high"].cost_usd),
        "auto_cost_over_auto_models": over(auto.cost_usd, policies["auto-models"].cost_usd),
    }
    met = {
        "cost_lt_oracle_models": values["auto_cost_over_oracle_models"] < 1.0,
        "accuracy_ge_0.97x_largest_high": values["auto_accuracy_over_largest_high"] >= 0.97,
        "cost_le_1.2x_oracle": values["auto_cost_over_oracle"] <= 1.2,
    }
    return values, met


def markdown_table(policies: dict[str, PolicyResult]) -> str:
    models = list(next(iter(policies.values())).share)
    head = ["policy", "cost $", "accuracy", *[f"share {m}" for m in models], "escalations"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in policies.items():
        cells = [name, f"{row.cost_usd:.3e}", f"{row.accuracy:.3f}"]
        cells += [f"{row.share[m]:.2f}" for m in models]
        cells.append(str(row.escalations))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cells_table(cells: dict[str, PolicyResult]) -> str:
    """Each cell alone: cost and accuracy, and whether another cell beats it on both."""
    lines = ["| cell | cost $ | accuracy | on the Pareto front |", "|---|---|---|---|"]
    for name, row in cells.items():
        dominated = any(
            o.cost_usd <= row.cost_usd and o.accuracy >= row.accuracy
            and (o.cost_usd, o.accuracy) != (row.cost_usd, row.accuracy)
            for o in cells.values()
        )
        lines.append(f"| {name} | {row.cost_usd:.3e} | {row.accuracy:.3f} | "
                     f"{'no' if dominated else 'yes'} |")
    return "\n".join(lines)


def check_held_out(scorecard: Scorecard, seed: int) -> None:
    """The benchmark seed must not be the one the predictor was trained on."""
    if scorecard.seed is not None and scorecard.seed == seed:
        raise ValueError(
            f"seed {seed} is the router's training seed (scorecard {scorecard.suite}); "
            "pick another for a held-out benchmark"
        )


def params_priced(router: Any, config: Any, scorecard: Any) -> Any:
    """The same router with prices proportional to each model's weight bytes (parameters
    times bits: a 4-bit copy costs about a quarter), the bill's `--price-by params`.

    Why: on a compute-bound node (a GPU at batch, or any real model size) decoding is
    bound by reading the weights, so a token's price rises with their size. The demo zoo
    on 2 CPU cores is overhead-bound instead (its smallest and middle models measure the
    same tokens/s), which hides the spread the router exists to exploit. Anchored on the
    largest model's own price, so always-largest costs the same under both. A cell is
    priced as its model; its thinking tokens make it dearer per item.
    """
    from serving.config import Price

    sources = {m.model_id: m.model_loading_config.model_source for m in config.models}
    sizes = {m: weight_bytes(Path(sources[m])) for m in {base_model(c) for c in router.candidates}}
    largest = max(sizes, key=sizes.get)
    anchor = router.prices[largest]
    prices = {
        m: Price(
            input_per_million=anchor.input_per_million * size / sizes[largest],
            output_per_million=anchor.output_per_million * size / sizes[largest],
        )
        for m, size in sizes.items()
    }
    return router.with_prices(prices, scorecard)
