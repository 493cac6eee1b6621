"""The Responses API on the real session server, through the unmodified `openai` SDK and
the OpenAI Agents SDK: create, retrieve, delete, stream events, a conversation by
`previous_response_id`, structured output, reasoning, and the 4xx it promises."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from helpers import gateway_urls

pytestmark = pytest.mark.server
MODEL = "zoo-s"


def test_create_retrieve_delete(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(
        model=MODEL, input="What is 2 + 3?", instructions="Answer briefly.",
        max_output_tokens=16, temperature=0.0, metadata={"team": "tests"})
    response = raw.parse()
    assert response.id.startswith("resp_") and response.status in ("completed", "incomplete")
    assert response.output_text.strip()
    assert response.metadata == {"team": "tests"}
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.model_extra["cost"]["total_usd"] > 0  # frugal's account
    assert float(raw.headers["x-frugal-cost-usd"]) > 0
    again = client.responses.retrieve(response.id)
    assert again.id == response.id and again.output_text == response.output_text
    assert client.responses.delete(response.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_a_conversation_continues_by_previous_response_id(server) -> None:
    """The second turn goes to the other gateway replica (each serves its own port): the
    first turn's stored response is read from the shared store, not a replica's memory."""
    first_url, second_url = gateway_urls(server.base_url)[:2]
    first = openai.OpenAI(base_url=first_url, api_key="unused", max_retries=0).responses \
        .with_raw_response.create(model=MODEL, input="What is 2 + 3?", max_output_tokens=8,
                                  temperature=0.0)
    second = openai.OpenAI(base_url=second_url, api_key="unused", max_retries=0).responses \
        .with_raw_response.create(model=MODEL, input="And 4 + 4?", max_output_tokens=8,
                                  temperature=0.0, previous_response_id=first.parse().id)
    assert first.headers["x-frugal-replica"] != second.headers["x-frugal-replica"]
    one, two = first.parse(), second.parse()
    assert two.previous_response_id == one.id
    # the second turn's prompt holds the first question and answer
    assert two.usage.input_tokens > one.usage.input_tokens + 5


def test_streaming_events(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=MODEL, input="What is 2 + 3?",
                                          max_output_tokens=16, stream=True))
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in kinds
    assert kinds[-1] in ("response.completed", "response.incomplete")
    final = events[-1].response
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert final.output_text == text and final.usage.output_tokens > 0
    assert [e.sequence_number for e in events] == list(range(1, len(events) + 1))
    assert client.responses.retrieve(final.id).output_text == text  # stored


def test_structured_output(client: openai.OpenAI) -> None:
    schema = {"type": "object",
              "properties": {"answer": {"type": "string", "pattern": "^[0-9]{1,6}$"}},
              "required": ["answer"], "additionalProperties": False}
    response = client.responses.create(
        model=MODEL, input="What is 2 + 3?", max_output_tokens=40,
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema,
                         "strict": True}})
    assert set(json.loads(response.output_text)) == {"answer"}


def test_reasoning_effort_reaches_the_thinking_budget(client: openai.OpenAI) -> None:
    from serving.zoo.tasks import generate_items

    item = generate_items("reverse", 4, 1, seed=1_000_000_123)[0]
    response = client.responses.create(
        model=MODEL, input=item.messages[-1]["content"], max_output_tokens=300,
        temperature=0.0, reasoning={"effort": "high"})
    assert 0 < response.usage.output_tokens_details.reasoning_tokens <= 256 + 2
    assert [item.type for item in response.output][0] == "reasoning"


def test_bad_input_is_4xx(client: openai.OpenAI, server) -> None:
    with pytest.raises(openai.NotFoundError, match="Previous response"):
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp_nope")
    url = f"{server.base_url}/responses"
    for body, param in (
        ({"model": MODEL, "input": [{"type": "computer_call_output", "call_id": "x"}]},
         "input[0].type"),
        ({"input": "hi"}, "model"),
        ({"model": MODEL}, "input"),
        ({"model": MODEL, "input": "hi", "background": True}, "background"),
    ):
        reply = httpx.post(url, json=body, timeout=60)
        assert reply.status_code == 400, (body, reply.text)
        assert reply.json()["error"]["param"] == param
    assert httpx.post(url, content=b"{not json", timeout=60).status_code == 400
    with pytest.raises(openai.NotFoundError):
        client.responses.delete("resp_nope")
    done = client.responses.create(model=MODEL, input="hi", max_output_tokens=2)
    with pytest.raises(openai.BadRequestError, match="background"):
        client.responses.cancel(done.id)


def test_the_agents_sdk_runs_against_frugal(server) -> None:
    """The OpenAI Agents SDK's default model speaks the Responses API: an agent runs
    through frugal end to end. zoo-s is served without a tool-call parser (it never
    learned to call tools), so the same agent with a function tool gets vLLM's clear
    400 through frugal, not a 404 or a 500: the request shape the SDK sends is
    accepted and passed on. A model served with `tool_call_parser` runs it."""
    from agents import Agent, OpenAIResponsesModel, RunConfig, Runner, function_tool
    from openai import AsyncOpenAI

    @function_tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    model = OpenAIResponsesModel(model=MODEL, openai_client=AsyncOpenAI(
        base_url=server.base_url, api_key="unused", max_retries=0, timeout=120))
    config = RunConfig(tracing_disabled=True)
    plain = Agent(name="plain", instructions="Answer briefly.", model=model)
    result = Runner.run_sync(plain, "What is 2 + 3?", max_turns=1, run_config=config)
    assert isinstance(result.final_output, str) and result.final_output
    assert result.raw_responses[0].usage.output_tokens > 0
    with_tool = Agent(name="adder", instructions="Answer briefly.", tools=[add], model=model)
    with pytest.raises(openai.BadRequestError, match="tool"):
        Runner.run_sync(with_tool, "What is 2 + 3?", max_turns=2, run_config=config)


def test_batch_lines_on_v1_responses(client: openai.OpenAI) -> None:
    import io
    import time

    rows = "\n".join(json.dumps({
        "custom_id": f"r-{i}", "method": "POST", "url": "/v1/responses",
        "body": {"model": MODEL, "input": f"What is {i} + 2?", "max_output_tokens": 8}})
        for i in range(3))
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(rows.encode())),
                                   purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/responses",
                                  completion_window="24h")
    deadline = time.monotonic() + 300
    while (done := client.batches.retrieve(batch.id)).status not in (
            "completed", "failed", "cancelled", "expired"):
        assert time.monotonic() < deadline, done
        time.sleep(0.5)
    assert done.status == "completed" and done.request_counts.completed == 3, done
    out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    for line in out:
        body = line["response"]["body"]
        assert body["object"] == "response" and body["output"][-1]["type"] == "message"
        assert body["usage"]["cost"]["saved_by_lever"]["batch"] > 0  # the batch discount
