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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving import metrics
from serving.accounting import Cost, CostModel, TokenUsage, combine_costs, cost_headers, key_label
from serving.cache_advisor import PromptShapes, prompt_text
from serving.config import FrugalConfig
from serving.errors import APIError, error_response
from serving.pricing import price_table
from serving.reasoning import apply_thinking, plan_thinking, pop_reasoning_fields
from serving.router.runtime import RouteDecision, Router, validate_min_quality

if TYPE_CHECKING:
    from serving.engine import ModelEngine

AUTO = "auto"

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


@dataclass
class _Call:
    """One request on its way through the gateway."""

    request: Any
    model: str
    endpoint: str
    started: float
    api_key: str
    reasoning: bool
    client_wants_usage: bool = False
    prefix: str = "other"
    decision: RouteDecision | None = None


def _route_messages(request: Any) -> list[dict[str, str]]:
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


def _wants_logprobs(request: Any, endpoint: str) -> bool:
    return bool(request.logprobs)


def _ask_logprobs(request: Any, endpoint: str) -> None:
    """The cascade judges an answer by its token log-probabilities."""
    request.logprobs = True if endpoint == "chat" else 1


def _answer_logprobs(result: Any, endpoint: str) -> list[float] | None:
    choice = result.choices[0]
    if choice.logprobs is None:
        return None
    if endpoint == "chat":
        return [token.logprob for token in choice.logprobs.content or []]
    return [lp for lp in choice.logprobs.token_logprobs or [] if lp is not None]


def _add_reasoning_content(data: dict[str, Any]) -> None:
    """Mirror vLLM's `reasoning` field as `reasoning_content`, the name most reasoning
    clients (and earlier vLLM releases) read."""
    for choice in data.get("choices") or []:
        for key in ("message", "delta"):
            part = choice.get(key)
            if isinstance(part, dict) and "reasoning" in part:
                part["reasoning_content"] = part["reasoning"]


def _is_error(result: Any) -> bool:
    return hasattr(result, "error") and not hasattr(result, "choices")


async def _prepend(first: Any, rest: Any) -> AsyncIterator[Any]:
    yield first
    async for item in rest:
        yield item


