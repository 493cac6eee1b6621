"""The rpm/tpm limiter (serving/tenants/limiter.py) on memory and on a real Redis server
(tests/redis_server.py): exact counts, refusals that do not count, OpenAI's headers, one
count shared by two limiters (two gateway replicas), and a storage that is down."""

from __future__ import annotations

import asyncio
import multiprocessing
import uuid

import pytest

from serving.tenants.limiter import (
    LimiterUnavailable,
    RateLimiter,
    RateLimits,
    openai_duration,
)


@pytest.fixture(params=["memory", "redis"])
def storage(request) -> str:
    return "memory://" if request.param == "memory" else request.getfixturevalue("redis_url")


def _key() -> str:
    return "key_" + uuid.uuid4().hex[:12]


def test_rpm_is_exact_and_refusals_do_not_count(storage: str) -> None:
    async def go():
        limiter, key, limits = RateLimiter(storage), _key(), RateLimits(rpm=10)
        decisions = [await limiter.admit(key, limits) for _ in range(15)]
        return decisions

    decisions = asyncio.run(go())
    assert [d.allowed for d in decisions] == [True] * 10 + [False] * 5
    assert [d.requests.remaining for d in decisions[:10]] == list(range(9, -1, -1))
    refused = decisions[-1]
    assert refused.reason == "requests" and 1 <= refused.retry_after_s <= 60
    headers = refused.headers()
    assert headers["x-ratelimit-limit-requests"] == "10"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert "x-ratelimit-limit-tokens" not in headers


def test_a_full_tokens_window_refuses_until_it_empties(storage: str) -> None:
    async def go():
        limiter, key, limits = RateLimiter(storage, window_s=2), _key(), RateLimits(tpm=100)
        first = await limiter.admit(key, limits)
        await limiter.add_tokens(key, limits, 250)  # one answer larger than the window
        second = await limiter.admit(key, limits)
        await asyncio.sleep(2.2)  # the 2 s window passes
        third = await limiter.admit(key, limits)
        return first, second, third

    first, second, third = asyncio.run(go())
    assert first.allowed and first.headers()["x-ratelimit-remaining-tokens"] == "100"
    assert not second.allowed and second.reason == "tokens"
    assert second.headers()["x-ratelimit-remaining-tokens"] == "0"
    assert third.allowed


def test_unlimited_keys_pass_without_headers() -> None:
    decision = asyncio.run(RateLimiter("memory://").admit(_key(), RateLimits()))
    assert decision.allowed and decision.headers() == {}


def test_openai_duration_format() -> None:
    assert openai_duration(0.02) == "20ms"
    assert openai_duration(1.0) == "1s"
    assert openai_duration(59.2) == "1m0s"
    assert openai_duration(360) == "6m0s"


def _replica(args: tuple[str, str, int]) -> int:
    """One process playing a gateway replica: how many of its requests were allowed."""
    url, key, n = args

    async def go() -> int:
        limiter = RateLimiter(url)
        return sum([(await limiter.admit(key, RateLimits(rpm=10))).allowed for _ in range(n)])
    return asyncio.run(go())


def test_two_replicas_on_one_redis_share_one_count(redis_url: str) -> None:
    key = _key()
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        allowed = pool.map(_replica, [(redis_url, key, 15), (redis_url, key, 15)])
    assert sum(allowed) == 10, allowed


def test_memory_storage_counts_per_process(tmp_path) -> None:
    """What `memory://` means with two replicas: each counts alone (hence Redis)."""
    key = _key()
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        allowed = pool.map(_replica, [("memory://", key, 15), ("memory://", key, 15)])
    assert allowed == [10, 10]


def test_a_redis_that_is_down_is_unavailable_not_unlimited() -> None:
    from tests.redis_server import RedisServer, find_binary

    binary = find_binary()
    assert binary is not None, "no redis-server: install the test extra"
    server = RedisServer(binary)
    url = server.start()

    async def go():
        limiter, key = RateLimiter(url), _key()
        assert (await limiter.admit(key, RateLimits(rpm=5))).allowed
        server.stop()
        with pytest.raises(LimiterUnavailable):
            await limiter.admit(key, RateLimits(rpm=5))
        with pytest.raises(LimiterUnavailable):
            await limiter.add_tokens(key, RateLimits(tpm=5), 3)

    try:
        asyncio.run(go())
    finally:
        server.stop()


def test_tokens_settled_at_once_by_two_limiters_are_both_counted(redis_url: str) -> None:
    """Two replicas recording 80 tokens each on a 100 tpm key at the same moment: the
    window ends full (one hit is refused whole and retried with the room left), on
    every one of several fresh keys."""
    async def go():
        limits = RateLimits(tpm=100)
        first, second = RateLimiter(redis_url), RateLimiter(redis_url)
        left = []
        for _ in range(5):
            key = _key()
            await asyncio.gather(first.add_tokens(key, limits, 80),
                                 second.add_tokens(key, limits, 80))
            left.append((await first.admit(key, limits)).tokens.remaining)
        return left

    assert asyncio.run(go()) == [0] * 5
