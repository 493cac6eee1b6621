"""Admission of batch lines: interactive traffic keeps its latency.

vLLM's priority scheduling only reorders its waiting queue: a high-priority request still
waits while every sequence slot is busy (vLLM issue #24365), and every batch sequence in
a step slows that step for everyone. So frugal decides itself how many batch lines are
in flight: the idle cap when no interactive request has run for `quiet_s`, else
`busy_in_flight` (0 by default: batches yield, docs/batch.md). The counts are per
gateway replica: each replica sees the interactive requests it serves.

The idle cap follows the engines' sequence slots: `idle_per_slot` (2) times the smallest
engine's `max_num_seqs`, shared among the gateway replicas, unless `idle_in_flight` is
set. Lines of one batch tend to finish together; with only as many lines as slots the
engine idles while the gateway prepares the next wave (docs/batch.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from serving import metrics
from serving.config import BatchConfig

#: Lines cancelled per event-loop turn while preempting (see the module docstring).
PREEMPT_CHUNK = 16
#: The idle cap until the engines have told their sequence slots (the first seconds).
PROVISIONAL_IDLE_CAP = 16


class InteractiveLoad:
    """Interactive requests in flight on this replica, and when the last one ended."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.last_seen = float("-inf")
        self.on_enter: list[Callable[[], object]] = []  # admission's preemption

    def enter(self) -> None:
        self.in_flight += 1
        self.touch()
        for react in self.on_enter:
            react()

    def leave(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self.touch()

    def touch(self) -> None:
        """The quiet period restarts (a request came or went, or a preemption ended)."""
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
        self.idle_cap = config.idle_in_flight or PROVISIONAL_IDLE_CAP
        metrics.BATCH_IDLE_CAP.set(self.idle_cap)
        self.in_use = 0
        self.preempted_count = 0
        self._holders: dict[asyncio.Task[None], None] = {}  # running lines, oldest first
        self._preempted: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        load.on_enter.append(self.shed)

    def cap(self) -> int:
        """`busy_in_flight` until `quiet_s` has passed, then doubling every `ramp_s` (slow
        start: the engine never jumps from busy to full, so the next arrival finds little
        to preempt) up to the idle cap."""
        config = self.config
        quiet = self.load.quiet_for() - config.quiet_s
        if quiet < 0:
            return config.busy_in_flight
        if config.ramp_s <= 0:
            return self.idle_cap
        doublings = min(quiet / config.ramp_s, 30.0)
        return min(self.idle_cap, int(max(1, config.busy_in_flight) * 2 ** doublings))

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
            if task in self._preempted:
                self._preempted.discard(task)
                if not self._preempted:
                    self.load.touch()
        self._changed.set()

    def shed(self) -> int:
        """Preempt the lines above the current cap, keeping the oldest; returns how many.
        They are cancelled over the next loop turns, oldest first."""
        if not self.config.preempt:
            return 0
        keep = self.cap()
        if len(self._holders) <= keep:
            return 0
        victims = list(self._holders)[keep:]
        for task in victims:
            del self._holders[task]
            self._preempted.add(task)
        asyncio.get_running_loop().call_soon(self._cancel_some, victims, 0)
        self.preempted_count += len(victims)
        metrics.BATCH_LINES_PREEMPTED.inc(len(victims))
        return len(victims)

    def _cancel_some(self, victims: list[asyncio.Task[None]], start: int) -> None:
        for task in victims[start:start + PREEMPT_CHUNK]:
            task.cancel()
        if start + PREEMPT_CHUNK < len(victims):
            asyncio.get_running_loop().call_soon(self._cancel_some, victims,
                                                 start + PREEMPT_CHUNK)

    def size_to_engines(self, slots: list[int], gateway_replicas: int) -> int:
        """The idle cap from the engines' sequence slots (kept if `idle_in_flight` is set)."""
        if self.config.idle_in_flight is None and slots:
            lines = min(slots) * self.config.idle_per_slot
            self.idle_cap = max(1, int(lines // max(1, gateway_replicas)))
            metrics.BATCH_IDLE_CAP.set(self.idle_cap)
        return self.idle_cap

    def preempted(self, task: asyncio.Task[None] | None) -> bool:
        """Was `task` cancelled by `shed` (not by a shutdown)?"""
        return task in self._preempted
