"""A lever: one module's hooks on the request path (the model: Ray Serve LLM's
governance middleware, with two hooks more that frugal's levers need).

Hooks, in the order a request meets them:
- `admit(ctx)`: before the body is read, from the caller alone (key, rate limits);
  raise `APIError` to refuse (401, 429 with `Retry-After`, ...).
- `before(ctx)`: once per request, with the parsed request; write decisions into the
  context (route, thinking ask, ...) or raise `APIError` to block it.
- `shape(ctx, request, model)`: for every model call, return the engine request with
  this lever's decision applied for `model` (a copy; never edit `ctx.request`).
- `after(ctx, body)`: a whole (non-streaming) answer as a JSON dict; return it,
  changed or not. May call `ctx.call_model` to ask again (the cascade does).
- `on_chunk(ctx, chunk)`: one SSE chunk of a stream, as text; return it, changed, or
  None to drop it. Runs per token: check with a substring test before parsing.
- `on_usage(ctx)`: exactly once per request that passed `before`, when it ends: answered,
  failed, or abandoned by the client (`ctx.status` says which; `ctx.calls` holds usage).

A lever overrides only the hooks it needs; the chain calls only overridden hooks, and a
lever that is off is not in the chain at all, so it costs nothing on the hot path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serving.config import ModelConfig
    from serving.pipeline.context import RequestContext


class Lever:
    """Base class: every hook is a no-op; `name` labels the lever in docs and metrics."""

    name: str = "lever"
    #: Top-level body fields this lever reads that are not OpenAI's; they are popped
    #: into `ctx.extras` before vLLM's protocol model validates the body.
    extra_fields: frozenset[str] = frozenset()

    async def admit(self, ctx: RequestContext) -> None:
        return None

    async def before(self, ctx: RequestContext) -> None:
        return None

    def shape(self, ctx: RequestContext, request: Any, model: ModelConfig) -> Any:
        return request

    async def after(self, ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
        return body

    def on_chunk(self, ctx: RequestContext, chunk: str) -> str | None:
        return chunk

    async def on_usage(self, ctx: RequestContext) -> None:
        return None


HOOKS = ("admit", "before", "shape", "after", "on_chunk", "on_usage")


def overrides(lever: Lever, hook: str) -> bool:
    """True when `lever` implements `hook` itself (the chain skips inherited no-ops)."""
    return getattr(type(lever), hook) is not getattr(Lever, hook)
