"""Lever 4 survives `kill -9`: the whole `frugal serve` is killed at random points of a
running batch (once while it validates, then mid-run), restarted on the same store each
time, and the batch completes with every custom_id exactly once and no line answered
twice. The seed of the kill points is in the failure message, to replay a failure."""

from __future__ import annotations

import os
import random

import pytest

from serving.bench.batch_crash import crash_run
from tests.conftest import zoo_model_path

pytestmark = [pytest.mark.server, pytest.mark.slow]


def crash_config(model_path, state_dir) -> dict:
    return {
        "ray": {"num_cpus": 4},
        "gateway": {"deployment_config": {"num_replicas": 1, "max_ongoing_requests": 1024}},
        "store": {"state_dir": str(state_dir)},
        # A short lease: the restarted server takes the dead runner's batch over quickly.
        "batch": {"lease_s": 3, "poll_s": 0.2},
        "models": [{
            "model_loading_config": {"model_id": "zoo-s", "model_source": str(model_path)},
            "engine_kwargs": {"dtype": "bfloat16", "enforce_eager": True},
            "deployment_config": {"num_replicas": 1, "max_ongoing_requests": 256,
                                  "ray_actor_options": {"num_cpus": 1}},
            "runtime_env": {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
        }],
    }


def test_kill_9_at_random_points_loses_no_line_and_runs_none_twice(tmp_path):
    seed = int(os.environ.get("FRUGAL_CRASH_SEED") or random.randrange(1_000_000))
    report = crash_run(crash_config(zoo_model_path("zoo-s"), tmp_path / "state"),
                       model="zoo-s", lines=400, kills=3, seed=seed, max_tokens=32,
                       log_dir=tmp_path / "logs", timeout_s=600)
    replay = f"FRUGAL_CRASH_SEED={seed}; {report.model_dump_json()}"
    print(replay)
    assert len(report.kills) >= 2, f"the batch outran the kills: {replay}"
    assert report.kills[0].status == "validating" or report.kills[0].lines_done == 0, replay
    assert report.final_status == "completed", replay
    assert report.tally.lost == [] and report.tally.duplicated == [], replay
    assert report.tally.unknown == [] and report.tally.answered == 400, replay
    assert report.lines_run_twice == 0, replay
