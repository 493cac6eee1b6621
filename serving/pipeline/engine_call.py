"""Calls to the model deployments: one method per call shape, every failure an APIError.

A model is reached through a Ray Serve `DeploymentHandle`, or a `LocalHandle` when its
engine lives in the gateway's process (`gateway.colocated_model`); both have the same
surface, so there is one code path. The caller records each call in `ctx.calls`; it
writes no metrics (the accounting lever does, from the context).

Failure contract: overloaded (Ray's queue full) or engine down -> 503 with
`Retry-After`; the client gone (cancelled) -> the model call is cancelled too, which
aborts the generation in vLLM.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from serving.cost import TokenUsage
from serving.errors import APIError
from serving.pipeline.context import ModelCall, RequestContext

logger = logging.getLogger("frugal.gateway")


def is_error(result: Any) -> bool:
    """True for vLLM's `ErrorResponse` (a 4xx the engine found, e.g. prompt too long)."""
    return hasattr(result, "error") and not hasattr(result, "choices")


def map_handle_error(exc: BaseException, model: str, retry_after_s: int) -> APIError:
    """Turn what a model deployment call raised into the error the client gets."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    from serving.engine import EngineUnavailable

    retry = {"Retry-After": str(retry_after_s)}
    if isinstance(exc, BackPressureError):
        return APIError(503, f"model {model!r} is overloaded; retry later", headers=retry)
    if isinstance(
        exc,
        EngineUnavailable
        | RayActorError
        | ActorDiedError
        | ActorUnavailableError
        | DeploymentUnavailableError,
    ):
        return APIError(503, f"model {model!r} is temporarily unavailable", headers=retry)
    logger.exception("unexpected error calling %s", model, exc_info=exc)
    return APIError(500, f"internal error while serving {model!r}: {type(exc).__name__}")


async def _prepend(first: Any, rest: Any) -> AsyncIterator[Any]:
    yield first
    async for item in rest:
        yield item


class ModelCaller:
    """The model deployments by model id, and how to call them."""

    def __init__(self, handles: dict[str, Any], retry_after_s: int) -> None:
        self.handles = handles
        self.retry_after_s = retry_after_s

    def handle(self, model: str) -> Any:
        handle = self.handles.get(model)
        if handle is None:
            known = ", ".join(sorted(self.handles))
            raise APIError(
                404, f"The model `{model}` does not exist. Available: {known}", param="model"
            )
        return handle

    async def unary(self, ctx: RequestContext, request: Any) -> Any:
        """One whole answer: vLLM's response object or its `ErrorResponse`."""
        model = request.model
        handle = self.handle(model)
        call = ModelCall(model=model, status=500)
        ctx.calls.append(call)
        pending = getattr(handle, ctx.endpoint.value).remote(request)
        try:
            result = await pending
        except asyncio.CancelledError:  # client gone: abort the generation too
            pending.cancel()
            call.status = 499
            raise
        except Exception as exc:
            error = map_handle_error(exc, model, self.retry_after_s)
            call.status = error.status
            raise error from None
        if is_error(result):
            call.status = result.error.code
        else:
            call.status = 200
            if result.usage is not None:
                call.usage = TokenUsage.from_usage(result.usage)
        return result

    async def open_stream(self, ctx: RequestContext, request: Any) -> tuple[Any, Any]:
        """Start a stream: (the first item, the stream). The first item is a list of SSE
        strings, or an `ErrorResponse` the engine found before generating."""
        model = request.model
        handle = self.handle(model)
        call = ModelCall(model=model, status=500)
        ctx.calls.append(call)
        chunks = getattr(handle.options(stream=True), f"{ctx.endpoint.value}_stream").remote(
            request
        )
        try:
            first = await chunks.__anext__()
        except Exception as exc:
            error = map_handle_error(exc, model, self.retry_after_s)
            call.status = error.status
            raise error from None
        except BaseException:  # cancelled while waiting: stop the generation too
            chunks.cancel()
            call.status = 499
            raise
        call.status = first.error.code if is_error(first) else 200
        return first, chunks

    def relay(self, first: Any, chunks: Any) -> AsyncIterator[Any]:
        """The stream's batches of SSE strings, the first one included."""
        return _prepend(first, chunks)
