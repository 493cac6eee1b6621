"""The gateway: frugal's OpenAI-compatible ingress (a Ray Serve deployment with FastAPI).

It only composes: read and parse the request (`serving.pipeline.parse`), run it through
the lever chain (`serving.pipeline`, order in `serving.levers`), and render the answer
as an HTTP response. It holds no lever logic and writes no metrics, except the count of
requests refused for a full or read-only store (`frugal_store_errors_total{where="api"}`).

Failure contract (every error is an OpenAI error object, see `serving.errors`):
- body not JSON, wrong field types, missing `model` -> 400; body too large -> 413;
- bad, missing or revoked API key (when keys are configured) -> 401, before the body
  is read; over the key's rpm/tpm -> 429 with `Retry-After`; its budget spent -> 429
  `insufficient_quota`; a model outside its list -> 404 (docs/tenants.md);
- unknown model -> 404; prompt longer than the context -> 400 (vLLM's message);
- engine overloaded (queue full) or down -> 503 with `Retry-After`; never a hang;
- the store's disk full or read-only, for a request that must write it (uploads,
  batches, stored responses, key budgets) -> 503 `store_unavailable` with
  `Retry-After` (`serving.store.faults`); requests that need no store are unaffected;
- an engine failing mid-stream -> an in-band error event of the same shape;
- client gone -> Ray Serve cancels this call and the model call below it, which
  aborts the generation in vLLM.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving import metrics
from serving.batch.app import Batches, start_batches
from serving.batch.service import BatchService
from serving.compaction.notes import NoteCache
from serving.config import FrugalConfig
from serving.errors import APIError, error_response, store_unavailable
from serving.levers import build_chain
from serving.levers.router import AUTO
from serving.levers.tenant import bearer_token
from serving.openapi import frugal_openapi
from serving.pipeline.context import Endpoint, RequestContext
from serving.pipeline.engine_call import ModelCaller
from serving.pipeline.parse import parse_request, read_json
from serving.pipeline.pipeline import Answer, Pipeline, StreamAnswer
from serving.responses.service import ResponsesService
from serving.responses.store import ResponseStore
from serving.router.runtime import Router
from serving.store.db import open_engine, session_factory
from serving.store.faults import StoreUnavailable
from serving.tenants.app import build_tenants

if TYPE_CHECKING:
    from serving.engine import ModelEngine

logger = logging.getLogger("frugal.gateway")

app = FastAPI(title="frugal", summary="OpenAI-compatible gateway", docs_url=None, redoc_url=None)
app.openapi = lambda: frugal_openapi(app)  # request bodies and errors documented


@app.exception_handler(APIError)
async def _api_error(_: Request, exc: APIError) -> JSONResponse:
    return error_response(exc)


@app.exception_handler(StoreUnavailable)
async def _store_unavailable(_: Request, exc: StoreUnavailable) -> JSONResponse:
    """Every route's store write refused for a full or read-only disk, in one place."""
    metrics.STORE_ERRORS.labels(exc.fault, "api").inc()
    logger.warning("store write refused: %s", exc.fault.message)
    return error_response(store_unavailable(exc))


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


def render(answer: Answer) -> Response:
    """An answer of the pipeline as the HTTP response the client gets."""
    if isinstance(answer, StreamAnswer):
        return StreamingResponse(
            answer.chunks, media_type="text/event-stream", headers=answer.headers or None
        )
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers or None)


