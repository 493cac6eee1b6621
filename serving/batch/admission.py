"""Admission of batch lines: interactive traffic keeps its latency.

vLLM's priority scheduling only reorders its waiting queue: a high-priority request still
waits while every sequence slot is busy (vLLM issue #24365), and every batch sequence in
a step slows that step for everyone. So frugal decides itself how many batch lines are
in flight: `idle_in_flight` when no interactive request has run for `quiet_s`, else
`busy_in_flight` (headroom for interactive requests, docs/batch.md). The counts are per
gateway replica: each replica sees the interactive requests it serves.

A cap that drops does not wait for the lines above it to finish (a line holds its
sequence slot for its whole generation, a second or more): the moment an interactive
request arrives, the newest lines above the busy cap are preempted, their engine
requests aborted, and they stay pending to run again later. Their answers never
existed, so no line is answered twice; the cost is their partial work
(`frugal_batch_lines_preempted_total`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from serving import metrics
from serving.config import BatchConfig


class InteractiveLoad:
    """Interactive requests in flight on this replica, and when the last one ended."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.last_seen = float("-inf")
        self.on_enter: list[Callable[[], object]] = []  # admission's preemption

    def enter(self) -> None:
        self.in_flight += 1
        self.last_seen = time.monotonic()
        for react in self.on_enter:
            react()

    def leave(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self.last_seen = time.monotonic()

    def quiet_for(self) -> float:
        return 0.0 if self.in_flight else time.monotonic() - self.last_seen


class BatchAdmission:
    """A slot limiter whose size follows the interactive load, and that preempts.

    Hand-written: no library limiter resizes with an outside signal or takes slots back.
    """

    def __init__(self, config: BatchConfig, load: InteractiveLoad) -> None:
        self.config = config
        self.load = load
        self.in_use = 0
        self.preempted_count = 0
        self._holders: dict[asyncio.Task[None], None] = {}  # running lines, oldest first
        self._preempted: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        load.on_enter.append(self.shed)

    def cap(self) -> int:
        if self.load.quiet_for() >= self.config.quiet_s:
            return self.config.idle_in_flight
        return self.config.busy_in_flight

    async def acquire(self) -> None:
        while self.in_use >= self.cap():
            self._changed.clear()
            try:  # re-check at least every 50 ms: the cap moves with the load
                await asyncio.wait_for(self._changed.wait(), 0.05)
            except TimeoutError:
                pass
        self.in_use += 1
        metrics.BATCH_LINES_IN_FLIGHT.inc()

    def hold(self, task: asyncio.Task[None]) -> None:
        """The line running in `task` holds the slot just acquired (it may be preempted)."""
        self._holders[task] = None

    def release(self, task: asyncio.Task[None] | None) -> None:
        self.in_use -= 1
        metrics.BATCH_LINES_IN_FLIGHT.dec()
        if task is not None:
            self._holders.pop(task, None)
            self._preempted.discard(task)
        self._changed.set()

    def shed(self) -> int:
        """Preempt the newest lines above the current cap (they have done the least
        work); returns how many."""
        if not self.config.preempt:
            return 0
        excess = len(self._holders) - self.cap()
        if excess <= 0:
            return 0
        victims = list(self._holders)[-excess:]
        for task in victims:
            del self._holders[task]
            self._preempted.add(task)
            task.cancel()
        self.preempted_count += len(victims)
        metrics.BATCH_LINES_PREEMPTED.inc(len(victims))
        return len(victims)

    def preempted(self, task: asyncio.Task[None] | None) -> bool:
        """Was `task` cancelled by `shed` (not by a shutdown)?"""
        return task in self._preempted
