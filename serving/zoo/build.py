"""`frugal zoo build`: train the zoo models, cache them, record a manifest.

The zoo directory holds one Hugging Face checkpoint per model plus `MANIFEST.json`, which
records each model's training config, a fingerprint of its training data and the sha256 of
every file. A model is rebuilt only when its directory is missing, its config or training
data changed (a task generator or the tokenizer was edited) or a file's hash no longer
matches (so a shipped zoo costs nothing, and a hand-edited one is caught). Writes go to a temporary
sibling directory that is renamed into place, so an interrupted build never leaves a
half-written model that looks valid.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from serving.zoo.train import TrainConfig

MANIFEST = "MANIFEST.json"
MANIFEST_VERSION = 1

# The ladder. Each model is trained up to its own hardest levels: a small model has less
# capacity *and* less training, which is what makes "smallest adequate model" a real choice.
# The weights ship in zoo/ (a rebuild takes about two hours on 2 cores, docs/zoo.md).
SPECS: dict[str, TrainConfig] = {
    "zoo-s": TrainConfig(
        shape="zoo-s",
        steps=4000,
        batch_size=64,
        lr=3e-3,
        seed=1,
        threads=1,
        max_difficulty={"arithmetic": 1, "reverse": 4, "ranking": 2},
        # Comparing two-digit scores is zoo-s's hardest lesson (0.85 on 2 players with
        # the default mix and 3,500 steps); 1-digit sums need the fewest examples.
        family_weights={"arithmetic": 0.25, "reverse": 0.3, "ranking": 0.45},
    ),
    "zoo-m": TrainConfig(
        shape="zoo-m",
        steps=3500,
        batch_size=64,
        lr=2.5e-3,
        seed=2,
        threads=1,
        max_difficulty={"arithmetic": 2, "reverse": 4, "ranking": 4},
    ),
    "zoo-l": TrainConfig(
        shape="zoo-l",
        steps=8000,
        batch_size=64,
        lr=2.5e-3,
        seed=3,
        threads=1,
        max_difficulty={"arithmetic": 3, "reverse": 6, "ranking": 8},
        # The widest curriculum needs the most steps, 3-digit sums a large share of them,
        # and the photo finishes of 8 players a third, 40% of those drawn with random
        # scores: without them no ranking was learned at all (docs/zoo.md).
        family_weights={"arithmetic": 0.38, "reverse": 0.29, "ranking": 0.33},
        open_finish_share=0.4,
    ),
    # Lever 8 (compaction): zoo-s fine-tuned on the multi-turn chat family. It answers a
    # chat from its full or compacted history and writes the compact note, so it serves
    # as its own summariser (serving/zoo/chat_train.py); 15% of its examples stay on the
    # task suite. Built after zoo-s, from zoo-s's weights.
    "zoo-chat": TrainConfig(
        shape="zoo-s",
        base="zoo-s",
        chat_share=0.85,
        steps=3500,
        batch_size=32,
        lr=1e-3,
        warmup=50,
        seed=4,
        threads=1,
        max_difficulty={"arithmetic": 1, "reverse": 4, "ranking": 2},
        family_weights={"arithmetic": 0.25, "reverse": 0.3, "ranking": 0.45},
    ),
    # The Agents SDK's one-tool agent: zoo-s fine-tuned to call a function tool in Hermes
    # format and answer from its result (serving/zoo/tools.py); 30% of its examples stay
    # on zoo-s's task suite (requests without tools). Built after zoo-s, from its weights.
    "zoo-tools": TrainConfig(
        shape="zoo-s",
        base="zoo-s",
        tools_share=0.7,
        steps=3000,
        batch_size=32,
        lr=1e-3,
        warmup=50,
        seed=5,
        threads=1,
        max_difficulty={"arithmetic": 1, "reverse": 4, "ranking": 2},
        family_weights={"arithmetic": 0.25, "reverse": 0.3, "ranking": 0.45},
    ),
}


class ModelRecord(BaseModel):
    """What the manifest knows about one built model."""

    config: TrainConfig
    # `data_fingerprint(config)`: changes when the examples the config trains on change.
    data: str = ""
    params: int
    files: dict[str, str]  # file name -> sha256
    build_seconds: float
    # A fine-tuned model: the sha256 of its base's weights when it was built.
    base_weights: str = ""


class Manifest(BaseModel):
    version: int = MANIFEST_VERSION
    models: dict[str, ModelRecord] = {}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_dir(path: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(path.iterdir()) if p.is_file()}


def read_manifest(zoo_dir: Path) -> Manifest:
    path = zoo_dir / MANIFEST
    if not path.exists():
        return Manifest()
    manifest = Manifest.model_validate_json(path.read_text())
    return manifest if manifest.version == MANIFEST_VERSION else Manifest()


def write_manifest(zoo_dir: Path, manifest: Manifest) -> None:
    zoo_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    (zoo_dir / MANIFEST).write_text(text)


def data_fingerprint(cfg: TrainConfig, samples: int = 32) -> str:
    """sha256 of the token ids of `samples` training batches spread over the run.

    The config alone does not pin the weights: the task generators and the tokenizer do
    too. Batches are a pure function of (config, step), so hashing some of them catches an
    edit that changes what this model trains on, and leaves alone the models whose
    curriculum does not reach the edited level (about 10 ms a batch)."""
    from serving.zoo.train import sample_batch

    digest = hashlib.sha256()
    for i in range(samples):
        batch = sample_batch(cfg, i * cfg.steps // samples)
        digest.update(json.dumps(batch, separators=(",", ":")).encode())
    return digest.hexdigest()


def is_valid(zoo_dir: Path, name: str, cfg: TrainConfig, manifest: Manifest) -> bool:
    """True when the cached model was built from `cfg` on the same training data and its
    files are untouched."""
    record = manifest.models.get(name)
    model_dir = zoo_dir / name
    if record is None or record.config != cfg or not model_dir.is_dir():
        return False
    if record.base_weights != base_weights(zoo_dir, cfg):
        return False  # its base was rebuilt since
    return hash_dir(model_dir) == record.files and record.data == data_fingerprint(cfg)


def base_weights(zoo_dir: Path, cfg: TrainConfig) -> str:
    """sha256 of the base model's weights for a fine-tuned model, else ""."""
    if cfg.base is None:
        return ""
    weights = zoo_dir / cfg.base / "model.safetensors"
    return sha256_file(weights) if weights.exists() else "missing"


