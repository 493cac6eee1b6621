"""Deterministic training of one zoo model on the task suite (CPU, fixed threads).

Every example is rendered exactly as vLLM will render the request (the chat template, see
`tokenizer.py`), and the loss covers only the assistant's part. Three kinds of targets:

- direct (thinking off): `<think></think>` is in the prompt; target `ANSWER</s>`;
- thinking: the prompt ends in `<think>`; target `SCRATCH</think>ANSWER</s>`;
- cut thinking: the scratchpad is cut at a random point and closed, then the right answer
  follows. A reasoning budget forces `</think>` early, and the model must still answer.

Same config and seed -> same weights on the same machine: seeded Python and torch RNGs,
`torch.use_deterministic_algorithms(True)` and a fixed thread count.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from serving.evaluation.items import TaskItem
from serving.zoo.tasks import (
    DIFFICULTIES,
    FAMILIES,
    SYSTEM_PROMPT,
    TRAIN_SEEDS,
    as_json_request,
)
from serving.zoo.tasks import generate_items as _generate_items
from serving.zoo.tokenizer import (
    ASSISTANT,
    BOS,
    EOS_ID,
    PAD_ID,
    SYSTEM,
    THINK_CLOSE,
    THINK_OPEN,
    USER,
    VOCAB,
)

_IDS = {tok: i for i, tok in enumerate(VOCAB)}
IGNORE = -100


class TrainConfig(BaseModel):
    """Everything that determines a trained model's weights."""

    shape: str
    steps: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    lr: float = Field(gt=0)
    warmup: int = 100
    weight_decay: float = 0.01
    micro_batch: int = 16
    seed: int = 0
    threads: int = 2
    # Hardest difficulty trained per family (the easier ones are all trained too).
    max_difficulty: dict[str, int] = Field(
        default_factory=lambda: {f: DIFFICULTIES[f][-1] for f in FAMILIES}
    )
    # Hardest difficulty trained *without* the scratchpad. Multi-digit sums written most
    # significant digit first are not learnable in this budget (docs/zoo.md, "Why sums are
    # written low digit first"); training them anyway only spends capacity, and the
    # scratchpad is what is meant to carry them.
    direct_max_difficulty: dict[str, int] = Field(default_factory=lambda: {"arithmetic": 2})
    p_think: float = 0.45
    p_cut_think: float = 0.1
    p_system: float = 0.2
    # Relative sampling weight of each family.
    family_weights: dict[str, float] = Field(
        default_factory=lambda: {"arithmetic": 0.35, "reverse": 0.35, "ranking": 0.3}
    )
    # Share of photo-finish ranking examples (8 players) drawn with random scores instead.
    # Random scores teach "prefer the highest score"; with photo finishes alone zoo-l
    # learned no ranking at all in 4,000-8,000 steps, in four recipes (docs/zoo.md).
    open_finish_share: float = Field(default=0.0, ge=0.0, le=1.0)
    # Share of examples that ask for a JSON answer (see `tasks.as_json_request`).
    p_json: float = 0.08
    # Mixed precision (bf16 matmuls, fp32 master weights): 1.75x faster per step on a CPU
    # with AVX512-BF16, and the checkpoint is saved in bf16 anyway.
    bf16_autocast: bool = True
    # Fine-tuning: start from this zoo model's weights instead of a seeded init, and draw
    # this share of examples from the multi-turn chat family (`chat_train.py`).
    base: str | None = None
    chat_share: float = Field(default=0.0, ge=0.0, le=1.0)
    # ... or from the tool-use family (`tools.py`; the checkpoint then gets its template).
    tools_share: float = Field(default=0.0, ge=0.0, le=1.0)


