"""Fast unit tests of the request pipeline's logic, on a FAKE engine (no vLLM engine runs).

The fake (tests/fake_engine.py) answers with vLLM's own protocol objects, so the
pipeline sees what a real model server returns; the real engine path is covered by the
server tests (test_api, test_levers, test_router_server). What is checked here is
ordering and bookkeeping that a server test cannot pin down: the usage hook runs
exactly once per request (whole answers, streams, abandoned streams, failures), and each
model call's engine request is shaped for that model.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fake_engine import FakeEngine, chat, fake_config, fake_ctx, fake_pipeline

from serving.errors import APIError
from serving.levers import build_chain
from serving.pipeline.context import Endpoint, RequestContext
from serving.pipeline.lever import Lever
from serving.pipeline.parse import parse_request, read_json
from serving.pipeline.pipeline import StreamAnswer, UnaryAnswer


class CountingLever(Lever):
    name = "counting"

    def __init__(self) -> None:
        self.usage_calls: list[int] = []

    async def on_usage(self, ctx: RequestContext) -> None:
        self.usage_calls.append(ctx.status)


def test_whole_answer_is_priced_and_usage_runs_once() -> None:
    engine, counting = FakeEngine("small"), CountingLever()
    pipeline = fake_pipeline({"small": engine}, counting)
    answer = asyncio.run(pipeline.run(fake_ctx(pipeline, chat())))
    assert isinstance(answer, UnaryAnswer) and answer.status == 200
    cost = answer.body["usage"]["cost"]
    assert cost["total_usd"] == pytest.approx((10 * 1 + 2 * 2) * 1e-6)
    assert answer.headers["x-frugal-cost-usd"]
    assert counting.usage_calls == [200]


def test_client_request_is_never_edited_in_place() -> None:
    engine = FakeEngine("small")
    pipeline = fake_pipeline({"small": engine})
    ctx = fake_ctx(pipeline, chat(reasoning_effort="high"))
    asyncio.run(pipeline.run(ctx))
    sent = engine.requests[0]
    assert sent is not ctx.request
    assert sent.thinking_token_budget == 7
    assert ctx.request.thinking_token_budget is None


def test_stream_settles_usage_once_and_hides_the_usage_chunk() -> None:
    engine, counting = FakeEngine("small"), CountingLever()
    pipeline = fake_pipeline({"small": engine}, counting)
    ctx = fake_ctx(pipeline, chat(stream=True))

    async def consume() -> list[str]:
        answer = await pipeline.run(ctx)
        assert isinstance(answer, StreamAnswer)
        assert counting.usage_calls == [], "a stream settles when it ends"
        return [part async for part in answer.chunks]

    text = "".join(asyncio.run(consume()))
    assert '"usage"' not in text, "the client did not ask for usage"
    assert engine.requests[0].stream_options.include_usage, "the engine is always asked"
    assert counting.usage_calls == [200]
    assert ctx.cost is not None and ctx.cost.total_usd > 0


def test_stream_with_usage_requested_gets_the_cost_in_it() -> None:
    pipeline = fake_pipeline({"small": FakeEngine("small")})
    ctx = fake_ctx(pipeline, chat(stream=True, stream_options={"include_usage": True}))

    async def consume() -> str:
        answer = await pipeline.run(ctx)
        return "".join([part async for part in answer.chunks])

    usage_line = next(line for line in asyncio.run(consume()).split("\n\n")
                      if '"usage"' in line)
    assert json.loads(usage_line.removeprefix("data: "))["usage"]["cost"]["total_usd"] > 0


def test_abandoned_stream_settles_once_as_499() -> None:
    engine, counting = FakeEngine("small"), CountingLever()
    pipeline = fake_pipeline({"small": engine}, counting)
    ctx = fake_ctx(pipeline, chat(stream=True))

    async def abandon() -> None:
        answer = await pipeline.run(ctx)
        chunks = answer.chunks
        await chunks.__anext__()
        await chunks.aclose()  # what Starlette does when the client hangs up
        await asyncio.sleep(0)

    asyncio.run(abandon())
    assert counting.usage_calls == [499]


def test_failed_call_settles_once_and_is_an_api_error() -> None:
    counting = CountingLever()
    pipeline = fake_pipeline({"small": FakeEngine("small", fail=True)}, counting)
    with pytest.raises(APIError) as caught:
        asyncio.run(pipeline.run(fake_ctx(pipeline, chat())))
    assert caught.value.status == 500
    assert counting.usage_calls == [500]


def test_unknown_model_is_404_and_settles_once() -> None:
    counting = CountingLever()
    pipeline = fake_pipeline({"small": FakeEngine("small")}, counting)
    with pytest.raises(APIError) as caught:
        asyncio.run(pipeline.run(fake_ctx(pipeline, chat(model="nope"))))
    assert caught.value.status == 404
    assert counting.usage_calls == [404]


def test_no_thinking_is_satisfiable_on_a_model_without_reasoning_mode() -> None:
    engine = FakeEngine("small")
    pipeline = fake_pipeline({"small": engine}, config=fake_config(reasoning_small=False))
    answer = asyncio.run(pipeline.run(fake_ctx(pipeline, chat(reasoning_effort="none"))))
    assert answer.status == 200
    with pytest.raises(APIError) as caught:
        asyncio.run(pipeline.run(fake_ctx(pipeline, chat(reasoning_effort="high"))))
    assert caught.value.status == 400 and caught.value.param == "reasoning_effort"


def test_each_model_call_is_shaped_for_its_own_model() -> None:
    """A retry on another model (the cascade's `ctx.call_model`) gets that model's
    thinking budget and name, not the first model's."""
    config = fake_config()
    config.models[0].frugal.reasoning.high = 1  # small thinks 1 token at high, large 7
    small, large = FakeEngine("small"), FakeEngine("large")
    pipeline = fake_pipeline({"small": small, "large": large}, config=config)
    ctx = fake_ctx(pipeline, chat(reasoning_effort="high"))
    asyncio.run(pipeline.run(ctx))
    asyncio.run(ctx.call_model(ctx, "large"))
    assert (small.requests[0].model, small.requests[0].thinking_token_budget) == ("small", 1)
    assert (large.requests[0].model, large.requests[0].thinking_token_budget) == ("large", 7)
    assert [call.model for call in ctx.calls] == ["small", "large"]


def _joint_router(predicted: dict[str, float], confidence: float = 0.99) -> Any:
    from fake_engine import FixedPredictor

    from serving.pricing import price_table
    from serving.router.runtime import Router

    return Router(FixedPredictor(predicted, confidence), list(predicted),
                  default_min_quality=0.9, prices=price_table(fake_config()))


def test_auto_applies_the_effort_of_the_cell_it_chose() -> None:
    """A request that states no effort, routed to `small@high`, thinks at small's high
    budget; one that turns thinking off goes to a cell without it, and does not think."""
    small, large = FakeEngine("small"), FakeEngine("large")
    router = _joint_router({"small": 0.5, "small@high": 0.95, "large": 0.95})
    pipeline = fake_pipeline({"small": small, "large": large}, router=router)
    ctx = fake_ctx(pipeline, chat(model="auto"))
    asyncio.run(pipeline.run(ctx))
    assert ctx.response_headers["x-frugal-route"].startswith("small@high;")
    sent = small.requests[0]
    assert sent.thinking_token_budget == 7 and sent.chat_template_kwargs["enable_thinking"]

    ctx = fake_ctx(pipeline, chat(model="auto", reasoning_effort="none"))
    asyncio.run(pipeline.run(ctx))
    assert ctx.response_headers["x-frugal-route"].startswith("large;")
    assert large.requests[0].thinking_token_budget is None


def test_the_cascade_retries_the_same_model_at_more_effort_first() -> None:
    """An unsure answer of `small` is asked again of `small@high` (small with thinking),
    not of the larger model; both calls are billed."""
    small, large = FakeEngine("small"), FakeEngine("large")
    router = _joint_router({"small": 0.95, "small@high": 0.97, "large": 0.99}, confidence=0.1)
    pipeline = fake_pipeline({"small": small, "large": large}, router=router)
    ctx = fake_ctx(pipeline, chat(model="auto"))
    answer = asyncio.run(pipeline.run(ctx))
    assert "escalated to small@high" in ctx.response_headers["x-frugal-route"]
    assert [call.model for call in ctx.calls] == ["small", "small"] and not large.requests
    first, retry = small.requests
    assert first.thinking_token_budget is None and retry.thinking_token_budget == 7
    assert answer.body["model"] == "small" and answer.body["choices"][0]["logprobs"] is None


def test_chain_order_is_the_documented_one() -> None:
    chain = build_chain(fake_config(), router=None)
    assert chain.names == ["tenant", "batch", "router", "compaction", "reasoning", "structured",
                           "prompt_cache", "accounting"]
    assert chain.extra_fields == frozenset({"reasoning", "thinking"})


class BreaksMidStream(FakeEngine):
    async def chat_stream(self, request: Any):
        yield ['data: {"choices": [{"index": 0, "delta": {"content": "7"}}]}\n\n']
        from serving.engine import EngineUnavailable

        raise EngineUnavailable("engine died")


def test_mid_stream_failure_is_one_error_event_of_the_usual_shape() -> None:
    counting = CountingLever()
    pipeline = fake_pipeline({"small": BreaksMidStream("small")}, counting)
    ctx = fake_ctx(pipeline, chat(stream=True))

    async def consume() -> list[str]:
        answer = await pipeline.run(ctx)
        return [part async for part in answer.chunks]

    last = asyncio.run(consume())[-1]
    error = json.loads(last.removeprefix("data: "))["error"]
    assert error == {"message": "model 'small' is temporarily unavailable",
                     "type": "ServiceUnavailableError", "param": None, "code": 503}
    assert counting.usage_calls == [503]


@pytest.mark.parametrize(("field", "value", "param"), [
    ("prompt_logprobs", "xxx", "prompt_logprobs"),   # vLLM's VLLMValidationError
    ("messages", -9223372036854775808, None),       # a TypeError inside vLLM's model
    ("frequency_penalty", {}, "frequency_penalty"),
    ("top_k", 18446744073709551616, "top_k"),         # passed the model, failed the engine
    ("seed", 2**64, "seed"),
    ("messages", [{"role": "bogus", "content": "hi"}], "messages.0.role"),
])
def test_hostile_fields_are_400_naming_the_field(field: str, value: Any, param: str) -> None:
    with pytest.raises(APIError) as caught:
        parse_request(chat(**{field: value}), Endpoint.CHAT, frozenset())
    assert caught.value.status == 400
    if param is not None:
        assert caught.value.param == param, caught.value.message


@pytest.mark.parametrize("body", [
    b'{"model": "small", "temperature": NaN}',           # Python's json writes these
    b'{"model": "small", "logit_bias": {"1": -Infinity}}',
    b'{"model": "small", "logit_bias": {"1": 1e400}}',   # a float that reads as inf
    b'{"model": "small", "seed": ' + b"9" * 5000 + b"}",  # past Python's int digit limit
    b'{"model": "small\\ud800"}',                          # a lone surrogate escape
    b'{"model": "\\udc00\\ud800"}',                        # a pair in the wrong order
    b'{"model": "small\xed\xa0\x80"}',                     # a surrogate encoded as UTF-8
    b'{"model": "caf\xe9"}',                               # Latin-1, not UTF-8
])
def test_what_python_json_lets_through_is_a_400(body: bytes) -> None:
    """Each was a 500 or reached the engine on the real server (test_hostile_inputs)."""
    with pytest.raises(APIError) as caught:
        read_json(body, 1 << 20)
    assert caught.value.status == 400


def test_valid_unicode_and_a_bom_are_read() -> None:
    body = '\ufeff{"s": "é 😀 \\ud83d\\ude00 \\\\ud800", "x": 1.5e3}'.encode()
    assert read_json(body, 1 << 20) == {"s": "é 😀 😀 \\ud800", "x": 1500.0}
