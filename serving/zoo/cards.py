"""Model cards: size and accuracy per family and difficulty, measured through vLLM.

Accuracy is measured the way users get answers: vLLM's offline engine with the checkpoint's
own chat template, greedy decoding, thinking off (`accuracy`) and on (`accuracy_think`,
chat_template_kwargs enable_thinking=True), on held-out items (`EVAL_SEED` by default).
Each model is evaluated in a child process (`python -m serving.zoo.cards ...`) because
vLLM spawns workers and keeps global state; one engine per process is what it expects.
Results are cached in `<zoo>/CARDS.json`, keyed by the model's weight hash, a hash of the
items themselves (an edited task generator is measured anew), n and seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pydantic import BaseModel

from serving.evaluation.items import check_answer
from serving.zoo.tasks import DIFFICULTIES, EVAL_SEED, FAMILIES, mixed_suite

CARDS_CACHE = "CARDS.json"
MAX_NEW_TOKENS = 64

Accuracy = dict[str, dict[str, float]]  # {family: {difficulty: fraction right}}


class Card(BaseModel):
    """One model's card (the `--json` output is a list of these)."""

    name: str
    params: int
    bytes: int
    max_model_len: int
    n_per_cell: int
    seed: int
    accuracy: Accuracy
    accuracy_think: Accuracy


def evaluate(model_dir: Path, n: int, seed: int) -> tuple[Accuracy, Accuracy]:
    """Run the suite through vLLM in this process (call only under a __main__ guard)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    items = mixed_suite(n, seed)
    llm = LLM(model=str(model_dir), dtype="bfloat16", enforce_eager=True, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS)
    results = []
    for think in (False, True):
        outputs = llm.chat(
            [item.messages for item in items],
            params,
            use_tqdm=False,
            chat_template_kwargs={"enable_thinking": think},
        )
        right = {f: {str(d): 0 for d in DIFFICULTIES[f]} for f in FAMILIES}
        for item, out in zip(items, outputs, strict=True):
            right[item.family][str(item.difficulty)] += check_answer(item, out.outputs[0].text)
        results.append({f: {d: c / n for d, c in cells.items()} for f, cells in right.items()})
    return results[0], results[1]


def _weights_key(model_dir: Path) -> str:
    from serving.zoo.build import sha256_file

    return sha256_file(model_dir / "model.safetensors")


def make_card(model_dir: Path, n: int, seed: int) -> Card:
    """Evaluate one model in a child process and describe it."""
    config = json.loads((model_dir / "config.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "accuracy.json"
        cmd = [sys.executable, "-m", "serving.zoo.cards", str(model_dir), str(out)]
        cmd += [str(n), str(seed)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        accuracy, accuracy_think = json.loads(out.read_text())
    return Card(
        name=model_dir.name,
        params=_count_params(model_dir),
        bytes=sum(p.stat().st_size for p in model_dir.iterdir() if p.is_file()),
        max_model_len=config["max_position_embeddings"],
        n_per_cell=n,
        seed=seed,
        accuracy=accuracy,
        accuracy_think=accuracy_think,
    )


def _count_params(model_dir: Path) -> int:
    """Parameter count from the safetensors header (no torch needed)."""
    with (model_dir / "model.safetensors").open("rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
    total = 0
    for name, info in header.items():
        if name != "__metadata__":
            count = 1
            for dim in info["shape"]:
                count *= dim
            total += count
    return total


def _suite_key(n: int, seed: int) -> str:
    items = json.dumps([item.model_dump() for item in mixed_suite(n, seed)])
    return hashlib.sha256(items.encode()).hexdigest()[:16]


def zoo_cards(zoo_dir: Path, n: int, seed: int = EVAL_SEED, on_model=None) -> list[Card]:
    """Cards for every model in the zoo directory, cached per (weights, items, n, seed)."""
    cache_path = zoo_dir / CARDS_CACHE
    suite = _suite_key(n, seed)
    cache: dict[str, dict] = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    cards = []
    model_dirs = sorted(
        (p for p in zoo_dir.iterdir() if (p / "config.json").exists()),
        key=lambda p: _count_params(p),
    )
    for model_dir in model_dirs:
        weights = f"{model_dir.name}/{_weights_key(model_dir)}/"
        key = f"{weights}{suite}/{n}/{seed}"
        if key in cache:
            card = Card.model_validate(cache[key])
        else:
            if on_model is not None:
                on_model(model_dir.name)
            card = make_card(model_dir, n, seed)
            # Cards of older weights of this model are stale; other (n, seed) of the same
            # weights stay, so measuring a second seed does not evict the first.
            cache = {
                k: v for k, v in cache.items()
                if k.startswith(weights) or not k.startswith(model_dir.name + "/")
            }
            cache[key] = card.model_dump()
            cache_path.write_text(json.dumps(cache, indent=2, sort_keys=True) + "\n")
        cards.append(card)
    return cards


# Column labels: "sum 3" reads better than "arith 3" in a 14-column table.
SHORT_NAMES = {"arithmetic": "sum", "reverse": "rev", "ranking": "rank"}


def markdown_table(cards: list[Card]) -> str:
    """The card table for docs/zoo.md and the README: one row per model and mode."""
    cells = [(f, d) for f in FAMILIES for d in DIFFICULTIES[f]]
    labels = [f"{SHORT_NAMES.get(f, f[:5])} {d}" for f, d in cells]
    head = "| model | params | MB | ctx | think | " + " | ".join(labels)
    lines = [head + " |", "|" + "---|" * (5 + len(cells))]
    for card in cards:
        for think, acc in (("off", card.accuracy), ("on", card.accuracy_think)):
            row = [
                card.name,
                f"{card.params / 1e6:.2f}M",
                f"{card.bytes / 1e6:.1f}",
                str(card.max_model_len),
                think,
                *(f"{acc[f][str(d)]:.2f}" for f, d in cells),
            ]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    # Child process entry: MODEL_DIR OUT_JSON N SEED.
    _model_dir, _out, _n, _seed = sys.argv[1:5]
    _acc = evaluate(Path(_model_dir), int(_n), int(_seed))
    Path(_out).write_text(json.dumps(_acc))
