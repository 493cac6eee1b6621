"""Fast tests of `frugal quantize`: input checks, manifest, gate decision, registry, CLI.

No tool venv and no model runs here: checkpoints are random-init zoo shapes written in
a second, or just their config.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantize import gate, registry
from quantize import manifest as manifest_io
from quantize.cli import app
from quantize.manifest import Calibration, Manifest, Quality
from quantize.methods import METHODS, QuantizeError, plan

runner = CliRunner()


def write_config(path: Path, hidden: int, inter: int, heads: int | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    heads = heads or hidden // 64
    config = {
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "head_dim": 64,
    }
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(autouse=True)
def artifacts_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "artifacts"
    monkeypatch.setenv(registry.ENV_VAR, str(root))
    return root


def test_unknown_method_and_bits_are_refused(tmp_path):
    model = write_config(tmp_path / "m", 256, 768)
    with pytest.raises(QuantizeError, match="unknown method 'awq4'"):
        plan(model, "awq4", 4)
    with pytest.raises(QuantizeError, match="w8a8 does not support 4 bits; supported: 8"):
        plan(model, "w8a8", 4)
    with pytest.raises(QuantizeError, match="gptq does not support 5 bits"):
        plan(model, "gptq", 5)


def test_group_size_is_chosen_to_fit_every_layer(tmp_path):
    # zoo-l widths (256/768) take 128; zoo-m's 192 does not, so 64 is chosen.
    assert plan(write_config(tmp_path / "l", 256, 768), "gptq", 4).group_size == 128
    assert plan(write_config(tmp_path / "m", 192, 512), "w4a16", 4).group_size == 64
    assert plan(write_config(tmp_path / "m", 192, 512), "gptq", 4, group_size=-1).group_size == -1


def test_shapes_a_kernel_cannot_take_are_reported_before_work(tmp_path):
    model = write_config(tmp_path / "m", 192, 512)
    with pytest.raises(QuantizeError, match="in_features 192 is not a multiple of group 128"):
        plan(model, "gptq", 4, group_size=128)
    with pytest.raises(QuantizeError, match="not a power of two"):
        plan(model, "gptq", 4, group_size=48)
    # 4-bit on CPU: vLLM's WNA16 kernel needs multiples of 32 (intermediate 200 is not).
    odd = write_config(tmp_path / "odd", 128, 200)
    with pytest.raises(QuantizeError, match="multiple of 32"):
        plan(odd, "w4a16", 4, group_size=-1)


def test_fixed_scaling_methods_take_no_group_size(tmp_path):
    model = write_config(tmp_path / "m", 256, 768)
    with pytest.raises(QuantizeError, match="takes no --group-size"):
        plan(model, "w8a8", 8, group_size=64)
    assert plan(model, "bnb", 4).group_size == 64
    assert plan(model, "bnb", 8).group_size == -1
    assert plan(model, "w8a8", 8).group_size == -1


def test_already_quantized_or_missing_model_is_refused(tmp_path):
    with pytest.raises(QuantizeError, match="no config.json"):
        plan(tmp_path, "gptq", 4)
    model = write_config(tmp_path / "q", 256, 768)
    config = json.loads((model / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq"}
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(QuantizeError, match="already quantized"):
        plan(model, "gptq", 4)


def test_servable_on_matches_installed_vllm_names():
    """Every method's vLLM name is one vLLM knows; CPU-servable ones are allowed on CPU."""
    pytest.importorskip("vllm")
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    from serving.config import supported_quantization

    for method in METHODS.values():
        if any("cpu" in method.devices(b) for b in method.bits):
            assert method.vllm_quantization in QUANTIZATION_METHODS
            assert method.vllm_quantization in supported_quantization()
    # The GPU-only marking of bitsandbytes is what the installed vLLM says on this CPU.
    assert "bitsandbytes" not in supported_quantization()


def make_manifest(name: str = "zoo-x-gptq-w4-g64", accuracy: float = 0.5) -> Manifest:
    return Manifest(
        name=name,
        source_model="/models/zoo-x",
        source_sha256="ab" * 32,
        source_bytes=4_000_000,
        method="gptq",
        bits=4,
        group_size=64,
        vllm_quantization="gptq",
        servable_on=["cpu", "gpu"],
        servable_evidence="test",
        calibration=Calibration(
            source="suite:16:1", sha256="cd" * 32, samples=144, max_seq_len=512
        ),
        bytes=1_100_000,
        tools={"gptqmodel": "7.6.0", "torch": "2.13.0+cpu", "transformers": "5.17.0"},
        quantize_seconds=12.0,
        quality=Quality(
            accuracy=accuracy,
            source_accuracy=0.52,
            delta_points=(accuracy - 0.52) * 100,
            items=180,
            suite="suite:20:1000000007",
            evaluated_with="vllm",
        ),
    )