def build_model(
    cfg: TrainConfig,
    out_dir: Path,
    on_step: Callable[[int, float], None] | None = None,
    monitor_every: int = 0,
) -> ModelRecord:
    """Train one model and save it to `out_dir` (replaced atomically).

    `monitor_every` > 0 prints a quick held-out accuracy per cell that often (slower, same
    weights): for tuning a recipe without waiting for the model cards."""
    from serving.zoo.checkpoint import count_params, save_checkpoint
    from serving.zoo.tasks import EVAL_SEED
    from serving.zoo.train import quick_accuracy, train

    def monitor(step: int, model) -> None:
        if cfg.tools_share:
            from serving.zoo.tools import quick_tool_accuracy

            scores = quick_tool_accuracy(model, 10, EVAL_SEED)
        else:
            scores = quick_accuracy(model, 20, EVAL_SEED)
        cells = " ".join(f"{k}={v:.2f}" for k, v in scores.items())
        print(f"{out_dir.name} step {step + 1}: {cells}", flush=True)

    start = time.monotonic()
    base = out_dir.parent / cfg.base if cfg.base else None
    model = train(cfg, on_step, monitor, monitor_every, base_dir=base)
    params = count_params(model)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    template = None
    if cfg.tools_share:
        from serving.zoo.tools import TOOLS_CHAT_TEMPLATE as template
    save_checkpoint(model, tmp, chat_template=template)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return ModelRecord(
        config=cfg,
        data=data_fingerprint(cfg),
        params=params,
        files=hash_dir(out_dir),
        build_seconds=round(time.monotonic() - start, 1),
    )


def build_zoo(
    zoo_dir: Path,
    specs: dict[str, TrainConfig] | None = None,
    force: bool = False,
    only: list[str] | None = None,
    progress: bool = True,
    monitor_every: int = 0,
) -> dict[str, str]:
    """Build every model in `specs` (default SPECS) that is not validly cached.

    Returns {name: "built" | "cached"}. Progress is a rich bar per model on a terminal,
    and a plain line every 5% elsewhere (CI logs, `make run` piped to a file), where a
    live bar would print nothing until the model is done.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    specs = SPECS if specs is None else specs
    names = [n for n in specs if not only or n in only]
    unknown = set(only or []) - set(specs)
    if unknown:
        raise ValueError(f"unknown zoo model(s) {sorted(unknown)}; expected {list(specs)}")
    manifest = read_manifest(zoo_dir)
    result: dict[str, str] = {}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps  loss {task.fields[loss]:.3f}"),
        TimeElapsedColumn(),
    )
    console = Console()
    plain = progress and not console.is_terminal
    with Progress(*columns, console=console, disable=not progress or plain) as bar:
        for name in names:
            cfg = specs[name]
            if not force and is_valid(zoo_dir, name, cfg, manifest):
                result[name] = "cached"
                continue
            task = bar.add_task(name, total=cfg.steps, loss=float("nan"))

            started = time.monotonic()

            def report(
                step: int, loss: float, task=task, name=name, total=cfg.steps, t0=started
            ) -> None:
                bar.update(task, completed=step + 1, loss=loss)
                if plain and ((step + 1) % max(1, total // 20) == 0 or step + 1 == total):
                    elapsed = time.monotonic() - t0
                    print(
                        f"{name}: {step + 1}/{total} steps  loss {loss:.3f}  {elapsed:.0f} s",
                        flush=True,
                    )

            record = build_model(cfg, zoo_dir / name, report, monitor_every)
            record.base_weights = base_weights(zoo_dir, cfg)
            # Re-read before writing: `--only` builds of different models may run side by
            # side, and each must keep the others' records.
            manifest = read_manifest(zoo_dir)
            manifest.models[name] = record
            write_manifest(zoo_dir, manifest)
            result[name] = "built"
    if not (zoo_dir / MANIFEST).exists():
        write_manifest(zoo_dir, manifest)
    return result
