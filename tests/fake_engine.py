"""A fake model server for the pipeline's unit tests (no vLLM engine runs).

It answers with vLLM's own protocol objects, so the pipeline sees what a real model
server returns, and records every engine request it gets.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from serving.config import FrugalConfig
from serving.levers import build_chain
from serving.local_handle import LocalHandle
from serving.pipeline.chain import Chain
from serving.pipeline.context import Endpoint, RequestContext
from serving.pipeline.engine_call import ModelCaller
from serving.pipeline.lever import Lever
from serving.pipeline.parse import parse_request
from serving.pipeline.pipeline import Pipeline
from serving.tenants.app import Tenants


class FakeEngine:
    """A fake model server: records the engine requests it gets, answers `content`
    ("7"; a stream: "7", "8", "9") and ends with `finish_reason`."""

    def __init__(self, model: str, fail: bool = False, content: str = "7",
                 finish_reason: str = "stop", delay_s: float = 0.0) -> None:
        self.model = model
        self.delay_s = delay_s  # each answer takes this long (lines finish in waves)
        self.fail = fail
        self.content = content
        self.finish_reason = finish_reason
        self.requests: list[Any] = []

    def _usage(self) -> Any:
        from vllm.entrypoints.serve.engine.protocol import UsageInfo

        return UsageInfo(prompt_tokens=10, completion_tokens=2, total_tokens=12)

    async def chat(self, request: Any) -> Any:
        from vllm.entrypoints.openai.chat_completion.protocol import (
            ChatCompletionResponse,
            ChatCompletionResponseChoice,
            ChatMessage,
        )

        self.requests.append(request)
        if self.delay_s:
            try:
                await asyncio.sleep(self.delay_s * (1 + len(self.requests) % 7) / 7)
            except asyncio.CancelledError:  # what vLLM's chat serving does when cancelled
                from vllm.entrypoints.serve.engine.protocol import ErrorInfo, ErrorResponse

                return ErrorResponse(error=ErrorInfo(message="Client disconnected",
                                                     type="BadRequestError", code=400))
        if self.fail:
            raise RuntimeError("engine exploded")
        logprobs = None
        if request.logprobs:  # one made-up log-probability per character
            from vllm.entrypoints.openai.chat_completion.protocol import (
                ChatCompletionLogProbs,
                ChatCompletionLogProbsContent,
            )

            logprobs = ChatCompletionLogProbs(content=[
                ChatCompletionLogProbsContent(token=c, logprob=-0.5) for c in self.content])
        choice = ChatCompletionResponseChoice(
            index=0, message=ChatMessage(role="assistant", content=self.content),
            logprobs=logprobs, finish_reason=self.finish_reason)
        return ChatCompletionResponse(model=self.model, choices=[choice], usage=self._usage())

    async def chat_stream(self, request: Any):
        self.requests.append(request)
        for token in ("7", "8", "9"):
            delta = {"choices": [{"index": 0, "delta": {"content": token}}]}
            yield [f"data: {json.dumps(delta)}\n\n"]
            await asyncio.sleep(0)
        end = {"choices": [{"index": 0, "delta": {}, "finish_reason": self.finish_reason}]}
        usage = {"choices": [], "usage": self._usage().model_dump()}
        yield [f"data: {json.dumps(end)}\n\n",
               f"data: {json.dumps(usage, separators=(',', ':'))}\n\n", "data: [DONE]\n\n"]


def fake_config(reasoning_small: bool = True) -> FrugalConfig:
    """Two models, `small` and `large`, with list prices and tiny thinking budgets."""
    def model(name: str, parser: bool) -> dict:
        return {
            "model_loading_config": {"model_id": name, "model_source": "/nonexistent/" + name},
            "engine_kwargs": {"reasoning_parser": "qwen3"} if parser else {},
            "frugal": {"price": {"input_per_million": 1, "output_per_million": 2},
                       "reasoning": {"low": 3, "medium": 5, "high": 7}},
        }
    return FrugalConfig.model_validate(
        {"models": [model("small", reasoning_small), model("large", True)]})


def fake_pipeline(engines: dict[str, FakeEngine], extra: Lever | None = None,
                  config: FrugalConfig | None = None, tenants: Tenants | None = None,
                  router: Any = None) -> Pipeline:
    """The real chain (plus `extra` last) in front of the fake engines."""
    config = config or fake_config()
    chain = build_chain(config, router=router, tenants=tenants)
    if extra is not None:
        chain = Chain([*chain.levers, extra])
    caller = ModelCaller({name: LocalHandle(e) for name, e in engines.items()}, 2)
    return Pipeline(config, chain, caller)


def fake_ctx(pipeline: Pipeline, body: dict) -> RequestContext:
    """A chat request's context, parsed as the gateway parses it."""
    ctx = RequestContext(endpoint=Endpoint.CHAT)
    ctx.request, ctx.extras, ctx.options = parse_request(
        body, Endpoint.CHAT, pipeline.chain.extra_fields)
    return ctx


def chat(model: str = "small", **extra: Any) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "3+4="}], **extra}


class FixedPredictor:
    """A stand-in for the router's predictor in fake-engine tests: the same P(correct)
    per scorecard key for every request, and one confidence for every answer."""

    def __init__(self, predicted: dict[str, float], confidence: float = 0.99) -> None:
        self.models = list(predicted)
        self.predicted = predicted
        self.answer_confidence = confidence

    def predict(self, messages: Any) -> dict[str, float]:
        return dict(self.predicted)

    def confidence(self, model: str, logprobs: Any) -> float | None:
        return self.answer_confidence if model in self.predicted else None
