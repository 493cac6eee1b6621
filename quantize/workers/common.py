"""Helpers shared by the workers. Workers run in the quantize tool venv (.venv-quantize), which
has the quantization tools but not frugal: they import nothing from the project, and talk to
the parent through a JSON spec file (argv[1]), `PROGRESS` lines on stdout and one final
`RESULT {json}` line."""

from __future__ import annotations

import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


def load_spec() -> dict[str, Any]:
    return json.loads(Path(sys.argv[1]).read_text())


def progress(stage: str, done: int, total: int) -> None:
    """One line the parent turns into a progress bar."""
    print(f"PROGRESS {done} {total} {stage}", flush=True)


def result(payload: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(payload), flush=True)


def versions(*packages: str) -> dict[str, str]:
    out = {}
    for name in ("torch", "transformers", *packages):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def calib_texts(spec: dict[str, Any]) -> list[str]:
    """Calibration texts (already rendered with the chat template by the parent)."""
    with open(spec["calib_file"], encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh if line.strip()]


def tokenized(spec: dict[str, Any], tokenizer) -> list[dict[str, list[int]]]:
    """Token ids per calibration text; the parent's text already holds BOS and template."""
    rows = []
    for text in calib_texts(spec):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: spec["max_seq_len"]]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    return rows


def copy_tokenizer(src: str, out: str) -> None:
    """Tools save the model; the tokenizer and chat template travel with it unchanged."""
    import shutil

    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "special_tokens_map.json",
        "generation_config.json",
    ):
        path = Path(src) / name
        if path.exists():
            shutil.copy(path, Path(out) / name)