# `serve.ingress` pickles the FastAPI app (and so these routes' globals) when the class
# is decorated: every helper the routes use must be defined above this line.
@serve.deployment
@serve.ingress(app)
class Gateway:
    """Routes OpenAI requests to one `ModelServer` deployment per model."""

    async def __init__(self, config: FrugalConfig, servers: dict[str, DeploymentHandle]) -> None:
        self.config = config
        self.servers: dict[str, Any] = dict(servers)
        self.colocated: ModelEngine | None = None
        if config.gateway.colocated_model is not None:
            # This replica hosts the model's engine itself (docs/serving.md).
            from serving.engine import ModelEngine
            from serving.local_handle import LocalHandle

            model = config.model(config.gateway.colocated_model)
            self.colocated = await ModelEngine.start(model)
            self.servers[model.model_id] = LocalHandle(self.colocated)
        self.api_keys = set(config.gateway.api_keys)
        self.retry_after_s = config.gateway.retry_after_s
        self.max_request_bytes = config.gateway.max_request_bytes
        self.created = int(time.time())
        self.max_model_lens: dict[str, int] = {}
        self.router = Router.load(config)
        prices = self.router.prices if self.router else price_table(config)
        self.cost_model = CostModel(config, prices)
        self.prompt_shapes = PromptShapes()

    async def check_health(self) -> None:
        """Ray Serve calls this periodically; a dead colocated engine restarts the
        replica (a separate model replica has its own check)."""
        if self.colocated is not None:
            await self.colocated.check_health()

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
        if self.router is not None:
            data.append({"id": AUTO, "object": "model", "created": self.created,
                         "owned_by": "frugal", "root": None, "max_model_len": None})
        return {"object": "list", "data": data}

    async def engine_info(self, model_id: str) -> dict[str, Any]:
        """A model engine's `info()` (`frugal serve` prints its CPU kernels at start)."""
        return await self.servers[model_id].info.remote()

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
        api_key = self._authorize(raw)
        body = await self._read_json(raw)
        if not body.get("model"):
            raise APIError(400, "you must provide a model parameter", param="model")
        reasoning_extra = pop_reasoning_fields(body) if endpoint == "chat" else {}
        frugal_extra = body.pop("frugal", None)
        try:
            request = request_cls.model_validate(body)
        except ValidationError as exc:
            message, param = _validation_message(exc)
            raise APIError(400, message, param=param) from None
        target = self._quality_target(frugal_extra, api_key)
        decision = self._route(request, target) if request.model == AUTO else None
        model = request.model
        handle = self.servers.get(model)
        if handle is None:
            known = ", ".join(sorted(self.servers))
            raise APIError(
                404, f"The model `{model}` does not exist. Available: {known}", param="model"
            )
        model_config = self.config.model(model)
        plan = plan_thinking(reasoning_extra, request, model_config) if endpoint == "chat" else None
        if plan is not None:
            apply_thinking(request, plan, model_config)
        call = _Call(
            request=request,
            model=model,
            endpoint=endpoint,
            started=started,
            api_key=key_label(api_key),
            reasoning=plan is not None and plan.enabled,
            decision=decision,
        )
        self._observe_prompt_shape(call)
        if request.stream:
            return await self._stream(handle, call)
        return await self._unary(handle, call)

    def _observe_prompt_shape(self, call: _Call) -> None:
        """Feed the cache advisor (`frugal cache report`)."""
        text = prompt_text(call.request)
        call.prefix = self.prompt_shapes.prefix_label(text)
        metrics.PROMPTS.labels(call.api_key).inc()
        if self.prompt_shapes.observe(call.api_key, text):
            metrics.LATE_FIXED_PROMPTS.labels(call.api_key).inc()

    def _quality_target(self, frugal_extra: Any, api_key: str | None) -> float | None:
        """The request's `extra_body.frugal.min_quality` (validated), else None."""
        if frugal_extra is None:
            return None
        if not isinstance(frugal_extra, dict):
            raise APIError(400, "frugal must be an object", param="frugal")
        if "min_quality" not in frugal_extra:
            return None
        try:
            return validate_min_quality(frugal_extra["min_quality"])
        except ValueError as exc:
            raise APIError(400, str(exc), param="frugal.min_quality") from None

    def _route(self, request: Any, target: float | None) -> RouteDecision:
        """Lever 1: `model="auto"` becomes the cheapest model predicted good enough."""
        if self.router is None:
            raise APIError(
                400,
                "model='auto' needs a router: set router.scorecard in the deployments YAML "
                "(frugal bench eval writes one)",
                param="model",
            )
        decision = self.router.choose(_route_messages(request), target)
        request.model = decision.model
        metrics.ROUTER_DECISIONS.labels(decision.model).inc()
        metrics.ROUTER_PREDICTED.labels(decision.model).observe(
            decision.predicted[decision.model]
        )
        return decision

    def _account(self, call: _Call, usage: Any) -> Cost | None:
        """Record tokens and cost of one response."""
        if usage is None:
            return None
        metrics.record_usage(call.model, usage)
        tokens = TokenUsage.from_usage(usage)
        metrics.PREFIX_PROMPT_TOKENS.labels(call.api_key, call.prefix).inc(tokens.prompt_tokens)
        metrics.PREFIX_CACHED_TOKENS.labels(call.api_key, call.prefix).inc(tokens.cached_tokens)
        cost = self.cost_model.cost(call.model, tokens)
        metrics.record_cost(cost, call.api_key, tokens.reasoning_tokens)
        return cost

    async def _call_model(self, handle: DeploymentHandle, call: _Call) -> Any:
        """One non-streaming call to a model deployment, with metrics; errors -> APIError."""
        model = call.model
        metrics.IN_FLIGHT.labels(model).inc()
        status = 500
        try:
            pending = getattr(handle, call.endpoint).remote(call.request)
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
            status = result.error.code if _is_error(result) else 200
            return result
        finally:
            metrics.IN_FLIGHT.labels(model).dec()
            metrics.LATENCY.labels(model, call.endpoint).observe(time.perf_counter() - call.started)
            metrics.REQUESTS.labels(model, call.endpoint, str(status)).inc()

    async def _unary(self, handle: DeploymentHandle, call: _Call) -> Response:
        cascade = call.decision is not None and self.router is not None and self.router.cascade
        client_logprobs = _wants_logprobs(call.request, call.endpoint)
        if cascade and not client_logprobs:
            _ask_logprobs(call.request, call.endpoint)
        result = await self._call_model(handle, call)
        if _is_error(result):
            return JSONResponse(result.model_dump(), status_code=result.error.code)
        costs = [self._account(call, result.usage)]
        escalated_to = None
        if cascade:
            assert call.decision is not None and self.router is not None
            logprobs = _answer_logprobs(result, call.endpoint)
            escalated_to = self.router.escalation(call.decision, call.model, logprobs)
            confidence = self.router.predictor.confidence(call.model, logprobs)
            if confidence is not None:
                metrics.ROUTER_CONFIDENCE.labels(call.model).observe(confidence)
            if escalated_to is not None:  # bill both calls; the larger model answers
                metrics.ROUTER_ESCALATIONS.labels(call.model, escalated_to).inc()
                call.model = call.request.model = escalated_to
                result = await self._call_model(self.servers[escalated_to], call)
                if _is_error(result):
                    return JSONResponse(result.model_dump(), status_code=result.error.code)
                costs.append(self._account(call, result.usage))
        data = result.model_dump()
        if cascade and not client_logprobs:
            for choice in data.get("choices") or []:
                choice["logprobs"] = None
        headers: dict[str, str] = {}
        known = [cost for cost in costs if cost is not None]
        if known:
            cost = combine_costs(known)
            data["usage"]["cost"] = cost.model_dump()
            headers = cost_headers(cost)
        if call.decision is not None:
            headers["x-frugal-route"] = call.decision.header(escalated_to)
        if call.reasoning:
            _add_reasoning_content(data)
        return JSONResponse(data, headers=headers)

    async def _stream(self, handle: DeploymentHandle, call: _Call) -> Response:
        from vllm.entrypoints.generate.base.protocol import StreamOptions

        request, model = call.request, call.model
        call.client_wants_usage = bool(
            request.stream_options and request.stream_options.include_usage
        )
        # Usage is always requested from vLLM so that metrics and accounting see it; the
        # usage-only chunk is passed on only to clients that asked for it.
        request.stream_options = StreamOptions(
            include_usage=True,
            continuous_usage_stats=bool(
                request.stream_options and request.stream_options.continuous_usage_stats
            ),
        )
        stream = handle.options(stream=True)
        chunks = getattr(stream, f"{call.endpoint}_stream").remote(request)
        metrics.IN_FLIGHT.labels(model).inc()
        try:
            first = await chunks.__anext__()
        except Exception as exc:
            metrics.IN_FLIGHT.labels(model).dec()
            error = _map_handle_error(exc, model, self.retry_after_s)
            metrics.REQUESTS.labels(model, call.endpoint, str(error.status)).inc()
            raise error from None
        except BaseException:  # cancelled while waiting: stop the generation too
            chunks.cancel()
            metrics.IN_FLIGHT.labels(model).dec()
            raise
        if _is_error(first):
            metrics.IN_FLIGHT.labels(model).dec()
            metrics.REQUESTS.labels(model, call.endpoint, str(first.error.code)).inc()
            return JSONResponse(first.model_dump(), status_code=first.error.code)
        metrics.TTFT.labels(model).observe(time.perf_counter() - call.started)
        headers = {"x-frugal-route": call.decision.header()} if call.decision else None
        return StreamingResponse(
            self._relay(chunks, first, call), media_type="text/event-stream", headers=headers
        )

    def _rewrite(self, chunk: str, call: _Call) -> str | None:
        """One SSE chunk as the client gets it: the usage-only chunk is accounted (and
        dropped unless asked for), reasoning is mirrored as `reasoning_content`."""
        if '"choices":[]' in chunk and '"usage"' in chunk:
            data = json.loads(chunk.removeprefix("data: "))
            cost = self._account(call, data.get("usage"))
            if not call.client_wants_usage:
                return None
            data["usage"]["cost"] = cost.model_dump() if cost else None
            return f"data: {json.dumps(data)}\n\n"
        if call.reasoning and '"reasoning"' in chunk:
            data = json.loads(chunk.removeprefix("data: "))
            _add_reasoning_content(data)
            return f"data: {json.dumps(data)}\n\n"
        return chunk

    async def _relay(self, chunks: Any, first: list[str], call: _Call) -> AsyncIterator[str]:
        """Pass SSE chunks through, one body write per batch the model server sent."""
        model, status, finished = call.model, "200", False
        try:
            async for batch in _prepend(first, chunks):
                out = [c for c in (self._rewrite(chunk, call) for chunk in batch) if c]
                if out:
                    yield "".join(out)
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
            metrics.LATENCY.labels(model, call.endpoint).observe(time.perf_counter() - call.started)
            metrics.REQUESTS.labels(model, call.endpoint, status).inc()

    # --- helpers ------------------------------------------------------------------

    def _authorize(self, raw: Request) -> str | None:
        """The caller's API key; 401 when keys are configured and this one is not."""
        header = raw.headers.get("authorization", "")
        token = header.removeprefix("Bearer ").strip() or None
        if self.api_keys and token not in self.api_keys:
            raise APIError(401, "Incorrect API key provided.")
        return token if self.api_keys else None

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
