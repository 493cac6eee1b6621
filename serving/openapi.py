"""`/openapi.json` that says what each endpoint accepts, so that fuzzers and clients can
read it.

The gateway reads raw request bodies (it must pop frugal's own fields and map every
validation error to an OpenAI-shaped 400), so FastAPI cannot infer their schemas. This
attaches them from the models that validate those bodies: vLLM's protocol models for
chat, completions and responses, frugal's own for batches, and the multipart form of
file uploads. Every operation also documents the OpenAI error shape and the statuses
the gateway answers with.
"""

from __future__ import annotations

from typing import Any

import typer
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

#: The OpenAI error body every non-2xx answer carries.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type"],
        "properties": {
            "message": {"type": "string"},
            "type": {"type": "string"},
            "param": {"type": ["string", "null"]},
            "code": {"type": ["string", "integer", "null"]},
        },
    }},
}

#: Statuses any operation may answer besides its success (docs/serving.md).
ERROR_STATUSES = {
    "400": "Invalid request: the message names the parameter",
    "401": "Missing or unknown API key",
    "404": "Unknown model, file, batch or response",
    "413": "Request body too large",
    "429": "Rate limit or budget (with Retry-After)",
    "503": "Overloaded, a model restarting, or the store full or read-only (with Retry-After)",
}


def _bodies() -> dict[tuple[str, str], type[BaseModel]]:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest

    from serving.batch.models import BatchCreate

    return {
        ("/v1/chat/completions", "post"): ChatCompletionRequest,
        ("/v1/completions", "post"): CompletionRequest,
        ("/v1/responses", "post"): ResponsesRequest,
        ("/v1/batches", "post"): BatchCreate,
    }


FILE_UPLOAD: dict[str, Any] = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "required": ["file", "purpose"],
        "properties": {
            "file": {"type": "string", "format": "binary"},
            "purpose": {"type": "string", "enum": ["batch"]},
        },
    }}},
}


def frugal_openapi(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document with request bodies and error responses attached."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary,
                         routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    for (path, method), model in _bodies().items():
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components[model.__name__] = body
        schema["paths"][path][method]["requestBody"] = {
            "required": True,
            "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    schema["paths"]["/v1/files"]["post"]["requestBody"] = FILE_UPLOAD
    schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"] = {
        "text/plain": {"schema": {"type": "string"}}}  # Prometheus' text format
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for operations in schema["paths"].values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)  # FastAPI's default; the gateway answers 400
            for status, description in ERROR_STATUSES.items():
                responses.setdefault(status, {"description": description, "content": error})
    app.openapi_schema = schema
    return schema


def openapi_command(
    out: str = typer.Option("docs/openapi.json", help="Where to write it ('-': stdout)."),
) -> None:
    """Write the gateway's OpenAPI document (what `/openapi.json` serves) without a
    server: for client generators, fuzzers and review."""
    import json
    import sys
    from pathlib import Path

    from serving.gateway import app

    text = json.dumps(frugal_openapi(app), indent=1, sort_keys=True) + "\n"
    if out == "-":
        sys.stdout.write(text)
    else:
        Path(out).write_text(text)
        typer.echo(f"wrote {out}")
