"""Admission of batch lines: interactive traffic keeps its latency.

vLLM's priority scheduling only reorders its waiting queue: a high-priority request still
waits while every sequence slot is busy (vLLM issue #24365), and every batch sequence in
a step slows that step for everyone. So frugal decides itself how many batch lines are
in flight: `idle_in_flight` when no interactive request has run for `quiet_s`, else
`busy_in_flight` (headroom for interactive requests, docs/batch.md). The counts are per
gateway replica: each replica sees the interactive requests it serves.
"""

from __future__ import annotations

import asyncio
import time

from serving import metrics
from serving.config import BatchConfig


class InteractiveLoad:
    """Interactive requests in flight on this replica, and when the last one ended."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.last_seen = float("-inf")

    def enter(self) -> None:
        self.in_flight += 1
        self.last_seen = time.monotonic()

    def leave(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self.last_seen = time.monotonic()

    def quiet_for(self) -> float:
        return 0.0 if self.in_flight else time.monotonic() - self.last_seen


class BatchAdmission:
    """A slot limiter whose size follows the interactive load.

    Hand-written: no library limiter resizes with an outside signal. Lines already in
    flight when the cap drops finish; new lines wait until a slot is free under the cap.
    """

    def __init__(self, config: BatchConfig, load: InteractiveLoad) -> None:
        self.config = config
        self.load = load
        self.in_use = 0
        self._changed = asyncio.Event()

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

    def release(self) -> None:
        self.in_use -= 1
        metrics.BATCH_LINES_IN_FLIGHT.dec()
        self._changed.set()
