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

from pydantic import BaseModel, Field

from serving.zoo.tasks import DIFFICULTIES, FAMILIES, SYSTEM_PROMPT, TRAIN_SEEDS, TaskItem
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
    p_think: float = 0.45
    p_cut_think: float = 0.15
    p_system: float = 0.2


def render_prompt(messages: list[dict[str, str]], enable_thinking: bool) -> str:
    """The chat template's output for a generation prompt (kept equal by a test)."""
    parts = [BOS]
    roles = {"system": SYSTEM, "user": USER}
    for message in messages:
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


def sample_batch(cfg: TrainConfig, step: int) -> list[tuple[list[int], list[int]]]:
    """The batch for one step: a pure function of (config, step)."""
    rng = random.Random(f"batch/{cfg.seed}/{step}")
    batch = []
    for _ in range(cfg.batch_size):
        family = rng.choice(FAMILIES)
        levels = [d for d in DIFFICULTIES[family] if d <= cfg.max_difficulty[family]]
        # Harder levels are sampled more often: they need more examples to be learned.
        difficulty = rng.choices(levels, weights=range(1, len(levels) + 1))[0]
        seed = TRAIN_SEEDS[rng.randrange(len(TRAIN_SEEDS))]
        item = _generate_items(family, difficulty, 1, seed, rng.random() < cfg.p_system)[0]
        roll = rng.random()
        mode = "think" if roll < cfg.p_think else "cut"
        if roll >= cfg.p_think + cfg.p_cut_think:
            mode = "direct"
        batch.append(make_example(item, mode, rng))
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


def train(cfg: TrainConfig, on_step: Callable[[int, float], None] | None = None):
    """Train from a seeded init; returns the fp32 model. `on_step(step, loss)` reports."""
    import torch

    from serving.zoo.checkpoint import SHAPES, init_model

    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
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
            logits = model(input_ids=ids).logits
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
    model.eval()
    return model


def greedy_answers(model, items: list[TaskItem], think: bool, max_new: int = 64) -> list[str]:
    """Quick in-process greedy decoding (development only; cards use vLLM)."""
    import torch

    out = []
    with torch.no_grad():
        for item in items:
            ids = torch.tensor([encode(render_prompt(item.messages, think))])
            gen = model.generate(
                ids,
                max_new_tokens=max_new,
                do_sample=False,
                eos_token_id=EOS_ID,
                pad_token_id=PAD_ID,
            )
            out.append("".join(VOCAB[i] for i in gen[0, ids.size(1) :].tolist() if i != EOS_ID))
    return out


__all__ = ["SYSTEM_PROMPT", "TrainConfig", "train", "make_example", "render_prompt", "encode"]
