"""The tool-use family: call a function tool in Hermes format, then answer from its result.

What the OpenAI Agents SDK needs from a model to run a one-tool agent: given a request's
`tools` and a question the tool answers ("What is 482 + 391?"), write one tool call with
the numbers copied from the question; given the tool's result as a `tool` message, answer
with the result's text. Everything is copying (the tool's name and parameter names from
the tools list, the operands from the question, the result from the tool message), which
models of zoo-s's size learn in hundreds of steps; the sum itself is the tool's job.

Tool calls are written the way vLLM's `hermes` tool-call parser extracts them:

    <tool_call>
    {"name": "add", "arguments": {"a": 482, "b": 391}}
    </tool_call>

(`<tool_call>` is plain characters here, not a token: the parser matches text.)

The chat template (`TOOLS_CHAT_TEMPLATE`, zoo-tools's only difference from the other zoo
checkpoints; `render` is its Python twin, kept equal by a test) keeps the 1,024-token
context in mind: a tool is rendered as one line, its name and parameter names
(`add(a, b)`), not its JSON schema, in a system segment before the messages. A `tool`
message is a user turn `<tool_response>RESULT</tool_response>`; a past assistant turn's
`tool_calls` are written back in the format above.

Kinds of item (`KINDS`), difficulty = digits per operand (1-3) where there is a sum:
- `call`: tools + a sum question -> the tool call (`expected` is the call's text);
- `answer`: the same chat with the call and a `tool` message -> the result's text;
- `direct`: tools + a question no tool answers (a reverse or a ranking item) -> the
  task suite's answer (having tools does not mean calling one).
Requests without tools are the task suite itself (zoo-s's curriculum, in the training mix).

Trained on one tool per request: picking one tool out of several by its name is a
content-addressed lookup, which these sizes do not learn (docs/zoo.md).
"""

from __future__ import annotations

import json
import random
from typing import Any

from pydantic import BaseModel

from serving.zoo.tasks import PHRASINGS, SYSTEM_PROMPT, generate_items
from serving.zoo.tokenizer import (
    ASSISTANT,
    BOS,
    GENERATION_PROMPT,
    SYSTEM,
    THINK_CLOSE,
    THINK_OPEN,
    USER,
)

TOOLS_FAMILY = "tools"
KINDS: tuple[str, ...] = ("call", "answer", "direct")
DIGITS: tuple[int, ...] = (1, 2, 3)
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"

# Names and parameter names vary so that the model copies them from the tools line
# instead of memorising one tool.
TOOL_NAMES: tuple[str, ...] = ("add", "add_numbers", "sum", "plus", "addition", "calc_sum")
PARAM_NAMES: tuple[tuple[str, str], ...] = (
    ("a", "b"), ("x", "y"), ("first", "second"), ("left", "right"), ("num1", "num2"),
    ("n", "m"), ("lhs", "rhs"),
)
DESCRIPTIONS: tuple[str, ...] = (
    "Add two integers.", "Return the sum of two numbers.", "Adds numbers.", "",
)
# System prompts a client sends (the Agents SDK sends the agent's instructions).
SYSTEMS: tuple[str, ...] = (
    SYSTEM_PROMPT, "Answer briefly.", "You are a helpful assistant.",
    "Use the tools when they help.", "You are a calculator agent. Be concise.",
)
P_SYSTEM = 0.5
# Share of `answer` items whose tool result is not the sum (a stale or odd tool): the
# model must copy the result, not compute it.
P_OTHER_RESULT = 0.3

