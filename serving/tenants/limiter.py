"""Per-key rpm and tpm: moving one-minute windows kept by the `limits` library.

`memory://` counts in this process (one gateway replica); `redis://` or `valkey://`
counts in one shared server, so a 10 rpm key gets 10 answers a minute however many
replicas serve it. The async API (`limits.aio`) with redis-py's asyncio client keeps the
gateway's event loop free (`coredis`, the library's default, is not installed);
Valkey speaks Redis's protocol, so `valkey://` goes through the same client.

A storage that cannot be reached raises `LimiterUnavailable`: the gateway answers 503
rather than letting traffic through unmetered.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string
from pydantic import BaseModel

#: Seconds to wait for the limiter's storage before calling it unavailable.
STORAGE_TIMEOUT_S = 1.0
#: Tries to record an answer's tokens when other replicas race for the same window.
TOKEN_RETRIES = 8


class LimiterUnavailable(RuntimeError):
    pass


class RateLimits(BaseModel):
    rpm: int | None = None
    tpm: int | None = None


class Window(BaseModel):
    limit: int
    remaining: int
    reset_s: float


def openai_duration(seconds: float) -> str:
    """OpenAI's reset format: `20ms`, `1s`, `6m0s`."""
    if seconds < 1:
        return f"{max(int(seconds * 1000), 1)}ms"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


class RateDecision(BaseModel):
    allowed: bool
    retry_after_s: int = 0
    reason: str | None = None  # "requests" or "tokens" when refused
    requests: Window | None = None
    tokens: Window | None = None

    def headers(self) -> dict[str, str]:
        """OpenAI's `x-ratelimit-*` trio for each limit the key has."""
        out: dict[str, str] = {}
        for name, window in (("requests", self.requests), ("tokens", self.tokens)):
            if window is not None:
                out[f"x-ratelimit-limit-{name}"] = str(window.limit)
                out[f"x-ratelimit-remaining-{name}"] = str(max(window.remaining, 0))
                out[f"x-ratelimit-reset-{name}"] = openai_duration(window.reset_s)
        return out


def _storage_uri(uri: str) -> tuple[str, dict]:
    scheme = uri.split("://", 1)[0]
    if scheme == "memory":
        return "async+memory://", {}
    if scheme in ("valkey", "valkeys"):  # same protocol, one client
        uri = "redis" + uri[len("valkey"):]
    options = {"implementation": "redispy", "socket_timeout": STORAGE_TIMEOUT_S,
               "socket_connect_timeout": STORAGE_TIMEOUT_S}
    return "async+" + uri, options


class RateLimiter:
    """One per gateway replica; the windows live in its storage."""

    def __init__(self, storage_uri: str, window_s: int = 60) -> None:
        uri, options = _storage_uri(storage_uri)
        self.storage = storage_from_string(uri, wrap_exceptions=True, **options)
        self.strategy = MovingWindowRateLimiter(self.storage)
        self.window_s = window_s

    def _item(self, amount: int, kind: str) -> RateLimitItem:
        return RateLimitItemPerSecond(amount, self.window_s, namespace=f"frugal-{kind}")

    async def _window(self, item: RateLimitItem, key_id: str) -> Window:
        stats = await self.strategy.get_window_stats(item, key_id)
        return Window(limit=item.amount, remaining=stats.remaining,
                      reset_s=max(stats.reset_time - time.time(), 0.0))

    async def admit(self, key_id: str, limits: RateLimits) -> RateDecision:
        """Count one request against rpm (a refused one is not counted), after checking
        that the tokens window is not already full: tokens are known only when the
        answer is done (`add_tokens`), so tpm refuses once the window holds `tpm`."""
        try:
            return await self._admit(key_id, limits)
        except StorageError as exc:
            raise LimiterUnavailable(f"rate limit storage: {exc}") from exc
        except OSError as exc:
            raise LimiterUnavailable(f"rate limit storage: {exc}") from exc

    async def _admit(self, key_id: str, limits: RateLimits) -> RateDecision:
        tokens = None
        if limits.tpm is not None:
            item = self._item(limits.tpm, "tpm")
            tokens = await self._window(item, key_id)
            if tokens.remaining <= 0:
                requests = (await self._window(self._item(limits.rpm, "rpm"), key_id)
                            if limits.rpm is not None else None)
                return RateDecision(allowed=False, reason="tokens",
                                    retry_after_s=max(math.ceil(tokens.reset_s), 1),
                                    requests=requests, tokens=tokens)
        requests = None
        if limits.rpm is not None:
            item = self._item(limits.rpm, "rpm")
            allowed = await self.strategy.hit(item, key_id)
            requests = await self._window(item, key_id)
            if not allowed:
                return RateDecision(allowed=False, reason="requests",
                                    retry_after_s=max(math.ceil(requests.reset_s), 1),
                                    requests=requests, tokens=tokens)
        return RateDecision(allowed=True, requests=requests, tokens=tokens)

    async def add_tokens(self, key_id: str, limits: RateLimits, tokens: int) -> None:
        """Record an answer's tokens. The window takes at most what it has room for
        (`limits` refuses a hit larger than the room left, all or nothing): a full
        window is what refuses the next request."""
        if limits.tpm is None or tokens <= 0:
            return
        item = self._item(limits.tpm, "tpm")
        try:
            # Another replica may fill the window between the read and the hit, and
            # then the hit is refused whole: read the room again and retry, so that
            # two answers settling at once are both counted (up to the window's size).
            for _ in range(TOKEN_RETRIES):
                room = (await self.strategy.get_window_stats(item, key_id)).remaining
                if room <= 0 or await self.strategy.hit(item, key_id, cost=min(tokens, room)):
                    return
        except (StorageError, OSError) as exc:
            raise LimiterUnavailable(f"rate limit storage: {exc}") from exc
