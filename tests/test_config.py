"""Unit tests of the deployments YAML schema and `frugal config validate`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from serving.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
FRUGAL = str(Path(sys.executable).parent / "frugal")


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def minimal(**model_overrides: object) -> dict:
    model = {"model_loading_config": {"model_id": "m", "model_source": "org/model"}}
    model.update(model_overrides)
    return {"models": [model]}


def problems(tmp_path: Path, data: object, **kwargs: bool) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data), **kwargs)
    return info.value.problems


def test_shipped_deployments_are_valid() -> None:
    local = load_config(REPO / "deployments" / "local.yaml")
    assert [m.model_id for m in local.models] == ["zoo-s", "zoo-m", "zoo-l-w4a16", "zoo-l",
                                                  "zoo-chat", "zoo-tools"]
    assert local.model("zoo-l-w4a16").resolved_engine_kwargs()["quantization"] == (
        "compressed-tensors")
    assert all(Path(m.model_loading_config.model_source).is_absolute() for m in local.models)
    gpu = load_config(REPO / "deployments" / "gpu.yaml", check_engine_args=True)
    assert all(m.deployment_config.ray_actor_options.num_gpus >= 1 for m in gpu.models)


def test_defaults_turn_prefix_caching_on(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, minimal()))
    model = config.models[0]
    assert model.resolved_engine_kwargs()["enable_prefix_caching"] is True
    assert model.deployment_config.serve_options()["num_replicas"] == 1
    assert config.http_options.port == 8000


def test_unknown_key_names_its_path(tmp_path: Path) -> None:
    found = problems(tmp_path, minimal(deployment_config={"num_replica": 2}))
    assert found == [
        "models.0.deployment_config.num_replica: unknown key (not part of the schema; "
        "check the spelling)"
    ]


def test_wrong_type_says_what_was_expected(tmp_path: Path) -> None:
    data = minimal(deployment_config={"max_ongoing_requests": "many"})
    (line,) = problems(tmp_path, data)
    assert line.startswith("models.0.deployment_config.max_ongoing_requests: ")
    assert "valid integer" in line and "'many'" in line


def test_every_problem_is_reported(tmp_path: Path) -> None:
    data = {
        "http_options": {"port": 70000},
        "models": [
            {"model_loading_config": {"model_id": "auto", "model_source": "x/y"}},
            {"model_loading_config": {"model_source": "x/y"}},
        ],
    }
    found = problems(tmp_path, data)
    keys = [line.split(":")[0] for line in found]
    assert keys == [
        "http_options.port",
        "models.0.model_loading_config.model_id",
        "models.1.model_loading_config.model_id",
    ]


def test_scaling_modes_are_exclusive(tmp_path: Path) -> None:
    data = minimal(
        deployment_config={"num_replicas": 2, "autoscaling_config": {"max_replicas": 3}}
    )
    (line,) = problems(tmp_path, data)
    assert "either num_replicas or autoscaling_config" in line
    bad_bounds = minimal(
        deployment_config={"autoscaling_config": {"min_replicas": 3, "max_replicas": 2}}
    )
    assert "min_replicas must be <= max_replicas" in problems(tmp_path, bad_bounds)[0]


def test_duplicate_model_ids(tmp_path: Path) -> None:
    entry = {"model_loading_config": {"model_id": "m", "model_source": "a/b"}}
    assert "duplicate model_id 'm'" in problems(tmp_path, {"models": [entry, entry]})[0]


def test_local_paths_resolve_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    config = load_config(write(tmp_path, minimal(model_loading_config={
        "model_id": "m", "model_source": "./ckpt"})))
    assert config.models[0].model_loading_config.model_source == str(tmp_path / "ckpt")
    missing = minimal(model_loading_config={"model_id": "m", "model_source": "./nowhere"})
    assert "no such directory" in problems(tmp_path, missing)[0]


def test_engine_kwargs_are_checked_against_vllm(tmp_path: Path) -> None:
    data = minimal(engine_kwargs={"max_model_len": 512, "max_modle_len": 512})
    (line,) = problems(tmp_path, data, check_engine_args=True)
    assert line.startswith("models.0.engine_kwargs.max_modle_len: not a vLLM engine argument")


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    assert problems(tmp_path, "models: [")[0].startswith("not valid YAML")
    assert "expected a mapping" in problems(tmp_path, "- just a list")[0]
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.yaml")


def test_cli_validate_exit_codes(tmp_path: Path) -> None:
    bad = write(tmp_path, minimal(deployment_config={"num_replica": 2}))
    result = subprocess.run([FRUGAL, "config", "validate", str(bad), "--no-engine-args"],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert f"{bad}: models.0.deployment_config.num_replica: unknown key" in result.stdout
    good = subprocess.run(
        [FRUGAL, "config", "validate", str(REPO / "deployments" / "gpu.yaml"),
         "--no-engine-args"], capture_output=True, text=True)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "3 model(s)" in good.stdout


def _field_paths(model: type, prefix: str = "") -> set[str]:
    from pydantic import BaseModel

    paths = set()
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        paths.add(path)
        annotation = field.annotation
        candidates = getattr(annotation, "__args__", (annotation,))
        for candidate in candidates:
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                paths |= _field_paths(candidate, path + ".")
    return paths


def test_store_paths_follow_the_yaml_and_the_environment(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRUGAL_STATE_DIR", raising=False)
    monkeypatch.delenv("FRUGAL_STORE_URL", raising=False)
    store = load_config(write(tmp_path, {**minimal(), "store": {"state_dir": "st"}})).store
    base = tmp_path.resolve()
    assert store.database_url() == f"sqlite:///{base}/st/frugal.db"
    assert store.files_path() == base / "st" / "files"
    monkeypatch.setenv("FRUGAL_STATE_DIR", str(tmp_path / "volume"))  # the Helm chart's
    assert store.database_url() == f"sqlite:///{base}/volume/frugal.db"
    assert store.files_path() == base / "volume" / "files"
    monkeypatch.setenv("FRUGAL_STORE_URL", "postgresql+psycopg://app:pw@db/frugal")
    assert store.database_url() == "postgresql+psycopg://app:pw@db/frugal"
    assert store.files_path() == base / "volume" / "files"  # file bytes stay on the volume


def test_every_knob_is_documented() -> None:
    """docs/configuration.md names every key of the schema (top level and a model entry)."""
    from serving.config import FrugalConfig, ModelConfig

    doc = (REPO / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"`([a-z_.]+)", doc))
    documented |= {part for name in documented for part in name.split(".")}
    paths = _field_paths(FrugalConfig) | _field_paths(ModelConfig)
    missing = sorted(p for p in paths if p.split(".")[-1] not in documented)
    assert not missing, f"undocumented keys: {missing}"


def test_busy_port_is_detected_before_serving() -> None:
    """`frugal serve` refuses a busy port: with direct ingress the gateway would otherwise
    take the next free port while clients wait on the configured one."""
    import socket

    from serving.serve_cli import port_is_free

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not port_is_free("127.0.0.1", port)
    assert port_is_free("127.0.0.1", port)


def test_the_gateway_refuses_past_its_queue_with_retry_after() -> None:
    """Ray Serve's ingress sheds past a gateway replica's queue before frugal sees the
    request; the refusal must say when to come back, like frugal's own 503s."""
    from serving.app import gateway_options

    config = load_config(REPO / "deployments" / "local.yaml")
    backpressure = gateway_options(config)["backpressure_config"]
    assert backpressure.status_code == 503
    assert backpressure.retry_after_s == config.gateway.retry_after_s
