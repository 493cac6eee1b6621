"""The Responses API as chat completions: request in, response and stream events out.

frugal runs a `/v1/responses` request through the same lever chain as a chat request
(router, reasoning, structured output, prompt cache, accounting, tenants), so it
translates at the edges. The request is validated by vLLM's `ResponsesRequest` and its
input becomes chat messages with vLLM's own `construct_input_messages` and
`construct_tool_dicts`; what is hand-written here is the mapping of the knobs and the
output items and events (vLLM builds those inside its engine-side serving class, which
holds its stored responses per process: docs/responses.md).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from serving.errors import APIError

#: Input item types the chat translation understands (others get a 400).
SUPPORTED_ITEMS = frozenset({"message", "function_call", "function_call_output", "reasoning"})
#: Request fields with no chat equivalent that frugal refuses rather than ignores.
UNSUPPORTED_TRUE = ("background",)


def new_response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


def parse_request(body: dict[str, Any]) -> Any:
    """vLLM's protocol model, or a 400 naming the field."""
    from pydantic import ValidationError
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest

    if not isinstance(body.get("input"), str | list):
        raise APIError(400, "input must be a string or a list of items", param="input")
    if isinstance(body["input"], list):
        for index, item in enumerate(body["input"]):
            kind = item.get("type", "message") if isinstance(item, dict) else None
            if not isinstance(kind, str) or kind not in SUPPORTED_ITEMS:
                raise APIError(400, f"input item type {kind!r} is not supported "
                               f"(supported: {', '.join(sorted(SUPPORTED_ITEMS))})",
                               param=f"input[{index}].type")
    for name in UNSUPPORTED_TRUE:
        if body.get(name):
            raise APIError(400, f"{name}=true is not supported", param=name)
    if not body.get("model"):
        raise APIError(400, "model is required", param="model")
    try:
        return ResponsesRequest.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(part) for part in error["loc"])
        raise APIError(400, f"{param}: {error['msg']}", param=param) from None


def _response_format(text: Any) -> dict[str, Any] | None:
    fmt = getattr(text, "format", None) if text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {
        "name": fmt.name, "schema": fmt.schema_, "strict": bool(fmt.strict),
        **({"description": fmt.description} if fmt.description else {})}}


def chat_body(request: Any, history: list[dict[str, Any]] | None,
              frugal: dict[str, Any] | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The chat completion body for `request`, after the stored `history`; and the new
    input as chat messages (what is stored for the next turn, with the answer)."""
    from vllm.entrypoints.openai.responses.utils import (
        construct_input_messages,
        construct_tool_dicts,
    )

    new_input = construct_input_messages(request_input=request.input)
    system = [{"role": "system", "content": request.instructions}] if request.instructions else []
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [*system, *(history or []), *new_input],
        "stream": bool(request.stream),
    }
    if request.stream:
        body["stream_options"] = {"include_usage": True}
    for name, value in (("max_completion_tokens", request.max_output_tokens),
                        ("temperature", request.temperature), ("top_p", request.top_p),
                        ("prompt_cache_key", request.prompt_cache_key),
                        ("user", request.user)):
        if value is not None:
            body[name] = value
    if request.reasoning is not None and request.reasoning.effort is not None:
        body["reasoning_effort"] = request.reasoning.effort
    response_format = _response_format(request.text)
    if response_format is not None:
        body["response_format"] = response_format
    tools = construct_tool_dicts(request.tools, request.tool_choice)
    if tools:
        body["tools"] = tools
        choice = request.tool_choice
        body["tool_choice"] = (choice if isinstance(choice, str)
                               else {"type": "function",
                                     "function": {"name": getattr(choice, "name", None)}})
        body["parallel_tool_calls"] = bool(request.parallel_tool_calls)
    if frugal:
        body["frugal"] = frugal
    return body, [m for m in new_input if isinstance(m, dict)]


def _usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not usage:
        return None
    prompt = usage.get("prompt_tokens_details") or {}
    completion = usage.get("completion_tokens_details") or {}
    out = {
        "input_tokens": usage.get("prompt_tokens", 0),
        "input_tokens_details": {"cached_tokens": prompt.get("cached_tokens") or 0},
        "output_tokens": usage.get("completion_tokens", 0),
        "output_tokens_details": {"reasoning_tokens": completion.get("reasoning_tokens") or 0},
        "total_tokens": usage.get("total_tokens", 0),
    }
    if "cost" in usage:
        out["cost"] = usage["cost"]  # frugal's account, as on chat completions
    return out


def output_items(message: dict[str, Any], item_ids: dict[str, str] | None = None
                 ) -> list[dict[str, Any]]:
    """Responses output items for a chat answer's message: reasoning, message, calls."""
    ids = item_ids or {}
    items: list[dict[str, Any]] = []
    thought = message.get("reasoning_content") or message.get("reasoning")
    if thought:
        items.append({"type": "reasoning", "id": ids.get("reasoning", f"rs_{uuid.uuid4().hex}"),
                      "summary": [], "content": [{"type": "reasoning_text", "text": thought}],
                      "status": "completed"})
    if message.get("content") is not None or not message.get("tool_calls"):
        items.append({
            "type": "message", "id": ids.get("message", f"msg_{uuid.uuid4().hex}"),
            "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": message.get("content") or "",
                         "annotations": [], "logprobs": []}],
        })
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        items.append({"type": "function_call", "id": f"fc_{uuid.uuid4().hex}",
                      "call_id": call.get("id"), "name": function.get("name"),
                      "arguments": function.get("arguments") or "", "status": "completed"})
    return items


