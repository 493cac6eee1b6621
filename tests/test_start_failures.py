"""A model that cannot load at start: `frugal serve` exits 1 with a message naming the
model, in seconds, instead of waiting out Ray Serve's retries (each a whole engine
start) and then printing a traceback that names no model.

`truncated` (half a weights file) is caught by config validation, before Ray starts;
`mismatched` (shapes that disagree with config.json) only by the engine, whose own
exception `frugal serve` digs out of the replica's log."""

from __future__ import annotations

import pytest
from conftest import zoo_model_path

from serving.bench.faults import broken_checkpoints, failed_start, fault_config

pytestmark = pytest.mark.slow

#: Bounds well above the measured times (docs/bench/faults), for a loaded CI machine:
#: what they rule out is the old behaviour (minutes of retries, or a hang).
EXITS_WITHIN_S = {"truncated": 60.0, "mismatched": 240.0}


@pytest.mark.parametrize("case", ["truncated", "mismatched"])
def test_a_model_that_cannot_load_fails_fast_naming_it(case: str, tmp_path) -> None:
    broken = broken_checkpoints(zoo_model_path("zoo-s"), tmp_path / "broken")[case]
    config = fault_config(broken, tmp_path / "state", model="zoo-s")
    result = failed_start(config, case, "zoo-s", log_dir=tmp_path / "logs",
                          timeout_s=EXITS_WITHIN_S[case] + 120)
    print(result)
    assert result.exit_code == 1, result
    assert result.names_model, result
    assert result.failed_after_s <= EXITS_WITHIN_S[case], result
    log = next((tmp_path / "logs").glob("*.log")).read_text()
    assert "Traceback" not in log  # a message, not a stack dump
    if case == "mismatched":
        assert "must match the size of tensor" in log  # the engine's own reason
