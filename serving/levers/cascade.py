"""The cascade (lever 1's second half): an `auto` answer that looks wrong is asked again,
of the same model at more effort or of a larger model (`Router.escalation`), and both
calls are billed.

The answer is judged by its token log-probabilities (`Router.escalation`), so the first
call asks the engine for them and the client gets them only if it asked too. The retry
is shaped afresh for its cell (that model's budget at that cell's effort).

Streams are not cascaded: the first model's tokens are already on the wire when its
confidence is known. Such a response says so in `x-frugal-cascade`.
"""

from __future__ import annotations

from typing import Any

from serving.config import ModelConfig
from serving.errors import APIError
from serving.pipeline.context import Endpoint, RequestContext
from serving.pipeline.engine_call import is_error
from serving.pipeline.lever import Lever
from serving.router.runtime import Router
from serving.router.scorecard import base_model, cell_effort


def answer_logprobs(body: dict[str, Any], endpoint: Endpoint) -> list[float] | None:
    """The first choice's token log-probabilities, from a chat or completion answer."""
    choices = body.get("choices") or []
    logprobs = choices[0].get("logprobs") if choices else None
    if not logprobs:
        return None
    if endpoint is Endpoint.CHAT:
        return [token["logprob"] for token in logprobs.get("content") or []]
    return [lp for lp in logprobs.get("token_logprobs") or [] if lp is not None]


class CascadeLever(Lever):
    """In the chain only when `router.cascade` is on."""

    name = "cascade"

    def __init__(self, router: Router) -> None:
        self.router = router

    async def before(self, ctx: RequestContext) -> None:
        if ctx.route is None:
            return
        if ctx.stream:
            ctx.response_headers["x-frugal-cascade"] = "off for streaming requests"
            return
        ctx.cascade = True
        ctx.client_logprobs = bool(ctx.request.logprobs)

    def shape(self, ctx: RequestContext, request: Any, model: ModelConfig) -> Any:
        if ctx.cascade and not ctx.client_logprobs:
            request.logprobs = True if ctx.endpoint is Endpoint.CHAT else 1
        return request

    async def after(self, ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
        if not ctx.cascade or ctx.route is None or ctx.call_model is None:
            return body
        answered = ctx.route.cell or ctx.model
        logprobs = answer_logprobs(body, ctx.endpoint)
        ctx.confidence = self.router.predictor.confidence(answered, logprobs)
        retry = self.router.escalation(ctx.route, answered, logprobs)
        if retry is not None:
            ctx.escalated_to = retry
            ctx.model, ctx.route_effort = base_model(retry), cell_effort(retry)
            ctx.response_headers["x-frugal-route"] = ctx.route.header(retry)
            result = await ctx.call_model(ctx, ctx.model)
            if is_error(result):
                raise APIError(result.error.code, result.error.message)
            body = result.model_dump()
        if not ctx.client_logprobs:
            for choice in body.get("choices") or []:
                choice["logprobs"] = None
        return body
