"""Compaction's planner (serving/compaction/plan.py) with the zoo's real tokenizer and a
scripted summariser (a fast unit test of the planning logic: the real summariser model is
tested in tests/test_compaction_server.py), its note cache on SQLite and PostgreSQL, and
the cost account of a compacted request."""

from __future__ import annotations

import asyncio

import pytest

from serving.compaction.counter import PromptCounter
from serving.compaction.format import NOTE_HEADER, transcript
from serving.compaction.notes import NoteCache
from serving.compaction.plan import Compactor, fact_sentences, verified_lines
from serving.config import CompactionSettings, FrugalConfig, Price
from serving.cost import CostModel, TokenUsage
from serving.errors import APIError
from serving.store.db import open_engine, session_factory
from serving.zoo.chat import generate_chats, note_for
from serving.zoo.tasks import SYSTEM_PROMPT
from tests.conftest import zoo_model_path


def config() -> FrugalConfig:
    source = str(zoo_model_path("zoo-s"))
    return FrugalConfig.model_validate({"models": [
        {"model_loading_config": {"model_id": "small", "model_source": source},
         "frugal": {"price": {"input_per_million": 1.0, "output_per_million": 2.0}}},
        {"model_loading_config": {"model_id": "big", "model_source": source},
         "frugal": {"price": {"input_per_million": 10.0, "output_per_million": 20.0}}},
    ]})


