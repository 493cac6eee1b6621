"""Tenant: who is calling, and what their key allows (docs/tenants.md).

Runs first. `admit` (before the body is read, so a caller without a valid key learns
nothing about the models or the request's validity):
- a missing, unknown or revoked key -> 401, as OpenAI answers;
- on model endpoints, the key's rpm/tpm through the shared limiter
  (`serving.tenants.limiter`): over -> 429 with `Retry-After`; OpenAI's
  `x-ratelimit-*` headers go on every answer of a limited key. A limiter whose storage
  is down refuses with 503 rather than letting traffic through unmetered.
`before` (with the parsed request):
- a model outside the key's list -> 404, as OpenAI does for a model you cannot see;
- the key's `min_quality` becomes the request's default target for `model="auto"`;
- batch lines (which never pass `admit`) run under their owner's key: a key revoked
  since the upload fails its remaining lines with 401; they do not count against rpm.
`on_usage` adds the answer's tokens to the key's tpm window.

The token itself stays in the context and never reaches a log, a metric or the store:
`ctx.key_label` is the key's id (store keys) or a hash prefix (YAML keys).
"""

from __future__ import annotations

import logging

from serving import metrics
from serving.errors import APIError
from serving.pipeline.context import Priority, RequestContext
from serving.pipeline.lever import Lever
from serving.tenants.limiter import LimiterUnavailable, RateLimiter, RateLimits
from serving.tenants.resolver import KeyResolver

logger = logging.getLogger("frugal.tenants")

#: Seconds a client is told to wait when the limiter's storage cannot be reached.
LIMITER_DOWN_RETRY_S = 5


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer ...` header, or None."""
    token = (authorization or "").removeprefix("Bearer ").strip()
    return token or None


def _limits(ctx: RequestContext) -> RateLimits | None:
    key = ctx.tenant
    if key is None or (key.rpm is None and key.tpm is None):
        return None
    return RateLimits(rpm=key.rpm, tpm=key.tpm)


class TenantLever(Lever):
    """Keys, model lists, quality targets and rate limits; anonymous when no keys exist."""

    name = "tenant"

    def __init__(self, keys: KeyResolver, limiter: RateLimiter | None) -> None:
        self.keys = keys
        self.limiter = limiter

    async def admit(self, ctx: RequestContext) -> None:
        if not self.keys.enabled:  # no keys configured: local use, every caller anonymous
            ctx.api_key = None
            return
        key = await self.keys.resolve(ctx.api_key)
        if key is None:
            metrics.TENANT_REFUSALS.labels("unknown", "unauthenticated").inc()
            raise APIError(401, "Incorrect API key provided.")
        if not key.active:
            metrics.TENANT_REFUSALS.labels(key.id, "revoked").inc()
            raise APIError(401, "This API key has been revoked.")
        ctx.tenant = key
        ctx.key_label = key.id
        limits = _limits(ctx)
        if ctx.generation and limits is not None and self.limiter is not None:
            await self._rate_limit(ctx, limits)

    async def _rate_limit(self, ctx: RequestContext, limits: RateLimits) -> None:
        assert self.limiter is not None and ctx.tenant is not None
        try:
            decision = await self.limiter.admit(ctx.tenant.id, limits)
        except LimiterUnavailable as exc:
            logger.error("rate limiter unavailable: %s", exc)
            raise APIError(503, "The rate limiter is unavailable; try again shortly.",
                           headers={"Retry-After": str(LIMITER_DOWN_RETRY_S)}) from exc
        headers = decision.headers()
        if not decision.allowed:
            metrics.TENANT_REFUSALS.labels(ctx.tenant.id, f"rate_limit_{decision.reason}").inc()
            per = "requests" if decision.reason == "requests" else "tokens"
            raise APIError(
                429,
                f"Rate limit reached for key {ctx.tenant.name} on {per} per minute. "
                f"Please try again in {decision.retry_after_s}s.",
                code="rate_limit_exceeded", type_=per,
                headers={**headers, "Retry-After": str(decision.retry_after_s)},
            )
        ctx.response_headers.update(headers)

    async def before(self, ctx: RequestContext) -> None:
        if ctx.tenant is None and ctx.priority is Priority.BATCH and self.keys.enabled:
            ctx.tenant = await self.keys.by_id(ctx.key_label)
            if ctx.tenant is None or not ctx.tenant.active:
                raise APIError(401, "The API key that created this batch was revoked.",
                               )
        key = ctx.tenant
        if key is None:
            return
        model = ctx.request.model
        if not key.allows_model(model):
            metrics.TENANT_REFUSALS.labels(key.id, "model").inc()
            raise APIError(
                404, f"The model `{model}` does not exist or you do not have access to it.",
                param="model")
        if key.min_quality is not None:
            ctx.min_quality = key.min_quality

    async def on_usage(self, ctx: RequestContext) -> None:
        limits = _limits(ctx)
        if limits is None or limits.tpm is None or self.limiter is None:
            return
        if ctx.priority is not Priority.INTERACTIVE:
            return
        tokens = sum(call.usage.prompt_tokens + call.usage.completion_tokens
                     for call in ctx.calls if call.usage is not None)
        if tokens:
            await self.limiter.add_tokens(ctx.tenant.id, limits, tokens)  # type: ignore[union-attr]
