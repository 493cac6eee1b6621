"""The item and checker format: one exactly checkable task, and how an answer is graded.

A `TaskItem` is chat messages in and one expected answer string out; an `EvalItem` may
carry a `Checker` instead (contains, regex, number within a tolerance). Grading reads the
final answer: the text after the last `</think>`, stripped (`final_answer`).

The demo zoo (`serving.zoo.tasks`) generates items in this format; users bring their own as
JSONL (`load_user_items`); the scorecard (`serving.router.scorecard`) stores them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

__all__ = [
    "THINK_CLOSE",
    "THINK_OPEN",
    "Checker",
    "EvalItem",
    "TaskItem",
    "check_answer",
    "export_jsonl",
    "final_answer",
    "grade",
    "json_fields",
    "load_jsonl",
    "load_user_items",
]

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class TaskItem(BaseModel):
    """One exactly checkable task: chat messages in, one answer string out."""

    id: str
    family: str
    difficulty: int
    messages: list[dict[str, str]]
    expected: str
    # What a zoo model writes inside <think>...</think> for this item (training target).
    scratchpad: str = ""


def final_answer(text: str) -> str | None:
    """The answer part of a model's output: after the last `</think>`, stripped.

    None when a think block was opened but never closed (no answer was given).
    """
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[1].strip()
    if text.lstrip().startswith(THINK_OPEN):
        return None
    return text.strip()


def check_answer(item: TaskItem, text: str) -> bool:
    """Right or wrong: whitespace around the answer and a leading think block are ignored;
    anything else (punctuation, extra words, other formatting) makes it wrong."""
    answer = final_answer(text)
    return answer is not None and answer == item.expected


def json_fields(text: str) -> dict | None:
    """The object in a JSON answer, or None when the text is not one JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


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
    """An item's checker when it has one, else `check_answer` against `expected`."""
    checker = getattr(item, "checker", None)
    if checker is not None:
        return checker.check(text)
    return check_answer(item, text)


# --- files ----------------------------------------------------------------------------


def load_user_items(path: Path) -> list[EvalItem]:
    """Read a JSONL of `{messages, expected}` or `{messages, checker}` objects.

    Optional keys: `id`, `family` (default `custom`), `difficulty` (default 0).
    Errors name the line and what was expected.
    """
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not valid JSON: {exc}") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("messages"), list):
            raise ValueError(f"{path}:{number}: expected an object with a 'messages' list")
        if "expected" not in raw and "checker" not in raw:
            raise ValueError(f"{path}:{number}: needs 'expected' or 'checker'")
        items.append(
            EvalItem(
                id=str(raw.get("id", f"{path.stem}-{number}")),
                family=str(raw.get("family", "custom")),
                difficulty=int(raw.get("difficulty", 0)),
                messages=raw["messages"],
                expected=str(raw.get("expected", "")),
                checker=raw.get("checker"),
            )
        )
    return items


def export_jsonl(items: Iterable[TaskItem], out: Path) -> int:
    """Write one JSON object per line (TaskItem fields); returns the number written."""
    count = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for item in items:
            fh.write(json.dumps(item.model_dump(), ensure_ascii=False) + "\n")
            count += 1
    return count


def load_jsonl(path: Path) -> list[TaskItem]:
    """Read items written by `export_jsonl`."""
    with path.open(encoding="utf-8") as fh:
        return [TaskItem.model_validate_json(line) for line in fh if line.strip()]