def render_prompt(messages: list[dict[str, str]], enable_thinking: bool) -> str:
    """The chat template's output for a generation prompt (kept equal by a test)."""
    parts = [BOS]
    roles = {"system": SYSTEM, "user": USER}
    for message in messages:
        if message["role"] == "assistant":  # a past turn, closed as the template does
            content = message["content"]
            think = "" if THINK_CLOSE in content else THINK_OPEN + THINK_CLOSE
            parts.append(ASSISTANT + think + content + "</s>")
            continue
        parts.append(roles[message["role"]] + message["content"])
    parts.append(ASSISTANT + (THINK_OPEN if enable_thinking else THINK_OPEN + THINK_CLOSE))
    return "".join(parts)


def encode(text: str) -> list[int]:
    """Char-level encoding with the special tokens, equal to the tokenizer's (tested)."""
    ids: list[int] = []
    i = 0
    while i < len(text):
        if text[i] == "<":
            for tok in (THINK_OPEN, THINK_CLOSE, BOS, ASSISTANT, USER, SYSTEM, "</s>"):
                if text.startswith(tok, i):
                    ids.append(_IDS[tok])
                    i += len(tok)
                    break
            else:
                ids.append(_IDS["<"])
                i += 1
        else:
            ids.append(_IDS.get(text[i], _IDS["<unk>"]))
            i += 1
    return ids


def make_example(item: TaskItem, mode: str, rng: random.Random) -> tuple[list[int], list[int]]:
    """(input ids, labels) for one item in mode `direct`, `think` or `cut`."""
    prompt = encode(render_prompt(item.messages, enable_thinking=mode != "direct"))
    if mode == "direct":
        target = encode(item.expected)
    else:
        scratch = item.scratchpad
        if mode == "cut":
            scratch = scratch[: rng.randrange(len(scratch))]
        target = encode(scratch) + [_IDS[THINK_CLOSE]] + encode(item.expected)
    target.append(EOS_ID)
    return prompt + target, [IGNORE] * len(prompt) + target


def example_from(messages: list[dict[str, str]], answer: str) -> tuple[list[int], list[int]]:
    """(input ids, labels) for a direct (thinking off) answer to `messages`."""
    prompt = encode(render_prompt(messages, enable_thinking=False))
    target = [*encode(answer), EOS_ID]
    return prompt + target, [IGNORE] * len(prompt) + target


def choose_mode(cfg: TrainConfig, family: str, difficulty: int, rng: random.Random) -> str:
    """`think`, `cut` or `direct` for one example (no direct above the family's cap)."""
    roll = rng.random()
    mode = "think" if roll < cfg.p_think else "cut"
    if roll >= cfg.p_think + cfg.p_cut_think:
        mode = "direct"
    if mode == "direct" and difficulty > cfg.direct_max_difficulty.get(family, difficulty):
        mode = "think"
    return mode


def sample_batch(cfg: TrainConfig, step: int) -> list[tuple[list[int], list[int]]]:
    """The batch for one step: a pure function of (config, step)."""
    from serving.zoo.chat_train import chat_example
    from serving.zoo.tools import tool_example

    rng = random.Random(f"batch/{cfg.seed}/{step}")
    batch = []
    for _ in range(cfg.batch_size):
        if cfg.chat_share and rng.random() < cfg.chat_share:
            batch.append(chat_example(rng))
            continue
        if cfg.tools_share and rng.random() < cfg.tools_share:
            batch.append(tool_example(rng))
            continue
        family = rng.choices(FAMILIES, weights=[cfg.family_weights[f] for f in FAMILIES])[0]
        levels = [d for d in DIFFICULTIES[family] if d <= cfg.max_difficulty[family]]
        # Harder levels are sampled more often: they need more examples to be learned.
        difficulty = rng.choices(levels, weights=range(1, len(levels) + 1))[0]
        seed = TRAIN_SEEDS[rng.randrange(len(TRAIN_SEEDS))]
        system = rng.random() < cfg.p_system
        close = not (cfg.open_finish_share and rng.random() < cfg.open_finish_share)
        item = _generate_items(family, difficulty, 1, seed, system, close_finish=close)[0]
        if rng.random() < cfg.p_json:
            item = as_json_request(item)
        batch.append(make_example(item, choose_mode(cfg, family, difficulty, rng), rng))
    return batch


