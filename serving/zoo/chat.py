"""The multi-turn family: facts stated across a long chat, asked for at the end.

Context compaction (lever 8) is only worth measuring when an answer depends on what the
older turns said. Here four players' scores arrive one per turn, scattered among filler
turns ("The crowd is getting louder now."), each answered with a short acknowledgement;
the last turn asks who leads. The answer is right only if every score survived whatever
was done to the history, so truncating the oldest turns loses it and a good summary
keeps it.

The compact note (what the zoo's summariser is trained to write, `note_for`) keeps one
line per fact, `NAME SCORE`, the ranking family's record format; the `facts` fallback of
the lever keeps the fact sentences themselves. The summariser is asked in the one
request format of `serving.compaction.format.summary_messages`: the summary prompt,
then the transcript of the turns to note (the lever appends their lines to its note).

Difficulty is the number of turns before the question (5 to 40). At about 40 tokens a
turn, 20 turns fit the zoo's 1,024-token context and 40 do not: uncompacted, those are
rejected; compacted, they fit.
"""

from __future__ import annotations

import random
import string

from serving.evaluation.items import TaskItem

CHAT_FAMILY = "chat"
CHAT_TURNS: tuple[int, ...] = (5, 10, 20, 40)
CHAT_PLAYERS = 4

FACT_PHRASINGS: tuple[str, ...] = (
    "{n} scored {s}.",
    "{n} got {s} points.",
    "Score for {n}: {s}.",
    "{n} finished with {s}.",
)
# Filler carries no digit and no one-letter name, so it holds no fact to keep.
FILLER: tuple[str, ...] = (
    "Let us take a short break before the next round.",
    "The crowd is getting louder now.",
    "Nice weather for a match today.",
    "Remind me to book the hall for next week.",
    "The referee is checking the rules again.",
    "Please keep the tally going.",
    "That was a long round.",
    "Everyone is waiting for the next game.",
)
ACKS: tuple[str, ...] = ("OK.", "Noted.", "Sure.", "Got it.")
QUESTIONS: tuple[str, ...] = (
    "Who has the highest score?",
    "Who leads?",
    "Which player is ahead?",
    "Who is winning so far?",
)


def fact_line(name: str, score: int) -> str:
    """One fact as the compact note writes it (the ranking family's record format)."""
    return f"{name} {score}"


def chat_turns(rng: random.Random, turns: int) -> tuple[list[dict[str, str]], str, list[str]]:
    """A chat of `turns` user/assistant pairs plus the question; returns (messages ending
    in the question, the expected answer, the note lines in the order stated)."""
    players = min(CHAT_PLAYERS, turns)
    names = rng.sample(string.ascii_uppercase, players)
    scores = rng.sample(range(10, 100), players)
    slots = set(rng.sample(range(turns), players))
    messages: list[dict[str, str]] = []
    lines: list[str] = []
    facts = iter(zip(names, scores, strict=True))
    for turn in range(turns):
        if turn in slots:
            name, score = next(facts)
            text = rng.choice(FACT_PHRASINGS).format(n=name, s=score)
            lines.append(fact_line(name, score))
        else:
            text = rng.choice(FILLER)
        messages.append({"role": "user", "content": text})
        messages.append({"role": "assistant", "content": rng.choice(ACKS)})
    messages.append({"role": "user", "content": rng.choice(QUESTIONS)})
    best = names[max(range(players), key=scores.__getitem__)]
    return messages, best, lines


def generate_chats(turns: int, n: int, seed: int) -> list[TaskItem]:
    """`n` chats of `turns` turns; a pure function of its arguments (as `tasks.generate_items`).
    `scratchpad` holds the compact note of the whole chat."""
    if turns < 1:
        raise ValueError("a chat needs at least one turn before the question")
    rng = random.Random(f"{CHAT_FAMILY}/{turns}/{seed}")
    items = []
    for i in range(n):
        messages, best, lines = chat_turns(rng, turns)
        items.append(TaskItem(
            id=f"{CHAT_FAMILY}-t{turns}-s{seed}-{i}", family=CHAT_FAMILY, difficulty=turns,
            messages=messages, expected=best, scratchpad="\n".join(lines)))
    return items


def note_for(messages: list[dict[str, str]]) -> str:
    """The compact note of a stretch of chat: `NAME SCORE` per fact, in order. What the
    zoo's summariser is trained to write (the lever never calls this: it asks a model)."""
    lines = []
    for message in messages:
        if message["role"] != "user":
            continue
        fact = parse_fact(message["content"])
        if fact is not None:
            lines.append(fact_line(*fact))
    return "\n".join(lines)


def parse_fact(text: str) -> tuple[str, int] | None:
    """(name, score) when `text` is one of the fact phrasings, else None."""
    words = text.replace(":", "").rstrip(".").split()
    digits = [w for w in words if w.isdigit()]
    names = [w for w in words if len(w) == 1 and w.isupper()]
    if len(digits) == 1 and len(names) == 1:
        return names[0], int(digits[0])
    return None
