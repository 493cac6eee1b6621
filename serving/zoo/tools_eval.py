"""zoo-tools measured through vLLM: tool calls and answers on held-out items.

`frugal zoo tools-eval [--model zoo-tools] [--n N] [--seed S]` runs vLLM's offline engine
(bf16, `enforce_eager`, greedy) in a child process, renders each request with the
checkpoint's chat template and the item's `tools` (`LLM.chat(..., tools=...)`, as the
server does) and reads calls with vLLM's own `hermes` tool parser. Per kind
(`serving/zoo/tools.py`), held-out seeds only:

- `call`: the share of items with exactly one call (`called`), and with the right
  name and exactly the right arguments (`exact`, arguments compared as parsed JSON);
- `answer`: the answer after the tool result equals the result's text, no call made;
- `direct`: tools present, no tool answers the question: the task's answer, no call;
- `plain`: no tools at all: zoo-s's curriculum cells (1-digit sums, 2-4-letter reverses,
  2 players), thinking off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from serving.zoo.tasks import EVAL_SEED

MAX_NEW_TOKENS = 128
PLAIN_CELLS: tuple[tuple[str, int], ...] = (
    ("arithmetic", 1), ("reverse", 2), ("reverse", 4), ("ranking", 2))


def evaluate(model_dir: Path, n: int, seed: int) -> dict[str, Any]:
    """Rates per kind and digits, through vLLM in this process (under a __main__ guard)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams
    from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser

    from serving.evaluation.items import check_answer
    from serving.zoo.tasks import generate_items
    from serving.zoo.tools import DIGITS, KINDS, generate_tool_items

    llm = LLM(model=str(model_dir), dtype="bfloat16", enforce_eager=True, seed=0)
    parser = Hermes2ProToolParser(llm.get_tokenizer())
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS, skip_special_tokens=False)
    items = [i for kind in KINDS for d in (DIGITS if kind != "direct" else (1,))
             for i in generate_tool_items(kind, d, n, seed)]
    # LLM.chat takes one tools list per call: group the items by their tools.
    groups: dict[str, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        groups[json.dumps(item.tools, sort_keys=True)].append(index)
    texts: list[str] = [""] * len(items)
    for key, indexes in groups.items():
        outputs = llm.chat([items[i].messages for i in indexes], params, use_tqdm=False,
                           tools=json.loads(key))
        for i, out in zip(indexes, outputs, strict=True):
            texts[i] = out.outputs[0].text
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    failures: list[dict[str, str]] = []
    for item, text in zip(items, texts, strict=True):
        info = parser.extract_tool_calls(text, None)  # the request is not read
        cell = counts[f"{item.kind}{item.difficulty if item.kind != 'direct' else ''}"]
        cell["n"] += 1
        if item.kind == "call":
            one = info.tools_called and len(info.tool_calls) == 1
            cell["called"] += one
            right = one and info.tool_calls[0].function.name == item.call["name"] and (
                json.loads(info.tool_calls[0].function.arguments) == item.call["arguments"])
            cell["exact"] += right
        else:
            right = not info.tools_called and text.strip() == item.expected
            cell["exact"] += right
        if not right and len(failures) < 100:
            failures.append({"id": item.id, "expected": item.expected, "got": text})
    plain = [i for family, level in PLAIN_CELLS for i in generate_items(family, level, n, seed)]
    outputs = llm.chat([i.messages for i in plain], params, use_tqdm=False)
    for item, out in zip(plain, outputs, strict=True):
        cell = counts[f"plain-{item.family}{item.difficulty}"]
        cell["n"] += 1
        cell["exact"] += check_answer(item, out.outputs[0].text)
    return {"n": n, "seed": seed,
            "cells": {k: {m: c / v["n"] for m, c in v.items() if m != "n"} | {"n": v["n"]}
                      for k, v in counts.items()},
            "failures": failures}


def totals(result: dict[str, Any]) -> dict[str, float]:
    """Pooled rates: call rate and argument exactness over every `call` item, answer
    exactness after the tool result, direct and plain exactness."""
    pooled: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for name, cell in result["cells"].items():
        kind = name.split("-")[0].rstrip("0123456789")
        for metric in ("called", "exact"):
            if metric in cell:
                pooled[f"{kind}.{metric}"][0] += cell[metric] * cell["n"]
                pooled[f"{kind}.{metric}"][1] += cell["n"]
    return {k: round(s / n, 4) for k, (s, n) in pooled.items()}


def measure(model_dir: Path, n: int, seed: int = EVAL_SEED) -> dict[str, Any]:
    """`evaluate` in a child process (vLLM keeps global state)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        subprocess.run([sys.executable, "-m", "serving.zoo.tools_eval", str(model_dir), str(out),
                        str(n), str(seed)], check=True, stdout=sys.stderr)  # vLLM's logs
        return json.loads(out.read_text())


if __name__ == "__main__":
    # Child process entry: MODEL_DIR OUT_JSON N SEED.
    _model_dir, _out, _n, _seed = sys.argv[1:5]
    Path(_out).write_text(json.dumps(evaluate(Path(_model_dir), int(_n), int(_seed))))