def response_object(request: Any, response_id: str, model: str, items: list[dict[str, Any]],
                    usage: dict[str, Any] | None, finish_reason: str | None,
                    status: str = "completed") -> dict[str, Any]:
    """The `response` object, the shape `client.responses.create` returns."""
    incomplete = None
    if status == "completed" and finish_reason == "length":
        status, incomplete = "incomplete", {"reason": "max_output_tokens"}
    fmt = request.text.model_dump(mode="json", by_alias=True) if request.text else None
    return {
        "id": response_id, "object": "response", "created_at": int(time.time()),
        "status": status, "error": None, "incomplete_details": incomplete,
        "instructions": request.instructions, "metadata": request.metadata,
        "model": model, "output": items,
        "parallel_tool_calls": bool(request.parallel_tool_calls),
        "temperature": request.temperature if request.temperature is not None else 1.0,
        "top_p": request.top_p if request.top_p is not None else 1.0,
        "tool_choice": request.tool_choice if isinstance(request.tool_choice, str)
        else request.tool_choice.model_dump(mode="json"),
        "tools": [tool.model_dump(mode="json") if hasattr(tool, "model_dump") else tool
                  for tool in request.tools],
        "max_output_tokens": request.max_output_tokens,
        "previous_response_id": request.previous_response_id,
        "reasoning": request.reasoning.model_dump(mode="json") if request.reasoning else None,
        "service_tier": "default", "store": bool(request.store),
        "text": fmt or {"format": {"type": "text"}},
        "truncation": request.truncation or "disabled", "background": False,
        "usage": usage, "user": request.user,
    }


def from_chat(request: Any, response_id: str, chat: dict[str, Any]) -> tuple[dict[str, Any],
                                                                           dict[str, Any]]:
    """A whole chat answer as a response object, and its assistant message (stored)."""
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    items = output_items(message)
    body = response_object(request, response_id, chat.get("model", request.model), items,
                           _usage(chat.get("usage")), choice.get("finish_reason"))
    return body, assistant_message(message)


def assistant_message(message: dict[str, Any]) -> dict[str, Any]:
    """The answer as the chat message the next turn's history holds."""
    out: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {"id": call.get("id"), "type": "function",
             "function": {"name": (call.get("function") or {}).get("name"),
                          "arguments": (call.get("function") or {}).get("arguments") or ""}}
            for call in message["tool_calls"]]
    return out


def sse(event: dict[str, Any]) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
