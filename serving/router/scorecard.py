"""The scorecard on disk: what `frugal bench eval` measured per model (and per model at
a reasoning effort: a cell) and per item.

It lives in core `serving` (not the benchmarks) because the router reads it at start-up;
`frugal bench eval` writes it. Its items are the evaluation layer's `EvalItem`
(`serving.evaluation.items`). Versioned (`SCORECARD_VERSION`): a reader refuses a file of
another version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from serving.config import Price
from serving.evaluation.items import EvalItem
from serving.pricing import Throughput

SCORECARD_VERSION = 1

#: A scorecard key is a model id (answered without thinking) or a cell `MODEL@EFFORT`:
#: the same model measured at that reasoning effort (`frugal bench eval --think`).
CELL_SEPARATOR = "@"


def cell_id(model: str, effort: str | None) -> str:
    return f"{model}{CELL_SEPARATOR}{effort}" if effort else model


def base_model(cell: str) -> str:
    """The served model a scorecard key stands for."""
    return cell.split(CELL_SEPARATOR, 1)[0]


def cell_effort(cell: str) -> str | None:
    """The effort a key was measured at; None: without thinking."""
    return cell.split(CELL_SEPARATOR, 1)[1] if CELL_SEPARATOR in cell else None


# --- results --------------------------------------------------------------------------


class ItemResult(BaseModel):
    """One item on one model: what the router's predictor and cascade learn from."""

    id: str
    correct: bool
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float | None = None
    latency_s: float
    #: Log-probabilities of the answer tokens (not the thinking), rounded.
    logprobs: list[float] = Field(default_factory=list)
    error: str | None = None


class Percentiles(BaseModel):
    p50: float | None
    p95: float | None


class ModelScore(BaseModel):
    """Everything measured for one model on one suite."""

    model: str
    think: bool
    concurrency: int
    items: int
    accuracy: float
    #: family -> accuracy; family -> str(difficulty) -> accuracy.
    accuracy_by_family: dict[str, float]
    accuracy_by_difficulty: dict[str, dict[str, float]]
    prompt_tokens: int
    completion_tokens: int
    ttft_s: Percentiles
    itl_s: Percentiles
    requests_per_s: float
    throughput: Throughput | None = None
    errors: int = 0
    results: list[ItemResult]

    def result_map(self) -> dict[str, ItemResult]:
        return {r.id: r for r in self.results}


class ModelCard(BaseModel):
    """A model's line in the scorecard: its score plus identity and price."""

    model_hash: str
    price: Price
    price_source: Literal["list", "derived", "default"]
    score: ModelScore


class Scorecard(BaseModel):
    """The versioned scorecard JSON (`frugal bench eval` writes, the router reads)."""

    version: int = SCORECARD_VERSION
    created: str
    suite: str
    suite_hash: str
    seed: int | None = None
    node_usd_per_hour: float
    #: Models cheapest first (by the price of an average item of this suite).
    models: dict[str, ModelCard]
    #: The suite (without scratchpads), so the predictor can be retrained from this file.
    items: list[EvalItem]

    def save(self, path: Path | str) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path | str) -> Scorecard:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("version") != SCORECARD_VERSION:
            raise ValueError(
                f"{path}: scorecard version {data.get('version')!r}, expected "
                f"{SCORECARD_VERSION}; re-run `frugal bench eval`"
            )
        return cls.model_validate(data)

    def item_cost(self, model: str, result: ItemResult) -> float:
        price = self.models[model].price
        return (
            result.prompt_tokens * price.input_per_million
            + result.completion_tokens * price.output_per_million
        ) * 1e-6


