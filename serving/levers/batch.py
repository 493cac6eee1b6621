"""Lever 4 on the request path: interactive load in, engine priority out.

Counts interactive requests in flight (the batch runner's admission reads it, see
`serving.batch.admission`), and gives batch lines vLLM's lower request priority on
engines that schedule by priority. The batch discount itself is the accounting lever's.
"""

from __future__ import annotations

from typing import Any

from serving.batch.admission import InteractiveLoad
from serving.config import ModelConfig
from serving.pipeline.context import Priority, RequestContext
from serving.pipeline.lever import Lever


class BatchLever(Lever):
    name = "batch"

    def __init__(self, engine_priority: int) -> None:
        self.engine_priority = engine_priority
        self.load = InteractiveLoad()

    async def before(self, ctx: RequestContext) -> None:
        if ctx.priority is Priority.INTERACTIVE:
            self.load.enter()
            ctx.counted_interactive = True

    def shape(self, ctx: RequestContext, request: Any, model: ModelConfig) -> Any:
        if ctx.priority is Priority.BATCH and self.engine_priority and (
            model.resolved_engine_kwargs().get("scheduling_policy") == "priority"
        ):
            request.priority = self.engine_priority
        return request

    async def on_usage(self, ctx: RequestContext) -> None:
        if ctx.counted_interactive:
            self.load.leave()
