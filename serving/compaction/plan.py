"""How a long chat is compacted: which turns stay, which become the note, and when the
summariser is called (lever 8, docs/compaction.md).

A chat is its head (the leading system/developer messages, always verbatim) and its body.
A turn starts at a user message. Over the budget, the body before the last
`keep_last_turns` turns and the new message is replaced by a note in the head's system
message (`format.with_note`):
1. the longest prefix with a cached note is tried first: if the chat then fits, nothing
   is summarised (a cache hit, and the same bytes as the previous turn);
2. otherwise the summariser notes the turns since that note, up to the kept tail,
   `chunk_tokens` of transcript per call, and each call's lines are appended to the
   note (the older lines are never rewritten); each result is cached;
   With `verify_note`, each call's lines are checked against the turns they note
   (`verified_lines`): a line with a number the turns never said is dropped, and a fact
   sentence whose number or name the lines lack is added verbatim;
3. without a summariser, or when it fails, `facts` keeps the older sentences that carry
   numbers or names as the note, and `truncate` drops the oldest turns until it fits.
The chat is never made to fail by compaction, except a budget that even the head alone
exceeds (a 400 naming `frugal.compact.budget_tokens`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from serving.compaction.counter import PromptCounter
from serving.compaction.format import summary_messages, transcript, with_note
from serving.compaction.notes import NoteCache
from serving.config import CompactionSettings
from serving.errors import APIError

logger = logging.getLogger("frugal.compaction")

Messages = list[dict[str, str]]
#: Writes a note: (summariser request messages) -> note text; raises when it cannot.
Summarise = Callable[[Messages], Awaitable[str]]

HEAD_ROLES = ("system", "developer")
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]?")
_NAME_AFTER_FIRST = re.compile(r"\S\s+[A-Z]")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_WORD = re.compile(r"[A-Za-z][\w'-]*")


@dataclass
class Compaction:
    """What compaction did to one request's chat."""

    method: str  # summary | cached | facts | truncate
    messages: Messages
    original_tokens: int
    compacted_tokens: int
    folded_messages: int  # older messages replaced by the note (or dropped)
    summariser_calls: int = 0
    fallback_reason: str | None = None
    note_repairs: int = 0  # summariser lines dropped or fact sentences added (verify_note)

    @property
    def removed_tokens(self) -> int:
        return max(0, self.original_tokens - self.compacted_tokens)

    def header(self) -> str:
        """`x-frugal-compaction`: method, tokens before and after, summariser calls."""
        text = (f"{self.method}; tokens={self.original_tokens}->{self.compacted_tokens}; "
                f"folded={self.folded_messages}; calls={self.summariser_calls}")
        text += f"; repaired={self.note_repairs}" if self.note_repairs else ""
        return text + (f"; fallback={self.fallback_reason}" if self.fallback_reason else "")


def fact_sentences(messages: Messages) -> str:
    """The `facts` note: sentences that carry a number or a name (a capitalised word
    after the first), one per line, in order. Hand-written: no library keeps facts."""
    return "\n".join(_fact_sentence_list(messages))


def _fact_sentence_list(messages: Messages) -> list[str]:
    kept = []
    for message in messages:
        for sentence in _SENTENCE.findall(message["content"]):
            sentence = sentence.strip()
            if sentence and (any(c.isdigit() for c in sentence)
                             or _NAME_AFTER_FIRST.search(sentence)):
                kept.append(sentence)
    return kept


def fact_tokens(sentence: str) -> set[str]:
    """What a note must keep of a fact sentence: its numbers and its names (capitalised
    words after the first; the first too when it is all capitals, e.g. `A scored 54.`)."""
    words = _WORD.findall(sentence)
    names = {w for i, w in enumerate(words) if w[0].isupper() and (i > 0 or w.isupper())}
    return set(_NUMBER.findall(sentence)) | names


def verified_lines(lines: str, noted: Messages) -> tuple[str, int]:
    """A summariser's lines for the turns `noted`, checked against them: a line holding a
    number the turns never said is dropped (made up), and a fact sentence whose number or
    name no kept line holds is added verbatim (left out). Returns the lines and how many
    were dropped or added. Hand-written: a small summariser loses or invents facts, and
    an answer that depends on a lost number is wrong however short the note is."""
    said = set(_NUMBER.findall(" ".join(m["content"] for m in noted)))
    written = [line for line in lines.splitlines() if line.strip()]
    kept = [line for line in written if set(_NUMBER.findall(line)) <= said]
    held = {token for line in kept for token in (*_NUMBER.findall(line), *_WORD.findall(line))}
    added = [s for s in _fact_sentence_list(noted) if not fact_tokens(s) <= held]
    return "\n".join(kept + added), len(written) - len(kept) + len(added)


def _prefix_keys(namespace: str, head: Messages, body: Messages, bounds: list[int]) -> list[str]:
    """The cache key of the chat prefix ending before each of `bounds` (ascending)."""
    digest = hashlib.sha256(json.dumps([namespace, head]).encode())
    keys, done = [], 0
    for bound in bounds:
        for message in body[done:bound]:
            digest.update(json.dumps(message, sort_keys=True).encode())
        done = bound
        keys.append(digest.copy().hexdigest())
    return keys


