"""The gateway's OpenAPI document: every body the gateway reads is described, errors
have the OpenAI shape, and `docs/openapi.json` is what the gateway serves."""

from __future__ import annotations

import json
from pathlib import Path

DOCUMENT = Path(__file__).parents[1] / "docs" / "openapi.json"


def _document() -> dict:
    from serving.gateway import app
    from serving.openapi import frugal_openapi

    return frugal_openapi(app)


def test_every_request_body_is_described() -> None:
    paths = _document()["paths"]
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/batches"):
        ref = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert ref["$ref"].startswith("#/components/schemas/")
    upload = paths["/v1/files"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload["schema"]["required"] == ["file", "purpose"]
    chat = _document()["components"]["schemas"]["ChatCompletionRequest"]
    assert {"messages", "model", "max_tokens"} <= set(chat["properties"])


def test_every_operation_documents_the_error_statuses() -> None:
    for operations in _document()["paths"].values():
        for operation in operations.values():
            assert {"400", "401", "404", "429", "503"} <= set(operation["responses"])
            assert "422" not in operation["responses"]  # the gateway answers 400


def _shape(document: dict) -> dict:
    """What the document promises: operations, their body types and statuses. Not the
    schemas' texts, which follow the installed vLLM and openai releases (docstrings)."""
    shape = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            content = (operation.get("requestBody") or {}).get("content", {})
            bodies = {kind: body["schema"].get("$ref", "inline") for kind, body in content.items()}
            shape[f"{method.upper()} {path}"] = (bodies, sorted(operation["responses"]))
    return shape


def test_the_committed_document_is_the_served_one() -> None:
    """`docs/openapi.json` has the operations, bodies and statuses the gateway serves
    (`frugal openapi` rewrites it)."""
    committed = json.loads(DOCUMENT.read_text())
    assert _shape(committed) == _shape(_document()), (
        "docs/openapi.json is stale: run `frugal openapi`")


def test_a_responses_input_item_of_a_non_string_type_is_400() -> None:
    """Found by the fuzz test: `"type": {}` in an input item was a 500 (TypeError)."""
    import pytest

    from serving.errors import APIError
    from serving.responses.translate import parse_request

    with pytest.raises(APIError) as caught:
        parse_request({"model": "zoo-s", "input": [{"type": {}, "output": ""}]})
    assert caught.value.status == 400 and caught.value.param == "input[0].type"
