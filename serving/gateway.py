"""The gateway: frugal's OpenAI-compatible ingress (a Ray Serve deployment with FastAPI).

It only composes: authenticate, parse and validate with vLLM's protocol models, pick
the model deployment, forward, account. Each lever of later issues is a small module
called from here; a lever that is off costs nothing on this path.

Failure contract (every error is an OpenAI error object, see `serving.errors`):
- body not JSON, wrong field types, missing `model` -> 400; body too large -> 413;
- bad or missing API key (when keys are configured) -> 401;
- unknown model -> 404; prompt longer than the context -> 400 (vLLM's message);
- engine overloaded (queue full) or down -> 503 with `Retry-After`; never a hang;
- client gone -> Ray Serve cancels this call and the model call below it, which
  aborts the generation in vLLM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving import metrics
from serving.config import FrugalConfig
from serving.errors import APIError, error_response

logger = logging.getLogger("frugal.gateway")

app = FastAPI(title="frugal", summary="OpenAI-compatible gateway", docs_url=None, redoc_url=None)


@app.exception_handler(APIError)
async def _api_error(_: Request, exc: APIError) -> JSONResponse:
    return error_response(exc)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(APIError(exc.status_code, str(exc.detail)))


@app.exception_handler(Exception)
async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error", exc_info=exc)
    return error_response(APIError(500, f"internal error: {type(exc).__name__}"))


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(APIError(400, str(exc)))


def _validation_message(exc: ValidationError) -> tuple[str, str | None]:
    """One readable line per invalid field, and the first field's name as `param`."""
    errors = exc.errors()
    lines = []
    for item in errors:
        key = ".".join(str(part) for part in item["loc"]) or "body"
        lines.append(f"{key}: {item['msg']}")
    param = ".".join(str(p) for p in errors[0]["loc"]) if errors else None
    return "; ".join(lines), param or None


def _overloaded(retry_after_s: int, why: str) -> APIError:
    return APIError(503, why, headers={"Retry-After": str(retry_after_s)})


