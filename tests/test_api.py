"""The OpenAI API of a real frugal server (Ray Serve + vLLM), driven by the openai SDK."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from helpers import chat_body, metric

pytestmark = pytest.mark.server
MODEL = "zoo-s"
MESSAGES = [{"role": "user", "content": "What is 2 + 3?"}]


def test_models_are_listed(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert ids == ["zoo-s", "zoo-s-tight", "zoo-chat"]


def test_health(server) -> None:
    assert httpx.get(f"{server.root_url}/health").json() == {"status": "ok"}


def test_chat_completion_fills_usage(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    assert reply.model == MODEL
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None  # cached_tokens, from the engine


def test_chat_stream_without_and_with_usage(client: openai.OpenAI) -> None:
    plain = list(client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=6, stream=True))
    assert all(chunk.choices for chunk in plain), "usage-only chunk leaked to the client"
    assert plain[-1].choices[0].finish_reason in ("stop", "length")
    text = "".join(chunk.choices[0].delta.content or "" for chunk in plain)
    with_usage = list(client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=6, stream=True,
        stream_options={"include_usage": True}))
    assert with_usage[-1].usage is not None and not with_usage[-1].choices
    assert with_usage[-1].usage.completion_tokens <= 6
    assert text or plain[-1].choices[0].finish_reason == "stop"


def test_completions_unary_and_stream(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="12 + 7 =", max_tokens=5)
    assert reply.usage.completion_tokens <= 5 and reply.choices[0].text is not None
    chunks = list(client.completions.create(
        model=MODEL, prompt="12 + 7 =", max_tokens=5, stream=True))
    assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_sampling_parameters(client: openai.OpenAI) -> None:
    many = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_completion_tokens=4, n=3, temperature=1.0)
    assert len(many.choices) == 3 and many.usage.completion_tokens <= 12
    seeded = [
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=12, temperature=1.5, top_p=0.9, seed=7,
            extra_body={"ignore_eos": True},
        ).choices[0].message.content
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1]
    probed = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=3, logprobs=True, top_logprobs=2)
    content = probed.choices[0].logprobs.content
    assert content and all(len(token.top_logprobs) == 2 for token in content)
    stopped = client.completions.create(
        model=MODEL, prompt="abc", max_tokens=30, temperature=1.0, seed=3,
        extra_body={"ignore_eos": True})
    first_char = stopped.choices[0].text[1:2] or "x"
    cut = client.completions.create(
        model=MODEL, prompt="abc", max_tokens=30, temperature=1.0, seed=3, stop=[first_char],
        extra_body={"ignore_eos": True})
    assert first_char not in cut.choices[0].text[1:]
    assert cut.choices[0].finish_reason == "stop"


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert "no-such-model" in info.value.message


def test_invalid_fields_are_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature="hot")
    assert info.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages="not a list")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=-1)


def test_malformed_json_and_missing_model_are_400(server) -> None:
    url = f"{server.base_url}/chat/completions"
    for body in (b"{not json", b"[1, 2]", b'{"messages": []}'):
        reply = httpx.post(url, content=body, headers={"content-type": "application/json"})
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert error["code"] == 400 and error["message"]


def test_body_over_the_size_limit_is_413(server) -> None:
    """gateway.max_request_bytes (4 MiB by default): refused before it is parsed."""
    body = chat_body(MODEL, "x" * (5 * 1024 * 1024))
    reply = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=60)
    assert reply.status_code == 413, reply.text
    error = reply.json()["error"]
    assert error["code"] == 413 and error["type"] == "RequestTooLargeError"


def test_prompt_longer_than_context_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "7" * 5000}], max_tokens=4)
    assert "maximum context length" in info.value.message


def test_unknown_route_is_openai_shaped_404(server) -> None:
    reply = httpx.get(f"{server.root_url}/v1/nothing")
    assert reply.status_code == 404 and reply.json()["error"]["code"] == 404


def test_32_concurrent_requests_are_all_answered(server) -> None:
    async_client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0)

    async def one(index: int) -> int:
        reply = await async_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"What is {index} + 1?"}],
            max_tokens=16, extra_body={"ignore_eos": True})
        return reply.usage.completion_tokens

    async def main() -> list[int]:
        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(32))), 300)

    tokens = asyncio.run(main())
    assert tokens == [16] * 32


def test_metrics_add_up_across_replicas(server) -> None:
    """Two gateway and two engine replicas: every request must be counted once."""
    labels = {"model": MODEL, "endpoint": "chat", "status": "200"}
    before = metric(server.root_url, "frugal_requests_total", **labels)
    tokens_before = metric(server.root_url, "frugal_completion_tokens_total", model=MODEL)
    engine_before = metric(server.root_url, "vllm:generation_tokens_total", model_name=MODEL)
    for _ in range(10):
        reply = httpx.post(f"{server.base_url}/chat/completions", timeout=60,
                           json=chat_body(MODEL, max_tokens=5, ignore_eos=True))
        assert reply.status_code == 200
    assert metric(server.root_url, "frugal_requests_total", **labels) - before == 10
    assert metric(server.root_url, "frugal_completion_tokens_total", model=MODEL) \
        - tokens_before == 50
    # vLLM's own counters, from both engine replicas, come through the same endpoint.
    assert metric(server.root_url, "vllm:generation_tokens_total", model_name=MODEL) \
        - engine_before >= 50
    assert metric(server.root_url, "frugal_request_latency_seconds_count", model=MODEL) > 0


@pytest.mark.parametrize("stream", [True, False])
def test_benchmark_load_generator_counts_tokens_in_both_modes(server, stream: bool) -> None:
    """`frugal bench serve` measures with this client: both modes must see every token."""
    from serving.bench.loadgen import run_load

    result = asyncio.run(run_load(server.base_url, MODEL, concurrency=4, requests=8,
                                  max_tokens=6, stream=stream, timeout_s=120))
    assert result.errors == 0, result.first_error
    assert result.requests == 8
    assert result.tokens_per_s * result.wall_s == pytest.approx(8 * 6)
    if not stream:  # no first token to time: TTFT is the whole latency
        assert result.ttft_p50_ms == pytest.approx(result.latency_p50_ms)
