"""The bill (serving/bench/bill.py) on a small workload against the session server: naive
and frugal side by side, billed from the responses' own `usage.cost`, and the report.

The session server has no `model="auto"` (no router scorecard), so routing is off here;
zoo-s stands in as the baseline (zoo-s-tight, the cost account's baseline, takes one
request at a time). What is checked is the bill's arithmetic and plumbing, not its ratio:
that is `frugal bench bill` against `make run`'s server (docs/bill.md).
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.bench.bill import BillReport, run_scenario, task_body
from serving.bench.bill_report import lever_savings, markdown, publish, waterfall
from serving.bench.bill_workload import BillMix, generate_workload

pytestmark = pytest.mark.server
LEVERS = frozenset({"reasoning", "cache", "structured", "batch", "compaction"})


@pytest.fixture(scope="module")
def workload():
    return generate_workload(BillMix(tasks=8, chats=1, chat_turns=(10,), json_share=0.5,
                                     batchable_share=0.5, app_prompt_chars=200))


def test_naive_and_frugal_are_billed_from_the_responses(server, workload, tmp_path) -> None:
    naive, naive_items = asyncio.run(run_scenario(
        server.base_url, workload, frozenset(), "zoo-s", "zoo-chat", concurrency=2))
    frugal, frugal_items = asyncio.run(run_scenario(
        server.base_url, workload, LEVERS, "zoo-s", "zoo-chat", concurrency=2))
    turns = sum(m["role"] == "user" for m in workload[-1].messages)
    for run, items in ((naive, naive_items), (frugal, frugal_items)):
        assert sorted(o.id for o in items) == sorted(r.id for r in workload)  # none lost
        assert run.requests == 8 + turns
        assert run.cost_usd == pytest.approx(sum(o.cost_usd for o in items))
        assert all(o.cost_usd > 0 for o in items)  # every answer was billed
        assert run.accuracy == sum(o.correct for o in items) / len(items)
    # Same tasks: high effort on all, unique prefixes and the whole chat history cost more.
    assert frugal.cost_usd < naive.cost_usd
    assert frugal.prompt_tokens < naive.prompt_tokens
    assert frugal.saved_by_lever["cache"] > 0 == naive.saved_by_lever["cache"]  # salted
    assert frugal.saved_by_lever["batch"] > 0 == naive.saved_by_lever["batch"]

    report = BillReport(naive=naive, frugal=frugal, ratio=naive.cost_usd / frugal.cost_usd,
                        by_lever={"batch": naive}, absent={"routing": "no scorecard"})
    assert lever_savings(report) == {"batch": pytest.approx(naive.cost_usd - frugal.cost_usd)}
    text = markdown(report, "frugal bench bill ...", "the server's own")
    assert f"({report.ratio:.1f}x cheaper)" in text and "- routing: no scorecard" in text
    waterfall(report, tmp_path / "waterfall.png")
    assert (tmp_path / "waterfall.png").stat().st_size > 10_000
    publish(report, tmp_path / "bill.prom")
    samples = {(s.name, s.labels.get("run")): s.value
               for family in text_string_to_metric_families((tmp_path / "bill.prom").read_text())
               for s in family.samples}
    assert samples[("frugal_bill_cost_usd", "naive")] == pytest.approx(naive.cost_usd)
    assert samples[("frugal_bill_accuracy", "without_batch")] == naive.accuracy
    assert samples[("frugal_bill_ratio", None)] == pytest.approx(report.ratio)


def test_a_lever_off_changes_only_its_part_of_the_request() -> None:
    task = next(r for r in generate_workload(BillMix(tasks=40, chats=0))
                if r.wants_json and not r.needs_reasoning)
    on = task_body(task, LEVERS | {"routing"}, "zoo-l")
    assert on["model"] == "auto" and "response_format" in on
    assert on["messages"][0]["content"] == task.system  # the shared prefix, as is
    for lever, field in (("routing", "model"), ("structured", "response_format"),
                         ("reasoning", "reasoning_effort")):
        off = task_body(task, (LEVERS | {"routing"}) - {lever}, "zoo-l")
        assert off.get(field) != on.get(field)
        assert {k: v for k, v in off.items() if k != field} == {
            k: v for k, v in on.items() if k != field}
    salted = [task_body(task, LEVERS - {"cache"}, "zoo-l", "r1") for _ in range(2)]
    assert salted[0]["cache_salt"] != salted[1]["cache_salt"]  # nothing reused
    assert salted[0]["messages"] == on["messages"]  # the same text
    shared = [task_body(task, LEVERS, "zoo-l", "r1")["cache_salt"] for _ in range(2)]
    assert shared[0] == shared[1] != task_body(task, LEVERS, "zoo-l", "r2")["cache_salt"]
