"""A chat completion stream as Responses stream events (hand-written: vLLM emits these
only from its own engine-side Responses serving class).

Events, in order: `response.created`, `response.in_progress`; for the text answer
`response.output_item.added`, `response.content_part.added`, one
`response.output_text.delta` per chat delta, `response.output_text.done`,
`response.content_part.done`, `response.output_item.done`; then `response.completed`
(or `response.incomplete` at `max_output_tokens`, `response.failed` on an engine error,
or with code `store_unavailable` when `store: true` met a full or read-only store)
with the whole response, usage and cost included. Reasoning and tool calls come in the
final response's `output` (not as deltas).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from serving import metrics
from serving.responses.translate import (
    _usage,
    assistant_message,
    output_items,
    response_object,
    sse,
)
from serving.store import faults


def _chat_events(text: str) -> list[dict[str, Any]]:
    events = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line.removeprefix("data: ")))
    return events


class StreamTranslator:
    """Consumes chat chunks, yields Responses events; `on_done(body, message)` stores."""

    def __init__(self, request: Any, response_id: str,
                 on_done: Callable[[dict[str, Any], dict[str, Any]], Awaitable[None]]) -> None:
        self.request = request
        self.response_id = response_id
        self.on_done = on_done
        self.sequence = 0
        self.message_id = f"msg_{uuid.uuid4().hex}"
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.model = request.model
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None

    def _event(self, kind: str, **fields: Any) -> str:
        self.sequence += 1
        return sse({"type": kind, "sequence_number": self.sequence, **fields})

    def _message(self, status: str) -> dict[str, Any]:
        return {"type": "message", "id": self.message_id, "role": "assistant",
                "status": status, "content": [] if status == "in_progress" else
                [{"type": "output_text", "text": "".join(self.text), "annotations": [],
                  "logprobs": []}]}

    def _take(self, chunk: dict[str, Any]) -> list[str]:
        """Fold one chat chunk in; the text deltas to send."""
        if "error" in chunk:
            self.error = chunk["error"]
            return []
        self.model = chunk.get("model", self.model)
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        out = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            thought = delta.get("reasoning_content") or delta.get("reasoning")
            if thought:
                self.reasoning.append(thought)
            if delta.get("content"):
                self.text.append(delta["content"])
                out.append(delta["content"])
            for call in delta.get("tool_calls") or []:
                slot = self.calls.setdefault(call.get("index", 0), {
                    "id": None, "function": {"name": None, "arguments": ""}})
                slot["id"] = call.get("id") or slot["id"]
                function = call.get("function") or {}
                slot["function"]["name"] = function.get("name") or slot["function"]["name"]
                slot["function"]["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def _final_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"content": "".join(self.text)}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.calls:
            message["tool_calls"] = [self.calls[i] for i in sorted(self.calls)]
        return message

    async def events(self, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        start = response_object(self.request, self.response_id, self.model, [], None, None,
                                status="in_progress")
        yield self._event("response.created", response=start)
        yield self._event("response.in_progress", response=start)
        yield self._event("response.output_item.added", output_index=0,
                          item=self._message("in_progress"))
        part = {"type": "output_text", "text": "", "annotations": []}
        yield self._event("response.content_part.added", item_id=self.message_id,
                          output_index=0, content_index=0, part=part)
        async for text in chunks:
            for chunk in _chat_events(text):
                for delta in self._take(chunk):
                    yield self._event("response.output_text.delta", item_id=self.message_id,
                                      output_index=0, content_index=0, delta=delta,
                                      logprobs=[])
        full = "".join(self.text)
        yield self._event("response.output_text.done", item_id=self.message_id,
                          output_index=0, content_index=0, text=full, logprobs=[])
        yield self._event("response.content_part.done", item_id=self.message_id,
                          output_index=0, content_index=0, part={**part, "text": full})
        yield self._event("response.output_item.done", output_index=0,
                          item=self._message("completed"))
        message = self._final_message()
        items = output_items(message, {"message": self.message_id})
        if self.error is not None:
            body = response_object(self.request, self.response_id, self.model, items,
                                   _usage(self.usage), None, status="failed")
            body["error"] = {"code": str(self.error.get("code") or "server_error"),
                             "message": self.error.get("message", "")}
            yield self._event("response.failed", response=body)
            return
        body = response_object(self.request, self.response_id, self.model, items,
                               _usage(self.usage), self.finish_reason)
        try:
            await self.on_done(body, assistant_message(message))
        except faults.StoreUnavailable as exc:  # headers are sent: say it in-band
            metrics.STORE_ERRORS.labels(exc.fault, "api").inc()
            body = {**body, "status": "failed",
                    "error": {"code": faults.CODE, "message": str(exc)}}
            yield self._event("response.failed", response=body)
            return
        kind = "response.incomplete" if body["status"] == "incomplete" else "response.completed"
        yield self._event(kind, response=body)
