"""Shared fixtures: one real frugal server (Ray Serve + vLLM) for the whole session.

Starting engines costs tens of seconds on 2 cores, so every test that needs a server
shares this one. It serves the demo zoo's smallest model twice over:
- `zoo-s` with two replicas (metrics must add up across replicas),
- `zoo-s-tight`, the same weights with a one-request queue, for overload and engine
  failure tests (they break it on purpose; nothing else sends it requests, and
  tests/test_faults.py waits for it to come back, so their order does not matter);
- `zoo-chat`, the zoo's chat model, compacting its long chats with itself as the
  summariser (lever 8). zoo-s asks zoo-chat with a timeout no call can meet, so a
  request that turns compaction on there exercises the fallback.

`postgres_url` is a real PostgreSQL server for the session (tests/postgres.py), for the
store tests that run on both SQLite and PostgreSQL; `redis_url` a real Redis
(tests/redis_server.py), the rate limiter's shared storage; `tiny_disk` a 2 MB tmpfs
for a store that tests fill up or make read-only (tests/tinydisk.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from serving.evaluation.launcher import Running

REPO = Path(__file__).resolve().parents[1]
SERVER_START_TIMEOUT_S = 900


def zoo_model_path(name: str) -> Path:
    """A zoo checkpoint, or FRUGAL_TEST_MODEL when a developer points elsewhere."""
    override = os.environ.get("FRUGAL_TEST_MODEL")
    if override:
        return Path(override)
    from serving.zoo.paths import default_zoo_dir

    path = default_zoo_dir() / name
    if not (path / "config.json").exists():
        pytest.fail(f"{path} is missing: run `frugal zoo build` (make test does it first)")
    return path


#: The session server's compaction budget on zoo-chat (tests/test_compaction_server.py).
CHAT_BUDGET_TOKENS = 256


def server_config(model_path: Path, chat_path: Path | None = None) -> dict:
    """The session server's deployments YAML (`frugal_server` fills in http_options)."""
    engine = {"dtype": "bfloat16", "enforce_eager": True}
    env = {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}}
    return {
        "ray": {"num_cpus": 8},
        "gateway": {"deployment_config": {"num_replicas": 2, "max_ongoing_requests": 1024}},
        # The tight model doubles as the expensive baseline of the cost account.
        "cost": {"baseline_model": "zoo-s-tight"},
        # A small upload limit, so the 413 test need not send 200 MB.
        "batch": {"max_file_bytes": 1024 * 1024},
        "models": [
            {
                "model_loading_config": {"model_id": "zoo-s", "model_source": str(model_path)},
                "engine_kwargs": {**engine, "reasoning_parser": "qwen3"},
                "deployment_config": {
                    "num_replicas": 2,
                    "ray_actor_options": {"num_cpus": 1},
                    "request_router_config": {},  # prefix-cache affinity (the default class)
                },
                "runtime_env": env,
                "frugal": {
                    "price": {"input_per_million": 0.1, "output_per_million": 0.4},
                    "reasoning": {"low": 16, "medium": 64, "high": 256},
                    # A summariser no call can wait for. Not zoo-s-tight: after its
                    # handle saw these calls cancelled, the overload test's 8 requests
                    # were all let through (Ray Serve 2.60; see tests/test_faults.py).
                    "compaction": {"summariser": "zoo-chat",
                                   "summariser_timeout_s": 0.001},
                },
            },
            {
                "model_loading_config": {
                    "model_id": "zoo-s-tight",
                    "model_source": str(model_path),
                },
                "engine_kwargs": engine,
                "deployment_config": {
                    "num_replicas": 1,
                    "max_ongoing_requests": 1,
                    "max_queued_requests": 1,
                    "ray_actor_options": {"num_cpus": 1},
                    # Restart quickly after the fault test kills the engine.
                    "health_check_period_s": 2,
                },
                "runtime_env": env,
                "frugal": {"price": {"input_per_million": 1.0, "output_per_million": 4.0}},
            },
            {
                "model_loading_config": {
                    "model_id": "zoo-chat",
                    "model_source": str(chat_path or zoo_model_path("zoo-chat")),
                },
                "engine_kwargs": engine,
                "deployment_config": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 1}},
                "runtime_env": env,
                "frugal": {
                    "price": {"input_per_million": 0.1, "output_per_million": 0.4},
                    "compaction": {"enabled": True, "budget_tokens": CHAT_BUDGET_TOKENS,
                                   "summariser": "zoo-chat"},
                },
            },
        ],
    }


class ServerHandle:
    def __init__(self, base_url: str, log_path: Path, session_id: int) -> None:
        self.base_url = base_url  # ends in /v1
        self.root_url = base_url.removesuffix("/v1")
        self.log_path = log_path
        self.session_id = session_id  # of `frugal serve`: every process of this server


@contextlib.contextmanager
def started_server(config: dict, log_dir: Path,
                   timeout_s: float = SERVER_START_TIMEOUT_S) -> Iterator[Running]:
    """`serving.evaluation.launcher.frugal_server` for a fixture: a server that never comes up fails
    the tests with its log's tail (CI shows nothing else); it is stopped either way."""
    from serving.evaluation.launcher import frugal_server

    with contextlib.ExitStack() as stack:
        try:
            running = stack.enter_context(
                frugal_server(config, log_dir=log_dir, timeout_s=timeout_s))
        except RuntimeError as exc:
            tails = [p.read_text()[-4000:] for p in sorted(log_dir.glob("*.log"))]
            pytest.fail(f"{exc}\n" + "\n".join(tails))
        yield running


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    workdir = tmp_path_factory.mktemp("server")
    with started_server(server_config(zoo_model_path("zoo-s")), workdir) as running:
        yield ServerHandle(running.url, running.log, running.session_id)


@pytest.fixture(scope="session")
def client(server: ServerHandle):
    from openai import OpenAI

    return OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server for the session (tests/postgres.py): its SQLAlchemy URL,
    `postgresql+psycopg://...`. Fails, never skips, when no server can be started."""
    from tests.postgres import PostgresUnavailable, postgres_server

    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(postgres_server())
        except PostgresUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis server for the session (tests/redis_server.py): the rate limiter's
    shared storage. Fails, never skips, when no server can be started."""
    from tests.redis_server import RedisUnavailable, redis_server

    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(redis_server())
        except RedisUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        yield url


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A store directory on a 2 MB tmpfs of its own (tests/tinydisk.py), that the test
    fills up or remounts read-only; unmounted afterwards. Fails, never skips, where
    mounting is impossible (it needs root)."""
    from tests.tinydisk import TinyDisk

    disk = TinyDisk(tmp_path / "store", size_kb=2048)
    try:
        disk.mount()
    except (RuntimeError, OSError) as exc:
        pytest.fail(f"cannot mount a tmpfs for the store (mount(8) as root): {exc}",
                    pytrace=False)
    yield disk
    disk.unmount()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path) -> Iterator[str]:
    """A fresh store URL, once on SQLite and once on a database of the session's real
    PostgreSQL (for the store tests that must hold on both)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/frugal.db"
        return
    from tests.postgres import fresh_database

    with fresh_database(request.getfixturevalue("postgres_url")) as url:
        yield url


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `fresh_handles` run first (the order is otherwise kept). The overload
    test is one: once the shared server has carried the suite's traffic, Ray Serve 2.60
    has let all 8 of its requests through to a deployment with max_queued_requests=1
    (seen twice in CI, after different tests; not reproduced alone)."""
    items.sort(key=lambda item: item.get_closest_marker("fresh_handles") is None)