def test_gate_passes_within_tolerance_and_refuses_beyond():
    ok = make_manifest(accuracy=0.50).quality
    bad = make_manifest(accuracy=0.40).quality
    assert gate.decide(ok, 3.0).passed
    assert not gate.decide(bad, 3.0).passed
    assert gate.decide(bad, 15.0).passed
    forced = gate.decide(bad, 3.0, force=True)
    assert not forced.passed and forced.forced and forced.label == "fail (forced)"
    assert "-12.0 points" in gate.refusal(bad, gate.decide(bad, 3.0))


def test_manifest_round_trip_and_list_json(tmp_path, artifacts_root):
    manifest = make_manifest()
    manifest.gate = gate.decide(manifest.quality, 3.0)
    staging = registry.staging_dir(manifest.name)
    staging.mkdir(parents=True)
    (staging / "model.safetensors").write_bytes(b"x" * 10)
    manifest_io.write(staging, manifest)
    final = registry.register(staging, manifest.name)
    assert final == artifacts_root / manifest.name and not staging.exists()
    assert manifest_io.read(final) == manifest
    assert manifest_io.dir_bytes(final) == 10  # the manifest itself is not counted

    # An artifact written with --out is listed too; a staging dir never is.
    outside = tmp_path / "elsewhere"
    other = make_manifest(name="zoo-x-w8a8-w8")
    other.gate = gate.decide(other.quality, 3.0)
    registry.staging_dir(other.name).mkdir(parents=True)
    manifest_io.write(registry.staging_dir(other.name), other)
    registry.register(registry.staging_dir(other.name), other.name, out=outside)
    registry.staging_dir("half-done").mkdir()

    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == ["zoo-x-gptq-w4-g64", "zoo-x-w8a8-w8"]
    first = rows[0]
    for key in (
        "method",
        "bits",
        "bytes",
        "source_bytes",
        "accuracy",
        "source_accuracy",
        "gate",
        "servable_on",
    ):
        assert key in first
    assert first["gate"] == "pass" and first["servable_on"] == ["cpu", "gpu"]
    assert first["manifest"]["calibration"]["samples"] == 144
    assert first["manifest"]["source_sha256"] == "ab" * 32
    assert first["manifest"]["tools"]["gptqmodel"] == "7.6.0"
    assert rows[1]["path"] == str(outside.resolve())


def test_cli_bad_input_exits_fast_with_a_clear_message(tmp_path):
    model = write_config(tmp_path / "m", 192, 512)
    result = runner.invoke(app, [str(model), "--method", "gptq", "--bits", "6"])
    assert result.exit_code == 2
    assert "gptq does not support 6 bits; supported: 2, 3, 4, 8" in result.output
    result = runner.invoke(app, [str(model), "--method", "nope", "--bits", "4"])
    assert result.exit_code == 2 and "unknown method" in result.output
    result = runner.invoke(
        app, [str(model), "--method", "w4a16", "--bits", "4", "--group-size", "128"]
    )
    assert result.exit_code == 2 and "not a multiple of group 128" in result.output


def test_hash_weights_names_the_source(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    (a / "model.safetensors").write_bytes(b"1234")
    before = manifest_io.hash_weights(a)
    (a / "config.json").write_text("{}")  # not weights: same hash
    assert manifest_io.hash_weights(a) == before
    (a / "model.safetensors").write_bytes(b"1235")
    assert manifest_io.hash_weights(a) != before


def test_calibration_from_suite_and_jsonl(tmp_path):
    from quantize import calib
    from serving.zoo.checkpoint import write_checkpoint

    model = write_checkpoint("tiny", tmp_path / "tiny")
    suite = calib.from_suite(model, per_cell=2)
    assert len(suite.texts) == 18 and suite.source == f"suite:2:{calib.CALIB_SEED}"
    assert suite.texts[0].startswith("<s><|user|>") and suite.texts[0].endswith("</s>")
    assert calib.from_suite(model, per_cell=2).sha256 == suite.sha256

    user = tmp_path / "calib.jsonl"
    user.write_text(
        json.dumps({"text": "hello"})
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "1+1"}], "expected": "2"})
        + "\n"
    )
    custom = calib.from_jsonl(model, user)
    assert custom.texts[0] == "hello" and custom.texts[1].endswith("2</s>")
    user.write_text('{"prompt": "x"}\n')
    with pytest.raises(QuantizeError, match="calib.jsonl:1: expected an object"):
        calib.from_jsonl(model, user)
