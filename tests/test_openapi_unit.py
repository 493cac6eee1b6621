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


def test_the_committed_document_is_the_served_one() -> None:
    """What `frugal openapi` writes in a fresh process (as a server builds it: pydantic
    names shared sub-schemas by what else was imported first, so not in this one)."""
    import subprocess

    from serving.evaluation.launcher import frugal_command

    done = subprocess.run([*frugal_command(), "openapi", "--out", "-"], capture_output=True,
                          text=True, timeout=300, check=True)
    assert json.loads(DOCUMENT.read_text()) == json.loads(done.stdout), (
        "docs/openapi.json is stale: run `frugal openapi`")


def test_a_responses_input_item_of_a_non_string_type_is_400() -> None:
    """Found by the fuzz test: `"type": {}` in an input item was a 500 (TypeError)."""
    import pytest

    from serving.errors import APIError
    from serving.responses.translate import parse_request

    with pytest.raises(APIError) as caught:
        parse_request({"model": "zoo-s", "input": [{"type": {}, "output": ""}]})
    assert caught.value.status == 400 and caught.value.param == "input[0].type"