class ScriptedSummariser:
    """Writes the exact note of the transcript it is shown (what the zoo model is
    trained to write), and records every request."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.requests: list[list[dict[str, str]]] = []
        self.fail = fail

    async def __call__(self, messages: list[dict[str, str]]) -> str:
        self.requests.append(messages)
        if self.fail is not None:
            raise self.fail
        turns = [{"role": "user", "content": line.removeprefix("user: ")}
                 for line in messages[-1]["content"].split("\n") if line.startswith("user: ")]
        return note_for(turns)


def kept_facts(messages: list[dict[str, str]]) -> set[str]:
    """The facts a compacted chat still holds: its note's lines and its verbatim turns'."""
    note = messages[0]["content"].split(NOTE_HEADER)[-1] if NOTE_HEADER in messages[0][
        "content"] else ""
    return set(filter(None, note.split("\n") + note_for(messages[1:]).split("\n")))


def note_of(messages: list[dict[str, str]]) -> str:
    content = messages[0]["content"]
    return content.split(NOTE_HEADER)[-1] if NOTE_HEADER in content else ""


def stretches(shown: list[str], body: list[dict[str, str]]) -> list[list[dict[str, str]]]:
    """`body` cut into consecutive stretches as long as each shown transcript."""
    out, start = [], 0
    for text in shown:
        size = text.count("\n") + 1
        out.append(body[start:start + size])
        start += size
    return out


def settings(**kw) -> CompactionSettings:
    base = {"enabled": True, "budget_tokens": 300, "keep_last_turns": 2,
            "summariser": "small", "chunk_tokens": 400}
    return CompactionSettings.model_validate({**base, **kw})


@pytest.fixture(scope="module")
def counter() -> PromptCounter:
    return PromptCounter(config())


def compact(counter, messages, summarise, notes=None, **kw):
    compactor = Compactor(counter, notes or NoteCache(None))
    return asyncio.run(compactor.compact("small", messages, settings(**kw), summarise))


def chat(turns: int, system: bool = True):
    item = generate_chats(turns, 1, seed=1_000_000_123)[0]
    head = [{"role": "system", "content": SYSTEM_PROMPT}] if system else []
    return item, head + item.messages


def test_a_chat_within_budget_is_left_alone(counter) -> None:
    _, messages = chat(3)
    summariser = ScriptedSummariser()
    assert compact(counter, messages, summariser) is None
    assert summariser.requests == []


def test_a_long_chat_keeps_system_and_last_turns_and_fits(counter) -> None:
    item, messages = chat(40)
    summariser = ScriptedSummariser()
    result = compact(counter, messages, summariser)
    assert result.method == "summary" and result.summariser_calls == len(summariser.requests)
    assert result.original_tokens > 1024 >= 300 >= result.compacted_tokens
    assert result.removed_tokens == result.original_tokens - result.compacted_tokens
    system = result.messages[0]
    assert system["role"] == "system" and system["content"].startswith(SYSTEM_PROMPT)
    assert kept_facts(result.messages) == set(item.scratchpad.split("\n"))  # every fact
    assert result.messages[1:] == messages[-5:]  # two turns and the question, verbatim
    assert "tokens=" in result.header() and "calls=" in result.header()


def test_the_next_turn_reuses_the_cached_note_with_identical_bytes(counter) -> None:
    _, messages = chat(40)
    notes = NoteCache(None)
    first = compact(counter, messages[:-1] + [messages[-1]], ScriptedSummariser(), notes)
    following = messages + [{"role": "assistant", "content": "B"},
                            {"role": "user", "content": "Who leads?"}]
    summariser = ScriptedSummariser()
    second = compact(counter, following, summariser, notes)
    assert second.method == "cached" and summariser.requests == []
    assert second.messages[0] == first.messages[0]  # the prefix cache keeps hitting
    assert second.messages[: len(first.messages)] == first.messages[:1] + messages[-5:]


def test_notes_are_not_shared_across_scopes(counter) -> None:
    """Another key's or `user`'s identical chat summarises for itself."""
    _, messages = chat(40)
    notes = NoteCache(None)
    compactor = Compactor(counter, notes)
    for scope, expected in (("key-a\nalice", "summary"), ("key-a\nalice", "cached"),
                            ("key-b\nalice", "summary"), ("key-a\nbob", "summary")):
        result = asyncio.run(compactor.compact("small", messages, settings(),
                                               ScriptedSummariser(), scope=scope))
        assert result.method == expected, scope


def test_a_growing_chat_appends_to_its_note_instead_of_starting_over(counter) -> None:
    item, messages = chat(40)
    notes = NoteCache(None)
    body = messages[1:]
    calls, shown, note = [], [], ""
    for end in range(21, len(body) + 1, 2):  # the client sends turn after turn
        summariser = ScriptedSummariser()
        result = compact(counter, messages[:1] + body[:end], summariser, notes)
        calls.append(len(summariser.requests))
        shown += [request[-1]["content"] for request in summariser.requests]
        assert note_of(result.messages).startswith(note)  # old lines are never rewritten
        note = note_of(result.messages)
    assert 0 < sum(calls) <= len(calls) / 2  # about once per few turns, not every turn
    assert kept_facts(result.messages) == set(item.scratchpad.split("\n"))
    # Each call read only turns no earlier call had read: never the old note.
    assert shown == [transcript(stretch) for stretch in stretches(shown, body)]
    assert "\n".join(shown) == transcript(body[: result.folded_messages])


def test_long_stretches_are_folded_in_chunks(counter) -> None:
    item, messages = chat(40)
    summariser = ScriptedSummariser()
    result = compact(counter, messages, summariser, chunk_tokens=200)
    assert len(summariser.requests) >= 3
    shown = [request[-1]["content"] for request in summariser.requests]
    assert "\n".join(shown) == transcript(messages[1:][: result.folded_messages])
    assert kept_facts(result.messages) == set(item.scratchpad.split("\n"))


@pytest.mark.parametrize("failure,reason", [(TimeoutError(), "timeout"),
                                            (APIError(503, "down"), "status 503")])
def test_a_failing_summariser_falls_back_to_the_facts(counter, failure, reason) -> None:
    _, messages = chat(40)
    result = compact(counter, messages, ScriptedSummariser(fail=failure))
    assert result.method == "facts" and result.fallback_reason == reason
    note = result.messages[0]["content"]
    kept = "\n".join(m["content"] for m in result.messages)
    facts = [m["content"] for m in messages if any(c.isdigit() for c in m["content"])]
    assert len(facts) == 4 and all(fact in kept for fact in facts)
    assert note.count("\n") >= 2 and "weather" not in note  # older facts, no filler
    assert result.compacted_tokens <= 300
    assert "fallback=" + reason in result.header()


def test_without_a_summariser_truncate_drops_the_oldest_turns(counter) -> None:
    _, messages = chat(40)
    result = compact(counter, messages, None, fallback="truncate", summariser=None)
    assert result.method == "truncate" and result.compacted_tokens <= 300
    assert result.messages[0] == messages[0]
    kept = result.messages[1:]
    assert kept == messages[-len(kept):] and len(kept) >= 5


def test_a_budget_the_system_prompt_alone_exceeds_is_a_400(counter) -> None:
    _, messages = chat(10)
    messages[0] = {"role": "system", "content": "x" * 400}
    with pytest.raises(APIError) as err:
        compact(counter, messages, ScriptedSummariser())
    assert err.value.status == 400 and err.value.param == "frugal.compact.budget_tokens"


def test_fact_sentences_keep_numbers_and_names() -> None:
    messages = [{"role": "user", "content": "Nice day. Meet Alice and Bob at noon. It is 42."},
                {"role": "assistant", "content": "OK. Noted."}]
    assert fact_sentences(messages) == "Meet Alice and Bob at noon.\nIt is 42."


def test_verified_lines_drop_made_up_numbers_and_add_left_out_facts() -> None:
    turns = [{"role": "user", "content": "A scored 54."}, {"role": "assistant", "content": "OK."},
             {"role": "user", "content": "Nice weather for a match today."},
             {"role": "user", "content": "Score for B: 31."}]
    assert verified_lines("A 54\nB 31", turns) == ("A 54\nB 31", 0)  # faithful: as written
    # B's line invented a number and A's fact is missing: drop one line, add one sentence.
    assert verified_lines("B 13", turns) == ("A scored 54.\nScore for B: 31.", 3)
    assert verified_lines("A 54\nC 31", turns) == ("A 54\nC 31\nScore for B: 31.", 1)
    assert verified_lines("", turns[2:3]) == ("", 0)  # filler holds no fact


class ForgetfulSummariser(ScriptedSummariser):
    """Loses the first fact of every stretch and invents a score (a small model's errors)."""

    async def __call__(self, messages: list[dict[str, str]]) -> str:
        lines = (await super().__call__(messages)).split("\n")
        return "\n".join([*lines[1:], "Z 101"])


def test_a_forgetful_summariser_is_repaired_unless_verify_note_is_off(counter) -> None:
    item, messages = chat(40)
    repaired = compact(counter, messages, ForgetfulSummariser())
    assert repaired.note_repairs > 0 and f"repaired={repaired.note_repairs}" in repaired.header()
    held = "\n".join(m["content"] for m in repaired.messages)
    assert "101" not in held
    for line in item.scratchpad.split("\n"):  # every score, as a line or its sentence
        name, score = line.split()
        assert score in held and name in held
    raw = compact(counter, messages, ForgetfulSummariser(), verify_note=False)
    assert raw.note_repairs == 0 and "101" in "\n".join(m["content"] for m in raw.messages)


def test_notes_are_shared_through_the_store(counter, store_url) -> None:
    """Two gateway replicas: the second finds the note the first wrote."""
    _, messages = chat(40)
    sessions = session_factory(open_engine(store_url))
    one, two = NoteCache(sessions), NoteCache(sessions)
    compact(counter, messages, ScriptedSummariser(), one)
    summariser = ScriptedSummariser()
    result = compact(counter, messages, summariser, two)
    assert result.method == "cached" and summariser.requests == []


def test_the_bill_of_a_compacted_request_counts_the_summariser() -> None:
    cfg = config()
    prices = {"small": Price(input_per_million=1.0, output_per_million=2.0),
              "big": Price(input_per_million=10.0, output_per_million=20.0)}
    model = CostModel(cfg, prices)
    answer = model.cost("small", TokenUsage(prompt_tokens=200, completion_tokens=2))
    summary = model.cost("small", TokenUsage(prompt_tokens=400, completion_tokens=20))
    bill = model.with_compaction(answer, 1000, [summary])
    assert bill.compaction_usd == pytest.approx(summary.total_usd)
    assert bill.total_usd == pytest.approx(answer.total_usd + summary.total_usd)
    assert bill.baseline_usd == pytest.approx(answer.baseline_usd + 1000 * 10e-6)
    assert bill.saved_by_lever["compaction"] == pytest.approx(1000e-6 - summary.total_usd)
    assert sum(bill.saved_by_lever.values()) == pytest.approx(bill.saved_usd)
    assert bill.saved_usd == pytest.approx(bill.baseline_usd - bill.total_usd)


def test_the_summariser_call_carries_the_requests_cache_salt() -> None:
    """A client that salts its prefix cache (vLLM's `cache_salt`) gets its summaries
    salted too (a fake engine call: only the request the lever builds is checked)."""
    from types import SimpleNamespace

    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    from serving.levers.compaction import CompactionLever
    from serving.pipeline.context import Endpoint, RequestContext

    sent = []

    async def call_engine(ctx, request):
        sent.append(request)
        message = SimpleNamespace(content="A 12")
        return SimpleNamespace(choices=[SimpleNamespace(message=message,
                                                         finish_reason="stop")])

    lever = CompactionLever(config(), Compactor(PromptCounter(config()), NoteCache(None)))
    for salt in ("tenant-a", None):
        request = ChatCompletionRequest(model="small", cache_salt=salt,
                                        messages=[{"role": "user", "content": "hi"}])
        ctx = RequestContext(endpoint=Endpoint.CHAT, request=request, call_engine=call_engine)
        summarise = lever._summariser(ctx, settings())
        assert asyncio.run(summarise([{"role": "user", "content": "A has 12."}])) == "A 12"
        assert sent[-1].cache_salt == salt and sent[-1].model == "small"
