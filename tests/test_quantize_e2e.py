"""`frugal quantize` end to end on the trained zoo-s: quantize -> gate -> serve -> answer.

One test per method vLLM serves on CPU: the real pipeline (tool venv, calibration, worker,
manifest, scorecard gate through `frugal serve` of a deployments YAML whose model entry is
the artifact), and, while that server is up, an answer through the `openai` SDK (one engine
start per method instead of two: they dominate the time on 2 cores). Plus the CLI: the gate
refusing a deliberately over-quantized model, and keeping it with --force. The tool venv is
created on first use (about a minute with warm pip caches).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantize import registry
from quantize.cli import app
from quantize.methods import METHODS
from tests.conftest import zoo_model_path

pytestmark = pytest.mark.slow
runner = CliRunner()
CPU_SERVABLE = [
    (name, bits) for name, m in METHODS.items() for bits in m.bits if "cpu" in m.devices(bits)
]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A private copy of zoo-s, so a concurrent zoo rebuild cannot change it mid-test."""
    path = tmp_path_factory.mktemp("src") / "zoo-s"
    shutil.copytree(zoo_model_path("zoo-s"), path)
    return path


@pytest.fixture(scope="module")
def artifacts_root(tmp_path_factory) -> Path:
    # Module-wide so the 16-bit source is scored once and cached for every method.
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(autouse=True)
def _root(artifacts_root, monkeypatch):
    monkeypatch.setenv(registry.ENV_VAR, str(artifacts_root))


def quantize(*args: str):
    return runner.invoke(app, [*args, "--eval-per-cell", "5"], catch_exceptions=False)


def listed() -> dict[str, dict]:
    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.output
    return {row["name"]: row for row in json.loads(result.stdout)}


@pytest.mark.parametrize(("method", "bits"), CPU_SERVABLE)
def test_cpu_servable_method_end_to_end(source, method, bits):
    from openai import OpenAI

    from quantize.pipeline import Request, run

    replies = []

    def ask(base_url: str) -> None:
        client = OpenAI(base_url=base_url, api_key="none")
        replies.append(
            client.chat.completions.create(
                model="artifact",
                messages=[{"role": "user", "content": "Reverse the word abcd."}],
                max_tokens=16,
                temperature=0,
            )
        )

    request = Request(model=source, method=method, bits=bits, eval_per_cell=5, tolerance_points=10)
    path, _ = run(request, say=print, progress=lambda *_: None, on_served=ask)

    [reply] = replies
    assert isinstance(reply.choices[0].message.content, str)
    assert reply.usage is not None and reply.usage.completion_tokens > 0

    row = listed()[path.name]
    manifest = row["manifest"]
    assert row["method"] == method and row["bits"] == bits
    assert 0 < row["bytes"] < row["source_bytes"]
    assert row["gate"] == "pass" and "cpu" in row["servable_on"]
    assert row["accuracy"] is not None and row["source_accuracy"] is not None
    assert manifest["quality"]["evaluated_with"] == "vllm"
    assert manifest["quality"]["items"] == 45
    assert manifest["calibration"]["samples"] == 144 and len(manifest["source_sha256"]) == 64
    assert {"torch", "transformers"} <= set(manifest["tools"])
    assert (path / "config.json").exists() and "quantization_config" in json.loads(
        (path / "config.json").read_text()
    )


def test_gate_refuses_an_over_quantized_model(source):
    # 2-bit, one scale per output channel: far past what zoo-s tolerates (about -7 points).
    args = (
        str(source),
        "--method",
        "gptq",
        "--bits",
        "2",
        "--group-size",
        "-1",
        "--tolerance",
        "1",
    )
    refused = quantize(*args)
    assert refused.exit_code == 1
    assert "quality gate failed" in refused.output and "Not registered" in refused.output
    assert "zoo-s-gptq-w2" not in listed()

    forced = quantize(*args, "--force")
    assert forced.exit_code == 0, forced.output
    row = listed()["zoo-s-gptq-w2"]
    assert row["gate"] == "fail (forced)"
    assert row["accuracy"] < row["source_accuracy"]
    assert row["servable_on"] == []  # vLLM loads GPTQ 4 and 8 bits only
    assert row["manifest"]["quality"]["evaluated_with"] == "transformers"