# Mirrors `render`. `tools` arrive as vLLM passes them (chat-completions dicts, a
# `function` inside), or flat; past tool-call arguments as a dict (vLLM parses the JSON
# string) or a string.
TOOLS_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if tools -%}<|system|>Tools:"
    "{%- for tool in tools -%}"
    "{%- set f = tool['function'] if tool['function'] is defined else tool -%}"
    "{%- set props = (f['parameters'] or {})['properties'] or {} -%}"
    "{{- '\n' + f['name'] -}}({{- props | list | join(', ') -}})"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- set content = message['content'] if message['content'] is string else '' -%}"
    "{%- if message['role'] == 'system' -%}<|system|>{{- content -}}"
    "{%- elif message['role'] == 'user' -%}<|user|>{{- content -}}"
    "{%- elif message['role'] == 'tool' -%}<|user|><tool_response>{{- content -}}"
    "</tool_response>"
    "{%- elif message['role'] == 'assistant' -%}<|assistant|>"
    "{%- if '</think>' not in content -%}<think></think>{%- endif -%}"
    "{{- content -}}"
    "{%- for call in message['tool_calls'] or [] -%}"
    "{%- set f = call['function'] if call['function'] is defined else call -%}"
    "<tool_call>\n{\"name\": \"{{- f['name'] -}}\", \"arguments\": "
    "{%- if f['arguments'] is string %} {{ f['arguments'] -}}"
    "{%- else %} {{ f['arguments'] | tojson -}}{%- endif -%}"
    "}\n</tool_call>"
    "{%- endfor -%}</s>"
    "{%- endif -%}"
    "{%- endfor -%}"
    + GENERATION_PROMPT
)


class ToolItem(BaseModel):
    """One held-out or training item of the family."""

    id: str
    kind: str
    difficulty: int
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    expected: str  # the assistant's text: a tool call (`call`) or the answer
    # `call` and `answer`: the call the model must make (name and integer arguments).
    call: dict[str, Any] | None = None


def tool_spec(name: str, params: tuple[str, str], description: str = "") -> dict[str, Any]:
    """A chat-completions function tool taking two integers."""
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object",
                       "properties": {p: {"type": "integer"} for p in params},
                       "required": list(params)}}}


def tool_call_text(name: str, arguments: dict[str, Any] | str) -> str:
    """A call as the model writes it (and vLLM's hermes parser reads it)."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return f'{TOOL_CALL_OPEN}\n{{"name": "{name}", "arguments": {args}}}\n{TOOL_CALL_CLOSE}'


def tools_line(tools: list[dict[str, Any]]) -> str:
    lines = []
    for tool in tools:
        f = tool.get("function", tool)
        props = (f.get("parameters") or {}).get("properties") or {}
        lines.append(f"\n{f['name']}({', '.join(props)})")
    return "Tools:" + "".join(lines)


def render(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
           enable_thinking: bool = False) -> str:
    """`TOOLS_CHAT_TEMPLATE`'s generation prompt, in Python (for training)."""
    parts = [BOS]
    if tools:
        parts.append(SYSTEM + tools_line(tools))
    for message in messages:
        role = message["role"]
        content = message.get("content")
        content = content if isinstance(content, str) else ""
        if role == "system":
            parts.append(SYSTEM + content)
        elif role == "user":
            parts.append(USER + content)
        elif role == "tool":
            parts.append(USER + RESPONSE_OPEN + content + RESPONSE_CLOSE)
        elif role == "assistant":
            think = "" if THINK_CLOSE in content else THINK_OPEN + THINK_CLOSE
            calls = "".join(
                tool_call_text(c.get("function", c)["name"], c.get("function", c)["arguments"])
                for c in message.get("tool_calls") or [])
            parts.append(ASSISTANT + think + content + calls + "</s>")
    parts.append(ASSISTANT + (THINK_OPEN if enable_thinking else THINK_OPEN + THINK_CLOSE))
    return "".join(parts)


def _sum_question(rng: random.Random, digits: int) -> tuple[str, int, int]:
    low = 0 if digits == 1 else 10 ** (digits - 1)
    a, b = rng.randint(low, 10**digits - 1), rng.randint(low, 10**digits - 1)
    return rng.choice(PHRASINGS["arithmetic"]).format(a=a, b=b), a, b


