"""Compaction notes by the hash of the chat prefix they summarise (lever 8's cache).

The next turn of a conversation resends the same prefix, so its note is found by hash and
reused: the summariser runs about once per few turns, and the compacted prefix stays
byte-identical, which keeps vLLM's prefix cache hitting. Two levels: a bounded LRU in this
gateway replica, and the store's `compaction_notes` table when there is a store (shared by
every replica, kept across restarts; rows older than `STORE_TTL_S` are pruned).

A store that cannot take writes (disk full, read-only) only costs the cache: the note
is used for this request and kept in memory, not in the store, and a lookup the store
refuses is a miss; the request goes on (counted in `frugal_store_errors_total`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from cachetools import LRUCache
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from serving import metrics
from serving.store.faults import StoreUnavailable
from serving.store.tables import CompactionNoteRow

logger = logging.getLogger("frugal.compaction")

MEMORY_ENTRIES = 4096
STORE_TTL_S = 7 * 24 * 3600
PRUNE_EVERY = 256  # writes between prunes of the store table


class NoteCache:
    def __init__(self, sessions: sessionmaker[Session] | None,
                 memory_entries: int = MEMORY_ENTRIES) -> None:
        self.sessions = sessions
        self.memory: LRUCache[str, str] = LRUCache(maxsize=memory_entries)
        self._writes = 0

    async def longest(self, keys: list[str]) -> tuple[int, str] | None:
        """(index in `keys`, note) of the last key that has a note, or None."""
        for index in range(len(keys) - 1, -1, -1):
            note = self.memory.get(keys[index])
            if note is not None:
                return index, note
        if self.sessions is None or not keys:
            return None
        try:
            found = await asyncio.to_thread(self._lookup, keys)
        except StoreUnavailable as exc:
            self._refused(exc, "looked up")
            return None
        for index in range(len(keys) - 1, -1, -1):
            if keys[index] in found:
                self.memory[keys[index]] = found[keys[index]]
                return index, found[keys[index]]
        return None

    async def put(self, key: str, note: str) -> None:
        self.memory[key] = note
        if self.sessions is not None:
            try:
                await asyncio.to_thread(self._save, key, note)
            except StoreUnavailable as exc:
                self._refused(exc, "stored")

    @staticmethod
    def _refused(exc: StoreUnavailable, what: str) -> None:
        metrics.STORE_ERRORS.labels(exc.fault, "compaction").inc()
        logger.warning("compaction note not %s: %s", what, exc.fault.message)

    def _lookup(self, keys: list[str]) -> dict[str, str]:
        assert self.sessions is not None
        with self.sessions() as session:
            rows = session.execute(select(CompactionNoteRow.key, CompactionNoteRow.note).where(
                CompactionNoteRow.key.in_(keys)))
            return {key: note for key, note in rows}

    def _save(self, key: str, note: str) -> None:
        assert self.sessions is not None
        now = int(time.time())
        with self.sessions.begin() as session:
            session.merge(CompactionNoteRow(key=key, note=note, created_at=now))
            self._writes += 1
            if self._writes % PRUNE_EVERY == 0:
                session.execute(delete(CompactionNoteRow).where(
                    CompactionNoteRow.created_at < now - STORE_TTL_S))
