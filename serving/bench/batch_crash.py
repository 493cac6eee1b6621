"""Lever 4's crash test: `kill -9` of the whole `frugal serve` at random points of a
running batch, a restart on the same store after each, and the exactly-once check at the
end. Used by `frugal bench batch` (part c) and by tests/test_batch_crash.py.

Every process of the server's session gets SIGKILL at once (no shutdown code runs, as on
a power cut); the next server finds the batch with the dead runner's lease, takes it
over after `batch.lease_s`, and runs the lines that were not committed. Two numbers
prove it: each custom_id appears exactly once across the output and error files (none
lost), and the store saw no answer offered for a line already done (none run twice;
`duplicate_results`, counted in the same transaction that commits results). Lines read
again after a restart (`attempts > 1`: in flight or fetched, not yet answered, when the
kill came) are counted too; each of those was answered once.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from serving.bench.batch_work import (
    Tally,
    client,
    done_lines,
    finished,
    jsonl,
    line_bodies,
    result_lines,
    submit,
    tally,
    wait_for,
)


class Kill(BaseModel):
    """One SIGKILL: where the batch stood when it came."""

    at_fraction: float
    status: str
    lines_done: int
    processes_killed: int


class CrashReport(BaseModel):
    seed: int
    lines: int
    kills: list[Kill]
    final_status: str
    tally: Tally
    lines_run_twice: int
    lines_read_again: int
    seconds: float

    @property
    def ok(self) -> bool:
        return (self.final_status == "completed" and self.tally.exactly_once
                and self.tally.failed == 0 and self.lines_run_twice == 0)


def kill_points(kills: int, seed: int, top: float = 0.6) -> list[float]:
    """The first kill comes at once after create (the batch is validating or just
    started); the rest at random fractions of the lines done, in order."""
    rng = random.Random(seed)
    return [0.0, *sorted(round(rng.uniform(0.05, top), 3) for _ in range(kills - 1))][:kills]


def store_counts(config: dict[str, Any], batch_id: str) -> tuple[int, int]:
    """(duplicate results, lines attempted more than once) from the server's own store."""
    from sqlalchemy import func, select

    from serving.config import StoreConfig
    from serving.store.db import open_engine
    from serving.store.tables import BatchLineRow, BatchRow

    engine = open_engine(StoreConfig.model_validate(config.get("store", {})).database_url())
    try:
        with engine.connect() as db:
            duplicates = db.scalar(select(BatchRow.duplicate_results)
                                   .where(BatchRow.id == batch_id)) or 0
            retried = db.scalar(select(func.count()).select_from(BatchLineRow).where(
                BatchLineRow.batch_id == batch_id, BatchLineRow.attempts > 1)) or 0
    finally:
        engine.dispose()
    return int(duplicates), int(retried)


def crash_run(
    config: dict[str, Any], *, model: str, lines: int, kills: int, seed: int, max_tokens: int,
    log_dir: Path, timeout_s: float = 900, say: Callable[[str], None] = print,
) -> CrashReport:
    """Run one batch of `lines` through `kills` SIGKILLs and restarts to its end.

    `config` must put the store in a fixed place (`store.state_dir`, absolute) so every
    restart sees the same one, and should set a short `batch.lease_s`."""
    from serving.evaluation.launcher import frugal_server, kill_session

    config = copy.deepcopy(config)
    started = time.monotonic()
    data = jsonl(line_bodies(lines, model, max_tokens))
    batch_id = ""
    done: list[Kill] = []
    final = rows = None
    for fraction in [*kill_points(kills, seed), None]:  # None: the last run, to the end
        with frugal_server(config, log_dir=log_dir) as running:
            sdk = client(running.url)
            if not batch_id:
                batch_id = submit(sdk, data).id
                say(f"batch {batch_id}: {lines} lines")
            batch = wait_for(sdk, batch_id, lambda b, f=fraction: finished(b) or (
                f is not None and done_lines(b) >= f * lines), timeout_s, poll_s=0.05)
            if finished(batch):
                if fraction is not None:
                    say(f"the batch finished before the kill at {fraction:.0%}")
                final, rows = batch, result_lines(sdk, batch)
                break
            killed = kill_session(running.session_id)
            done.append(Kill(at_fraction=fraction, status=batch.status,
                             lines_done=done_lines(batch), processes_killed=killed))
            say(f"kill -9 of {killed} processes at {done_lines(batch)}/{lines} lines done "
                f"({batch.status})")
    assert final is not None and rows is not None
    duplicates, retried = store_counts(config, batch_id)
    expected = [f"line-{i}" for i in range(lines)]
    return CrashReport(seed=seed, lines=lines, kills=done, final_status=final.status,
                       tally=tally(expected, rows), lines_run_twice=duplicates,
                       lines_read_again=retried, seconds=time.monotonic() - started)