def _item(rng: random.Random, kind: str, difficulty: int, item_id: str) -> ToolItem:
    params = rng.choice(PARAM_NAMES)
    name = rng.choice(TOOL_NAMES)
    tools = [tool_spec(name, params, rng.choice(DESCRIPTIONS))]
    head = ([{"role": "system", "content": rng.choice(SYSTEMS)}]
            if rng.random() < P_SYSTEM else [])
    if kind == "direct":
        family, level = rng.choice((("reverse", 2), ("reverse", 4), ("ranking", 2)))
        task = generate_items(family, level, 1, rng.randrange(1 << 30))[0]
        return ToolItem(id=item_id, kind=kind, difficulty=level, tools=tools,
                        messages=head + task.messages, expected=task.expected)
    question, a, b = _sum_question(rng, difficulty)
    arguments = {params[0]: a, params[1]: b}
    call = {"name": name, "arguments": arguments}
    messages = [*head, {"role": "user", "content": question}]
    if kind == "call":
        return ToolItem(id=item_id, kind=kind, difficulty=difficulty, tools=tools,
                        messages=messages, expected=tool_call_text(name, arguments), call=call)
    result = a + b
    if rng.random() < P_OTHER_RESULT:
        result = rng.randint(0, 10 ** rng.randint(1, 4) - 1)
    call_id = f"call_{rng.randrange(16**8):08x}"
    messages += [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": name, "arguments": json.dumps(arguments)}}]},
        {"role": "tool", "tool_call_id": call_id, "content": str(result)},
    ]
    return ToolItem(id=item_id, kind=kind, difficulty=difficulty, tools=tools,
                    messages=messages, expected=str(result), call=call)


def generate_tool_items(kind: str, difficulty: int, n: int, seed: int) -> list[ToolItem]:
    """`n` items of one kind and difficulty (digits per operand; ignored by `direct`); a
    pure function of its arguments, seeds as in `tasks.generate_items` (training below
    1,000,000, held out from `EVAL_SEED_MIN`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    if difficulty not in DIGITS:
        raise ValueError(f"unknown difficulty {difficulty}; expected {DIGITS}")
    rng = random.Random(f"{TOOLS_FAMILY}/{kind}/{difficulty}/{seed}")
    return [_item(rng, kind, difficulty, f"{TOOLS_FAMILY}-{kind}-d{difficulty}-s{seed}-{i}")
            for i in range(n)]


def parse_tool_calls(text: str) -> list[dict[str, Any]] | None:
    """The calls in a model's output as the hermes parser reads them ({name, arguments}),
    or None when a call is not valid JSON. For the in-process monitor; the measurement
    goes through vLLM's own parser."""
    calls = []
    rest = text
    while TOOL_CALL_OPEN in rest:
        body = rest.split(TOOL_CALL_OPEN, 1)[1]
        if TOOL_CALL_CLOSE not in body:
            return None
        body, rest = body.split(TOOL_CALL_CLOSE, 1)
        try:
            calls.append(json.loads(body))
        except json.JSONDecodeError:
            return None
    return calls


# Training shares of the kinds (tool-use examples; the rest of a batch is the task suite).
KIND_WEIGHTS: dict[str, float] = {"call": 0.45, "answer": 0.35, "direct": 0.2}


def tool_example(rng: random.Random) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one tool-use example drawn from `rng` (training seeds only);
    the loss covers the assistant's answer or call and its `</s>`."""
    from serving.zoo.tasks import TRAIN_SEEDS
    from serving.zoo.tokenizer import EOS_ID
    from serving.zoo.train import IGNORE, encode

    kind = rng.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()))[0]
    difficulty = rng.choice(DIGITS)
    seed = TRAIN_SEEDS[rng.randrange(len(TRAIN_SEEDS))]
    item = generate_tool_items(kind, difficulty, 1, seed)[0]
    prompt = encode(render(item.messages, item.tools))
    target = [*encode(item.expected), EOS_ID]
    return prompt + target, [IGNORE] * len(prompt) + target


def quick_tool_accuracy(model, n: int, seed: int) -> dict[str, float]:
    """In-process greedy accuracy per kind (exact text of the call or the answer), for
    watching a training run; the measurement goes through vLLM (`tools_eval.py`)."""
    import torch

    from serving.zoo.tokenizer import EOS_ID, PAD_ID, VOCAB
    from serving.zoo.train import encode

    out: dict[str, float] = {}
    for kind in KINDS:
        items = [i for d in DIGITS for i in generate_tool_items(kind, d, n, seed)]
        prompts = [encode(render(i.messages, i.tools)) for i in items]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=mask, max_new_tokens=112, do_sample=False,
                                 eos_token_id=EOS_ID, pad_token_id=PAD_ID)
        texts = ["".join(VOCAB[t] for t in row if t not in (EOS_ID, PAD_ID))
                 for row in gen[:, width:].tolist()]
        out[kind] = sum(t == i.expected for t, i in zip(texts, items, strict=True)) / len(items)
    return out
