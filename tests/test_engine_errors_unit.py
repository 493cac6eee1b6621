"""How `ModelEngine` reports vLLM's failures, without an engine (a stand-in object with
only what the mapping reads): a structured request whose grammar failed to compile is
the client's 400, not vLLM's generic 500 (seen on the real server:
tests/test_hostile_inputs.py, a 100 KB regex)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.exceptions import GenerationError

from serving.engine import ModelEngine


def _engine(errored: bool = False) -> ModelEngine:
    engine = object.__new__(ModelEngine)
    engine.engine = SimpleNamespace(errored=errored)
    engine.model = SimpleNamespace(model_id="m")
    return engine


def _request(**extra: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra})


async def _fails(request: Any, raw: Any) -> Any:
    raise GenerationError("Internal server error")  # what vLLM raises for finish "error"


REGEX = {"structured_outputs": {"regex": "(a|b)+"}}
SCHEMA = {"response_format": {"type": "json_schema",
                              "json_schema": {"name": "s", "schema": {"type": "object"}}}}


@pytest.mark.parametrize(("extra", "param"), [(REGEX, "structured_outputs"),
                                              (SCHEMA, "response_format")])
def test_a_failed_grammar_is_the_clients_400(extra: dict, param: str) -> None:
    result = asyncio.run(_engine()._call(_fails, _request(**extra)))
    assert result.error.code == 400 and result.error.param == param
    assert result.error.type == "BadRequestError"


def test_other_failures_stay_500() -> None:
    assert asyncio.run(_engine()._call(_fails, _request())).error.code == 500
    # A dead engine is not the constraint's fault either (the gateway says 503 for it).
    failed = _engine()._error_from_exception(GenerationError("Internal server error"))
    assert _engine(errored=True)._grammar_error(failed, _request(**REGEX)).error.code == 500
