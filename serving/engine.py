"""ModelServer: one Ray Serve deployment per model, owning a vLLM `AsyncLLM` engine.

Contract: the gateway sends vLLM protocol requests (`ChatCompletionRequest`,
`CompletionRequest`) already validated; the server answers with vLLM's own response
objects, an `ErrorResponse`, or (streaming) the SSE strings vLLM's serving classes
write. Nothing here re-implements chat templates, sampling, streaming or usage: the
serving objects are built by vLLM's `init_app_state`, exactly as `vllm serve` builds
them, so behaviour matches the raw vLLM server field for field.

Why a thin deployment instead of `ray.serve.llm.LLMServer`: measured on the 2-core CPU
machines, the thin path reached 0.72x raw vLLM throughput at 32 concurrent requests vs
0.39x for the stock LLM ingress (docs/serving.md has the numbers and the decision).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from collections.abc import AsyncGenerator
from http import HTTPStatus
from typing import Any

from ray import serve

from serving.config import ModelConfig
from serving.cpu_features import amx_permitted, attention_isa, feature_summary, request_amx

logger = logging.getLogger("frugal.engine")

#: vLLM OpenAI front-end settings frugal always wants: cached-token counts in usage
#: (lever 3) and engine statistics for /metrics.
FORCED_FRONTEND_ARGS: dict[str, Any] = {
    "enable_prompt_tokens_details": True,
    "disable_log_stats": False,
    "enable_log_requests": False,
}


class EngineUnavailable(Exception):
    """The engine cannot take the request now (dead or draining): the gateway says 503."""


def build_vllm_args(model: ModelConfig) -> argparse.Namespace:
    """The flat argument namespace `vllm serve` would parse for this model entry.

    Building it with vLLM's own parser keeps every default identical to the raw server;
    the YAML's `engine_kwargs` (already typed by YAML) overlay it by name.
    """
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser())
    settings = {**model.resolved_engine_kwargs(), **FORCED_FRONTEND_ARGS}
    argv = ["--model", model.model_loading_config.model_source]
    # Nested configs (e.g. structured_outputs_config) go through vLLM's parser, which
    # turns their JSON into the config dataclasses; scalars are set as already typed.
    for key, value in settings.items():
        if isinstance(value, dict):
            argv += ["--" + key.replace("_", "-"), json.dumps(value)]
    args = parser.parse_args(argv)
    for key, value in settings.items():
        if not isinstance(value, dict):
            setattr(args, key, value)
    args.served_model_name = [model.model_id]
    return args


async def _coalesce(
    chunks: AsyncGenerator[str, None], flush_interval_s: float = 0.0, immediate: int = 2
) -> AsyncGenerator[list[str], None]:
    """Yield lists of the chunks that are ready.

    The first `immediate` chunks go out as soon as they exist (TTFT is untouched); after
    that a batch waits until `flush_interval_s` has passed since the previous one, or the
    stream ends, collecting what vLLM produced meanwhile. With an interval of 0 it never
    waits: a batch is one chunk when idle and several under load.

    Cancelling the consumer cancels the pump, which closes vLLM's generator and so
    aborts the request, as before.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    ended = asyncio.Event()
    failure: list[BaseException] = []

    async def pump() -> None:
        try:
            async for chunk in chunks:
                queue.put_nowait(chunk)
        except Exception as exc:  # surfaces in the consumer, like an uncoalesced stream
            failure.append(exc)
        finally:
            queue.put_nowait(None)
            ended.set()

    task = asyncio.create_task(pump())
    sent = 0
    last = loop.time()
    try:
        done = False
        while not done:
            batch = [await queue.get()]
            wait = last + flush_interval_s - loop.time()
            if sent >= immediate and wait > 0 and batch[-1] is not None:
                try:  # gather more, but never hold the stream's end back
                    await asyncio.wait_for(ended.wait(), wait)
                except TimeoutError:
                    pass
            while not queue.empty():
                batch.append(queue.get_nowait())
            if batch[-1] is None:
                done = True
                batch.pop()
            if batch:
                sent += len(batch)
                last = loop.time()
                yield batch  # type: ignore[misc]
        if failure:
            raise failure[0]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class ModelEngine:
    """A vLLM engine plus vLLM's OpenAI serving objects for one model, in this process.

    `ModelServer` below is this class as a Ray Serve deployment (a replica per model);
    the gateway also hosts one directly for `gateway.colocated_model`, which saves the
    hop between the gateway and the model's replica (docs/serving.md).
    """

    @classmethod
    async def start(cls, model: ModelConfig) -> ModelEngine:
        engine = cls()
        await engine._start(model)
        return engine

    async def _start(self, model: ModelConfig) -> None:
        from starlette.datastructures import State
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.openai.api_server import init_app_state
        from vllm.v1.engine.async_llm import AsyncLLM

        self.model = model
        # vLLM's general plugin does this in every engine process; this process (an
        # in-process engine, or one where VLLM_PLUGINS leaves the plugin out) too.
        request_amx()
        args = build_vllm_args(model)
        engine_args = AsyncEngineArgs.from_cli_args(args)
        self.engine = AsyncLLM.from_engine_args(engine_args)
        state = State()
        tasks = await self.engine.get_supported_tasks()
        await init_app_state(self.engine, state, args, supported_tasks=tasks)
        self.chat_serving = state.openai_serving_chat
        self.completion_serving = state.openai_serving_completion
        self.max_model_len = self.engine.model_config.max_model_len
        self.cpu_kernels = self._cpu_kernels()
        logger.info("model %s ready (pid %s)%s", model.model_id, os.getpid(),
                    f"; {self.cpu_kernels}" if self.cpu_kernels else "")

    def _cpu_kernels(self) -> str:
        """On the CPU backend, which attention kernels vLLM chose and which CPU flags it
        had to choose from (docs/serving.md): an operator reads it in the serve log."""
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return ""
        config = self.engine.vllm_config
        isa = attention_isa(config.model_config.dtype, config.cache_config.block_size,
                            config.model_config.get_head_size(), config.cache_config.cache_dtype)
        return (f"CPU attention ISA {isa}; {feature_summary()}; AMX permitted: "
                f"{'yes' if amx_permitted() else 'no'}")

    # --- health and introspection -------------------------------------------------

    async def check_health(self) -> None:
        """Ray Serve calls this periodically; raising restarts the replica."""
        await self.engine.check_health()

    async def info(self) -> dict[str, Any]:
        return {
            "model_id": self.model.model_id,
            "max_model_len": self.max_model_len,
            "running_requests": self.engine.get_num_unfinished_requests(),
            # Sequence slots: the batch lever keeps its lines below them (docs/batch.md).
            "max_num_seqs": self.engine.vllm_config.scheduler_config.max_num_seqs,
            "pid": os.getpid(),
            "cpu_kernels": self.cpu_kernels,
        }

    # --- OpenAI endpoints ---------------------------------------------------------

    async def chat(self, request: Any) -> Any:
        """Non-streaming chat completion: a `ChatCompletionResponse` or `ErrorResponse`."""
        return await self._call(self.chat_serving.create_chat_completion, request)

    async def completion(self, request: Any) -> Any:
        """Non-streaming completion: a `CompletionResponse` or `ErrorResponse`."""
        return await self._call(self.completion_serving.create_completion, request)

    async def chat_stream(self, request: Any) -> AsyncGenerator[Any, None]:
        """Streaming chat: yields lists of SSE strings, or a single `ErrorResponse` first."""
        async for item in self._stream(self.chat_serving.create_chat_completion, request):
            yield item

    async def completion_stream(self, request: Any) -> AsyncGenerator[Any, None]:
        """Streaming completion: yields lists of SSE strings, or one `ErrorResponse` first."""
        async for item in self._stream(self.completion_serving.create_completion, request):
            yield item

    # --- helpers ------------------------------------------------------------------

    async def _call(self, create: Any, request: Any) -> Any:
        self._raise_if_dead()
        try:
            result = await create(request, None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # vLLM maps its exceptions to OpenAI errors.
            return self._error_from_exception(exc, request)
        if isinstance(result, AsyncGenerator):  # pragma: no cover - stream flag mismatch
            raise RuntimeError("non-streaming call returned a stream")
        return self._grammar_error(result, request)

    async def _stream(self, create: Any, request: Any) -> AsyncGenerator[Any, None]:
        self._raise_if_dead()
        try:
            result = await create(request, None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            yield self._error_from_exception(exc, request)
            return
        if not isinstance(result, AsyncGenerator):
            yield self._grammar_error(result, request)  # an ErrorResponse before generation
            return
        # Every item of a Ray streaming call is one object sent between processes: one per
        # token is what made frugal slow at high concurrency (docs/serving.md). After the
        # first two chunks, what vLLM produced within `stream_flush_ms` goes out as one item
        # (and, colocated in the gateway, as one HTTP body write).
        async for batch in _coalesce(result, self.model.frugal.stream_flush_ms / 1000):
            yield batch

    def _raise_if_dead(self) -> None:
        if self.engine.errored:
            raise EngineUnavailable(f"engine for {self.model.model_id} is not running")

    def _grammar_error(self, result: Any, request: Any) -> Any:
        """vLLM's 500 for a structured request whose grammar failed to compile, as the
        client's 400.

        vLLM 0.32 compiles a request's grammar in the engine core and, when that fails
        (a regex past `VLLM_REGEX_COMPILATION_TIMEOUT_S`, e.g. 100 KB of alternatives),
        fails only that request, as a generic 500 "Internal server error". With the
        engine still running and no multimodal input or KV connector (the other causes
        of a failed request), the constraint is what failed."""
        error = getattr(result, "error", None)
        if (error is None or error.code != HTTPStatus.INTERNAL_SERVER_ERROR
                or error.message != "Internal server error" or self.engine.errored
                or not _constrained(request)):
            return result
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        param = "structured_outputs" if getattr(request, "structured_outputs", None) \
            else "response_format"
        return ErrorResponse(error=error.model_copy(update={
            "code": HTTPStatus.BAD_REQUEST, "type": "BadRequestError", "param": param,
            "message": f"{param}: the engine could not compile this constraint into a "
                       "grammar (too complex, or it timed out); simplify it"}))

    def _error_from_exception(self, exc: Exception, request: Any = None) -> Any:
        from vllm.entrypoints.serve.exception_handling.error_response import (
            create_error_response,
        )
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        if isinstance(exc, (EngineDeadError, EngineGenerateError)):
            raise EngineUnavailable(str(exc)) from exc
        error = self._grammar_error(create_error_response(exc), request)
        if error.error.code >= HTTPStatus.INTERNAL_SERVER_ERROR:
            logger.exception("engine error for %s", self.model.model_id, exc_info=exc)
        return error


def _constrained(request: Any) -> bool:
    """Whether the engine decodes `request` with a grammar (structured output)."""
    response_format = getattr(request, "response_format", None)
    return getattr(request, "structured_outputs", None) is not None or \
        getattr(response_format, "type", "text") not in (None, "text")


@serve.deployment
class ModelServer(ModelEngine):
    """One model's replica: a `ModelEngine` the gateway reaches through a handle."""

    async def __init__(self, model: ModelConfig) -> None:
        await self._start(model)
        from vllm.utils.gc_utils import freeze_gc_heap

        freeze_gc_heap()  # as the gateway does: full collections skip the startup heap
