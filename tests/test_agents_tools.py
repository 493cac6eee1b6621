"""Function tools end to end on zoo-tools, a model trained to call them (docs/zoo.md).

Its own server (the session server's zoo-s never learned tools): zoo-tools served with
vLLM's `hermes` tool-call parser, as `deployments/local.yaml` serves it. A tool call and
the answer after its result, through Chat Completions, through the Responses API
(`function_call` out, `function_call_output` in), and the OpenAI Agents SDK's one-tool
agent, all greedy.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from conftest import started_server, zoo_model_path

from serving.evaluation.launcher import Running

pytestmark = [pytest.mark.server, pytest.mark.slow]

MODEL = "zoo-tools"
QUESTION = "What is 482 + 391?"
ADD = {"name": "add", "description": "Add two integers.",
       "parameters": {"type": "object",
                      "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                      "required": ["a", "b"]}}


def tools_config() -> dict:
    return {
        "ray": {"num_cpus": 8},
        "models": [{
            "model_loading_config": {"model_id": MODEL,
                                     "model_source": str(zoo_model_path(MODEL))},
            "engine_kwargs": {"dtype": "bfloat16", "enforce_eager": True, "max_model_len": 1024,
                              "enable_auto_tool_choice": True, "tool_call_parser": "hermes"},
            "deployment_config": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 1}},
            "runtime_env": {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
        }],
    }


@pytest.fixture(scope="module")
def tools_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    workdir: Path = tmp_path_factory.mktemp("tools")
    with started_server(tools_config(), workdir) as running:
        yield running


@pytest.fixture(scope="module")
def tools_client(tools_server: Running) -> openai.OpenAI:
    return openai.OpenAI(base_url=tools_server.url, api_key="unused", max_retries=0,
                         timeout=120)


def test_chat_completions_call_then_answer(tools_client: openai.OpenAI) -> None:
    messages: list[dict] = [{"role": "user", "content": QUESTION}]
    first = tools_client.chat.completions.create(
        model=MODEL, messages=messages, tools=[{"type": "function", "function": ADD}],
        temperature=0.0, max_tokens=128)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    assert call.function.name == "add"
    assert json.loads(call.function.arguments) == {"a": 482, "b": 391}
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "873"}]
    second = tools_client.chat.completions.create(
        model=MODEL, messages=messages, tools=[{"type": "function", "function": ADD}],
        temperature=0.0, max_tokens=16)
    assert second.choices[0].message.content.strip() == "873"
    assert not second.choices[0].message.tool_calls
    # Without tools in the request it answers as zoo-s does.
    plain = tools_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is 2 + 3?"}],
        temperature=0.0, max_tokens=16)
    assert plain.choices[0].message.content.strip() == "5"


def test_responses_function_call_then_output(tools_client: openai.OpenAI) -> None:
    tools = [{"type": "function", **ADD}]
    first = tools_client.responses.create(model=MODEL, input=QUESTION, tools=tools,
                                          temperature=0.0, max_output_tokens=128)
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1, first.output
    call = calls[0]
    assert call.name == "add" and json.loads(call.arguments) == {"a": 482, "b": 391}
    assert call.call_id
    second = tools_client.responses.create(
        model=MODEL, tools=tools, temperature=0.0, max_output_tokens=16,
        input=[{"role": "user", "content": QUESTION},
               {"type": "function_call", "call_id": call.call_id, "name": call.name,
                "arguments": call.arguments},
               {"type": "function_call_output", "call_id": call.call_id, "output": "873"}])
    assert second.output_text.strip() == "873"
    assert not [item for item in second.output if item.type == "function_call"]
    # The same second turn by previous_response_id: the stored call is replayed.
    third = tools_client.responses.create(
        model=MODEL, tools=tools, temperature=0.0, max_output_tokens=16,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "873"}])
    assert third.output_text.strip() == "873"


def test_the_agents_sdk_runs_a_one_tool_agent(tools_server: Running) -> None:
    from agents import Agent, OpenAIResponsesModel, RunConfig, Runner, function_tool
    from agents.model_settings import ModelSettings
    from openai import AsyncOpenAI

    seen: list[tuple[int, int]] = []

    @function_tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        seen.append((a, b))
        return a + b

    model = OpenAIResponsesModel(model=MODEL, openai_client=AsyncOpenAI(
        base_url=tools_server.url, api_key="unused", max_retries=0, timeout=120))
    agent = Agent(name="adder", instructions="Answer briefly.", tools=[add], model=model,
                  model_settings=ModelSettings(temperature=0.0, max_tokens=128))
    result = Runner.run_sync(agent, QUESTION, max_turns=3,
                             run_config=RunConfig(tracing_disabled=True))
    assert seen == [(482, 391)]  # the SDK really ran the tool, with the right arguments
    assert "873" in result.final_output
    kinds = [item.type for item in result.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item", "message_output_item"], kinds
