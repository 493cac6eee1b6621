"""The zoo's multi-turn chat family (serving/zoo/chat.py) and its training examples."""

from __future__ import annotations

import random

from serving.compaction.plan import fact_sentences
from serving.zoo.chat import (
    CHAT_TURNS,
    FACT_PHRASINGS,
    FILLER,
    generate_chats,
    note_for,
    parse_fact,
)
from serving.zoo.chat_train import chat_example
from serving.zoo.tokenizer import build_tokenizer
from serving.zoo.train import encode, render_prompt


def test_chats_are_a_pure_function_of_their_arguments() -> None:
    assert generate_chats(10, 3, 5) == generate_chats(10, 3, 5)
    assert generate_chats(10, 3, 5) != generate_chats(10, 3, 6)


def test_every_fact_is_parsed_and_no_filler_is_a_fact() -> None:
    for phrasing in FACT_PHRASINGS:
        assert parse_fact(phrasing.format(n="Q", s=42)) == ("Q", 42)
    assert all(parse_fact(text) is None for text in FILLER)
    # The `facts` fallback keeps every fact and no filler.
    messages = [{"role": "user", "content": p.format(n="Q", s=42)} for p in FACT_PHRASINGS]
    messages += [{"role": "user", "content": text} for text in FILLER]
    assert fact_sentences(messages).count("\n") == len(FACT_PHRASINGS) - 1


def test_a_chat_holds_four_facts_and_its_winner() -> None:
    for item in generate_chats(20, 20, 1_000_000_007):
        lines = item.scratchpad.split("\n")
        assert len(lines) == 4 and note_for(item.messages) == item.scratchpad
        best = max(lines, key=lambda line: int(line.split()[1]))
        assert item.expected == best.split()[0]
        assert item.messages[-1]["role"] == "user" and len(item.messages) == 41


def test_twenty_turns_fit_the_context_and_forty_do_not() -> None:
    assert CHAT_TURNS == (5, 10, 20, 40)

    def tokens(turns: int) -> list[int]:
        return [len(encode(render_prompt(item.messages, False)))
                for item in generate_chats(turns, 20, 1_000_000_007)]

    assert max(tokens(20)) < 1024 < min(tokens(40))


def test_training_examples_fit_the_context_and_match_the_chat_template() -> None:
    tok = build_tokenizer()
    rng = random.Random(0)
    for _ in range(300):
        ids, labels = chat_example(rng)
        assert len(ids) <= 1024 and len(ids) == len(labels)
        assert any(label != -100 for label in labels)
    item = generate_chats(5, 1, 3)[0]
    rendered = tok.apply_chat_template(item.messages, tokenize=False, add_generation_prompt=True)
    assert render_prompt(item.messages, False) == rendered
