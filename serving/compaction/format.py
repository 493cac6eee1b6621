"""The two message formats of compaction: what the summariser is asked, and where the
note goes in the compacted chat. One place, because the demo zoo's summariser is trained
on exactly these strings (serving/zoo/chat_train.py), as a real deployment would tune
`summary_prompt` for its own summariser model."""

from __future__ import annotations

DEFAULT_SUMMARY_PROMPT = (
    "Write short notes of the chat so far. Keep every name and number; drop the rest."
)
NOTE_HEADER = "Notes from earlier in this chat:\n"


def transcript(messages: list[dict[str, str]]) -> str:
    """Turns as plain lines (`user: ...`, `assistant: ...`), for the summariser to read."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def summary_messages(prompt: str, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The summariser's request: the notes of `messages` alone. The planner appends them
    to the note it has (notes are append-only), so a first note and an extension are the
    same request."""
    return [{"role": "system", "content": prompt},
            {"role": "user", "content": transcript(messages)}]


def with_note(system: str | None, note: str) -> dict[str, str]:
    """The system message that carries the note, after the client's own system prompt:
    one system message at the start is what every chat template accepts."""
    body = NOTE_HEADER + note
    return {"role": "system", "content": f"{system}\n\n{body}" if system else body}
