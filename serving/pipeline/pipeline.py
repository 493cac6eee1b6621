"""The request pipeline: the lever chain around one model call, without HTTP.

`Pipeline.run(ctx)` takes a parsed request in its context and returns an answer: a
whole JSON body (`UnaryAnswer`) or a stream of SSE text (`StreamAnswer`). The gateway
renders answers as HTTP responses; the batch worker (lever 4) can run the same pipeline
in-process. Contract:
- `before` hooks run first; an `APIError` they raise is the request's answer;
- every model call's engine request is composed by the `shape` hooks for that model;
- a whole answer passes through the `after` hooks, a stream's chunks through `on_chunk`;
- `on_usage` runs exactly once for every request that reached `before`: when a whole
  answer is ready, when a stream ends (finished, failed or abandoned), or when the
  request failed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from serving.config import FrugalConfig
from serving.errors import APIError, error_body
from serving.pipeline.chain import Chain
from serving.pipeline.context import RequestContext
from serving.pipeline.engine_call import ModelCaller, is_error, map_handle_error
from serving.store.faults import StoreUnavailable


@dataclass
class UnaryAnswer:
    body: dict[str, Any]
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamAnswer:
    chunks: AsyncIterator[str]
    headers: dict[str, str] = field(default_factory=dict)


Answer = UnaryAnswer | StreamAnswer


class Pipeline:
    """The chain, the model caller and the config that both read."""

    def __init__(self, config: FrugalConfig, chain: Chain, caller: ModelCaller) -> None:
        self.config = config
        self.chain = chain
        self.caller = caller

    async def admit(self, ctx: RequestContext) -> None:
        """The levers' checks on the caller alone (before the body is read)."""
        await self.chain.admit(ctx)

    async def run(self, ctx: RequestContext) -> Answer:
        ctx.call_model = self._call
        ctx.call_engine = self.caller.unary
        deferred = False  # a stream runs on_usage when it ends, not here
        try:
            await self.chain.before(ctx)
            self.caller.handle(ctx.model)  # 404 for an unknown model, before shaping
            if ctx.stream:
                answer = await self._open_stream(ctx)
                deferred = isinstance(answer, StreamAnswer)
                return answer
            result = await self._call(ctx, ctx.model)
            if is_error(result):
                ctx.status = result.error.code
                return UnaryAnswer(result.model_dump(), ctx.status)
            body = await self.chain.after(ctx, result.model_dump())
            ctx.status = 200
            return UnaryAnswer(body, 200, ctx.response_headers)
        except APIError as exc:
            ctx.status = exc.status
            raise
        except asyncio.CancelledError:
            ctx.status = 499
            raise
        except StoreUnavailable:  # a budget the full or read-only store cannot reserve
            ctx.status = 503
            raise
        except Exception:
            ctx.status = 500
            raise
        finally:
            if not deferred:
                await self.chain.on_usage(ctx)

    async def _call(self, ctx: RequestContext, model: str) -> Any:
        """One whole-answer call to `model`, its request shaped for that model."""
        request = self.chain.shape(ctx, ctx.request, self.config.model(model))
        return await self.caller.unary(ctx, request)

    async def _open_stream(self, ctx: RequestContext) -> Answer:
        request = self.chain.shape(ctx, ctx.request, self.config.model(ctx.model))
        first, chunks = await self.caller.open_stream(ctx, request)
        if is_error(first):
            ctx.status = first.error.code
            return UnaryAnswer(first.model_dump(), ctx.status)
        ctx.ttft_s = time.perf_counter() - ctx.started
        return StreamAnswer(self._relay(ctx, first, chunks), ctx.response_headers)

    async def _relay(self, ctx: RequestContext, first: Any, chunks: Any) -> AsyncIterator[str]:
        """Pass SSE chunks through the levers' `on_chunk`, one body write per batch the
        model server sent; settle usage once when the stream ends, however it ends."""
        finished = False
        call = ctx.last_call
        on_chunk = self.chain.on_chunk if self.chain.has("on_chunk") else None
        try:
            async for batch in self.caller.relay(first, chunks):
                if on_chunk is None:
                    yield "".join(batch)
                    continue
                out = [c for c in (on_chunk(ctx, chunk) for chunk in batch) if c]
                if out:
                    yield "".join(out)
            finished = True
            ctx.status = 200
        except Exception as exc:  # the engine failed mid-stream: tell the client in-band
            error = map_handle_error(exc, ctx.model, self.caller.retry_after_s)
            ctx.status = error.status
            if call is not None:
                call.status = error.status
            yield f"data: {json.dumps(error_body(error.status, error.message))}\n\n"
        finally:
            if not finished:  # client gone (or error): stop the generation in the engine
                chunks.cancel()
                if ctx.status in (0, 200):
                    ctx.status = 499
                    if call is not None:
                        call.status = 499
            await self.chain.on_usage(ctx)
