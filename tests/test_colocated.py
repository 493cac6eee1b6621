"""`gateway.colocated_model`: a model whose engine runs inside the gateway's process,
served for real (Ray Serve + vLLM) and used through the `openai` SDK.

Its own server (zoo-s, colocated), because the session server keeps every model in a
replica of its own. Every request path the gateway has for a model replica must behave
the same when the model is local: unary, streaming, completions, errors, concurrency,
metrics, and a disconnect that aborts the generation.

The SIGTERM test stops the server it is given, so it must not share one with the other
tests, whatever their order. Starting a second server for it alone would cost about a
minute on 2 cores, so the module keeps a pool of one (`ColocatedServers`): every other
test gets the running server (`running`), and the SIGTERM test takes it over
(`server_to_stop`), after which the next test that needs one starts a fresh one. In the
usual order the SIGTERM test runs last and the module starts one server, as before; in
any other order, one more.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import started_server, zoo_model_path
from helpers import assert_disconnect_aborts, chat_body, metric

from serving.evaluation.launcher import Running, session_pids

pytestmark = [pytest.mark.server, pytest.mark.slow]
MODEL = "zoo-s"
# The zoo's whole context, so the disconnect test's stream is as long as it can be:
# zoo-s writes 448 tokens in under a second here, and a loaded CI machine has taken
# longer than that to carry a hang-up to the engine.
CONTEXT = 1024


CONFIG = {
    "ray": {"num_cpus": 8},
    "gateway": {"colocated_model": MODEL},
    "models": [{
        "model_loading_config": {"model_id": MODEL, "model_source": "set by ColocatedServers"},
        "engine_kwargs": {"dtype": "bfloat16", "enforce_eager": True, "max_model_len": CONTEXT},
        "deployment_config": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 1}},
        "runtime_env": {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
    }],
}


class ColocatedServers:
    """A pool of one colocated server, started when a test first needs it. `live()` is
    the running server; `take()` hands it to a test that will stop it, so that the next
    `live()` starts another. Every server started is stopped when the module ends. A
    server that fails to start fails the tests after it at once, as a module-scoped
    fixture would, instead of each waiting out another start."""

    def __init__(self, stack: contextlib.ExitStack, log_root: Path) -> None:
        self.stack = stack
        self.log_root = log_root
        self.current: Running | None = None
        self.started = 0
        self.failure: str | None = None

    def live(self) -> Running:
        if self.failure is not None:
            pytest.fail(f"the colocated server did not start: {self.failure}")
        if self.current is None:
            config = copy.deepcopy(CONFIG)
            config["models"][0]["model_loading_config"]["model_source"] = str(
                zoo_model_path(MODEL))
            log_dir = self.log_root / f"server-{self.started}"
            self.started += 1
            try:
                self.current = self.stack.enter_context(started_server(config, log_dir, 900))
            except BaseException as exc:  # pytest.fail's exception is a BaseException
                self.failure = str(exc)[:4000]
                raise
        return self.current

    def take(self) -> Running:
        running, self.current = self.live(), None
        return running


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ColocatedServers]:
    with contextlib.ExitStack() as stack:
        yield ColocatedServers(stack, tmp_path_factory.mktemp("colocated"))


@pytest.fixture
def running(servers: ColocatedServers) -> Running:
    """The module's running colocated server, shared by every test but the SIGTERM one."""
    return servers.live()


@pytest.fixture
def server_to_stop(servers: ColocatedServers) -> Running:
    """A colocated server that no later test will use: the SIGTERM test stops it."""
    return servers.take()


@pytest.fixture
def colocated(running: Running) -> str:
    return running.url


@pytest.fixture
def client(colocated: str):
    from openai import OpenAI

    return OpenAI(base_url=colocated, api_key="unused", max_retries=0, timeout=120)


def _replica_processes(session_id: int) -> dict[str, psutil.Process]:
    """This server's Ray Serve replicas (the session server may run beside it)."""
    found = {}
    for pid in session_pids(session_id):
        try:
            line = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            continue
        if "ServeReplica:" in line:
            found[line.split("ServeReplica:")[1].split()[0]] = psutil.Process(pid)
    return found


def test_the_engine_runs_inside_the_gateway_process(running: Running) -> None:
    replicas = _replica_processes(running.session_id)
    gateway = next(p for name, p in replicas.items() if name.endswith(":gateway"))
    assert not any(f"model-{MODEL}" in name for name in replicas), replicas
    children = " ".join(" ".join(c.cmdline()) + c.name() for c in gateway.children(True))
    assert "EngineCore" in children


def test_models_list_reports_the_engine_context(client) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert models[MODEL].model_extra["max_model_len"] == CONTEXT


def test_chat_and_usage(client) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is 3 + 4?"}],
        max_tokens=8, temperature=0)
    assert reply.model == MODEL
    assert reply.choices[0].message.content.strip() == "7"
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0


def test_streaming_chat(client) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is 3 + 4?"}],
        max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == "7"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_completions(client) -> None:
    reply = client.completions.create(model=MODEL, prompt="12 + 3 =", max_tokens=4)
    assert reply.model == MODEL and reply.usage.completion_tokens > 0


def test_prompt_longer_than_context_is_400(colocated: str) -> None:
    body = chat_body(MODEL, content="word " * 2000)
    reply = httpx.post(f"{colocated}/chat/completions", json=body, timeout=60)
    assert reply.status_code == 400
    assert reply.json()["error"]["type"] == "BadRequestError"


def test_concurrent_requests_all_answered_and_counted(colocated: str) -> None:
    root = colocated.removesuffix("/v1")
    before = metric(root, "frugal_requests_total", model=MODEL, status="200")

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as http:
            return await asyncio.gather(*(
                http.post(f"{colocated}/chat/completions",
                          json=chat_body(MODEL, max_tokens=16, ignore_eos=True))
                for _ in range(16)))

    replies = asyncio.run(run())
    assert [r.status_code for r in replies] == [200] * 16
    assert all(r.json()["usage"]["completion_tokens"] == 16 for r in replies)
    assert metric(root, "frugal_requests_total", model=MODEL, status="200") == before + 16


def test_client_disconnect_aborts_the_generation(colocated: str) -> None:
    assert_disconnect_aborts(colocated, MODEL, max_tokens=CONTEXT - 64)


def test_sigterm_stops_the_server_and_its_engine_within_seconds(
    server_to_stop: Running,
) -> None:
    """Stopping must not hang on Ray's load-balancer drain (30 s) nor leave the engine
    behind; Kubernetes SIGKILLs a pod that takes over 30 s. It stops a server that no
    later test uses (`server_to_stop`), so it may run in any position."""
    running = server_to_stop
    os.kill(running.session_id, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while (left := session_pids(running.session_id)) and time.monotonic() < deadline:
        time.sleep(0.5)
    names = []
    for pid in left:
        try:
            names.append(" ".join(psutil.Process(pid).cmdline())[:80])
        except psutil.Error:
            continue
    assert not names, f"still running 20 s after SIGTERM: {names}"
