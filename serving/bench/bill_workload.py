"""The bill's reference workload: one deterministic mix of traffic that every lever has a
part of (docs/bill.md).

A company's traffic, drawn from the demo zoo's task suite with a seed:
- single-turn tasks of mixed difficulty across every family, each from one of a few
  "applications" (a long fixed system prompt first, then the task);
- a share that wants JSON (`wants_json`), one that needs no immediate answer
  (`batchable`), and the hardest cells, which benefit from reasoning (`needs_reasoning`);
- long multi-turn chats (the chat family), replayed turn by turn.

A request is a pure function of (mix, seed): the same seed gives the same bill, and the
held-out seeds (`HELD_OUT_SEEDS`, never used in training) check a tuned mix. A user can
bring their own traffic as JSONL of `BillRequest` lines (`load_workload`).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.zoo.chat import generate_chats
from serving.zoo.tasks import DIFFICULTIES, FAMILIES, SYSTEM_PROMPT, generate_items

#: Evaluation seeds for the bill (>= EVAL_SEED_MIN: never trained on).
DEFAULT_SEED = 1_000_002_501
HELD_OUT_SEEDS: tuple[int, ...] = (1_000_002_502, 1_000_002_503)

_HANDBOOK_WORDS = ("policy", "refund", "order", "shipping", "invoice", "warranty",
                   "account", "ticket", "customer", "delivery")


class BillMix(BaseModel):
    """What the workload is made of; every share is of the single-turn tasks."""

    model_config = ConfigDict(extra="forbid")

    tasks: int = Field(default=288, ge=1, description="single-turn task requests")
    apps: int = Field(default=3, ge=1, description="applications, each a fixed system prompt")
    #: 0: the zoo's own one-line instruction alone. The demo zoo was trained with that
    #: line or none, and answers almost nothing right after a longer one (6% at 480
    #: characters, docs/bill.md); with real models, give each application its own.
    app_prompt_chars: int = Field(default=0, ge=0,
                                  description="length of each application's instructions")
    json_share: float = Field(default=0.25, ge=0, le=1)
    batchable_share: float = Field(default=0.3, ge=0, le=1)
    chats: int = Field(default=8, ge=0, description="multi-turn chats")
    chat_turns: tuple[int, ...] = (10, 20)

    @model_validator(mode="after")
    def _turns(self) -> BillMix:
        if self.chats and not self.chat_turns:
            raise ValueError("chat_turns must name at least one length when chats > 0")
        return self


class BillRequest(BaseModel):
    """One piece of traffic: a single-turn task, or a whole chat replayed turn by turn."""

    model_config = ConfigDict(extra="forbid")

    id: str
    kind: Literal["task", "chat"]
    family: str
    difficulty: int
    app: int = 0
    #: The application's fixed instructions (the shared prefix), then the request.
    system: str = ""
    messages: list[dict[str, str]]
    expected: str
    wants_json: bool = False
    batchable: bool = False
    needs_reasoning: bool = False


def app_prompt(app: int, chars: int) -> str:
    """Application `app`'s fixed instructions: a handbook of `chars` characters, ending in
    the zoo's own instruction (the models were trained with it)."""
    rng = random.Random(f"bill-app/{app}")
    text = f"Application {app} handbook. "
    while len(text) < chars:
        text += (f"Rule {rng.randint(0, 999)}: {rng.choice(_HANDBOOK_WORDS)} "
                 f"{rng.choice(_HANDBOOK_WORDS)}. ")
    return (text[:chars] + " " + SYSTEM_PROMPT).strip()


def generate_workload(mix: BillMix, seed: int = DEFAULT_SEED) -> list[BillRequest]:
    """The workload of `mix` at `seed`: tasks spread evenly over every (family,
    difficulty) cell, then the chats."""
    rng = random.Random(f"bill/{seed}")
    cells = [(f, d) for f in FAMILIES for d in DIFFICULTIES[f]]
    per_cell = -(-mix.tasks // len(cells))
    pool = [item for family, difficulty in cells
            for item in generate_items(family, difficulty, per_cell, seed)]
    rng.shuffle(pool)
    hardest = {family: DIFFICULTIES[family][-1] for family in FAMILIES}
    requests = []
    for i, item in enumerate(pool[: mix.tasks]):
        app = rng.randrange(mix.apps)
        requests.append(BillRequest(
            id=f"task-{i}", kind="task", family=item.family, difficulty=item.difficulty,
            app=app, system=app_prompt(app, mix.app_prompt_chars),
            messages=[m for m in item.messages if m["role"] != "system"],
            expected=item.expected,
            wants_json=rng.random() < mix.json_share,
            batchable=rng.random() < mix.batchable_share,
            needs_reasoning=item.difficulty == hardest[item.family]))
    for i in range(mix.chats):
        turns = mix.chat_turns[i % len(mix.chat_turns)]
        chat = generate_chats(turns, i + 1, seed)[i]
        requests.append(BillRequest(
            id=f"chat-{i}", kind="chat", family=chat.family, difficulty=turns,
            messages=chat.messages, expected=chat.expected))
    return requests


def load_workload(path: Path) -> list[BillRequest]:
    """A user's own traffic: one `BillRequest` JSON object per line."""
    lines = path.read_text().splitlines()
    return [BillRequest.model_validate_json(line) for line in lines if line.strip()]
