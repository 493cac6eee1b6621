"""Tenant: who is calling. Today a bearer token checked against `gateway.api_keys`.

Runs first (`admit`, before the body is read), so a caller without a valid key learns
nothing about the models or the request's validity: 401, as OpenAI answers. The key
itself stays in the context for the levers that key on it and never reaches a log or a
metric: `ctx.key_label` is a hash prefix for metrics.
"""

from __future__ import annotations

from serving.cost import key_label
from serving.errors import APIError
from serving.pipeline.context import RequestContext
from serving.pipeline.lever import Lever


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer ...` header, or None."""
    token = (authorization or "").removeprefix("Bearer ").strip()
    return token or None


class TenantLever(Lever):
    """401 for a missing or unknown key when keys are configured; otherwise anonymous."""

    name = "tenant"

    def __init__(self, api_keys: list[str]) -> None:
        self.api_keys = frozenset(api_keys)

    async def admit(self, ctx: RequestContext) -> None:
        if not self.api_keys:  # no keys configured: local use, every caller anonymous
            ctx.api_key = None
            return
        if ctx.api_key not in self.api_keys:
            raise APIError(401, "Incorrect API key provided.")
        ctx.key_label = key_label(ctx.api_key)
