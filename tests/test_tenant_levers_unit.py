"""The tenant and budget levers on the fake engine (fast unit tests of the pipeline's
bookkeeping; the real server's behaviour is in tests/test_tenants_server.py): which
error each refusal is, what the ledger gets, and that nothing leaks a reservation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from serving.errors import APIError
from serving.pipeline.context import Endpoint, Priority, RequestContext
from serving.pipeline.parse import parse_request
from serving.tenants.app import Tenants
from serving.tenants.keys import KeySettings
from serving.tenants.limiter import RateLimiter
from serving.tenants.resolver import KeyResolver
from serving.tenants.store import KeyStore
from tests.fake_engine import FakeEngine, chat, fake_config, fake_pipeline

YAML_KEY = "frg-from-the-yaml-0001"


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    from serving.store.db import open_engine, session_factory

    return KeyStore(session_factory(open_engine(f"sqlite:///{tmp_path / 'keys.db'}")))


def _pipeline(store: KeyStore, limiter: RateLimiter | None = None, engine=None):
    tenants = Tenants(keys=KeyResolver([YAML_KEY], store, cache_s=0.0), limiter=limiter,
                      store=store)
    engine = engine or FakeEngine("small")
    return fake_pipeline({"small": engine, "large": FakeEngine("large")},
                         tenants=tenants), engine


def _run(pipeline, token: str | None, body: dict | None = None, **ctx_fields):
    """As the gateway runs a request; a batch line (as the runner does) skips admit."""
    async def go():
        ctx = RequestContext(endpoint=Endpoint.CHAT, api_key=token, **ctx_fields)
        if ctx.priority is not Priority.BATCH:
            await pipeline.admit(ctx)
        ctx.request, ctx.extras, ctx.options = parse_request(
            body or chat(), Endpoint.CHAT, pipeline.chain.extra_fields)
        return ctx, await pipeline.run(ctx)
    return asyncio.run(go())


def test_the_chain_has_the_budget_lever_last_when_tenants_have_a_store(store) -> None:
    pipeline, _ = _pipeline(store)
    assert pipeline.chain.names[0] == "tenant" and pipeline.chain.names[-1] == "budget"


def test_unknown_and_revoked_keys_are_401_and_store_keys_label_by_id(store) -> None:
    record, plain = store.create(KeySettings(name="team-a"))
    pipeline, _ = _pipeline(store)
    for token in (None, "frg-nope"):
        with pytest.raises(APIError) as refused:
            _run(pipeline, token)
        assert refused.value.status == 401
    ctx, answer = _run(pipeline, plain)
    assert answer.status == 200 and ctx.key_label == record.id
    yaml_ctx, _ = _run(pipeline, YAML_KEY)
    assert yaml_ctx.key_label.startswith("key-")  # the label YAML keys always had
    store.revoke(record.id)
    with pytest.raises(APIError, match="revoked") as revoked:
        _run(pipeline, plain)
    assert revoked.value.status == 401


def test_a_model_outside_the_keys_list_is_404_and_its_target_is_the_default(store) -> None:
    _, plain = store.create(KeySettings(name="small-only", models=["small"], min_quality=0.7))
    pipeline, _ = _pipeline(store)
    with pytest.raises(APIError, match="do not have access") as refused:
        _run(pipeline, plain, chat("large"))
    assert refused.value.status == 404 and refused.value.param == "model"
    ctx, _ = _run(pipeline, plain)
    assert ctx.min_quality == 0.7


def test_the_ledger_gets_each_bill_and_a_spent_budget_is_insufficient_quota(store) -> None:
    record, plain = store.create(KeySettings(name="capped", budget_usd=1e-6))
    pipeline, _ = _pipeline(store)
    ctx, answer = _run(pipeline, plain)  # 10 prompt + 2 output tokens at $1/$2 per M
    assert answer.status == 200
    billed = ctx.cost.total_usd
    assert billed == pytest.approx(14e-6)
    spend = store.spend(store.get(record.id))
    assert spend.spent_usd == pytest.approx(billed) and spend.reserved_usd == 0
    with pytest.raises(APIError) as refused:
        _run(pipeline, plain)
    assert refused.value.status == 429 and refused.value.code == "insufficient_quota"
    assert store.spend(store.get(record.id)).reserved_usd == 0  # the refusal held nothing


def test_a_failed_call_releases_its_reservation(store) -> None:
    record, plain = store.create(KeySettings(name="fails", budget_usd=1.0))
    pipeline, _ = _pipeline(store, engine=FakeEngine("small", fail=True))
    with pytest.raises(Exception):  # noqa: B017 (the engine's own error)
        _run(pipeline, plain)
    spend = store.spend(store.get(record.id))
    assert spend.reserved_usd == 0 and spend.spent_usd == 0
    assert store.usage() == []  # nothing billed, no ledger row


def test_batch_lines_run_under_their_owners_key(store) -> None:
    record, _ = store.create(KeySettings(name="owner", budget_usd=1.0))
    pipeline, _ = _pipeline(store)
    ctx, answer = _run(pipeline, None, priority=Priority.BATCH, key_label=record.id)
    assert answer.status == 200 and ctx.tenant.id == record.id
    rows = {row.key_id: row for row in store.usage()}
    assert rows[record.id].batch_requests == 1
    store.revoke(record.id)
    with pytest.raises(APIError) as refused:
        _run(pipeline, None, priority=Priority.BATCH, key_label=record.id)
    assert refused.value.status == 401


def test_rpm_refusal_carries_retry_after_and_openai_headers(store) -> None:
    _, plain = store.create(KeySettings(name="slow", rpm=2))
    pipeline, _ = _pipeline(store, RateLimiter("memory://"))
    for remaining in ("1", "0"):
        ctx, _ = _run(pipeline, plain)
        assert ctx.response_headers["x-ratelimit-remaining-requests"] == remaining
    with pytest.raises(APIError) as refused:
        _run(pipeline, plain)
    error = refused.value
    assert error.status == 429 and error.code == "rate_limit_exceeded"
    assert int(error.headers["Retry-After"]) >= 1
    assert error.headers["x-ratelimit-limit-requests"] == "2"


def test_a_limiter_that_cannot_reach_its_storage_is_503_not_unmetered(store) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _, plain = store.create(KeySettings(name="limited", rpm=5))
    pipeline, _ = _pipeline(store, RateLimiter(f"redis://127.0.0.1:{port}"))
    with pytest.raises(APIError) as refused:
        _run(pipeline, plain)
    assert refused.value.status == 503 and "Retry-After" in refused.value.headers


def test_no_keys_anywhere_is_anonymous() -> None:
    pipeline = fake_pipeline({"small": FakeEngine("small")}, config=fake_config())
    ctx, answer = _run(pipeline, None)
    assert answer.status == 200 and ctx.tenant is None and ctx.key_label == "anonymous"
