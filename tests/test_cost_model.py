"""Unit tests of the cost arithmetic (prices, cache and batch discounts, savings)."""

from __future__ import annotations

import pytest

from serving.config import FrugalConfig
from serving.cost import CostModel, TokenUsage, combine_costs, key_label
from serving.pricing import Throughput, derive_price, price_table


def config() -> FrugalConfig:
    return FrugalConfig.model_validate({
        "cost": {"cached_input_discount": 0.9, "batch_discount": 0.5},
        "models": [
            {"model_loading_config": {"model_id": "small", "model_source": "a/small"},
             "frugal": {"price": {"input_per_million": 1.0, "output_per_million": 2.0}}},
            {"model_loading_config": {"model_id": "large", "model_source": "a/large"},
             "frugal": {"price": {"input_per_million": 10.0, "output_per_million": 20.0}}},
        ],
    })


def test_cost_of_a_cached_response_on_a_small_model() -> None:
    model = CostModel(config(), price_table(config()))
    usage = TokenUsage(prompt_tokens=1_000_000, cached_tokens=400_000,
                       completion_tokens=500_000, reasoning_tokens=100_000)
    cost = model.cost("small", usage)
    assert cost.input_usd == pytest.approx(0.6)
    assert cost.cached_input_usd == pytest.approx(0.04)
    assert cost.output_usd == pytest.approx(1.0)
    assert cost.reasoning_usd == pytest.approx(0.2)
    assert cost.total_usd == pytest.approx(1.64)
    assert cost.baseline_model == "large"
    assert cost.baseline_usd == pytest.approx(20.0)
    assert cost.saved_by_lever == pytest.approx({"routing": 18.0, "cache": 0.36, "batch": 0.0,
                                                "compaction": 0.0})
    assert sum(cost.saved_by_lever.values()) == pytest.approx(cost.saved_usd)


def test_batch_discount_is_its_own_lever() -> None:
    model = CostModel(config(), price_table(config()))
    cost = model.cost("large", TokenUsage(prompt_tokens=1_000_000, completion_tokens=0),
                      batch=True)
    assert cost.total_usd == pytest.approx(5.0)
    assert cost.saved_by_lever == pytest.approx({"routing": 0.0, "cache": 0.0, "batch": 5.0,
                                                "compaction": 0.0})


def test_a_cascade_bills_both_calls_against_one_baseline() -> None:
    model = CostModel(config(), price_table(config()))
    usage = TokenUsage(prompt_tokens=1_000_000, completion_tokens=1_000_000)
    first, second = model.cost("small", usage), model.cost("large", usage)
    both = combine_costs([first, second])
    assert both.model == "large"
    assert both.total_usd == pytest.approx(33.0)
    assert both.baseline_usd == pytest.approx(30.0)
    assert both.saved_usd == pytest.approx(-3.0)
    assert sum(both.saved_by_lever.values()) == pytest.approx(both.saved_usd)


def test_derived_prices_follow_measured_throughput() -> None:
    price = derive_price(3.6, Throughput(prefill_tokens_per_s=1000, decode_tokens_per_s=100))
    assert price.input_per_million == pytest.approx(1.0)
    assert price.output_per_million == pytest.approx(10.0)
    slow = Throughput(prefill_tokens_per_s=1, decode_tokens_per_s=1)
    table = price_table(config(), {"small": slow})
    assert table["small"].input_per_million == 1.0  # a list price wins over a measurement


def test_usage_parsing_and_key_labels() -> None:
    usage = TokenUsage.from_usage({
        "prompt_tokens": 10, "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 3},
    })
    assert (usage.prompt_tokens, usage.cached_tokens, usage.reasoning_tokens) == (10, 4, 3)
    assert TokenUsage.from_usage({"prompt_tokens": 1}).completion_tokens == 0
    assert key_label(None) == "anonymous"
    assert key_label("sk-secret").startswith("key-") and "secret" not in key_label("sk-secret")
