"""`frugal bench promote`: a new checkpoint or quantization earns traffic by measurement.

The candidate is a model the YAML already serves but the router's scorecard does not
know yet, so `auto` never sends it a request (a shadow deployment). Promotion scores it
on the scorecard's own items (the same suite the other models were scored on, so the
numbers compare) and promotes it when it is cheaper per item than a model it matches in
quality: its accuracy at least that model's minus `band`. Promoting means:

- the scorecard gains the candidate's cards (and the predictor is retrained on it), so
  `auto` sends it every request it is now the cheapest model good enough for; the
  running gateways pick the files up without a restart (`serving.router.reload`);
- the YAML change: the candidate takes over the replaced model's replica settings
  (`deployment_config`), since it now takes that model's traffic, written beside the
  YAML for the operator to apply (the running server needs no restart for the switch).

Nothing is written when the candidate is not promoted.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from serving.config import Price
from serving.router.scorecard import ModelCard, Scorecard, base_model, cell_effort


class Standing(BaseModel):
    """One model's line in the comparison (cells without thinking only)."""

    model: str
    accuracy: float
    usd_per_item: float


class Verdict(BaseModel):
    """What `frugal bench promote` decided, and on what numbers."""

    candidate: str
    promoted: bool
    replaces: str | None = None
    reason: str
    band: float
    standings: list[Standing]


def usd_per_item(card: ModelCard, price: Price) -> float:
    """The average $ of one suite item on this card (its thinking tokens included)."""
    score = card.score
    return (score.prompt_tokens * price.input_per_million
            + score.completion_tokens * price.output_per_million) * 1e-6 / max(1, score.items)


def decide(scorecard: Scorecard, candidate: str, card: ModelCard, prices: dict[str, Price],
           band: float) -> Verdict:
    """Promote `candidate` when it is cheaper per item than a model of the scorecard
    whose accuracy it reaches within `band`; it replaces the dearest such model."""

    def standing(model: str, model_card: ModelCard) -> Standing:
        price = prices.get(base_model(model), model_card.price)
        return Standing(model=model, accuracy=model_card.score.accuracy,
                        usd_per_item=usd_per_item(model_card, price))

    mine = standing(candidate, card)
    others = [standing(m, c) for m, c in scorecard.models.items()
              if cell_effort(m) is None and m != candidate]
    beaten = [o for o in others
              if mine.usd_per_item < o.usd_per_item and mine.accuracy >= o.accuracy - band]
    standings = sorted([mine, *others], key=lambda s: s.usd_per_item)
    if not beaten:
        return Verdict(candidate=candidate, promoted=False, band=band, standings=standings,
                       reason=f"no model it matches within {band:.3f} accuracy costs more "
                              "per item")
    replaced = max(beaten, key=lambda o: o.usd_per_item)
    return Verdict(
        candidate=candidate, promoted=True, replaces=replaced.model, band=band,
        standings=standings,
        reason=(f"accuracy {mine.accuracy:.3f} vs {replaced.model}'s {replaced.accuracy:.3f} "
                f"(band {band:.3f}) at {mine.usd_per_item / replaced.usd_per_item:.2f}x its "
                "$ per item"),
    )


def yaml_change(raw: dict[str, Any], candidate: str, replaced: str) -> dict[str, Any]:
    """The deployments YAML (as parsed) with `candidate` given `replaced`'s replica
    settings and `replaced` the candidate's: the candidate now takes its traffic."""
    changed = copy.deepcopy(raw)
    entries = {m["model_loading_config"]["model_id"]: m for m in changed.get("models", [])}
    new, old = entries[candidate], entries[replaced]
    new["deployment_config"], old["deployment_config"] = (
        copy.deepcopy(old.get("deployment_config", {})),
        copy.deepcopy(new.get("deployment_config", {})),
    )
    return changed


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` in one rename, so a reader (a reloading gateway) never sees half."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
