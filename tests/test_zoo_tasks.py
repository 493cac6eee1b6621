"""The zoo task suite and tokenizer: generators, checkers, export, chat template."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from serving.evaluation.items import TaskItem, check_answer, json_fields, load_jsonl
from serving.zoo import tasks
from serving.zoo.tasks import (
    DIFFICULTIES,
    EVAL_SEED,
    FAMILIES,
    TRAIN_SEEDS,
    generate_items,
    mixed_suite,
)


def test_families_and_levels_are_graded() -> None:
    assert len(FAMILIES) >= 3
    for family in FAMILIES:
        levels = DIFFICULTIES[family]
        assert len(levels) >= 3 and list(levels) == sorted(levels)


@pytest.mark.parametrize("family", FAMILIES)
def test_generators_are_seeded_and_pure(family: str) -> None:
    for difficulty in DIFFICULTIES[family]:
        first = generate_items(family, difficulty, 20, seed=7)
        assert first == generate_items(family, difficulty, 20, seed=7)
        assert first != generate_items(family, difficulty, 20, seed=8)
        assert len({item.id for item in first}) == 20
        for item in first:
            assert item.family == family and item.difficulty == difficulty
            assert item.messages[-1]["role"] == "user"
            assert check_answer(item, item.expected)


def test_eval_seed_is_never_a_training_seed() -> None:
    assert EVAL_SEED not in TRAIN_SEEDS
    assert tasks.EVAL_SEED_MIN > TRAIN_SEEDS[-1]


def test_arithmetic_answers_are_sums() -> None:
    for difficulty in DIFFICULTIES["arithmetic"]:
        for item in generate_items("arithmetic", difficulty, 30, seed=1):
            numbers = [
                int(tok)
                for tok in item.messages[-1]["content"].replace("?", " ").replace(".", " ").split()
                if tok.isdigit()
            ]
            assert len(numbers) == 2
            assert all(len(str(x)) == difficulty for x in numbers)
            assert item.expected == str(sum(numbers))


def test_reverse_and_ranking_answers() -> None:
    for item in generate_items("reverse", 6, 20, seed=1):
        word = [
            w
            for w in item.messages[-1]["content"].replace(".", " ").split()
            if len(w) == 6 and w.islower()
        ][-1]
        assert item.expected == word[::-1]
    for item in generate_items("ranking", 8, 20, seed=1):
        content = item.messages[-1]["content"]
        # Records are "N 42" lines: a one-letter name, then a two-digit score.
        pairs = [line.split() for line in content.splitlines()]
        scores = {
            p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[0].isupper() and p[1].isdigit()
        }
        assert len(scores) == 8 and all(10 <= v <= 99 for v in scores.values())
        assert item.expected == max(scores, key=scores.__getitem__)
        assert item.scratchpad == f"{item.expected} {scores[item.expected]}"
        # A photo finish: the top four are consecutive within one tens decade, the rest
        # lower, so the tens digit alone leaves four candidates.
        top = sorted(scores.values(), reverse=True)
        assert top[:4] == list(range(top[0], top[0] - 4, -1)) and top[0] // 10 == top[3] // 10
        assert top[4] // 10 < top[0] // 10


def test_fewer_players_keep_random_scores() -> None:
    """2 and 4 players: distinct random scores (the items zoo-s and zoo-m were trained
    on); their winner usually has a tens digit of its own."""
    for players in (2, 4):
        items = generate_items("ranking", players, 200, seed=3)
        tens_decides = 0
        for item in items:
            content = item.messages[-1]["content"]
            scores = [int(w) for w in content.split() if w.isdigit()]
            assert len(set(scores)) == players
            top = max(scores) // 10
            tens_decides += sum(s // 10 == top for s in scores) == 1
        assert tens_decides > 0.6 * len(items)


def test_several_phrasings_and_optional_system_prompt() -> None:
    items = generate_items("arithmetic", 2, 60, seed=3)
    templates = {item.messages[-1]["content"].split()[0] for item in items}
    assert len(templates) >= 3
    assert all(len(item.messages) == 1 for item in items)
    with_system = generate_items("arithmetic", 2, 5, seed=3, system_prompt=True)
    assert all(
        item.messages[0] == {"role": "system", "content": tasks.SYSTEM_PROMPT}
        for item in with_system
    )
    # The system prompt does not change the items themselves.
    assert [i.expected for i in with_system] == [i.expected for i in items[:5]]


def _item(expected: str) -> TaskItem:
    return TaskItem(id="x", family="arithmetic", difficulty=4, messages=[], expected=expected)


@pytest.mark.parametrize(
    ("text", "right"),
    [
        ("1234", True),
        ("  1234\n", True),
        ("<think>4321+0=4321</think>1234", True),
        ("<think>\nscratch\n</think>\n 1234 ", True),
        ("scratch</think>1234", True),  # thinking prompts end in <think>
        ("<think>1234", False),  # never closed: no answer given
        ("1,234", False),
        ("1234.", False),
        ("01234", False),
        ("The answer is 1234", False),
        ("12 34", False),
        ("", False),
        ("<think>1234</think>", False),
        ("<think></think>4321", False),
    ],
)
def test_check_answer_is_tolerant_of_whitespace_and_think_only(text: str, right: bool) -> None:
    assert check_answer(_item("1234"), text) is right


def test_unknown_family_or_level_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown family"):
        generate_items("poetry", 1, 1, 0)
    with pytest.raises(ValueError, match="expected"):
        generate_items("arithmetic", 99, 1, 0)


def test_mixed_suite_covers_every_cell() -> None:
    suite = mixed_suite(3, seed=EVAL_SEED)
    cells = {(i.family, i.difficulty) for i in suite}
    assert cells == {(f, d) for f in FAMILIES for d in DIFFICULTIES[f]}
    assert len(suite) == 3 * len(cells)


def test_export_suite_cli_writes_loadable_jsonl(tmp_path) -> None:
    from serving.zoo.cli import app

    out = tmp_path / "suite.jsonl"
    result = CliRunner().invoke(app, ["export-suite", "--out", str(out), "--n", "2", "--seed", "5"])
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert len(lines) == 2 * sum(len(v) for v in DIFFICULTIES.values())
    first = json.loads(lines[0])
    assert {"id", "family", "difficulty", "messages", "expected"} <= first.keys()
    assert load_jsonl(out) == mixed_suite(2, seed=5)


def test_tokenizer_think_tokens_and_chat_template() -> None:
    from serving.zoo.tokenizer import EOS, build_tokenizer
    from serving.zoo.train import encode, render_prompt

    tok = build_tokenizer()
    think_open, think_close = tok.convert_tokens_to_ids(["<think>", "</think>"])
    assert tok.encode("<think>", add_special_tokens=False) == [think_open]
    assert tok.encode("</think>", add_special_tokens=False) == [think_close]
    # Not special: they survive skip_special_tokens, so reasoning parsers can see them.
    assert tok.decode([think_open, think_close], skip_special_tokens=True) == "<think></think>"
    item = generate_items("ranking", 4, 1, seed=2, system_prompt=True)[0]
    off = tok.apply_chat_template(item.messages, tokenize=False, add_generation_prompt=True)
    on = tok.apply_chat_template(
        item.messages, tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    assert off.endswith("<|assistant|><think></think>") and on.endswith("<|assistant|><think>")
    assert off == render_prompt(item.messages, False) and on == render_prompt(item.messages, True)
    text = on + "a=1 \n</think>123" + EOS
    ids = tok.encode(text, add_special_tokens=False)
    assert ids == encode(text)
    assert tok.decode(ids) == text


def test_json_request_asks_for_fields_and_expects_indented_json() -> None:
    item = generate_items("arithmetic", 2, 1, seed=3)[0]
    request = tasks.as_json_request(item)
    assert request.messages[-1]["content"].endswith(tasks.JSON_INSTRUCTION)
    assert item.messages[-1]["content"] + tasks.JSON_INSTRUCTION == request.messages[-1]["content"]
    assert "\n  " in request.expected  # what a model writes unguided: indented
    assert json_fields(request.expected) == {"task": "arithmetic", "answer": item.expected}
    compact = json.dumps(json_fields(request.expected), separators=(",", ":"))
    assert json_fields(compact) == json_fields(request.expected)
    assert len(compact) < len(request.expected)
    for bad in ("", "answer: 12", "[1, 2]", '{"task": "arithmetic"'):
        assert json_fields(bad) is None or not isinstance(json_fields(bad), dict)


def test_training_keeps_multi_digit_sums_off_the_direct_path() -> None:
    """Sums above `direct_max_difficulty` are trained only with the scratchpad; other
    cells get all three modes. A share of the examples asks for JSON."""
    import random

    from serving.zoo.tokenizer import VOCAB
    from serving.zoo.train import IGNORE, TrainConfig, choose_mode, sample_batch

    cfg = TrainConfig(shape="tiny", steps=1, batch_size=256, lr=1e-3, p_json=0.2)
    rng = random.Random(0)
    modes = {
        (f, d): {choose_mode(cfg, f, d, rng) for _ in range(200)}
        for f, d in [("arithmetic", 2), ("arithmetic", 3), ("reverse", 6)]
    }
    assert modes[("arithmetic", 2)] == modes[("reverse", 6)] == {"direct", "think", "cut"}
    assert modes[("arithmetic", 3)] == {"think", "cut"}
    batch = sample_batch(cfg, 0)
    texts = ["".join(VOCAB[t] for t in ids) for ids, _ in batch]
    assert any(tasks.JSON_INSTRUCTION.strip() in t for t in texts)
    assert all(any(label != IGNORE for label in labels) for _, labels in batch)


def test_open_finish_is_a_training_variant_with_random_scores() -> None:
    """`close_finish=False` draws 8 players with random distinct scores (what teaches
    "prefer the highest"); the evaluation level stays the photo finish."""
    def photo_finish(item: TaskItem) -> bool:
        content = item.messages[-1]["content"]
        top = sorted((int(w) for w in content.split() if w.isdigit()), reverse=True)
        return top[:4] == list(range(top[0], top[0] - 4, -1))

    close = generate_items("ranking", 8, 50, seed=4)
    open_ = generate_items("ranking", 8, 50, seed=4, close_finish=False)
    assert all(photo_finish(item) for item in close)
    assert sum(photo_finish(item) for item in open_) < 5
    assert generate_items("ranking", 2, 20, seed=4, close_finish=False) == generate_items(
        "ranking", 2, 20, seed=4
    )
