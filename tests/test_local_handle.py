"""`LocalHandle`: the handle surface the gateway uses, on an object in this process
(`gateway.colocated_model`). Fast unit tests with a stand-in model object; the real
engine behind it is tested through a served model in test_colocated.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from serving.app import colocated_gateway_deployment
from serving.config import ConfigError, FrugalConfig, load_config
from serving.local_handle import LocalHandle


class StandInModel:
    """Records what happened to its calls (a stand-in, not an engine)."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.started = asyncio.Event()

    async def chat(self, request: str) -> str:
        return f"answer to {request}"

    async def slow(self, request: str) -> str:
        self.started.set()
        await asyncio.sleep(60)
        return "never"

    async def chat_stream(self, request: str) -> AsyncGenerator[list[str], None]:
        try:
            for i in range(1000):
                yield [f"{request}-{i}"]
                await asyncio.sleep(0)
        finally:
            self.closed.set()


def test_unary_call_is_awaitable_and_cancellable() -> None:
    async def run() -> None:
        model = StandInModel()
        handle = LocalHandle(model)
        assert await handle.chat.remote("q") == "answer to q"
        pending = handle.slow.remote("q")
        await model.started.wait()
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending

    asyncio.run(run())


def test_stream_yields_in_order_and_cancel_closes_the_generator() -> None:
    async def run() -> None:
        model = StandInModel()
        chunks = LocalHandle(model).options(stream=True).chat_stream.remote("q")
        assert await chunks.__anext__() == ["q-0"]
        assert await chunks.__anext__() == ["q-1"]
        chunks.cancel()  # the client went away: the model's generator must be closed
        await asyncio.wait_for(model.closed.wait(), 5)

    asyncio.run(run())


def test_private_names_are_not_forwarded() -> None:
    with pytest.raises(AttributeError):
        LocalHandle(StandInModel())._secret  # noqa: B018


def _config(tmp_path, **gateway) -> FrugalConfig:
    import yaml

    path = tmp_path / "frugal.yaml"
    path.write_text(yaml.safe_dump({
        "gateway": {
            "deployment_config": {"num_replicas": 1, "max_ongoing_requests": 1024,
                                  "ray_actor_options": {"num_cpus": 0.5}},
            **gateway,
        },
        "models": [{
            "model_loading_config": {"model_id": "m", "model_source": "org/m"},
            "deployment_config": {
                "autoscaling_config": {"min_replicas": 1, "max_replicas": 3},
                "max_ongoing_requests": 256,
                "request_router_config": {},
                "ray_actor_options": {"num_cpus": 1, "num_gpus": 1, "resources": {"x": 1}},
            },
        }],
    }))
    return load_config(path)


def test_colocated_gateway_takes_the_models_replicas_and_both_resources(tmp_path) -> None:
    config = _config(tmp_path, colocated_model="m")
    deployment = colocated_gateway_deployment(config, "m")
    assert deployment.autoscaling_config is not None
    assert deployment.autoscaling_config.max_replicas == 3
    assert deployment.ray_actor_options.num_cpus == 1.5
    assert deployment.ray_actor_options.num_gpus == 1
    assert deployment.ray_actor_options.resources == {"x": 1}
    assert deployment.max_ongoing_requests == 1024
    assert deployment.request_router_config is None


def test_colocated_model_must_be_served(tmp_path) -> None:
    with pytest.raises(ConfigError, match="colocated_model 'nope' is not a model"):
        _config(tmp_path, colocated_model="nope")
