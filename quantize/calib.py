"""Calibration data: from the zoo task suite or a user's JSONL, rendered to plain texts.

Calibration texts are full conversations (prompt and answer) rendered with the model's own
chat template, so GPTQ sees the activations the model sees when it serves. Suite
calibration uses an evaluation-range seed that is neither a training seed nor the held-out
seed the gate scores on (`CALIB_SEED`), so the gate never grades on calibration items.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel

from quantize.methods import QuantizeError
from serving.zoo.tasks import EVAL_SEED, EVAL_SEED_MIN

CALIB_SEED = EVAL_SEED_MIN + 17
assert CALIB_SEED != EVAL_SEED
DEFAULT_PER_CELL = 16
MAX_SEQ_LEN = 512


class CalibSet(BaseModel):
    source: str
    texts: list[str]

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for text in self.texts:
            digest.update(hashlib.sha256(text.encode()).digest())
        return digest.hexdigest()

    def write_jsonl(self, path: Path) -> Path:
        with path.open("w", encoding="utf-8") as fh:
            for text in self.texts:
                fh.write(json.dumps({"text": text}) + "\n")
        return path


def _render(tokenizer, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False)


def from_suite(model_dir: Path, per_cell: int = DEFAULT_PER_CELL, seed: int = CALIB_SEED):
    """`per_cell` items of every task family and difficulty, with their answers."""
    from transformers import AutoTokenizer

    from serving.zoo.tasks import mixed_suite

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = [
        _render(tokenizer, [*item.messages, {"role": "assistant", "content": item.expected}])
        for item in mixed_suite(per_cell, seed)
    ]
    return CalibSet(source=f"suite:{per_cell}:{seed}", texts=texts)


def from_jsonl(model_dir: Path, path: Path) -> CalibSet:
    """A user's JSONL: each line has `text`, or chat `messages` (a suite export also has
    `expected`, which is appended as the assistant's answer)."""
    from transformers import AutoTokenizer

    if not path.exists():
        raise QuantizeError(f"--calib {path}: no such file")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QuantizeError(f"--calib {path}:{number}: not JSON ({exc.msg})") from None
        if isinstance(row, dict) and isinstance(row.get("text"), str):
            texts.append(row["text"])
        elif isinstance(row, dict) and isinstance(row.get("messages"), list):
            messages = list(row["messages"])
            if isinstance(row.get("expected"), str):
                messages.append({"role": "assistant", "content": row["expected"]})
            texts.append(_render(tokenizer, messages))
        else:
            raise QuantizeError(
                f"--calib {path}:{number}: expected an object with 'text' or 'messages'"
            )
    if not texts:
        raise QuantizeError(f"--calib {path}: no calibration lines")
    return CalibSet(source=str(path.resolve()), texts=texts)
