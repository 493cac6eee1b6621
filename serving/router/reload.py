"""The router follows its scorecard on disk: a new scorecard (from `frugal bench promote`
or `frugal bench eval`) is picked up by a running gateway without restarting anything.

Why a file watch, not an endpoint: every gateway replica holds its own router, and an
HTTP call reaches one replica; each replica looking at the file's modification time (at
most every `router.reload_check_s`, on `auto` requests) reaches them all, and it is how
a Kubernetes ConfigMap update arrives too. Loading runs in a thread, so the event loop
keeps serving; the swap is one in-place update (`Router.adopt`), so the levers holding
the router, and the price table the accounting shares, see the new one at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from serving.config import FrugalConfig
from serving.metrics import ROUTER_RELOADS
from serving.router.runtime import Router

logger = logging.getLogger("frugal.router")


def _stamp(path: str | None) -> tuple[int, int] | None:
    """(mtime ns, size) of a file; None when absent."""
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


class RouterReloader:
    """Reloads `router` from the YAML's scorecard and predictor when either changes."""

    def __init__(self, config: FrugalConfig, router: Router) -> None:
        self.config = config
        self.router = router
        self.every_s = config.router.reload_check_s
        self._stamps = self._read_stamps()
        self._checked = time.monotonic()
        self._loading: asyncio.Task | None = None

    def _read_stamps(self) -> tuple:
        return _stamp(self.config.router.scorecard), _stamp(self.config.router.predictor)

    async def maybe_reload(self) -> None:
        """Cheap on the hot path: one clock read, and at most every `every_s` two stats."""
        if self.every_s <= 0 or time.monotonic() - self._checked < self.every_s:
            return
        self._checked = time.monotonic()
        stamps = self._read_stamps()
        if stamps == self._stamps or stamps[0] is None or self._loading is not None:
            return
        self._loading = asyncio.create_task(self._reload(stamps))

    async def _reload(self, stamps: tuple) -> None:
        try:
            fresh = await asyncio.to_thread(Router.load, self.config)
        except Exception:  # a half-written or invalid file: keep serving the old router
            logger.exception("router reload from %s failed; keeping the current router",
                             self.config.router.scorecard)
            ROUTER_RELOADS.labels("failed").inc()
        else:
            if fresh is None:
                logger.warning("the new scorecard has no served model: keeping the router")
                ROUTER_RELOADS.labels("failed").inc()
            else:
                self.router.adopt(fresh)
                logger.info("router reloaded from %s: candidates %s",
                            Path(self.config.router.scorecard or "").name, fresh.candidates)
                ROUTER_RELOADS.labels("ok").inc()
            self._stamps = stamps
        finally:
            self._loading = None
