"""What a client of the gateway sees when the store's disk is full or read-only.

A fast unit test of the HTTP logic on the fake engine (tests/fake_engine.py: no Ray, no
vLLM engine): the gateway's own FastAPI app, routes and exception handlers in this
process, in front of a store on a real tmpfs (tests/tinydisk.py) that the test fills up
or remounts read-only. Writes answer 503 `store_unavailable` with `Retry-After`;
requests that need no store write are answered; once the disk takes writes again the
same requests succeed, without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import types
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from serving.config import FrugalConfig
from serving.local_handle import LocalHandle
from tests.fake_engine import FakeEngine, chat, fake_config
from tests.tinydisk import TinyDisk, integrity, store_errors

LINE = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                   "body": chat()}).encode() + b"\n"


@contextlib.asynccontextmanager
async def served(root: Path, monkeypatch: pytest.MonkeyPatch, tenants: bool = False
                 ) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway's app with one Gateway instance behind its routes (what Ray Serve's
    replica does), its store in `root`; the batch runner claims only at its start."""
    import ray.serve

    from serving import gateway

    settings = fake_config().model_dump()
    settings["store"] = {"state_dir": str(root)}
    settings["batch"] = {"poll_s": 3600}
    settings["tenants"] = {"enabled": tenants}
    monkeypatch.delenv("FRUGAL_STATE_DIR", raising=False)
    monkeypatch.delenv("FRUGAL_STORE_URL", raising=False)
    cls = gateway.Gateway.func_or_class.__mro__[1]  # the class under Ray's wrapper
    instance = object.__new__(cls)
    await cls.__init__(instance, FrugalConfig.model_validate(settings),
                       {name: LocalHandle(FakeEngine(name)) for name in ("small", "large")})
    monkeypatch.setattr(ray.serve, "get_replica_context",
                        lambda: types.SimpleNamespace(servable_object=instance))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway.app),
                                     base_url="http://frugal") as client:
            yield client
    finally:
        await instance.batches.runner.stop()
        if instance.tenants._sweeper is not None:
            instance.tenants._sweeper.cancel()


def upload(client: httpx.AsyncClient) -> httpx.Response:
    return client.post("/v1/files", files={"file": ("in.jsonl", LINE)},
                       data={"purpose": "batch"})


def refused(response: httpx.Response, message: str, what: str = "") -> None:
    """The 503 every refused store write gets; `message` is how it starts."""
    assert response.status_code == 503, (what, response.text)
    assert response.headers["retry-after"] == "30"
    error = response.json()["error"]
    assert error["code"] == "store_unavailable"
    assert error["type"] == "ServiceUnavailableError"
    assert error["message"].startswith(message), (what, error["message"])


def sse_events(text: str) -> list[dict]:
    return [json.loads(line[6:]) for line in text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def test_a_full_store_refuses_writes_with_503_and_answers_the_rest(
        tiny_disk: TinyDisk, monkeypatch: pytest.MonkeyPatch) -> None:
    asyncio.run(full_store(tiny_disk, monkeypatch))
    assert integrity(tiny_disk.root / "frugal.db") == "ok"
    assert not [name for name in tiny_disk.files() if name.endswith(".tmp")]


async def full_store(disk: TinyDisk, monkeypatch: pytest.MonkeyPatch) -> None:
    async with served(disk.root, monkeypatch) as client:
        kept = (await upload(client)).json()["id"]
        batch = (await client.post("/v1/batches", json={
            "input_file_id": kept, "endpoint": "/v1/chat/completions",
            "completion_window": "24h"})).json()["id"]
        stored = (await client.post("/v1/responses", json={
            "model": "small", "input": "3+4="})).json()["id"]
        counted = store_errors("full", "api")
        disk.fill()
        full = "the store's disk is full"

        async def writes() -> dict[str, httpx.Response]:
            return {
                "upload": await upload(client),
                "create a batch": await client.post("/v1/batches", json={
                    "input_file_id": kept, "endpoint": "/v1/chat/completions",
                    "completion_window": "24h"}),
                "cancel a batch": await client.post(f"/v1/batches/{batch}/cancel"),
                "store a response": await client.post("/v1/responses", json={
                    "model": "small", "input": "3+4=", "store": True}),
            }

        for what, response in (await writes()).items():
            refused(response, full, what)
        assert store_errors("full", "api") == counted + 4
        stream = await client.post("/v1/responses", json={
            "model": "small", "input": "3+4=", "stream": True})  # store: true by default
        assert stream.status_code == 200
        last = sse_events(stream.text)[-1]
        assert last["type"] == "response.failed"
        assert last["response"]["error"]["code"] == "store_unavailable"
        # What needs no store write is answered, and what was stored reads back.
        assert (await client.post("/v1/chat/completions", json=chat())).status_code == 200
        assert (await client.post("/v1/responses", json={
            "model": "small", "input": "3+4=", "store": False})).status_code == 200
        assert (await client.get(f"/v1/files/{kept}/content")).content == LINE
        assert (await client.get(f"/v1/responses/{stored}")).status_code == 200
        assert (await client.get(f"/v1/batches/{batch}")).json()["status"] == "validating"
        metrics = (await client.get("/metrics")).text
        assert 'frugal_store_errors_total{kind="full",where="api"}' in metrics
        disk.free()
        for what, response in (await writes()).items():
            assert response.status_code == 200, (what, response.text)


def test_a_read_only_store_refuses_with_503_until_it_is_writable(
        tiny_disk: TinyDisk, monkeypatch: pytest.MonkeyPatch) -> None:
    asyncio.run(read_only_store(tiny_disk, monkeypatch))
    assert integrity(tiny_disk.root / "frugal.db") == "ok"


async def read_only_store(disk: TinyDisk, monkeypatch: pytest.MonkeyPatch) -> None:
    async with served(disk.root, monkeypatch) as client:
        kept = (await upload(client)).json()["id"]
        disk.read_only()
        refused(await upload(client), "the store is read-only")
        # SQLite cannot open a WAL database on a read-only mount to read it either
        refused(await client.get(f"/v1/files/{kept}"), "the store is read-only")
        assert (await client.post("/v1/chat/completions", json=chat())).status_code == 200
        disk.writable()
        assert (await upload(client)).status_code == 200
        assert (await client.get(f"/v1/files/{kept}/content")).content == LINE


def test_a_key_whose_budget_the_full_store_cannot_reserve_gets_503(
        tiny_disk: TinyDisk, monkeypatch: pytest.MonkeyPatch) -> None:
    asyncio.run(budget_in_full_store(tiny_disk, monkeypatch))
    assert integrity(tiny_disk.root / "frugal.db") == "ok"


async def budget_in_full_store(disk: TinyDisk, monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.store.db import open_engine, session_factory
    from serving.tenants.keys import KeySettings
    from serving.tenants.store import KeyStore

    keys = KeyStore(session_factory(open_engine(f"sqlite:///{disk.root / 'frugal.db'}")))
    _, token = keys.create(KeySettings(name="team", budget_usd=5.0))
    auth = {"authorization": f"Bearer {token}"}
    async with served(disk.root, monkeypatch, tenants=True) as client:
        assert (await client.post("/v1/chat/completions", json=chat(),
                                  headers=auth)).status_code == 200
        disk.fill()
        refused(await client.post("/v1/chat/completions", json=chat(), headers=auth),
                "the store's disk is full")
        disk.free()
        assert (await client.post("/v1/chat/completions", json=chat(),
                                  headers=auth)).status_code == 200