def collate(batch: list[tuple[list[int], list[int]]]):  # -> tuple[Tensor, Tensor]
    """Right-pad to the longest sequence; causal attention never sees the padding."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), PAD_ID, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    for row, (x, y) in enumerate(batch):
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
    return ids, labels


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(
    cfg: TrainConfig,
    on_step: Callable[[int, float], None] | None = None,
    monitor: Callable[[int, Any], None] | None = None,
    monitor_every: int = 0,
    base_dir: Path | None = None,
):
    """Train from a seeded init (or from `base_dir`'s weights when `cfg.base` is set:
    default the zoo directory's copy); returns the fp32 model. `on_step(step, loss)` reports;
    `monitor(step, model)` runs every `monitor_every` steps (e.g. a quick evaluation). It
    must not change the weights or draw from torch's RNG, so the result stays the same."""
    import torch

    from serving.zoo.checkpoint import SHAPES, init_model

    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    if cfg.base is not None:
        from transformers import AutoModelForCausalLM

        from serving.zoo.paths import default_zoo_dir

        model = AutoModelForCausalLM.from_pretrained(
            base_dir or default_zoo_dir() / cfg.base, dtype=torch.float32)
    else:
        model = init_model(SHAPES[cfg.shape], cfg.seed)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    for step in range(cfg.steps):
        batch = sample_batch(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        opt.zero_grad(set_to_none=True)
        # Recall prompts are 4x longer than the others: padding one batch to its longest
        # row wasted most of the compute, so similar lengths run together as micro-batches.
        batch.sort(key=lambda ex: len(ex[0]))
        n_targets = sum(sum(t != IGNORE for t in y) for _, y in batch)
        loss = 0.0
        for start in range(0, len(batch), cfg.micro_batch):
            ids, labels = collate(batch[start : start + cfg.micro_batch])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16_autocast):
                logits = model(input_ids=ids).logits.float()
            part = (
                torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.size(-1)),
                    labels[:, 1:].reshape(-1),
                    reduction="sum",
                )
                / n_targets
            )
            part.backward()
            loss += float(part.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if on_step is not None:
            on_step(step, loss)
        if monitor is not None and monitor_every and (step + 1) % monitor_every == 0:
            model.eval()
            monitor(step, model)
            model.train()
    model.eval()
    return model


def greedy_answers(model, items: list[TaskItem], think: bool, max_new: int = 48) -> list[str]:
    """In-process batched greedy decoding (left-padded), for watching a training run;
    the model cards measure through vLLM instead."""
    import torch

    prompts = [encode(render_prompt(item.messages, think)) for item in items]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    with torch.no_grad():
        gen = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
        )
    prefix = THINK_OPEN if think else ""
    return [
        prefix + "".join(VOCAB[i] for i in row if i not in (EOS_ID, PAD_ID))
        for row in gen[:, width:].tolist()
    ]


def quick_accuracy(model, n: int, seed: int) -> dict[str, float]:
    """Accuracy per cell (`arithmetic3`, `arithmetic3+think`, ...) on `n` items each."""
    from serving.evaluation.items import check_answer

    out: dict[str, float] = {}
    for family in FAMILIES:
        for difficulty in DIFFICULTIES[family]:
            items = _generate_items(family, difficulty, n, seed)
            for think in (False, True):
                answers = greedy_answers(model, items, think)
                right = sum(check_answer(i, a) for i, a in zip(items, answers, strict=True))
                out[f"{family}{difficulty}{'+think' if think else ''}"] = right / n
    return out


__all__ = ["SYSTEM_PROMPT", "TrainConfig", "train", "make_example", "render_prompt", "encode"]
