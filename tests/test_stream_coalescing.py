"""Unit tests of the model replica's stream coalescing (`serving.engine._coalesce`): the
batches that cross the gateway hop. Pure asyncio with a timed chunk source, no engine;
the real streaming path is covered by the server tests (tests/test_api.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

import pytest

from serving.engine import _coalesce


async def _ticking(n: int, every_s: float, fail_at: int | None = None) -> AsyncGenerator[str]:
    """`n` chunks, one every `every_s` seconds, like an engine decoding one token a step."""
    for i in range(n):
        await asyncio.sleep(every_s)
        if i == fail_at:
            raise RuntimeError("engine died")
        yield f"c{i}"


async def _collect(n: int, every_s: float, interval_s: float) -> list[tuple[float, list[str]]]:
    started = time.perf_counter()
    out = []
    async for batch in _coalesce(_ticking(n, every_s), interval_s):
        out.append((time.perf_counter() - started, batch))
    return out


def test_without_interval_every_chunk_arrives_in_order() -> None:
    batches = asyncio.run(_collect(6, 0.005, 0.0))
    assert [c for _, batch in batches for c in batch] == [f"c{i}" for i in range(6)]


def test_interval_batches_after_two_immediate_chunks() -> None:
    batches = asyncio.run(_collect(40, 0.005, 0.05))
    chunks = [c for _, batch in batches for c in batch]
    assert chunks == [f"c{i}" for i in range(40)]  # nothing lost, nothing reordered
    assert [len(b) for _, b in batches[:2]] == [1, 1]  # role + first token at once
    assert batches[0][0] < 0.04  # the first chunk did not wait for the interval
    # 40 chunks 5 ms apart with a 50 ms flush: a handful of messages instead of 40.
    assert len(batches) <= 10
    assert max(len(b) for _, b in batches) >= 5


def test_the_end_of_a_stream_is_not_held_back() -> None:
    started = time.perf_counter()
    batches = asyncio.run(_collect(3, 0.001, 0.5))
    assert [c for _, b in batches for c in b] == ["c0", "c1", "c2"]
    assert time.perf_counter() - started < 0.3  # far less than the 0.5 s interval


def test_an_engine_failure_mid_stream_surfaces_after_the_chunks_before_it() -> None:
    async def run() -> list[str]:
        seen: list[str] = []
        async for batch in _coalesce(_ticking(5, 0.002, fail_at=3), 0.01):
            seen += batch
        return seen

    with pytest.raises(RuntimeError, match="engine died"):
        asyncio.run(run())