class Compactor:
    def __init__(self, counter: PromptCounter, notes: NoteCache) -> None:
        self.counter = counter
        self.notes = notes

    async def compact(self, model: str, messages: Messages, settings: CompactionSettings,
                      summarise: Summarise | None, scope: str = "") -> Compaction | None:
        """The compacted chat, or None when it already fits (or nothing older exists).
        Cached notes are shared only among requests of the same `scope`."""
        original = await self.counter.chat(model, messages)
        if original <= settings.budget_tokens:
            return None
        split = next((i for i, m in enumerate(messages) if m["role"] not in HEAD_ROLES),
                     len(messages))
        head, body = messages[:split], messages[split:]
        if head and await self.counter.chat(model, head) > settings.budget_tokens:
            raise APIError(400, f"frugal.compact.budget_tokens ({settings.budget_tokens}) "
                           "cannot be met: the system prompt alone is longer",
                           param="frugal.compact.budget_tokens")
        users = [i for i, m in enumerate(body) if m["role"] == "user"]
        if not users or users[-1] == 0:
            return None  # only the new message: nothing older to fold
        tail = users[max(0, len(users) - 1 - settings.keep_last_turns)]
        bounds = [b for b in users if 0 < b <= tail]
        if not bounds:
            return None
        reason = None
        if summarise is not None:
            try:
                return await self._summarised(model, head, body, bounds, settings,
                                              summarise, original, scope)
            except Exception as exc:  # the request must not fail because of compaction
                reason = _reason(exc)
                logger.warning("summariser failed for %s (%s): using %s", model, reason,
                               settings.fallback)
        if settings.fallback == "truncate":
            result = await self._truncated(model, head, body, bounds, settings, original)
        else:
            note = fact_sentences(body[: bounds[-1]])
            result = await self._result("facts", model, head, note, body, bounds[-1], original)
        result.fallback_reason = reason
        return result

    async def _summarised(self, model: str, head: Messages, body: Messages, bounds: list[int],
                          settings: CompactionSettings, summarise: Summarise,
                          original: int, scope: str) -> Compaction:
        namespace = f"{scope}\n{settings.summariser}\n{settings.summary_prompt}"
        keys = _prefix_keys(namespace, head, body, bounds)
        cached = await self.notes.longest(keys)
        if cached is not None:
            index, note = cached
            result = await self._result("cached", model, head, note, body, bounds[index],
                                        original)
            if result.compacted_tokens <= settings.budget_tokens or index == len(bounds) - 1:
                return result
        start, note = (bounds[cached[0]], cached[1]) if cached else (0, "")
        calls = repairs = 0
        for end in await self._chunks(settings, body, start, bounds):
            # Append-only: the summariser notes only the new turns, and the old lines
            # stay as they were, so an error is never copied forward and the note's
            # bytes (and vLLM's prefix cache of them) stay stable as it grows.
            lines = (await summarise(summary_messages(
                settings.summary_prompt, body[start:end]))).strip()
            if settings.verify_note:
                lines, fixed = verified_lines(lines, body[start:end])
                repairs += fixed
            note = "\n".join(part for part in (note, lines) if part)
            calls += 1
            await self.notes.put(keys[bounds.index(end)], note)
            start = end
        result = await self._result("summary", model, head, note, body, bounds[-1], original)
        result.summariser_calls = calls
        result.note_repairs = repairs
        return result

    async def _chunks(self, settings: CompactionSettings, body: Messages, start: int,
                      bounds: list[int]) -> list[int]:
        """Ends of the stretches folded per summariser call: turn boundaries after
        `start`, each stretch at most `chunk_tokens` of transcript (at least one turn)."""
        assert settings.summariser is not None
        ends, begin = [], start
        candidates = [b for b in bounds if b > start]
        for i, bound in enumerate(candidates):
            following = candidates[i + 1] if i + 1 < len(candidates) else None
            if following is None:
                ends.append(bound)
                break
            size = await self.counter.text(settings.summariser,
                                           transcript(body[begin:following]))
            if size > settings.chunk_tokens:
                ends.append(bound)
                begin = bound
        return ends

    async def _truncated(self, model: str, head: Messages, body: Messages, bounds: list[int],
                         settings: CompactionSettings, original: int) -> Compaction:
        for bound in bounds:
            tokens = await self.counter.chat(model, head + body[bound:])
            if tokens <= settings.budget_tokens:
                return Compaction("truncate", head + body[bound:], original, tokens, bound)
        tokens = await self.counter.chat(model, head + body[bounds[-1]:])
        return Compaction("truncate", head + body[bounds[-1]:], original, tokens, bounds[-1])

    async def _result(self, method: str, model: str, head: Messages, note: str, body: Messages,
                      bound: int, original: int) -> Compaction:
        compacted = _with_note(head, note) + body[bound:]
        tokens = await self.counter.chat(model, compacted)
        return Compaction(method, compacted, original, tokens, bound)


def _with_note(head: Messages, note: str) -> Messages:
    if not note:
        return list(head)
    if head and head[0]["role"] == "system":
        return [with_note(head[0]["content"], note), *head[1:]]
    return [with_note(None, note), *head]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, APIError):
        return f"status {exc.status}"
    return type(exc).__name__
