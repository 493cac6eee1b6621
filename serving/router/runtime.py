"""`model="auto"` at request time: pick the cheapest model predicted to be good enough,
and escalate an answer that looks wrong.

The gateway's contract (it composes; the policy lives here):
- `Router.load(config)` once at start-up; None when the router is disabled or has no
  scorecard. A missing or stale predictor (trained on another scorecard) is retrained
  from the scorecard in memory, so adding a model and running `frugal bench eval` is all
  it takes for `auto` to use it.
- `router.validate_min_quality(value)` on the request's `extra_body.frugal.min_quality`
  (ValueError -> 400); a key's own target comes from its record (serving.tenants).
- `router.choose(messages, min_quality, effort)` -> `RouteDecision` (pure, well under
  5 ms); `effort` is `ANY_EFFORT` when the request stated none, else its level, or
  None without thinking.
- call `decision.model` at `decision.effort` (with `logprobs=True` when
  `router.cascade`), then `router.escalation(decision, decision.cell, answer_logprobs)`
  -> a cell to retry on (more effort, then a larger model), or None. Bill both
  calls; the response's `model` is the one that answered; the header
  `x-frugal-route` is `decision.header()` (plus the escalation).

Policy: candidates are the scorecard's models that the YAML serves, cheapest first (by
the average cost of a scorecard item at the current prices). Choose the first whose
predicted success meets the target. If none does, the cheapest of those within
`TIE_MARGIN` of the best prediction (paying more for no predicted gain is waste); but when
even the best prediction is below `hopeless_below` (every model is more likely wrong than
right), the cheapest model: paying the largest model's price for an answer that is
probably wrong anyway is the costliest way to fail.

Effort: the scorecard's keys are cells, a model measured without thinking (`zoo-m`) or
at an effort (`zoo-m@high`, from `frugal bench eval --think`), each priced by its own
measured tokens, thinking included. A request that states no effort (`ANY_EFFORT`) is
routed among every cell when `router.choose_effort` is on, so a small model that thinks
can win over a large one that does not; the chosen cell's effort is then applied. A
request that asks for thinking at a level (`reasoning_effort` low/medium/high) is routed
among the cells measured at that level; one that turns thinking off or sets an exact
budget (`None`), or a level with no cells, among the cells without thinking.

Escalation walks the decision's cells: the answering model at more effort first, then
larger models.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from pydantic import BaseModel

from serving.config import FrugalConfig, Price
from serving.router.predictor import Predictor, scorecard_id, train_predictor
from serving.router.scorecard import Scorecard, base_model, cell_effort

logger = logging.getLogger("frugal.router")

TIE_MARGIN = 0.02

#: `choose(effort=ANY_EFFORT)`: the request stated no effort, the router may choose one.
ANY_EFFORT = "any"


class RouteDecision(BaseModel):
    """What `auto` chose and why; `predicted` is P(correct) per candidate (a model, or a
    cell `MODEL@EFFORT` when the request asked for thinking)."""

    model: str  # the served model to call
    reason: str
    predicted: dict[str, float]
    candidates: list[str]  # cheapest first
    min_quality: float = 0.0
    cell: str = ""  # the scorecard key chosen (the model, or MODEL@EFFORT)

    @property
    def effort(self) -> str | None:
        """The reasoning effort the chosen cell runs at (None: without thinking)."""
        return cell_effort(self.cell or self.model)

    def header(self, escalated_to: str | None = None) -> str:
        """The `x-frugal-route` header value (ASCII, one line)."""
        value = f"{self.cell or self.model}; target={self.min_quality:.3f}; {self.reason}"
        if escalated_to is not None:
            value += f"; escalated to {escalated_to} (low confidence)"
        return value


def validate_min_quality(value: object) -> float:
    """A quality target must be a number in (0, 1]; anything else is the client's error."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"frugal.min_quality must be a number in (0, 1], got {value!r}")
    number = float(value)
    if not math.isfinite(number) or not 0.0 < number <= 1.0:
        raise ValueError(f"frugal.min_quality must be in (0, 1], got {value!r}")
    return number


