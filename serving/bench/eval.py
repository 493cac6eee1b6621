"""The scorecard (`frugal bench eval`): quality, latency, throughput and price per model,
measured through the running endpoint the way a client sees it.

Contract:
- `serving.evaluation.scoring.evaluate_model` scores one model (quality, latency,
  throughput, per-item results; see that module).
- `build_scorecard` adds prices (`serving.pricing.price_table` from the node's $/hour and
  the measured throughput, unless the YAML lists a price), the suite's items and hashes.
- `Scorecard.save/load` (`serving.router.scorecard`) is the versioned JSON on disk
  (`SCORECARD_VERSION`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from serving.config import FrugalConfig
from serving.evaluation.items import EvalItem, TaskItem
from serving.pricing import price_table
from serving.router.scorecard import ModelCard, ModelScore, Scorecard, base_model

__all__ = ["build_scorecard", "model_hash", "suite_hash"]


def suite_hash(items: Iterable[TaskItem]) -> str:
    """Hash of the items' messages and answers: two scorecards compare only if equal.
    An item without a checker hashes the same as a task item (a scorecard's own items
    give back its hash)."""
    digest = hashlib.sha256()
    for item in items:
        fields = item.model_dump(exclude={"scratchpad"})
        if fields.get("checker", ...) is None:
            del fields["checker"]
        digest.update(json.dumps(fields, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def model_hash(source: str) -> str:
    """A cheap fingerprint of a checkpoint: small files in full, large files by size and
    their first and last MiB (hashing gigabytes of weights would dominate the run)."""
    path = Path(source)
    digest = hashlib.sha256()
    if not path.is_dir():
        digest.update(source.encode())  # a hub id: its name is all we know here
        return digest.hexdigest()[:16]
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path)}:{size}".encode())
        with file.open("rb") as fh:
            if size <= 2 << 20:
                digest.update(fh.read())
            else:
                digest.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), 2)
                digest.update(fh.read())
    return digest.hexdigest()[:16]


def build_scorecard(
    config: FrugalConfig,
    scores: dict[str, ModelScore],
    items: list[TaskItem],
    *,
    suite: str,
    seed: int | None = None,
    keep: dict[str, ModelCard] | None = None,
) -> Scorecard:
    """Price every scored model and assemble the scorecard, models cheapest first.
    `keep`: cards of models not scored this time, from an earlier scorecard of the same
    suite (`frugal bench eval --models NEW --merge`)."""
    # A cell (MODEL@high) is priced as its model (measured now, else its kept card's
    # price); its thinking tokens make its items dearer.
    measured = {m: s.throughput for m, s in scores.items()
                if s.throughput is not None and m == base_model(m)}
    prices = price_table(config, measured)
    kept_prices = {m: card.price for m, card in (keep or {}).items()}
    cards = {}
    for model, score in scores.items():
        base = base_model(model)
        model_config = config.model(base)
        listed = model_config.frugal.price is not None
        known = listed or base in measured
        price = prices[base] if known else kept_prices.get(base, prices[base])
        source = ("list" if listed else "derived" if known or base in kept_prices
                  else "default")
        cards[model] = ModelCard(
            model_hash=model_hash(model_config.model_loading_config.model_source),
            price=price,
            price_source=source,
            score=score,
        )

    def mean_item_cost(model: str) -> float:
        card = cards[model]
        n = max(1, card.score.items)
        return (
            card.score.prompt_tokens * card.price.input_per_million
            + card.score.completion_tokens * card.price.output_per_million
        ) / n

    cards = {**(keep or {}), **cards}
    ordered = dict(sorted(cards.items(), key=lambda kv: mean_item_cost(kv[0])))
    eval_items = [
        EvalItem.model_validate({**item.model_dump(exclude={"scratchpad"}), "scratchpad": ""})
        for item in items
    ]
    return Scorecard(
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        suite=suite,
        suite_hash=suite_hash(items),
        seed=seed,
        node_usd_per_hour=config.cost.node_usd_per_hour,
        models=ordered,
        items=eval_items,
    )
