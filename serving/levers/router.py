"""Lever 1, the right model: `model="auto"` becomes the cheapest model predicted good
enough (`serving.router.runtime` holds the policy; this is its place in the chain).

The quality target is the request's `extra_body.frugal.min_quality`, else the caller's
key target (`frugal keys create --min-quality`, set by the tenant lever), else
`router.min_quality`. A request that states no reasoning effort may go to any cell,
a model at an effort (`router.choose_effort`), and the reasoning lever applies that
cell's effort; one at effort low/medium/high is routed among the cells measured at
that effort, where it has them (docs/router.md). A request naming a model goes to that
model untouched. The decision is in
`x-frugal-route`.
"""

from __future__ import annotations

from typing import Any

from serving.config import ModelConfig
from serving.errors import APIError
from serving.levers.reasoning import DEFAULT_EFFORT, EFFORT_LEVELS, read_ask
from serving.pipeline.context import Endpoint, RequestContext
from serving.pipeline.lever import Lever
from serving.router.reload import RouterReloader
from serving.router.runtime import ANY_EFFORT, Router

AUTO = "auto"


def route_messages(request: Any) -> list[dict[str, str]]:
    """The request as plain chat messages, the router's input."""
    messages = getattr(request, "messages", None)
    if messages is None:
        return [{"role": "user", "content": str(getattr(request, "prompt", ""))}]
    plain = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        plain.append({"role": str(message.get("role", "user")), "content": content or ""})
    return plain


def effort_level(ctx: RequestContext) -> str | None:
    """The effort a chat request leaves the router, read by the reasoning lever's own
    parser: `ANY_EFFORT` when it states none (the router may choose); the level it asked
    for (`reasoning_effort` or `reasoning.effort`, vLLM's other values mapped onto low,
    medium and high); None for none, an exact budget, the client's own
    `enable_thinking`, and endpoints without thinking."""
    if ctx.endpoint is not Endpoint.CHAT:
        return None
    ask = read_ask(ctx.extras, ctx.request)
    if ask is None:
        return None
    if ask.source == DEFAULT_EFFORT:
        return ANY_EFFORT
    return EFFORT_LEVELS.get(ask.effort or "")


class RouterLever(Lever):
    """Sets `ctx.model` (and `ctx.route` for `auto`); every engine request names it."""

    name = "router"

    def __init__(self, router: Router | None, reloader: RouterReloader | None = None) -> None:
        self.router = router
        self.reloader = reloader  # follows the scorecard on disk (serving.router.reload)

    async def before(self, ctx: RequestContext) -> None:
        ctx.model = ctx.request.model
        if ctx.model != AUTO:
            return
        if self.router is None:
            raise APIError(
                400,
                "model='auto' needs a router: set router.scorecard in the deployments YAML "
                "(frugal bench eval writes one)",
                param="model",
            )
        if self.reloader is not None:
            await self.reloader.maybe_reload()
        requested = ctx.options.min_quality if ctx.options is not None else None
        if requested is not None:
            ctx.min_quality = requested
        elif ctx.min_quality is None:  # no key target either
            ctx.min_quality = self.router.default_min_quality
        ctx.route = self.router.choose(route_messages(ctx.request), ctx.min_quality,
                                       effort_level(ctx))
        ctx.model = ctx.route.model
        ctx.route_effort = ctx.route.effort
        ctx.response_headers["x-frugal-route"] = ctx.route.header()

    def shape(self, ctx: RequestContext, request: Any, model: ModelConfig) -> Any:
        request.model = model.model_id
        return request
