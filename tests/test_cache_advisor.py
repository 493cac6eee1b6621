"""Unit tests of the cache advisor's prompt-shape detection and report parsing."""

from __future__ import annotations

from types import SimpleNamespace

from serving.cache_advisor import PromptShapes, prompt_text
from serving.cache_cli import read_report

DOCUMENT = "The warranty covers parts and labour for two years. " * 20


def test_varying_part_first_is_flagged_fixed_part_first_is_not() -> None:
    shapes = PromptShapes()
    late = [shapes.observe("k", f"Question {i}: what is covered?\n{DOCUMENT}") for i in range(4)]
    assert late == [False, True, True, True]
    good = PromptShapes()
    early = [good.observe("k", f"{DOCUMENT}\nQuestion {i}: what is covered?") for i in range(4)]
    assert early == [False, False, False, False]


def test_keys_are_separate_and_bounded() -> None:
    shapes = PromptShapes(max_keys=2)
    assert not shapes.observe("a", "x" + DOCUMENT)
    assert not shapes.observe("b", "y" + DOCUMENT)  # another key's history does not count
    shapes.observe("c", "z")
    assert len(shapes.recent) == 2


def test_prefix_labels_are_stable_and_capped() -> None:
    shapes = PromptShapes(max_prefixes=2)
    first = shapes.prefix_label("system: be brief\nuser: hi")
    assert first == shapes.prefix_label("system: be brief\nuser: hi")
    shapes.prefix_label("another")
    assert shapes.prefix_label("a third prefix") == "other"


def test_prompt_text_of_chat_and_completion() -> None:
    chat = SimpleNamespace(messages=[{"role": "system", "content": "S"},
                                     {"role": "user", "content": [{"type": "text", "text": "U"}]}])
    assert prompt_text(chat) == "system:S\nuser:U\n"
    assert prompt_text(SimpleNamespace(prompt="abc")) == "abc"


def test_report_reads_gateway_metrics() -> None:
    text = "\n".join([
        'frugal_prefix_prompt_tokens_total{api_key="key-1",prefix="p1"} 1000',
        'frugal_prefix_cached_tokens_total{api_key="key-1",prefix="p1"} 900',
        'frugal_prompts_total{api_key="key-1"} 10',
        'frugal_late_fixed_prompts_total{api_key="key-1"} 4',
    ]) + "\n"
    report = read_report(text)
    (stats,) = report.prefixes
    assert stats.hit_ratio == 0.9
    (advice,) = report.keys
    assert advice.flagged and advice.late_fixed == 4
