"""The zoo task suite: graded synthetic tasks whose answers can be checked exactly.

Reused by the zoo's training, its model cards, the benchmark, the router's training data,
quantization calibration and tests. Three families, each with difficulty levels:

- `arithmetic`: add two numbers of `difficulty` digits each ("What is 4567 + 1234?").
- `reverse`: reverse a lowercase word of `difficulty` letters.
- `ranking`: a list of `difficulty` records (a name and its two-digit score), then a
  question: whose score is highest. At 8 records it is a photo finish (the top four
  scores are consecutive), so the ones digit must be compared, not only the tens. The
  answer depends on every record of a long context, which is what makes prompt caching
  and compaction matter. (It replaced key-value recall: a content-addressed lookup is not
  learned at these model sizes, docs/zoo.md.)

Items are chat messages in plain language (several phrasings per family, an optional fixed
system prompt), in the evaluation layer's format (`serving.evaluation.items.TaskItem`,
graded by its `check_answer`). The expected answer is the exact text the assistant must
give after any `<think>...</think>` block. Each item also carries the scratchpad the zoo
models are trained to write when thinking is enabled.

Seeds: `generate_items(family, difficulty, n, seed)` is a pure function of its arguments.
Training draws seeds only from `TRAIN_SEEDS` (0 <= seed < 1,000,000); evaluation uses
`EVAL_SEED` (1,000,000,007) or any other seed >= `EVAL_SEED_MIN`, never used in training.
Small levels have few distinct items (1-digit sums: 100), so some eval items also occur in
training by value; from 2 digits / 4 letters / 4 records up they almost never do.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from functools import partial

from serving.evaluation.items import TaskItem

FAMILIES: tuple[str, ...] = ("arithmetic", "reverse", "ranking")
DIFFICULTIES: dict[str, tuple[int, ...]] = {
    "arithmetic": (1, 2, 3),  # digits per operand
    "reverse": (2, 4, 6),  # letters
    "ranking": (2, 4, 8),  # scored records in the context
}
TRAIN_SEEDS = range(0, 1_000_000)
EVAL_SEED_MIN = 1_000_000_000
EVAL_SEED = 1_000_000_007
SYSTEM_PROMPT = "Reply with the answer only."

# Ranking names are single capital letters (one token each): the hard part is comparing
# many two-digit scores, not copying a long name.
NAME_LETTERS = string.ascii_uppercase
# Players per level -> how many share the winner's tens digit on purpose. Random distinct
# scores do not grade the models by count: a model that ranks 2 players by their tens
# digit ranks 8 nearly as well (0.80, docs/zoo.md). The hardest level is a photo finish.
CLOSE_RIVALS: dict[int, int] = {2: 0, 4: 0, 8: 3}

PHRASINGS: dict[str, tuple[str, ...]] = {
    "arithmetic": (
        "What is {a} + {b}?",
        "Compute {a} plus {b}.",
        "Add {a} and {b}.",
        "{a} + {b} = ?",
        "Calculate the sum of {a} and {b}.",
    ),
    "reverse": (
        "Reverse the word {w}.",
        "Write {w} backwards.",
        "What is {w} spelled in reverse?",
        "Reverse this string: {w}",
    ),
    "ranking": (
        "Here are the scores:\n{records}\nWho has the highest score?",
        "Scores:\n{records}\nWhich player scored best?",
        "{records}\nWho won?",
        "Results:\n{records}\nName the top scorer.",
    ),
}


def _arithmetic(rng: random.Random, digits: int) -> tuple[dict[str, str], str, str]:
    low = 0 if digits == 1 else 10 ** (digits - 1)
    a, b = rng.randint(low, 10**digits - 1), rng.randint(low, 10**digits - 1)
    total = str(a + b)
    # Scratchpad: both operands reversed (least significant digit first), then the sum
    # reversed. Aligned, low-digit-first addition is what tiny models can learn (see
    # docs/zoo.md, "Why sums are written low digit first"); the answer is then the
    # reversed sum read backwards.
    scratch = f"{str(a)[::-1]}+{str(b)[::-1]}={total[::-1]}"
    return {"a": str(a), "b": str(b)}, total, scratch


def _reverse(rng: random.Random, length: int) -> tuple[dict[str, str], str, str]:
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(length))
    # Scratchpad: the word cut in halves, each half reversed, in swapped order; short
    # reversals are easier than long ones and the answer is then a copy.
    half = (length + 1) // 2
    head, tail = word[:half], word[half:]
    scratch = f"{head} {tail}\n{tail[::-1]} {head[::-1]}"
    return {"w": word}, word[::-1], scratch


def _ranking(
    rng: random.Random, players: int, close_finish: bool = True
) -> tuple[dict[str, str], str, str]:
    names = rng.sample(NAME_LETTERS, players)
    rivals = CLOSE_RIVALS[players] if close_finish else 0
    if rivals == 0:
        scores = rng.sample(range(10, 100), players)  # distinct, so the winner is unique
    else:
        # A photo finish: the winner and `rivals` others have consecutive scores in one
        # tens decade and the rest score lower, so only a precise comparison of the ones
        # digit names the winner. A model that compares tens digits (all that random
        # scores mostly need) finds it about 1 time in rivals + 1.
        tens = rng.randint(2, 9)
        start = rng.randint(0, 9 - rivals)
        top = [10 * tens + ones for ones in range(start, start + rivals + 1)]
        scores = top + rng.sample(range(10, 10 * tens), players - rivals - 1)
        rng.shuffle(scores)
    best = max(range(players), key=scores.__getitem__)
    records = "\n".join(f"{n} {s}" for n, s in zip(names, scores, strict=True))
    # Scratchpad: the winning record, restated. Picking the maximum is one attention step
    # the models either make or not; no written-out step made it easier (docs/zoo.md).
    scratch = f"{names[best]} {scores[best]}"
    return {"records": records}, names[best], scratch


_GENERATORS: dict[str, Callable[[random.Random, int], tuple[dict[str, str], str, str]]] = {
    "arithmetic": _arithmetic,
    "reverse": _reverse,
    "ranking": _ranking,
}


def generate_items(
    family: str,
    difficulty: int,
    n: int,
    seed: int,
    system_prompt: bool = False,
    close_finish: bool = True,
) -> list[TaskItem]:
    """`n` items of one family and difficulty; a pure function of its arguments.

    `close_finish=False` (ranking only, for training): random scores at every level, no
    photo finish. Not an evaluation level."""
    if family not in _GENERATORS:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    if difficulty not in DIFFICULTIES[family]:
        raise ValueError(
            f"unknown difficulty {difficulty} for {family}; expected {DIFFICULTIES[family]}"
        )
    # A str seed is hashed with SHA-512 by `random`: stable across runs and machines.
    rng = random.Random(f"{family}/{difficulty}/{seed}")
    generate = _GENERATORS[family]
    if family == "ranking" and not close_finish:
        generate = partial(generate, close_finish=False)
    items = []
    for i in range(n):
        fields, expected, scratch = generate(rng, difficulty)
        prompt = rng.choice(PHRASINGS[family]).format(**fields)
        messages = [{"role": "system", "content": SYSTEM_PROMPT}] if system_prompt else []
        messages.append({"role": "user", "content": prompt})
        items.append(
            TaskItem(
                id=f"{family}-d{difficulty}-s{seed}-{i}",
                family=family,
                difficulty=difficulty,
                messages=messages,
                expected=expected,
                scratchpad=scratch,
            )
        )
    return items


def mixed_suite(n_per_cell: int, seed: int, system_prompt: bool = False) -> list[TaskItem]:
    """`n_per_cell` items for every (family, difficulty) cell, families in FAMILIES order."""
    return [
        item
        for family in FAMILIES
        for difficulty in DIFFICULTIES[family]
        for item in generate_items(family, difficulty, n_per_cell, seed, system_prompt)
    ]


# Structured answers. Asked for JSON in the prompt alone, a chat model pretty-prints it (a
# newline and indent before every field); the zoo is trained on that same habit, so the
# structured-output lever (guided decoding with no optional whitespace) has the real
# saving to measure, not a hypothetical one.
JSON_INSTRUCTION = " Reply in JSON with the fields task and answer."
JSON_SCHEMA: dict = {
    "type": "object",
    "properties": {
        "task": {"type": "string", "enum": list(FAMILIES)},
        "answer": {"type": "string", "maxLength": 24},
    },
    "required": ["task", "answer"],
    "additionalProperties": False,
}


def as_json_request(item: TaskItem) -> TaskItem:
    """The same task, asking for a JSON object {task, answer}; `expected` is the JSON text
    a model writes unguided (indented). Compare parsed objects with
    `serving.evaluation.items.json_fields`."""
    messages = [dict(m) for m in item.messages]
    messages[-1]["content"] += JSON_INSTRUCTION
    expected = json.dumps({"task": item.family, "answer": item.expected}, indent=2)
    return item.model_copy(
        update={"id": item.id + "-json", "messages": messages, "expected": expected}
    )
