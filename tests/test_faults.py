"""Overload, client disconnects and a dead engine, on a real server.

`zoo-s-tight` (one request at a time, a queue of one) is the session server's deployment
that exists to be broken: only this module sends it requests that reach its engine
(elsewhere it is the cost account's baseline price, a name in the model list, and a
reasoning request that the gateway rejects before any engine sees it). The dead-engine
test kills its engine, and Ray Serve then restarts the replica (health check every 2 s,
then an engine start of tens of seconds).

So that the order of the tests does not matter, each test that needs the engine takes
the `tight` fixture, which waits until zoo-s-tight answers: when the kill ran first, the
next test waits for the restart instead of failing; in the usual order it costs one
one-token request, so the dead-engine test always kills a running engine (and waits
for its replacement, measuring the recovery). The healthy model, zoo-s, is never
broken, so the client-disconnect test needs neither. The gateway test kills the gateway
replica behind the second port and waits until a new one answers there.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import psutil
import pytest
from helpers import assert_disconnect_aborts, chat_body, gateway_urls

from serving.bench.faults import engine_of, kill_engine, kill_gateway_replica

pytestmark = pytest.mark.server
TIGHT = "zoo-s-tight"
#: How long a restarted zoo-s-tight may take to answer again (Ray Serve's health check
#: notices the dead engine, stops the replica and starts a new engine).
RESTART_TIMEOUT_S = 600


def _answers(base_url: str, model: str) -> bool:
    try:
        reply = httpx.post(f"{base_url}/chat/completions", timeout=60,
                           json=chat_body(model, max_tokens=1))
    except httpx.HTTPError:  # a replica on its way down may drop the connection
        return False
    return reply.status_code == 200


@pytest.fixture
def tight(server) -> str:
    """zoo-s-tight with a live engine, waiting out a restart if an earlier test killed it."""
    deadline = time.monotonic() + RESTART_TIMEOUT_S
    while not _answers(server.base_url, TIGHT):
        if time.monotonic() > deadline:
            pytest.fail(f"{TIGHT} did not answer within {RESTART_TIMEOUT_S} s; "
                        f"server log: {server.log_path}")
        time.sleep(2)
    return TIGHT


@pytest.mark.fresh_handles
def test_overload_is_503_with_retry_after(server, tight: str) -> None:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as http:
            body = chat_body(tight, max_tokens=200, ignore_eos=True)
            return await asyncio.gather(*(
                http.post(f"{server.base_url}/chat/completions", json=body) for _ in range(8)))

    replies = asyncio.run(run())
    codes = sorted(reply.status_code for reply in replies)
    assert 200 in codes and 503 in codes, codes
    assert set(codes) <= {200, 503}
    rejected = next(reply for reply in replies if reply.status_code == 503)
    assert int(rejected.headers["retry-after"]) >= 1
    assert rejected.json()["error"]["type"] == "ServiceUnavailableError"


def test_client_disconnect_aborts_the_generation(server) -> None:
    model = "zoo-s"
    models = httpx.get(f"{server.base_url}/models").json()["data"]
    context = next(m["max_model_len"] for m in models if m["id"] == model)
    assert_disconnect_aborts(server.base_url, model, max_tokens=context - 64)


def test_dead_engine_is_503_then_the_model_recovers(server, tight: str) -> None:
    """The engine killed under a probe every 0.25 s: until Ray Serve has replaced the
    replica, every probe gets 503 with `Retry-After` (never a 500, a hang or a dropped
    connection); then the model answers again. The healthy model is unaffected."""
    result = kill_engine(server.base_url, tight, server.session_id)
    print(f"{result.fault}: probes saw {result.statuses}; answered again after "
          f"{result.recovered_s} s; longest probe {result.longest_probe_s:.1f} s; "
          f"{result.timeline}")
    assert result.recovered_s is not None, result
    assert set(result.statuses) <= {"503", "200"}, result
    assert result.statuses.get("503", 0) >= 1  # the kill was seen, and said so
    ok = httpx.post(f"{server.base_url}/chat/completions", timeout=60,
                    json=chat_body("zoo-s", max_tokens=4))
    assert ok.status_code == 200


def test_a_killed_gateway_replica_comes_back_and_the_other_keeps_answering(server) -> None:
    """SIGKILL of the gateway replica behind the second port: the first keeps answering
    (0 errors), and Ray Serve starts a new replica that answers on a port of the range
    (with direct ingress, not always the freed one)."""
    second = gateway_urls(server.base_url)[1]
    result = kill_gateway_replica(server.base_url, second, "zoo-s")
    print(f"{result.fault}: its port saw {result.statuses}; answered again after "
          f"{result.recovered_s} s ({result.timeline}); errors on the other replica: "
          f"{result.other_errors}")
    assert result.recovered_s is not None, result
    assert result.other_errors == 0, result
    assert len(gateway_urls(server.base_url)) >= 2


#: An orphaned engine process must be gone this long after its replica died
#: (serving/parent_watchdog.py polls once a second).
ORPHAN_DEADLINE_S = 10


def test_engine_processes_exit_when_their_replica_is_killed(server, tight: str) -> None:
    """SIGKILL of a model replica (what `ray stop --force` or a killed server does to it)
    must not leave its EngineCore and workers running, re-parented to init."""
    engine = engine_of(f"model-{tight}", server.session_id)
    replica = engine.parent()
    assert replica is not None
    engines = [engine, *engine.children(recursive=True)]
    os.kill(replica.pid, signal.SIGKILL)
    started = time.monotonic()
    gone, alive = psutil.wait_procs(engines, timeout=ORPHAN_DEADLINE_S)
    left = [p.pid for p in alive]
    for process in alive:  # do not leak them into the rest of the suite either way
        process.kill()
    assert not left, f"engine processes {left} outlived their replica by {ORPHAN_DEADLINE_S} s"
    print(f"engine processes gone {time.monotonic() - started:.1f} s after the replica")
