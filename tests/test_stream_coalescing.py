"""Unit tests of the model replica's stream coalescing (`serving.engine._coalesce`): the
batches that cross the gateway hop. Pure asyncio with a timed chunk source, no engine;
the real streaming path is covered by the server tests (tests/test_api.py).

The tests run on an event loop with a virtual clock (`VirtualClockLoop`): time only moves
when every task is waiting, and then jumps straight to the next timer. So `sleep`,
`wait_for` timeouts and `loop.time()` in `_coalesce` are exact and a noisy machine cannot
make a test flaky; the flush timing is asserted on that clock, not on the wall clock.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import AsyncGenerator, Coroutine
from typing import Any, TypeVar

import pytest

from serving.engine import _coalesce

T = TypeVar("T")


class _Clock:
    now = 0.0


class _JumpingSelector(selectors.DefaultSelector):
    """Never sleeps: a wait for the next timer advances the virtual clock instead."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self.clock = clock

    def select(self, timeout: float | None = None):  # type: ignore[override]
        if timeout is None:  # nothing scheduled and nothing ready: the test would hang
            raise RuntimeError("deadlock: no task can make progress")
        if timeout > 0:
            self.clock.now += timeout
        return super().select(0)


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.clock = _Clock()
        super().__init__(selector=_JumpingSelector(self.clock))

    def time(self) -> float:
        return self.clock.now


def run(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(coro)


async def _ticking(n: int, every_s: float, fail_at: int | None = None) -> AsyncGenerator[str]:
    """`n` chunks, one every `every_s` seconds, like an engine decoding one token a step."""
    for i in range(n):
        await asyncio.sleep(every_s)
        if i == fail_at:
            raise RuntimeError("engine died")
        yield f"c{i}"


async def _collect(
    chunks: AsyncGenerator[str], interval_s: float
) -> list[tuple[float, list[str]]]:
    """Each batch with the (virtual) time it was yielded, from the start of the stream."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    return [(loop.time() - started, batch) async for batch in _coalesce(chunks, interval_s)]


def test_the_clock_is_virtual() -> None:
    async def slept() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(3600)
        return loop.time() - started

    assert run(slept()) == pytest.approx(3600)  # an hour, instantly


def test_without_interval_every_chunk_arrives_on_its_own() -> None:
    batches = run(_collect(_ticking(6, 0.005), 0.0))
    assert [b for _, b in batches] == [[f"c{i}"] for i in range(6)]
    # Nothing waits: each chunk leaves when it is produced (one every 5 ms).
    assert [t for t, _ in batches] == pytest.approx([0.005 * (i + 1) for i in range(6)])


def test_interval_batches_after_two_immediate_chunks() -> None:
    batches = run(_collect(_ticking(40, 0.005), 0.05))
    chunks = [c for _, batch in batches for c in batch]
    assert chunks == [f"c{i}" for i in range(40)]  # nothing lost, nothing reordered
    # Role + first token go out at once, each when it is produced: not held for the interval.
    assert [b for _, b in batches[:2]] == [["c0"], ["c1"]]
    assert [t for t, _ in batches[:2]] == pytest.approx([0.005, 0.010])
    # After them, one message per 50 ms flush interval, gathering what was produced.
    times = [t for t, _ in batches]
    gaps = [later - earlier for earlier, later in zip(times[1:-2], times[2:-1], strict=True)]
    assert all(gap >= 0.05 - 1e-9 for gap in gaps), gaps
    # 40 chunks 5 ms apart over 0.2 s: 2 at once, then about 0.19 s / 50 ms batches.
    assert 5 <= len(batches) <= 7, [len(b) for _, b in batches]
    assert max(len(b) for _, b in batches) >= 9


def test_the_end_of_a_stream_is_not_held_back() -> None:
    batches = run(_collect(_ticking(3, 0.001), 0.5))
    assert [c for _, b in batches for c in b] == ["c0", "c1", "c2"]
    # The last chunk was waiting for the 0.5 s flush; the stream's end releases it at once.
    assert batches[-1][0] == pytest.approx(0.003)


def test_first_chunks_are_sent_before_the_engine_makes_more() -> None:
    """Causality, not timing: the source produces chunk i+1 only after the consumer has
    received chunk i, so a coalescer that held the first two back for more would never
    receive more and would only release them at its (hour-long) flush."""
    async def scenario() -> list[tuple[float, list[str]]]:
        received = [asyncio.Event() for _ in range(2)]

        async def gated() -> AsyncGenerator[str]:
            for i in range(2):
                yield f"c{i}"
                await received[i].wait()
            yield "c2"

        out = []
        loop = asyncio.get_running_loop()
        started = loop.time()
        async for batch in _coalesce(gated(), 3600.0):
            out.append((loop.time() - started, batch))
            if len(out) <= 2:
                received[len(out) - 1].set()
        return out

    batches = run(scenario())
    assert [b for _, b in batches] == [["c0"], ["c1"], ["c2"]]
    assert [t for t, _ in batches] == [0.0, 0.0, 0.0]  # no flush interval was waited out


def test_an_engine_failure_mid_stream_surfaces_after_the_chunks_before_it() -> None:
    async def scenario(seen: list[str]) -> None:
        async for batch in _coalesce(_ticking(5, 0.002, fail_at=3), 0.01):
            seen += batch

    seen: list[str] = []
    with pytest.raises(RuntimeError, match="engine died"):
        run(scenario(seen))
    assert seen == ["c0", "c1", "c2"]
