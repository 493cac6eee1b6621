"""From a JSON body to a typed request: vLLM's protocol models plus frugal's own options.

Fields that are not OpenAI's are popped before vLLM's model validates the rest: the
`frugal` object (validated here, `FrugalOptions`) and the fields the chain's levers
declare (`Lever.extra_fields`, e.g. reasoning's `reasoning` and `thinking` shapes).
Every problem is a 400 that names the field (`param`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

from serving.config import StructuredCaps
from serving.errors import APIError
from serving.pipeline.context import Endpoint
from serving.router.runtime import validate_min_quality


class CompactOptions(BaseModel):
    """`extra_body.frugal.compact`: this request's compaction, over the model's settings."""

    model_config = ConfigDict(extra="forbid", strict=True)

    budget_tokens: int | None = Field(None, ge=1)
    keep_last_turns: int | None = Field(None, ge=0, le=64)


class FrugalOptions(BaseModel):
    """`extra_body={"frugal": {...}}`: per-request lever settings (docs/levers.md)."""

    model_config = ConfigDict(extra="forbid")

    min_quality: float | None = None  # model="auto": the quality target of this request
    #: JSON-schema caps of this request, over the model's `frugal.structured` (the fields
    #: it sets win; `null` leaves that kind unbounded).
    structured: StructuredCaps | None = None
    #: Compaction of this request (lever 8): false turns it off, an object turns it on
    #: with these settings over the model's (`true`: the model's settings).
    compact: StrictBool | CompactOptions | None = None

    @field_validator("min_quality", mode="before")
    @classmethod
    def _quality(cls, value: Any) -> float:
        return validate_min_quality(value)  # an explicit null is an error too


def validation_message(exc: ValidationError, prefix: str = "") -> tuple[str, str | None]:
    """One readable line per invalid field, and the first field's name as `param`."""
    errors = exc.errors()
    lines = []
    for item in errors:
        key = prefix + (".".join(str(part) for part in item["loc"]) or "body")
        lines.append(f"{key}: {item['msg']}")
    param = prefix + ".".join(str(p) for p in errors[0]["loc"]) if errors else None
    return "; ".join(lines), param or None


#: A `\uD800`-`\uDFFF` escape: the only way a lone surrogate gets into a UTF-8 body.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


class _NotJSON(ValueError):
    """A value JSON (RFC 8259) has no room for, though Python's json reads it."""


def _no_constant(name: str) -> Any:
    raise _NotJSON(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 reads as inf
        raise _NotJSON(f"{text} is out of range for a number")
    return value


def read_json(body: bytes, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object; 413 when too large, 400 when not a JSON object.

    Strict JSON, because what Python's json lets through breaks later, far from here:
    only UTF-8 (with or without a BOM), no `NaN`/`Infinity` and no number that is
    infinite as a float (a NaN logit bias reached the sampler), and no lone UTF-16
    surrogate in a string (`"\\ud800"`: it cannot be encoded again, so the tokenizer,
    Ray's serialisation or the error message that quotes it failed with a 500).
    """
    if len(body) > max_bytes:
        raise APIError(413, f"request body exceeds {max_bytes} bytes")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise APIError(400, f"request body is not valid UTF-8: {exc}") from None
    try:
        parsed = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError) as exc:  # ValueError: also a 5,000-digit integer
        raise APIError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise APIError(400, "request body must be a JSON object")
    if _SURROGATE_ESCAPE.search(body):  # rare: emoji are escaped as surrogate pairs
        try:
            json.dumps(parsed, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise APIError(400, "request body is not valid JSON: a string holds a lone "
                           "UTF-16 surrogate (an unpaired \\ud800-\\udfff escape)") from None
    return parsed


def _client_error() -> type[Exception]:
    from vllm.exceptions import VLLMClientError

    return VLLMClientError


def _request_class(endpoint: Endpoint) -> type:
    if endpoint is Endpoint.CHAT:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        return ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    return CompletionRequest


def parse_request(
    body: dict[str, Any], endpoint: Endpoint, extra_fields: frozenset[str]
) -> tuple[Any, dict[str, Any], FrugalOptions]:
    """(vLLM request, popped lever fields, frugal options) of one request body."""
    if not body.get("model"):
        raise APIError(400, "you must provide a model parameter", param="model")
    extras = {key: body.pop(key) for key in extra_fields if key in body}
    raw_options = body.pop("frugal", None)
    if raw_options is not None and not isinstance(raw_options, dict):
        raise APIError(400, "frugal must be an object", param="frugal")
    try:
        options = FrugalOptions.model_validate(raw_options or {})
    except ValidationError as exc:
        message, param = validation_message(exc, "frugal.")
        raise APIError(400, message, param=param) from None
    try:
        request = _request_class(endpoint).model_validate(body)
    except ValidationError as exc:
        message, param = validation_message(exc)
        raise APIError(400, message, param=param) from None
    except (ValueError, TypeError, _client_error()) as exc:
        # vLLM's own checks inside its validators raise VLLMClientError subclasses
        # (VLLMValidationError names the `parameter`), and a few types fail with TypeError
        # (`"messages": 5`): the client's mistake either way, never a 500.
        raise APIError(400, f"invalid request: {exc}", param=getattr(exc, "parameter", None)
                       ) from None
    _check_sane(request)
    return request, extras, options


#: Chat roles OpenAI accepts; vLLM's model lets any string through.
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
#: Integer sampling fields the engine stores as 32-bit (the seed as 64-bit): a larger value
#: passes the protocol model and fails in the engine, where it read as "unavailable".
INT32_FIELDS = ("n", "best_of", "top_k", "max_tokens", "max_completion_tokens", "min_tokens",
                "logprobs", "top_logprobs", "prompt_logprobs", "thinking_token_budget")


def _check_sane(request: Any) -> None:
    """What vLLM's protocol models accept but no engine can serve: a 400 here."""
    for name in INT32_FIELDS:
        value = getattr(request, name, None)
        if isinstance(value, int) and not -(2**31) <= value < 2**31:
            raise APIError(400, f"{name} is out of range: {value}", param=name)
    seed = getattr(request, "seed", None)
    if isinstance(seed, int) and not -(2**63) <= seed < 2**63:
        raise APIError(400, f"seed is out of range: {seed}", param="seed")
    for index, message in enumerate(getattr(request, "messages", None) or []):
        role = message.get("role") if isinstance(message, dict) else None
        if role is not None and role not in ROLES:
            raise APIError(400, f"messages.{index}.role: {role!r} is not one of "
                           f"{', '.join(sorted(ROLES))}", param=f"messages.{index}.role")
