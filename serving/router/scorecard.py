"""The scorecard on disk: what `frugal bench eval` measured per model and per item.

It lives in `serving` (not `bench`) because the router reads it at start-up; `bench.eval`
writes it. Versioned (`SCORECARD_VERSION`): a reader refuses a file of another version.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from serving.config import Price
from serving.pricing import Throughput
from serving.zoo.tasks import TaskItem, check_answer, final_answer

SCORECARD_VERSION = 1


class Checker(BaseModel):
    """How to grade an answer when there is no single expected string.

    `exact`: the final answer equals `value`; `contains`: it contains `value`;
    `regex`: it fully matches `value`; `number`: it parses as a number within `tol` of
    `value`. The final answer is the text after any `</think>`, stripped.
    """

    type: Literal["exact", "contains", "regex", "number"]
    value: str | float
    tol: float = 1e-6

    def check(self, text: str) -> bool:
        answer = final_answer(text)
        if answer is None:
            return False
        if self.type == "exact":
            return answer == str(self.value)
        if self.type == "contains":
            return str(self.value) in answer
        if self.type == "regex":
            return re.fullmatch(str(self.value), answer, flags=re.DOTALL) is not None
        try:
            return abs(float(answer.replace(",", "")) - float(self.value)) <= self.tol
        except ValueError:
            return False


class EvalItem(TaskItem):
    """A `TaskItem` that may carry a checker instead of (or beside) an expected answer."""

    checker: Checker | None = None


def grade(item: TaskItem, text: str) -> bool:
    checker = getattr(item, "checker", None)
    if checker is not None:
        return checker.check(text)
    return check_answer(item, text)


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


