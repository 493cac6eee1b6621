"""`frugal bench promote`'s decision and YAML change, and the router reload a running
gateway does when its scorecard changes on disk (no engine: synthetic scorecards)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from test_router_unit import PRICES, _yaml, synthetic_scorecard

from serving.bench.promote import decide, usd_per_item, yaml_change
from serving.config import Price, load_config
from serving.router.predictor import train_predictor
from serving.router.reload import RouterReloader
from serving.router.runtime import Router


def _card(scorecard, model: str, accuracy: float):
    card = scorecard.models[model]
    return card.model_copy(update={"score": card.score.model_copy(update={
        "model": "new", "accuracy": accuracy})})


def test_a_cheaper_candidate_within_the_band_replaces_the_dearest_model_it_matches() -> None:
    scorecard = synthetic_scorecard(n_per_cell=4)
    big = scorecard.models["big"].score.accuracy
    prices = {**PRICES, "new": Price(input_per_million=0.1, output_per_million=0.4)}
    verdict = decide(scorecard, "new", _card(scorecard, "big", big - 0.005), prices, band=0.01)
    assert verdict.promoted and verdict.replaces == "big"
    assert [s.model for s in verdict.standings] == ["tiny", "mid", "new", "big"]
    assert decide(scorecard, "new", _card(scorecard, "big", big - 0.05), prices,
                  band=0.01).replaces != "big"  # outside the band of big


def test_a_candidate_that_is_dearer_or_worse_than_every_model_is_not_promoted() -> None:
    scorecard = synthetic_scorecard(n_per_cell=4)
    dear = {**PRICES, "new": Price(input_per_million=100, output_per_million=100)}
    verdict = decide(scorecard, "new", _card(scorecard, "big", 1.0), dear, band=0.01)
    assert not verdict.promoted and verdict.replaces is None
    cheap = {**PRICES, "new": Price(input_per_million=0.001, output_per_million=0.001)}
    worse = decide(scorecard, "new", _card(scorecard, "tiny", 0.0), cheap, band=0.01)
    assert not worse.promoted


def test_usd_per_item_counts_every_token_at_the_price() -> None:
    scorecard = synthetic_scorecard(n_per_cell=4)
    card = scorecard.models["mid"]
    price = Price(input_per_million=2, output_per_million=4)
    expected = (card.score.prompt_tokens * 2 + card.score.completion_tokens * 4) * 1e-6
    assert usd_per_item(card, price) == pytest.approx(expected / card.score.items)


def test_the_yaml_change_hands_the_replaced_models_replicas_to_the_candidate() -> None:
    raw = {"models": [
        {"model_loading_config": {"model_id": "big"},
         "deployment_config": {"autoscaling_config": {"min_replicas": 2, "max_replicas": 8}}},
        {"model_loading_config": {"model_id": "new"}, "deployment_config": {"num_replicas": 1}},
    ]}
    changed = yaml_change(raw, "new", "big")
    by_id = {m["model_loading_config"]["model_id"]: m for m in changed["models"]}
    assert by_id["new"]["deployment_config"] == raw["models"][0]["deployment_config"]
    assert by_id["big"]["deployment_config"] == {"num_replicas": 1}
    assert raw["models"][1]["deployment_config"] == {"num_replicas": 1}  # input untouched


def test_a_running_router_follows_its_scorecard_on_disk(tmp_path: Path) -> None:
    """The reloader swaps the router in place when the scorecard file changes: the same
    object (which the levers hold) now has the new candidates, and the price table the
    accounting shares keeps its identity. A broken file keeps the old router."""
    full = synthetic_scorecard(n_per_cell=4)
    without_mid = full.model_copy(update={"models": {m: c for m, c in full.models.items()
                                                     if m != "mid"}})
    without_mid.save(tmp_path / "card.json")
    train_predictor(without_mid).save(tmp_path / "p.npz")
    config = load_config(_yaml(tmp_path, {"scorecard": "card.json", "predictor": "p.npz",
                                          "reload_check_s": 0.001}))
    router = Router.load(config)
    assert router is not None and router.candidates == ["tiny", "big"]
    prices = router.prices
    reloader = RouterReloader(config, router)

    async def reload_now() -> None:
        await asyncio.sleep(0.01)
        await reloader.maybe_reload()
        if reloader._loading is not None:
            await reloader._loading

    asyncio.run(reload_now())
    assert router.candidates == ["tiny", "big"]  # nothing changed on disk: no reload
    train_predictor(full).save(tmp_path / "p.npz")
    full.save(tmp_path / "card.json")
    os.utime(tmp_path / "card.json", ns=(1, 1))  # a changed stamp, however fast the disk
    asyncio.run(reload_now())
    assert router.candidates == ["tiny", "mid", "big"]
    assert router.prices is prices and "mid" in prices

    (tmp_path / "card.json").write_text("{not json")
    asyncio.run(reload_now())
    assert router.candidates == ["tiny", "mid", "big"]  # kept the working router