def _map_handle_error(exc: BaseException, model: str, retry_after_s: int) -> APIError:
    """Turn what a model deployment call raised into the error the client gets."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    from serving.engine import EngineUnavailable

    if isinstance(exc, BackPressureError):
        return _overloaded(retry_after_s, f"model {model!r} is overloaded; retry later")
    if isinstance(
        exc,
        EngineUnavailable
        | RayActorError
        | ActorDiedError
        | ActorUnavailableError
        | DeploymentUnavailableError,
    ):
        return _overloaded(retry_after_s, f"model {model!r} is temporarily unavailable")
    logger.exception("unexpected error calling %s", model, exc_info=exc)
    return APIError(500, f"internal error while serving {model!r}: {type(exc).__name__}")


def _is_error(result: Any) -> bool:
    return hasattr(result, "error") and not hasattr(result, "choices")


async def _prepend(first: str, rest: Any) -> AsyncIterator[str]:
    yield first
    async for item in rest:
        yield item


# `serve.ingress` pickles the FastAPI app (and so these routes' globals) when the class
# is decorated: every helper the routes use must be defined above this line.
@serve.deployment
@serve.ingress(app)
class Gateway:
    """Routes OpenAI requests to one `ModelServer` deployment per model."""

    def __init__(self, config: FrugalConfig, servers: dict[str, DeploymentHandle]) -> None:
        self.config = config
        self.servers = servers
        self.api_keys = set(config.gateway.api_keys)
        self.retry_after_s = config.gateway.retry_after_s
        self.max_request_bytes = config.gateway.max_request_bytes
        self.created = int(time.time())
        self.max_model_lens: dict[str, int] = {}

    # --- plain endpoints ----------------------------------------------------------

    @app.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus(self) -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def list_models(self, raw: Request) -> dict[str, Any]:
        self._authorize(raw)
        data = [
            {
                "id": model.model_id,
                "object": "model",
                "created": self.created,
                "owned_by": "frugal",
                "root": model.model_loading_config.model_source,
                "max_model_len": await self._max_model_len(model.model_id),
            }
            for model in self.config.models
        ]
        return {"object": "list", "data": data}

    async def _max_model_len(self, model_id: str) -> int | None:
        """The engine's context length (it may derive it from the checkpoint); cached."""
        if model_id not in self.max_model_lens:
            try:
                info = await self.servers[model_id].info.remote()
            except Exception:  # engine down: list the model without it
                return self.config.model(model_id).engine_kwargs.get("max_model_len")
            self.max_model_lens[model_id] = info["max_model_len"]
        return self.max_model_lens[model_id]

    # --- generation endpoints -----------------------------------------------------

    @app.post("/v1/chat/completions")
    async def chat_completions(self, raw: Request) -> Response:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        return await self._generate(raw, ChatCompletionRequest, "chat")

    @app.post("/v1/completions")
    async def completions(self, raw: Request) -> Response:
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest

        return await self._generate(raw, CompletionRequest, "completion")

    # --- the request path ---------------------------------------------------------

    async def _generate(self, raw: Request, request_cls: type, endpoint: str) -> Response:
        started = time.perf_counter()
        self._authorize(raw)
        body = await self._read_json(raw)
        if not body.get("model"):
            raise APIError(400, "you must provide a model parameter", param="model")
        try:
            request = request_cls.model_validate(body)
        except ValidationError as exc:
            message, param = _validation_message(exc)
            raise APIError(400, message, param=param) from None
        model = request.model
        handle = self.servers.get(model)
        if handle is None:
            known = ", ".join(sorted(self.servers))
            raise APIError(
                404, f"The model `{model}` does not exist. Available: {known}", param="model"
            )
        if request.stream:
            return await self._stream(handle, request, endpoint, started)
        return await self._unary(handle, request, endpoint, started)

    async def _unary(
        self, handle: DeploymentHandle, request: Any, endpoint: str, started: float
    ) -> Response:
        model = request.model
        metrics.IN_FLIGHT.labels(model).inc()
        status = 500
        try:
            pending = getattr(handle, endpoint).remote(request)
            try:
                result = await pending
            except asyncio.CancelledError:  # client gone: abort the generation too
                pending.cancel()
                status = 499
                raise
            except Exception as exc:
                error = _map_handle_error(exc, model, self.retry_after_s)
                status = error.status
                raise error from None
            if _is_error(result):
                status = result.error.code
                return JSONResponse(result.model_dump(), status_code=status)
            status = 200
            metrics.record_usage(model, result.usage)
            return Response(result.model_dump_json(), media_type="application/json")
        finally:
            metrics.IN_FLIGHT.labels(model).dec()
            metrics.LATENCY.labels(model, endpoint).observe(time.perf_counter() - started)
            metrics.REQUESTS.labels(model, endpoint, str(status)).inc()

    async def _stream(
        self, handle: DeploymentHandle, request: Any, endpoint: str, started: float
    ) -> Response:
        from vllm.entrypoints.generate.base.protocol import StreamOptions

        model = request.model
        client_wants_usage = bool(request.stream_options and request.stream_options.include_usage)
        # Usage is always requested from vLLM so that metrics and accounting see it; the
        # usage-only chunk is passed on only to clients that asked for it.
        request.stream_options = StreamOptions(
            include_usage=True,
            continuous_usage_stats=bool(
                request.stream_options and request.stream_options.continuous_usage_stats
            ),
        )
        stream = handle.options(stream=True)
        chunks = getattr(stream, f"{endpoint}_stream").remote(request)
        metrics.IN_FLIGHT.labels(model).inc()
        try:
            first = await chunks.__anext__()
        except BaseException as exc:
            metrics.IN_FLIGHT.labels(model).dec()
            error = (
                _map_handle_error(exc, model, self.retry_after_s)
                if isinstance(exc, Exception)
                else None
            )
            if error is None:
                raise
            metrics.REQUESTS.labels(model, endpoint, str(error.status)).inc()
            raise error from None
        if _is_error(first):
            metrics.IN_FLIGHT.labels(model).dec()
            metrics.REQUESTS.labels(model, endpoint, str(first.error.code)).inc()
            return JSONResponse(first.model_dump(), status_code=first.error.code)
        metrics.TTFT.labels(model).observe(time.perf_counter() - started)
        return StreamingResponse(
            self._relay(chunks, first, model, endpoint, started, client_wants_usage),
            media_type="text/event-stream",
        )

    async def _relay(
        self,
        chunks: Any,
        first: str,
        model: str,
        endpoint: str,
        started: float,
        client_wants_usage: bool,
    ) -> AsyncIterator[str]:
        """Pass SSE chunks through, taking usage out of the usage-only chunk."""
        status = "200"
        finished = False
        try:
            async for chunk in _prepend(first, chunks):
                if '"choices":[]' in chunk and '"usage"' in chunk:
                    usage = json.loads(chunk.removeprefix("data: ")).get("usage")
                    metrics.record_usage(model, usage)
                    if not client_wants_usage:
                        continue
                yield chunk
            finished = True
        except Exception as exc:  # the engine failed mid-stream: tell the client in-band
            error = _map_handle_error(exc, model, self.retry_after_s)
            status = str(error.status)
            payload = {"error": {"message": error.message, "code": error.status}}
            yield f"data: {json.dumps(payload)}\n\n"
        finally:
            if not finished:  # client gone (or error): stop the generation in the engine
                chunks.cancel()
                status = "499" if status == "200" else status
            metrics.IN_FLIGHT.labels(model).dec()
            metrics.LATENCY.labels(model, endpoint).observe(time.perf_counter() - started)
            metrics.REQUESTS.labels(model, endpoint, status).inc()

    # --- helpers ------------------------------------------------------------------

    def _authorize(self, raw: Request) -> None:
        if not self.api_keys:
            return
        header = raw.headers.get("authorization", "")
        token = header.removeprefix("Bearer ").strip()
        if token not in self.api_keys:
            raise APIError(401, "Incorrect API key provided.")

    async def _read_json(self, raw: Request) -> dict[str, Any]:
        body = await raw.body()
        if len(body) > self.max_request_bytes:
            raise APIError(413, f"request body exceeds {self.max_request_bytes} bytes")
        try:
            parsed = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise APIError(400, "request body must be a JSON object")
        return parsed
