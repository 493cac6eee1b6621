"""The bill's reference workload (serving/bench/bill_workload.py): deterministic, the mix
it promises, and a user's own JSONL; its size-proportional prices."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.bench.bill_workload import (
    DEFAULT_SEED,
    HELD_OUT_SEEDS,
    BillMix,
    generate_workload,
    load_workload,
)
from serving.zoo.tasks import DIFFICULTIES, EVAL_SEED_MIN, FAMILIES, SYSTEM_PROMPT


def test_the_same_seed_gives_the_same_workload_and_another_seed_another() -> None:
    mix = BillMix()
    first, again = generate_workload(mix, DEFAULT_SEED), generate_workload(mix, DEFAULT_SEED)
    assert first == again
    held_out = generate_workload(mix, HELD_OUT_SEEDS[0])
    assert [r.messages for r in held_out] != [r.messages for r in first]
    assert min(DEFAULT_SEED, *HELD_OUT_SEEDS) >= EVAL_SEED_MIN  # never trained on


def test_the_mix_has_every_family_shared_prompts_json_batch_reasoning_and_chats() -> None:
    mix = BillMix(tasks=120, apps=3, json_share=0.25, batchable_share=0.3, chats=4,
                  app_prompt_chars=1200)
    workload = generate_workload(mix)
    tasks = [r for r in workload if r.kind == "task"]
    chats = [r for r in workload if r.kind == "chat"]
    assert len(tasks) == 120 and len(chats) == 4
    assert {(r.family, r.difficulty) for r in tasks} == {
        (f, d) for f in FAMILIES for d in DIFFICULTIES[f]}
    assert len({r.system for r in tasks}) == 3  # a few long prefixes, shared
    assert all(r.system.endswith(SYSTEM_PROMPT) and len(r.system) > 1200 for r in tasks)
    assert 0.1 < sum(r.wants_json for r in tasks) / 120 < 0.4
    assert 0.15 < sum(r.batchable for r in tasks) / 120 < 0.45
    assert {r.difficulty for r in tasks if r.needs_reasoning} == {
        DIFFICULTIES[f][-1] for f in FAMILIES}
    assert all(not r.needs_reasoning for r in tasks
               if r.difficulty != DIFFICULTIES[r.family][-1])
    assert sorted(r.difficulty for r in chats) == [10, 10, 20, 20]
    assert all(r.messages[-1]["role"] == "user" and len(r.messages) > 20 for r in chats)


def test_by_default_applications_send_the_zoos_own_instruction() -> None:
    assert {r.system for r in generate_workload(BillMix()) if r.kind == "task"} == {
        SYSTEM_PROMPT}


def test_a_users_own_traffic_loads_from_jsonl(tmp_path) -> None:
    workload = generate_workload(BillMix(tasks=10, chats=1))
    path = tmp_path / "traffic.jsonl"
    path.write_text("\n".join(r.model_dump_json() for r in workload) + "\n\n")
    assert load_workload(path) == workload
    path.write_text('{"id": "x", "kind": "poem"}\n')
    with pytest.raises(ValidationError):
        load_workload(path)


def test_a_mix_is_validated() -> None:
    with pytest.raises(ValidationError):
        BillMix(json_share=1.5)
    with pytest.raises(ValidationError):
        BillMix(chats=2, chat_turns=())
    with pytest.raises(ValidationError):
        BillMix(surprise=1)


def test_size_proportional_prices_follow_the_weight_bytes() -> None:
    """--price-by params: the baseline keeps its price; the 4-bit copy of it costs what
    its packed weights weigh (about a quarter), zoo-s what its bf16 weights do."""
    from serving.bench.bill_prices import params_priced, weight_bytes
    from serving.config import load_config

    config = load_config(Path(__file__).parents[1] / "deployments" / "local.yaml")
    priced, sizes = params_priced(config)
    prices = {m.model_id: m.frugal.price for m in priced.models}
    assert sizes["zoo-l"] == weight_bytes(Path(config.model("zoo-l").model_loading_config
                                               .model_source))
    assert 0.2 < sizes["zoo-l-w4a16"] / sizes["zoo-l"] < 0.35
    scale = prices["zoo-s"].input_per_million / prices["zoo-l"].input_per_million
    assert scale == pytest.approx(sizes["zoo-s"] / sizes["zoo-l"])
    assert prices["zoo-l-w4a16"].output_per_million < prices["zoo-m"].output_per_million
