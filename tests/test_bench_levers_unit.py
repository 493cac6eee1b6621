"""Unit tests of `frugal bench levers` plumbing (no server): which models the prompt-cache
runs use, and the tables rebuilt from earlier results for `--cache-only`."""

from __future__ import annotations

import json
from pathlib import Path

from serving.bench.levers_cli import _request_lever_tables, cache_config, cache_runs
from serving.config import FrugalConfig

ZOO = Path(__file__).resolve().parent.parent / "zoo"


def test_cache_runs_use_the_largest_zoo_model_with_a_long_prompt(tmp_path: Path) -> None:
    runs = cache_runs(ZOO, tmp_path, prefill_model=False)
    assert [run.label for run in runs] == ["zoo-l"]
    assert runs[0].source == ZOO / "zoo-l" and runs[0].prompt_chars == 800


def test_cache_config_is_a_valid_deployment_of_two_routers() -> None:
    config = FrugalConfig.model_validate(cache_config(ZOO / "zoo-l", 8999))
    assert [m.model_loading_config.model_id for m in config.models] == ["affinity", "default"]
    assert all(m.deployment_config.num_replicas == 2 for m in config.models)
    affinity, default = (m.deployment_config.request_router_config for m in config.models)
    assert affinity.request_router_class.endswith("PromptCacheAffinityRouter")
    assert default is None  # Ray's own router: the comparison's baseline


def test_cache_only_keeps_the_earlier_request_lever_tables(tmp_path: Path) -> None:
    rows = [{"effort": "low", "items": 3, "accuracy": 0.5}]
    (tmp_path / "reasoning.json").write_text(json.dumps(rows))
    lines = _request_lever_tables(tmp_path, "zoo-l")
    assert lines[0].startswith("## Reasoning effort (zoo-l")
    assert "| low | 3 | 0.500 |" in "\n".join(lines)
    assert not any("Structured" in line for line in lines)  # no file, no table


def test_skip_cache_keeps_the_earlier_cache_tables(tmp_path: Path) -> None:
    from serving.bench.levers_cli import _cache_tables

    assert _cache_tables(tmp_path) == []  # never measured: no table
    runs = [{"model": "zoo-l", "prompt_chars": 800, "warm_over_cold": 0.54,
             "requests_per_router": 48}]
    (tmp_path / "cache.json").write_text(json.dumps(runs))
    lines = _cache_tables(tmp_path)
    assert lines[0] == "## Prompt caching (zoo-l, 800-token shared system prompt, " \
                       "2 replicas per router)"
    assert "| 0.540 | 48 |" in "\n".join(lines)
