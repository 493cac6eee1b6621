"""The zoo's tool-use family (serving/zoo/tools.py), its chat template and zoo-tools."""

from __future__ import annotations

import json
import random

import pytest

from serving.zoo.tasks import EVAL_SEED
from serving.zoo.tokenizer import build_tokenizer
from serving.zoo.tools import (
    DIGITS,
    KINDS,
    TOOLS_CHAT_TEMPLATE,
    generate_tool_items,
    parse_tool_calls,
    render,
    tool_example,
)


def test_items_are_a_pure_function_of_their_arguments() -> None:
    assert generate_tool_items("call", 3, 5, 7) == generate_tool_items("call", 3, 5, 7)
    assert generate_tool_items("call", 3, 5, 7) != generate_tool_items("call", 3, 5, 8)
    with pytest.raises(ValueError):
        generate_tool_items("nope", 1, 1, 0)


def test_a_call_copies_the_operands_and_its_result_is_answered() -> None:
    for item in generate_tool_items("call", 3, 20, EVAL_SEED):
        (call,) = parse_tool_calls(item.expected)
        assert call == item.call
        name = item.tools[0]["function"]["name"]
        assert call["name"] == name
        question = item.messages[-1]["content"]
        assert all(str(v) in question and 100 <= v <= 999 for v in call["arguments"].values())
    for item in generate_tool_items("answer", 2, 20, EVAL_SEED):
        assert item.messages[-1]["role"] == "tool"
        assert item.messages[-1]["content"] == item.expected
        assert item.messages[-2]["tool_calls"][0]["function"]["name"] == item.call["name"]
    for item in generate_tool_items("direct", 1, 20, EVAL_SEED):
        assert parse_tool_calls(item.expected) == [] and item.tools


def test_the_template_renders_what_training_renders() -> None:
    """vLLM hands the template tools as chat-completions dicts and past call arguments as
    dicts (it parses the JSON string); `render` is what training encodes."""
    tok = build_tokenizer(TOOLS_CHAT_TEMPLATE)
    for kind in KINDS:
        for digits in DIGITS:
            for item in generate_tool_items(kind, digits, 10, EVAL_SEED):
                messages = json.loads(json.dumps(item.messages))
                for message in messages:
                    for call in message.get("tool_calls") or []:
                        call["function"]["arguments"] = json.loads(call["function"]["arguments"])
                rendered = tok.apply_chat_template(messages, tools=item.tools, tokenize=False,
                                                   add_generation_prompt=True)
                assert rendered == render(item.messages, item.tools)
    # Flat (Responses-style) tools render the same line; no tools: the zoo's usual prompt.
    item = generate_tool_items("call", 1, 1, EVAL_SEED)[0]
    flat = [item.tools[0]["function"]]
    assert tok.apply_chat_template(item.messages, tools=flat, tokenize=False,
                                   add_generation_prompt=True) == render(item.messages, flat)
    plain = [{"role": "user", "content": "What is 2 + 3?"}]
    assert tok.apply_chat_template(plain, tokenize=False, add_generation_prompt=True) == (
        build_tokenizer().apply_chat_template(plain, tokenize=False, add_generation_prompt=True))


def test_the_agents_sdk_schema_renders_short() -> None:
    """The Agents SDK's schema for `add(a: int, b: int)` is one short line."""
    schema = {"type": "function", "function": {
        "name": "add", "description": "Add two integers.", "strict": True,
        "parameters": {"properties": {"a": {"title": "A", "type": "integer"},
                                      "b": {"title": "B", "type": "integer"}},
                       "required": ["a", "b"], "title": "add_args", "type": "object",
                       "additionalProperties": False}}}
    text = render([{"role": "user", "content": "What is 482 + 391?"}], [schema])
    assert text.startswith("<s><|system|>Tools:\nadd(a, b)<|user|>")


def test_training_examples_fit_and_train_only_the_answer() -> None:
    rng = random.Random(0)
    for _ in range(300):
        ids, labels = tool_example(rng)
        assert len(ids) <= 1024 and len(ids) == len(labels)
        assert labels[-1] == 2 and any(label == -100 for label in labels)  # </s>, a prompt
