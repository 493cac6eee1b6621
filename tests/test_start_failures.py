"""A model that cannot load at start: `frugal serve` exits 1 with a message naming the
model and the reason, in seconds, instead of waiting out Ray Serve's retries (each a
whole engine start) and then printing a traceback that names no model.

`truncated` (half a weights file) and `mismatched` (a config.json of another size) are
caught by config validation before Ray starts; `unsupported` (an architecture vLLM does
not implement) only by the engine, whose failure `frugal serve` watches for."""

from __future__ import annotations

import pytest
from conftest import zoo_model_path

from serving.bench.faults import broken_checkpoints, failed_start, fault_config

pytestmark = pytest.mark.slow

#: Bounds well above the measured times (docs/bench/faults), for a loaded CI machine:
#: what they rule out is the old behaviour (minutes of retries, or a hang).
CASES = {
    "truncated": (60.0, "incomplete metadata"),
    "mismatched": (60.0, "do not fit the architecture of config.json"),
    "unsupported": (240.0, "are not supported"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_model_that_cannot_load_fails_fast_naming_it(case: str, tmp_path) -> None:
    within_s, reason = CASES[case]
    broken = broken_checkpoints(zoo_model_path("zoo-s"), tmp_path / "broken")[case]
    config = fault_config(broken, tmp_path / "state", model="zoo-s")
    result = failed_start(config, case, "zoo-s", log_dir=tmp_path / "logs",
                          timeout_s=within_s + 120)
    print(result)
    assert result.exit_code == 1, result
    assert result.names_model, result
    assert result.failed_after_s <= within_s, result
    log = " ".join(next((tmp_path / "logs").glob("*.log")).read_text().split())
    assert "Traceback" not in log  # a message, not a stack dump
    assert reason in log