# `serve.ingress` pickles the FastAPI app (and so these routes' globals) when the class
# is decorated: every helper the routes use must be defined above this line.
@serve.deployment
@serve.ingress(app)
class Gateway:
    """Parses OpenAI requests, runs them through the lever chain, renders the answers."""

    async def __init__(self, config: FrugalConfig, servers: dict[str, DeploymentHandle]) -> None:
        self.config = config
        handles: dict[str, Any] = dict(servers)
        self.colocated: ModelEngine | None = None
        if config.gateway.colocated_model is not None:
            # This replica hosts the model's engine itself (docs/serving.md).
            from serving.engine import ModelEngine
            from serving.local_handle import LocalHandle

            model = config.model(config.gateway.colocated_model)
            self.colocated = await ModelEngine.start(model)
            handles[model.model_id] = LocalHandle(self.colocated)
        self.max_request_bytes = config.gateway.max_request_bytes
        self.created = int(time.time())
        self.max_model_lens: dict[str, int] = {}
        self.router = Router.load(config)
        self.caller = ModelCaller(handles, config.gateway.retry_after_s)
        try:  # names this replica in `x-frugal-replica` (which one answered: debugging
            # affinity and per-replica limits); absent outside Ray Serve (unit tests)
            self.replica = serve.get_replica_context().replica_tag
        except Exception:
            self.replica = None
        self.tenants = build_tenants(config)
        self.tenants.start()
        store = session_factory(open_engine(config.store.database_url()))
        notes = NoteCache(store)  # compaction notes, shared by the replicas
        self.pipeline = Pipeline(
            config, build_chain(config, self.router, self.tenants, notes), self.caller)
        logger.info("lever chain: %s", " -> ".join(self.pipeline.chain.names))
        # The Responses API; its stored responses share the store with batches and keys.
        self.responses = ResponsesService(ResponseStore(store), self.pipeline)
        # Lever 4: the Files and Batches API and this replica's batch runner.
        self.batches: Batches | None = (
            start_batches(config, self.pipeline, self.responses)
            if config.batch.enabled else None
        )
        # The startup heap (vLLM, torch, Ray: ~800k objects) is never garbage; left in
        # the oldest generation, each full collection walked it and paused every stream
        # of this replica for ~0.4 s (measured in `frugal bench batch`, docs/batch.md).
        # Only in a Ray Serve replica, whose process lives as long as this object: a
        # process that builds a Gateway in passing (a unit test) must still collect it.
        if self.replica is not None:
            from vllm.utils.gc_utils import freeze_gc_heap  # vLLM's post-startup freeze

            freeze_gc_heap()

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
        ctx = self._context(raw, Endpoint.CHAT, generation=False)
        await self.pipeline.admit(ctx)
        key = ctx.tenant
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
            if key is None or key.allows_model(model.model_id)
        ]
        if self.router is not None and (key is None or key.allows_model(AUTO)):
            data.append({"id": AUTO, "object": "model", "created": self.created,
                         "owned_by": "frugal", "root": None, "max_model_len": None})
        return {"object": "list", "data": data}

    async def engine_info(self, model_id: str) -> dict[str, Any]:
        """A model engine's `info()` (`frugal serve` prints its CPU kernels at start)."""
        return await self.caller.handle(model_id).info.remote()

    async def _max_model_len(self, model_id: str) -> int | None:
        """The engine's context length (it may derive it from the checkpoint); cached."""
        if model_id not in self.max_model_lens:
            try:
                info = await self.caller.handle(model_id).info.remote()
            except Exception:  # engine down: list the model without it
                return self.config.model(model_id).engine_kwargs.get("max_model_len")
            self.max_model_lens[model_id] = info["max_model_len"]
        return self.max_model_lens[model_id]

    # --- generation endpoints: parse, chain, respond --------------------------------

    @app.post("/v1/chat/completions")
    async def chat_completions(self, raw: Request) -> Response:
        return await self._generate(raw, Endpoint.CHAT)

    @app.post("/v1/completions")
    async def completions(self, raw: Request) -> Response:
        return await self._generate(raw, Endpoint.COMPLETION)

    async def _generate(self, raw: Request, endpoint: Endpoint,
                        responses: bool = False) -> Response:
        ctx = self._context(raw, endpoint)
        if self.replica is not None:
            ctx.response_headers["x-frugal-replica"] = self.replica
        try:
            await self.pipeline.admit(ctx)
            body = read_json(await raw.body(), self.max_request_bytes)
            if responses:  # the Responses API translates, then runs the same chain
                return render(await self.responses.create(ctx, body))
            ctx.request, ctx.extras, ctx.options = parse_request(
                body, endpoint, self.pipeline.chain.extra_fields
            )
            return render(await self.pipeline.run(ctx))
        except APIError as exc:  # refusals name the replica too (429s: whose count)
            if self.replica is not None:
                exc.headers.setdefault("x-frugal-replica", self.replica)
            raise

    # --- the Responses API (serving/responses): the chat chain behind a translation ----

    @app.post("/v1/responses")
    async def create_response(self, raw: Request) -> Response:
        return await self._generate(raw, Endpoint.CHAT, responses=True)

    @app.get("/v1/responses/{response_id}")
    async def retrieve_response(self, response_id: str, raw: Request) -> dict[str, Any]:
        return await self.responses.retrieve(await self._owner(raw), response_id)

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(self, response_id: str, raw: Request) -> dict[str, Any]:
        return await self.responses.delete(await self._owner(raw), response_id)

    @app.post("/v1/responses/{response_id}/cancel")
    async def cancel_response(self, response_id: str, raw: Request) -> dict[str, Any]:
        return await self.responses.cancel(await self._owner(raw), response_id)

    # --- files and batches (lever 4, serving/batch): admit, then the service ------------

    @app.post("/v1/files")
    async def create_file(self, raw: Request) -> dict[str, Any]:
        return await self._batch_api(raw).create_file(await self._owner(raw), raw)

    @app.get("/v1/files")
    async def list_files(self, raw: Request) -> dict[str, Any]:
        return await self._batch_api(raw).list_files(await self._owner(raw), raw)

    @app.get("/v1/files/{file_id}")
    async def retrieve_file(self, file_id: str, raw: Request) -> dict[str, Any]:
        return await self._batch_api(raw).retrieve_file(await self._owner(raw), file_id)

    @app.get("/v1/files/{file_id}/content")
    async def file_content(self, file_id: str, raw: Request) -> Response:
        chunks = await self._batch_api(raw).file_content(await self._owner(raw), file_id)
        return StreamingResponse(chunks, media_type="application/octet-stream")

    @app.delete("/v1/files/{file_id}")
    async def delete_file(self, file_id: str, raw: Request) -> dict[str, Any]:
        return await self._batch_api(raw).delete_file(await self._owner(raw), file_id)

    @app.post("/v1/batches")
    async def create_batch(self, raw: Request) -> dict[str, Any]:
        return await self._batch_api(raw).create_batch(await self._owner(raw), raw)

    @app.get("/v1/batches")
    async def list_batches(self, raw: Request) -> dict[str, Any]:
        return await self._batch_api(raw).list_batches(await self._owner(raw), raw)

    @app.get("/v1/batches/{batch_id}")
    async def retrieve_batch(self, batch_id: str, raw: Request) -> dict[str, Any]:
        return await self._batch_api(raw).retrieve_batch(await self._owner(raw), batch_id)

    @app.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(self, batch_id: str, raw: Request) -> dict[str, Any]:
        return await self._batch_api(raw).cancel_batch(await self._owner(raw), batch_id)

    def _batch_api(self, raw: Request) -> BatchService:
        if self.batches is None:
            raise APIError(404, f"{raw.url.path}: the batch API is off (batch.enabled)")
        return self.batches.service

    async def _owner(self, raw: Request) -> str:
        """The caller's key label (after the tenant lever admitted it): rows' owner."""
        ctx = self._context(raw, Endpoint.CHAT, generation=False)
        await self.pipeline.admit(ctx)
        return ctx.key_label

    def _context(self, raw: Request, endpoint: Endpoint,
                 generation: bool = True) -> RequestContext:
        return RequestContext(
            endpoint=endpoint, api_key=bearer_token(raw.headers.get("authorization")),
            generation=generation,
        )
