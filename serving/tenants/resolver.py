"""Who is calling: a bearer token to its key record, for every request of a replica.

Two sources, both compared by SHA-256 hash only (the token itself is never kept):
- the store's keys (`frugal keys create`), looked up once per `tenants.key_cache_s`
  per token, so a key revoked on one replica stops working on all within that time
  and a hot key costs one database read per replica per period, not per request;
- the YAML's `gateway.api_keys` (and the Helm Secret that fills them), hashed at load:
  keys without budget, limits or model list, whose label is the hash prefix they have
  always had in metrics and as the owner of files and batches.

Unknown tokens are cached too (as misses), so a client retrying a bad key does not
read the database on every try; the cache holds at most `MAX_CACHED` tokens.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from serving.cost import key_label
from serving.tenants.keys import KeyRecord, hash_key
from serving.tenants.store import KeyStore

MAX_CACHED = 10_000


def static_record(token: str) -> KeyRecord:
    """A YAML key as a record: everything allowed, labelled as before tenants existed."""
    label = key_label(token)
    return KeyRecord(id=label, name=f"yaml-{label}", hint="frg-…" + token[-4:],
                     created_at=0, revoked_at=None)


class KeyResolver:
    """Token -> key record (None: unknown), with a short per-replica cache."""

    def __init__(self, static_keys: list[str], store: KeyStore | None,
                 cache_s: float) -> None:
        self.static = {hash_key(token): static_record(token) for token in static_keys}
        self.store = store
        self.cache_s = cache_s
        self._cache: OrderedDict[str, tuple[float, KeyRecord | None]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """False: no keys anywhere, every caller is anonymous (local use)."""
        return bool(self.static) or self.store is not None

    async def resolve(self, token: str | None) -> KeyRecord | None:
        if not token:
            return None
        digest = hash_key(token)
        if digest in self.static:
            return self.static[digest]
        if self.store is None:
            return None
        return await self._cached(digest, self.store.find, token)

    async def by_id(self, key_id: str) -> KeyRecord | None:
        """The record of a key id (batch lines run under their owner's key)."""
        for record in self.static.values():
            if record.id == key_id:
                return record
        if self.store is None:
            return None
        return await self._cached("id:" + key_id, self.store.get, key_id)

    async def _cached(self, slot: str, load, arg: str) -> KeyRecord | None:  # noqa: ANN001
        """`load(arg)` from the store (in a thread), trusted for `cache_s`."""
        now = time.monotonic()
        hit = self._cache.get(slot)
        if hit is not None and hit[0] > now:
            self._cache.move_to_end(slot)
            return hit[1]
        record = await asyncio.to_thread(load, arg)
        self._remember(slot, now + self.cache_s, record)
        return record

    def _remember(self, digest: str, until: float, record: KeyRecord | None) -> None:
        self._cache[digest] = (until, record)
        self._cache.move_to_end(digest)
        while len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)
