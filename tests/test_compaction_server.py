"""Context compaction (lever 8) through the openai SDK against the session server: zoo-chat
compacts its long chats with itself as the summariser (tests/conftest.py)."""

from __future__ import annotations

import openai
import pytest

from serving.zoo.chat import CHAT_PLAYERS, generate_chats
from serving.zoo.tasks import EVAL_SEED
from tests.conftest import CHAT_BUDGET_TOKENS
from tests.helpers import metric

MODEL = "zoo-chat"


def long_chat(turns: int = 40, index: int = 0):
    return generate_chats(turns, index + 1, EVAL_SEED)[index]


def ask(client: openai.OpenAI, messages, model: str = MODEL, **extra):
    return client.chat.completions.with_raw_response.create(
        model=model, messages=messages, max_tokens=4, temperature=0, **extra)


def test_a_chat_too_long_for_the_context_is_compacted_and_answered(client, server) -> None:
    item = long_chat()
    before = metric(server.root_url, "frugal_compactions_total", model=MODEL, method="summary")
    raw = ask(client, item.messages)
    answer = raw.parse()
    method, tokens, _folded, calls = raw.headers["x-frugal-compaction"].split("; ")
    assert method == "summary" and int(calls.removeprefix("calls=")) >= 1
    original, compacted = map(int, tokens.removeprefix("tokens=").split("->"))
    assert original > 1024 and compacted <= CHAT_BUDGET_TOKENS
    assert answer.usage.prompt_tokens == compacted
    cost = answer.usage.model_extra["cost"]
    assert cost["compaction_usd"] > 0
    assert cost["total_usd"] > cost["compaction_usd"]
    # The note's cost is set against the tokens it removed.
    assert cost["saved_by_lever"]["compaction"] < original * 0.1e-6
    names = {line.split()[0] for line in item.scratchpad.split("\n")}
    assert len(names) == CHAT_PLAYERS and answer.choices[0].message.content in names
    assert metric(server.root_url, "frugal_compactions_total", model=MODEL,
                  method="summary") == before + 1
    assert metric(server.root_url, "frugal_compaction_tokens_removed_total",
                  model=MODEL) >= original - compacted


def test_uncompacted_the_same_chat_is_rejected(client) -> None:
    with pytest.raises(openai.BadRequestError):
        ask(client, long_chat().messages, extra_body={"frugal": {"compact": False}})


def test_the_next_turn_reuses_the_note_and_hits_the_prefix_cache(client) -> None:
    item = long_chat(index=1)
    first = ask(client, item.messages)
    turn = [*item.messages, {"role": "assistant", "content": first.parse().choices[0].message
                             .content}, {"role": "user", "content": "Who leads?"}]
    second = ask(client, turn)
    assert second.headers["x-frugal-compaction"].startswith("cached; ")
    assert second.headers["x-frugal-compaction"].endswith("calls=0")
    details = second.parse().usage.prompt_tokens_details
    assert details is not None and details.cached_tokens > 0  # the same compacted prefix


def test_a_streamed_long_chat_is_compacted(client) -> None:
    with client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=long_chat(index=2).messages, max_tokens=4, temperature=0,
            stream=True) as response:
        assert response.headers["x-frugal-compaction"].split(";")[0] in ("summary", "cached")
        text = "".join(chunk.choices[0].delta.content or "" for chunk in response.parse()
                       if chunk.choices)
    assert text


def test_a_budget_the_system_prompt_alone_exceeds_is_a_400(client) -> None:
    messages = [{"role": "system", "content": "Be brief. " * 40}, *long_chat(10).messages]
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, messages, extra_body={"frugal": {"compact": {"budget_tokens": 100}}})
    assert err.value.body["param"] == "frugal.compact.budget_tokens"


@pytest.mark.parametrize("compact", [{"budget_tokens": 0}, {"keep": 1}, "yes"])
def test_bad_compact_options_are_a_400(client, compact) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, long_chat(5).messages, extra_body={"frugal": {"compact": compact}})
    assert err.value.body["param"].startswith("frugal.compact")


def test_a_summariser_that_cannot_answer_in_time_falls_back(client, server) -> None:
    """zoo-s's summariser (zoo-chat with a 1 ms timeout) never answers in time: the
    request is answered anyway, compacted by the `facts` fallback, and says so."""
    item = long_chat(20)
    raw = ask(client, item.messages, model="zoo-s",
              extra_body={"frugal": {"compact": {"budget_tokens": 200}}})
    header = raw.headers["x-frugal-compaction"]
    assert header.startswith("facts; ") and header.endswith("fallback=timeout")
    original, compacted = map(int, header.split("; ")[1].removeprefix("tokens=").split("->"))
    assert raw.parse().usage.prompt_tokens == compacted < original / 2
    assert metric(server.root_url, "frugal_compaction_fallbacks_total", model="zoo-s",
                  reason="timeout") >= 1


def test_the_responses_api_compacts_a_long_input(client) -> None:
    item = long_chat(index=3)
    response = client.responses.create(model=MODEL, input=item.messages, max_output_tokens=4,
                                       temperature=0, store=False)
    assert 0 < response.usage.input_tokens <= CHAT_BUDGET_TOKENS
