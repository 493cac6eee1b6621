"""Prices per model: a list price from the YAML, else derived from measured throughput.

A self-hosted model has no list price, so frugal derives one and says how:
`$ per 1M tokens = node $ per hour / (measured tokens per hour) * 1e6`, separately for
input (prefill throughput) and output (decode throughput), from `frugal bench eval`.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel

from serving.config import FrugalConfig, Price


class Throughput(BaseModel):
    """Measured tokens per second of one model on one node (from the scorecard)."""

    prefill_tokens_per_s: float
    decode_tokens_per_s: float


def derive_price(node_usd_per_hour: float, throughput: Throughput) -> Price:
    per_token_hour = 1e6 / 3600.0
    return Price(
        input_per_million=node_usd_per_hour * per_token_hour / throughput.prefill_tokens_per_s,
        output_per_million=node_usd_per_hour * per_token_hour / throughput.decode_tokens_per_s,
    )


def price_table(
    config: FrugalConfig, measured: Mapping[str, Throughput] | None = None
) -> dict[str, Price]:
    """Each model's price: list price, else derived from `measured`, else the default."""
    table = {}
    for model in config.models:
        if model.frugal.price is not None:
            table[model.model_id] = model.frugal.price
        elif measured and model.model_id in measured:
            table[model.model_id] = derive_price(
                config.cost.node_usd_per_hour, measured[model.model_id]
            )
        else:
            table[model.model_id] = config.cost.default_price
    return table
