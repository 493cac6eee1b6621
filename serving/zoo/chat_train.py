"""Training examples of the multi-turn chat family (`chat.py`), for the compaction lever.

One model learns both sides of compaction:
- answering a chat from its full history, or from a compacted one: a system message
  carrying the note (`NAME SCORE` lines as the summariser writes them, or the fact
  sentences as the `facts` fallback keeps them), then the last few turns verbatim;
- writing the note: from the summary prompt and the transcript of a stretch of turns
  (from the chat's start or from its middle), the note of that stretch alone (the lever
  appends it to the note it has: notes are append-only).
Intermediate turns are answered with a short acknowledgement, so a replayed chat costs a
few output tokens per turn, as a chat client's would.
"""

from __future__ import annotations

import random

from serving.compaction.format import DEFAULT_SUMMARY_PROMPT as SUMMARY_PROMPT
from serving.compaction.format import summary_messages, with_note
from serving.zoo.chat import chat_turns, note_for, parse_fact
from serving.zoo.tasks import SYSTEM_PROMPT

# Longest chat trained uncompacted: about 40 tokens a turn keeps it inside 1,024 tokens.
FULL_MAX_TURNS = 20
COMPACT_MAX_TURNS = 40
MAX_KEPT_TURNS = 4
MAX_SUMMARY_TURNS = 12
# Kinds of example and their shares.
# Writing the note is the hardest part (copying each name and score exactly): 2,000
# steps at a 0.28 share wrote 60% of notes exactly (when notes were rewritten whole).
KINDS: dict[str, float] = {"full": 0.3, "note": 0.2, "facts": 0.1, "summary": 0.4}


def _fact_sentences(messages: list[dict[str, str]]) -> str:
    return "\n".join(m["content"] for m in messages
                     if m["role"] == "user" and parse_fact(m["content"]) is not None)


def chat_example(rng: random.Random) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one chat-family example, drawn from `rng`."""
    from serving.zoo.train import example_from

    kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
    turns = rng.randint(1, FULL_MAX_TURNS if kind == "full" else COMPACT_MAX_TURNS)
    messages, best, _ = chat_turns(rng, turns)
    system = SYSTEM_PROMPT if rng.random() < 0.2 else None
    if kind == "summary":
        # The note of turns [start, end), from the chat's start or from its middle.
        end = rng.randint(1, turns)
        start = rng.randint(max(0, end - MAX_SUMMARY_TURNS), end - 1)
        stretch = messages[2 * start:2 * end]
        return example_from(summary_messages(SUMMARY_PROMPT, stretch), note_for(stretch))
    if kind == "full" and rng.random() < 0.15:  # an intermediate turn: acknowledge it
        cut = 2 * rng.randrange(turns) + 1
        head = [{"role": "system", "content": system}] if system else []
        return example_from(head + messages[:cut], messages[cut]["content"])
    if kind == "full":
        head = [{"role": "system", "content": system}] if system else []
        return example_from(head + messages, best)
    kept = rng.randint(0, min(MAX_KEPT_TURNS, turns))
    boundary = len(messages) - 1 - 2 * kept
    older = messages[:boundary]
    note = note_for(older) if kind == "note" else _fact_sentences(older)
    return example_from([with_note(system, note), *messages[boundary:]], best)
