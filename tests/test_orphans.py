"""No orphans, ever: `frugal serve` killed at three moments (while its engine starts,
while it streams, 5 s into a SIGTERM shutdown of its process group) leaves none of its
Ray or vLLM processes after `ORPHANS_GONE_WITHIN_S` (serving/reaper.py). Each moment
starts a server of its own (one small model)."""

from __future__ import annotations

import pytest
from conftest import zoo_model_path

from serving.bench.faults import MOMENTS, fault_config, kill_server
from serving.reaper import ORPHANS_GONE_WITHIN_S

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("moment", MOMENTS)
def test_no_process_outlives_a_killed_server(moment: str, tmp_path) -> None:
    config = fault_config(zoo_model_path("zoo-s"), tmp_path / "state")
    result = kill_server(config, moment, log_dir=tmp_path / "logs",
                         deadline_s=ORPHANS_GONE_WITHIN_S + 30)
    print(f"{moment}: {result.processes} processes, none left after {result.gone_s} s")
    assert result.processes > 5  # Ray and the engine were up: something to leave behind
    assert not result.left, f"left behind: {result.left}"
    assert result.gone_s is not None and result.gone_s <= ORPHANS_GONE_WITHIN_S, result
