"""The lever chain: runs each hook of the levers that implement it, in chain order.

The order is fixed once, in `serving.levers.build_chain`; hooks run in that order for
`admit`, `before`, `shape`, `after` and `on_chunk`, so a lever sees every decision of
the levers before it. `on_usage` runs exactly once per request (guarded here), also
when a stream is abandoned or a hook failed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from serving.pipeline.lever import HOOKS, Lever, overrides

if TYPE_CHECKING:
    from serving.config import ModelConfig
    from serving.pipeline.context import RequestContext

logger = logging.getLogger("frugal.pipeline")


class Chain:
    """The levers in order, with one list per hook of the levers that implement it."""

    def __init__(self, levers: list[Lever]) -> None:
        self.levers = list(levers)
        self._by_hook: dict[str, list[Lever]] = {
            hook: [lever for lever in self.levers if overrides(lever, hook)] for hook in HOOKS
        }
        #: Non-OpenAI body fields some lever reads (popped before validation).
        self.extra_fields: frozenset[str] = frozenset().union(
            *(lever.extra_fields for lever in self.levers))

    @property
    def names(self) -> list[str]:
        return [lever.name for lever in self.levers]

    def lever(self, name: str) -> Lever | None:
        """The lever called `name`, or None when it is off."""
        return next((lever for lever in self.levers if lever.name == name), None)

    def has(self, hook: str) -> bool:
        return bool(self._by_hook[hook])

    async def admit(self, ctx: RequestContext) -> None:
        for lever in self._by_hook["admit"]:
            await lever.admit(ctx)

    async def before(self, ctx: RequestContext) -> None:
        for lever in self._by_hook["before"]:
            await lever.before(ctx)

    def shape(self, ctx: RequestContext, request: Any, model: ModelConfig) -> Any:
        """The engine request for one call to `model`: a shallow copy of the client's
        request with each lever's decision applied, in chain order."""
        shaped = request.model_copy()
        for lever in self._by_hook["shape"]:
            shaped = lever.shape(ctx, shaped, model)
        return shaped

    async def after(self, ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
        for lever in self._by_hook["after"]:
            body = await lever.after(ctx, body)
        return body

    def on_chunk(self, ctx: RequestContext, chunk: str) -> str | None:
        for lever in self._by_hook["on_chunk"]:
            result = lever.on_chunk(ctx, chunk)
            if result is None:
                return None
            chunk = result
        return chunk

    async def on_usage(self, ctx: RequestContext) -> None:
        """Every lever's usage hook, once per request; one lever's failure is logged and
        does not keep the others from running (they settle budgets and metrics)."""
        if ctx.usage_done:
            return
        ctx.usage_done = True
        for lever in self._by_hook["on_usage"]:
            try:
                await lever.on_usage(ctx)
            except Exception:
                logger.exception("usage hook of lever %s failed", lever.name)
