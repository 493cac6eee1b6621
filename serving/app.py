"""Builds the Ray Serve application from a `FrugalConfig`: data flows YAML -> config ->
builder -> deployments, as in Ray Serve LLM's builders."""

from __future__ import annotations

import os
from typing import Any

from ray.serve import Application

from serving.config import DeploymentConfig, FrugalConfig, load_config
from serving.engine import ModelServer
from serving.gateway import Gateway

#: Env vars every frugal actor gets (metrics aggregation across processes).
PROPAGATED_ENV = ("PROMETHEUS_MULTIPROC_DIR",)


def _actor_options(deployment: DeploymentConfig, runtime_env: dict[str, Any]) -> dict[str, Any]:
    options = deployment.serve_options()
    env_vars = {k: os.environ[k] for k in PROPAGATED_ENV if k in os.environ}
    env_vars.update(runtime_env.get("env_vars", {}))
    merged_env = {**runtime_env, "env_vars": env_vars} if env_vars or runtime_env else {}
    if merged_env:
        options["ray_actor_options"] = {**options["ray_actor_options"], "runtime_env": merged_env}
    return options


def build_app(config: FrugalConfig) -> Application:
    """One `ModelServer` deployment per model behind one `Gateway` ingress."""
    servers = {
        model.model_id: ModelServer.options(
            name=model.deployment_name,
            **_actor_options(model.deployment_config, model.runtime_env),
        ).bind(model)
        for model in config.models
    }
    gateway = Gateway.options(
        name="gateway", **_actor_options(config.gateway.deployment_config, {})
    )
    return gateway.bind(config, servers)


def app_builder(args: dict[str, str]) -> Application:
    """Entry point for `serve run serving.app:app_builder config=FILE` and KubeRay's
    RayService (`import_path: serving.app:app_builder`, `args: {config: FILE}`)."""
    return build_app(load_config(args["config"]))
