"""frugal's vLLM general plugin: what every vLLM process of a frugal server needs.

vLLM loads general plugins (`vllm.general_plugins` in pyproject.toml) in every process
it starts, the API process (a model replica), the EngineCore and each worker, before any
model code runs. That makes it the one place to reach the spawned engine processes:
- AMX permission (serving/cpu_features.py): without it eager bf16 engines die with
  SIGILL on AMX CPUs;
- the parent watchdog (serving/parent_watchdog.py): an engine process whose parent died
  exits, so no EngineCore or worker outlives a killed server.
Loading twice is harmless (vLLM's plugin contract).
"""

from __future__ import annotations

from serving.cpu_features import request_amx
from serving.parent_watchdog import watch_parent


def load() -> None:
    request_amx()
    watch_parent()