class Router:
    """The `auto` policy over a trained predictor and the current prices."""

    def __init__(
        self,
        predictor: Predictor,
        candidates: list[str],
        *,
        default_min_quality: float = 0.95,
        cascade: bool = True,
        escalate_below: float | None = None,
        prices: dict[str, Price] | None = None,
        hopeless_below: float = 0.5,
        choose_effort: bool = True,
    ) -> None:
        unknown = [m for m in candidates if m not in predictor.models]
        if unknown or not candidates:
            raise ValueError(f"no predictions for candidate models {unknown or candidates}")
        self.predictor = predictor
        self.candidates = list(candidates)
        # Candidates per effort they were measured at (None: without thinking).
        self.by_effort: dict[str | None, list[str]] = {}
        for key in self.candidates:
            self.by_effort.setdefault(cell_effort(key), []).append(key)
        self.default_min_quality = default_min_quality
        self.cascade = cascade
        self.escalate_below = escalate_below
        self.prices = dict(prices or {})
        self.hopeless_below = hopeless_below
        self.choose_effort = choose_effort

    def adopt(self, other: Router) -> None:
        """Become `other` in place (a reload): whoever holds this router sees the new
        policy, and the price table keeps its identity (the accounting shares it)."""
        prices = self.prices
        vars(self).update(vars(other))
        prices.clear()
        prices.update(other.prices)
        self.prices = prices

    def with_prices(self, prices: dict[str, Price], scorecard: Scorecard) -> Router:
        """The same policy at other prices (the cells re-ordered cheapest first)."""
        policy = {name: getattr(self, name) for name in (
            "default_min_quality", "cascade", "escalate_below", "hopeless_below",
            "choose_effort")}
        order = cheapest_first(scorecard, prices, set(self.candidates))
        return Router(self.predictor, order, prices=prices, **policy)

    # --- building -------------------------------------------------------------------

    @classmethod
    def load(cls, config: FrugalConfig) -> Router | None:
        """The router the YAML describes, or None when `auto` is off or untrained."""
        from serving.pricing import price_table

        settings = config.router
        if not settings.enabled or settings.scorecard is None:
            return None
        if not Path(settings.scorecard).exists():
            logger.warning("router scorecard %s not found: model='auto' is off", settings.scorecard)
            return None
        scorecard = Scorecard.load(settings.scorecard)
        predictor = None
        if settings.predictor is not None and Path(settings.predictor).exists():
            predictor = Predictor.load(settings.predictor)
            if predictor.meta.scorecard != scorecard_id(scorecard):
                logger.warning(
                    "predictor %s is from another scorecard: retraining", settings.predictor
                )
                predictor = None
        if predictor is None:
            started = time.perf_counter()
            predictor = train_predictor(scorecard)
            logger.info("trained the router predictor in %.1fs", time.perf_counter() - started)
        # A cell with thinking only where its model is served with a reasoning mode.
        thinks = {m.model_id: bool(m.engine_kwargs.get("reasoning_parser"))
                  for m in config.models}
        served_keys = {
            k for k in predictor.models
            if base_model(k) in thinks and (cell_effort(k) is None or thinks[base_model(k)])
        }
        measured = {
            m: card.score.throughput
            for m, card in scorecard.models.items()
            if card.score.throughput is not None
        }
        prices = price_table(config, measured)
        candidates = cheapest_first(scorecard, prices, served_keys)
        if not candidates:
            logger.warning("no served model is in the router scorecard: model='auto' is off")
            return None
        return cls(
            predictor,
            candidates,
            default_min_quality=settings.min_quality,
            cascade=settings.cascade,
            escalate_below=settings.escalate_below,
            prices=prices,
            hopeless_below=settings.hopeless_below,
            choose_effort=settings.choose_effort,
        )

    # --- the hot path ---------------------------------------------------------------

    validate_min_quality = staticmethod(validate_min_quality)

    def candidates_for(self, effort: str | None) -> list[str]:
        """The cells a request at `effort` is routed among, cheapest first: every cell
        for `ANY_EFFORT` (with `choose_effort`); the cells measured at a stated level;
        without such cells, or without thinking, the cells without thinking."""
        if effort == ANY_EFFORT:
            if self.choose_effort:
                return self.candidates
            effort = None
        if effort is not None and effort in self.by_effort:
            return self.by_effort[effort]
        return self.by_effort.get(None) or self.candidates

    def choose(
        self, messages: list[dict[str, str]], min_quality: float | None,
        effort: str | None = None,
    ) -> RouteDecision:
        """`effort`: `ANY_EFFORT` when the request stated none, else the level it asked
        for (low/medium/high) or None (no thinking, or an exact budget): the cells it
        may go to (`candidates_for`)."""
        target = self.default_min_quality if min_quality is None else min_quality
        candidates = self.candidates_for(effort)
        all_predicted = self.predictor.predict(messages)
        predicted = {m: round(all_predicted[m], 4) for m in candidates}
        for model in candidates:
            if predicted[model] >= target:
                reason = f"cheapest with predicted {predicted[model]:.3f} >= {target:.3f}"
                return self._decision(model, reason, predicted, target)
        best = max(predicted.values())
        if best < self.hopeless_below:
            model = candidates[0]
            reason = (
                f"none predicted >= {target:.3f}; best predicted {best:.3f} < "
                f"{self.hopeless_below:.2f}: cheapest"
            )
            return self._decision(model, reason, predicted, target)
        model = next(m for m in candidates if predicted[m] >= best - TIE_MARGIN)
        reason = f"none predicted >= {target:.3f}; best predicted {predicted[model]:.3f}"
        return self._decision(model, reason, predicted, target)

    def _decision(
        self, cell: str, reason: str, predicted: dict[str, float], target: float
    ) -> RouteDecision:
        return RouteDecision(
            model=base_model(cell),
            cell=cell,
            reason=reason,
            predicted=predicted,
            candidates=list(predicted),
            min_quality=target,
        )

    def escalation(
        self,
        decision: RouteDecision,
        answered: str,
        logprobs: list[float] | None,
        *,
        checked: bool | None = None,
    ) -> str | None:
        """The cell to retry on when this answer looks wrong, else None.

        `answered` is the cell that answered (`decision.cell`, or an earlier
        escalation's). `checked` is the request's own checker verdict when it carries
        one (it overrides the logprobs). Otherwise the answer's confidence, P(correct |
        its logprobs), is compared with `escalate_below` (default: the request's quality
        target). The retry goes along the decision's cells (`escalation_order`: the same
        model at more effort first, then larger models) to the first predicted to meet
        the target, else the one with the best prediction.
        """
        keys = decision.candidates
        if not self.cascade or answered not in keys:
            return None
        larger = escalation_order(keys, answered)
        if not larger:
            return None
        if checked is None:
            if logprobs is None:
                return None
            confidence = self.predictor.confidence(answered, logprobs)
            threshold = self.escalate_below or decision.min_quality
            if confidence is None or confidence >= threshold:
                return None
        elif checked:
            return None
        predicted = decision.predicted
        for key in larger:
            if predicted.get(key, 0.0) >= decision.min_quality:
                return key
        best = max(predicted.get(m, 0.0) for m in larger)
        return next(m for m in larger if predicted.get(m, 0.0) >= best - TIE_MARGIN)


#: Efforts from least to most thinking, for the escalation order.
_EFFORT_RANK = {None: 0, "low": 1, "medium": 2, "high": 3}


def escalation_order(keys: list[str], answered: str) -> list[str]:
    """Where an answer by `answered` may be retried, in order: the same model's cells at
    more effort (least first), then every dearer cell of another model (cheapest
    first). `keys` is cheapest first."""
    def rank(key: str) -> int:
        return _EFFORT_RANK.get(cell_effort(key), 0)

    model = base_model(answered)
    own = [k for k in keys if base_model(k) == model]
    more_effort = sorted((k for k in own if rank(k) > rank(answered)), key=rank)
    return more_effort + [k for k in keys[keys.index(answered) + 1 :] if k not in own]


def cheapest_first(scorecard: Scorecard, prices: dict[str, Price], models: set[str]) -> list[str]:
    """Order `models` by the average cost of one scorecard item at `prices`."""

    def cost(model: str) -> float:
        score = scorecard.models[model].score
        price = prices.get(base_model(model), scorecard.models[model].price)
        return (
            score.prompt_tokens * price.input_per_million
            + score.completion_tokens * price.output_per_million
        ) / max(1, score.items)

    return sorted(models, key=cost)
