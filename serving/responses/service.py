"""`/v1/responses`: translate, run the lever chain, translate back, store.

The gateway admits the caller (the tenant lever: key, rpm/tpm) and hands the body here;
the request then runs as a chat request through `Pipeline.run`, so every lever applies
to it exactly as to `/v1/chat/completions` (`model="auto"`, reasoning budgets, JSON
schemas, prefix caching, cost, budgets). What the chat answer becomes is in
`serving.responses.translate` and `.stream`; stored responses in `.store`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from serving.errors import APIError
from serving.pipeline.context import Endpoint, RequestContext
from serving.pipeline.parse import parse_request as parse_chat
from serving.pipeline.pipeline import Answer, Pipeline, StreamAnswer, UnaryAnswer
from serving.responses.store import ResponseStore
from serving.responses.stream import StreamTranslator
from serving.responses.translate import chat_body, from_chat, new_response_id, parse_request


class ResponsesService:
    def __init__(self, store: ResponseStore, pipeline: Pipeline) -> None:
        self.store = store
        self.pipeline = pipeline

    async def _history(self, request: Any, owner: str) -> list[dict[str, Any]] | None:
        if not request.previous_response_id:
            return None
        stored = await asyncio.to_thread(self.store.get, request.previous_response_id, owner)
        if stored is None:
            raise APIError(404, f"Previous response with id '{request.previous_response_id}' "
                           "not found.", param="previous_response_id")
        return stored.history

    async def create(self, ctx: RequestContext, body: dict[str, Any]) -> Answer:
        """`ctx` is admitted (caller known); `body` the request JSON."""
        frugal = body.pop("frugal", None)
        request = parse_request(body)
        history = await self._history(request, ctx.key_label)
        chat, new_input = chat_body(request, history, frugal)
        ctx.endpoint = Endpoint.CHAT
        ctx.request, ctx.extras, ctx.options = parse_chat(
            chat, Endpoint.CHAT, self.pipeline.chain.extra_fields)
        answer = await self.pipeline.run(ctx)
        response_id = new_response_id()
        owner, before = ctx.key_label, [*(history or []), *new_input]

        async def store(response: dict[str, Any], message: dict[str, Any]) -> None:
            if request.store:
                await asyncio.to_thread(self.store.save, response_id, owner, response,
                                        [*before, message])

        if isinstance(answer, StreamAnswer):
            translator = StreamTranslator(request, response_id, store)
            return StreamAnswer(translator.events(answer.chunks), answer.headers)
        if answer.status != 200:
            return answer
        response, message = from_chat(request, response_id, answer.body)
        await store(response, message)
        return UnaryAnswer(response, 200, answer.headers)

    async def retrieve(self, owner: str, response_id: str) -> dict[str, Any]:
        stored = await asyncio.to_thread(self.store.get, response_id, owner)
        if stored is None:
            raise APIError(404, f"Response with id '{response_id}' not found.")
        return stored.body

    async def delete(self, owner: str, response_id: str) -> dict[str, Any]:
        if not await asyncio.to_thread(self.store.delete, response_id, owner):
            raise APIError(404, f"Response with id '{response_id}' not found.")
        return {"id": response_id, "object": "response", "deleted": True}

    async def cancel(self, owner: str, response_id: str) -> dict[str, Any]:
        """Only background responses can be cancelled (OpenAI's rule); frugal answers
        every response in the request that made it, so none is ever running here."""
        await self.retrieve(owner, response_id)  # 404 for an unknown id
        raise APIError(400, "Only responses created with background=true can be cancelled; "
                       "this one has finished.", param="response_id")
