"""Tenants on a real server: keys from the store (hashed), budgets, rpm/tpm limits and
model lists, through the unmodified `openai` SDK, with two gateway replicas that share
one SQLite store and one real Redis (tests/redis_server.py) for the limiter.

Keys are made in the store before the server starts (what `frugal keys create` does).
There is no YAML key, so `frugal serve` waits for its engines without an HTTP probe;
YAML keys beside store keys are tested in tests/test_router_server.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import REPO, started_server, zoo_model_path

pytestmark = pytest.mark.server

PRICE = {"input_per_million": 100.0, "output_per_million": 400.0}  # budgets in cents
BUDGET_USD = 0.05


class Keys:
    """The plaintext keys the fixture created, by name (the store holds only hashes)."""

    def __init__(self) -> None:
        self.plain: dict[str, str] = {}
        self.ids: dict[str, str] = {}


def _config(db_url: str, redis_url: str, model_path: Path) -> dict:
    engine = {"dtype": "bfloat16", "enforce_eager": True, "max_model_len": 1024}
    return {
        "ray": {"num_cpus": 8},
        "gateway": {"deployment_config": {"num_replicas": 2, "max_ongoing_requests": 256}},
        "store": {"url": db_url},
        "tenants": {"enabled": True, "rate_limit_storage": redis_url, "key_cache_s": 1.0},
        "models": [{
            "model_loading_config": {"model_id": "zoo-s", "model_source": str(model_path)},
            "engine_kwargs": engine,
            "deployment_config": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 1}},
            "runtime_env": {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
            "frugal": {"price": PRICE},
        }],
    }


def _store(db_url: str):
    from serving.store.db import open_engine, session_factory
    from serving.tenants.store import KeyStore

    return KeyStore(session_factory(open_engine(db_url)))


@pytest.fixture(scope="module")
def tenant_server(tmp_path_factory: pytest.TempPathFactory,
                  redis_url: str) -> Iterator[tuple[str, Keys, str, Path]]:
    from serving.tenants.keys import KeySettings

    workdir = tmp_path_factory.mktemp("tenants")
    db_url = f"sqlite:///{workdir / 'frugal.db'}"
    store = _store(db_url)
    keys = Keys()
    for settings in (
        KeySettings(name="plain"),
        KeySettings(name="rpm3", rpm=3),
        KeySettings(name="rpm10", rpm=10),
        KeySettings(name="tpm", tpm=20),
        KeySettings(name="auto-only", models=["auto"]),
        KeySettings(name="budget", budget_usd=BUDGET_USD),
        KeySettings(name="stream-budget", budget_usd=0.001),
        KeySettings(name="revoked"),
        KeySettings(name="to-revoke"),
        KeySettings(name="batcher"),
        KeySettings(name="other"),
    ):
        record, plain = store.create(settings)
        keys.plain[settings.name], keys.ids[settings.name] = plain, record.id
    store.revoke(keys.ids["revoked"])
    with started_server(_config(db_url, redis_url, zoo_model_path("zoo-s")), workdir) as running:
        yield running.url, keys, db_url, workdir


def _client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=120)


def _ask(url: str, key: str, **extra) -> httpx.Response:
    body = {"model": "zoo-s", "max_tokens": 4,
            "messages": [{"role": "user", "content": "What is 2 + 3?"}], **extra}
    return httpx.post(f"{url}/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {key}"})


def test_missing_bad_and_revoked_keys_get_401(tenant_server) -> None:
    url, keys, _, _ = tenant_server
    for key in (None, "frg-not-a-key", keys.plain["revoked"]):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        for method, path in (("POST", "/chat/completions"), ("GET", "/models"),
                             ("GET", "/files"), ("GET", "/batches")):
            body = {"model": "zoo-s", "messages": []} if method == "POST" else None
            reply = httpx.request(method, f"{url}{path}", json=body, headers=headers,
                                  timeout=60)
            assert reply.status_code == 401, (key, path, reply.text)
            assert reply.json()["error"]["type"] == "AuthenticationError"
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        _client(url, keys.plain["revoked"]).models.list()
    assert _ask(url, keys.plain["plain"]).status_code == 200


def test_a_model_outside_the_list_is_404_and_unlisted(tenant_server) -> None:
    url, keys, _, _ = tenant_server
    client = _client(url, keys.plain["auto-only"])
    with pytest.raises(openai.NotFoundError, match="do not have access"):
        client.chat.completions.create(model="zoo-s", max_tokens=2,
                                       messages=[{"role": "user", "content": "hi"}])
    assert [m.id for m in client.models.list()] == []
    assert [m.id for m in _client(url, keys.plain["plain"]).models.list()] == ["zoo-s"]


def test_rpm_over_the_limit_is_429_with_openai_headers(tenant_server) -> None:
    url, keys, _, _ = tenant_server
    key = keys.plain["rpm3"]
    remaining = []
    for _ in range(3):
        reply = _ask(url, key)
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(int(reply.headers["x-ratelimit-remaining-requests"]))
        assert reply.headers["x-ratelimit-reset-requests"].endswith("s")
    assert remaining == [2, 1, 0]
    refused = _ask(url, key)
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    with pytest.raises(openai.RateLimitError):
        _client(url, key).chat.completions.create(
            model="zoo-s", max_tokens=2, messages=[{"role": "user", "content": "hi"}])


def test_the_rpm_count_lives_in_redis_for_every_replica(tenant_server, redis_url) -> None:
    """30 requests of a 10 rpm key at once, on two gateway replicas: 10 are answered.
    Ray Serve's proxy chooses the replica (on one node it sent every request of a burst
    to the same one in our runs), so the count is also read from outside: a limiter in
    this process, on the same Redis, sees the window the server filled, as a second pod
    would. tests/test_rate_limiter.py has two processes share one count."""
    from serving.tenants.limiter import RateLimiter, RateLimits

    url, keys, _, _ = tenant_server
    started = time.monotonic()
    replies = asyncio.run(_concurrent(url, keys.plain["rpm10"], 30, max_tokens=4))
    assert time.monotonic() - started < 60, "the requests must fall in one minute"
    assert {r.status_code for r in replies} <= {200, 429}, [r.text for r in replies]
    answered = [r for r in replies if r.status_code == 200]
    per_replica = Counter(r.headers["x-frugal-replica"] for r in replies)
    print(f"rpm 10, 2 gateway replicas: {len(answered)} of 30 answered; requests per "
          f"replica {sorted(per_replica.values())}")
    assert len(answered) == 10, [r.status_code for r in replies]
    outside = asyncio.run(RateLimiter(redis_url).admit(keys.ids["rpm10"], RateLimits(rpm=10)))
    assert not outside.allowed and outside.requests.remaining == 0


def test_tpm_window_full_is_429_tokens(tenant_server) -> None:
    url, keys, _, _ = tenant_server
    key = keys.plain["tpm"]
    first = _ask(url, key, max_tokens=32)  # the prompt alone is over 20 tokens
    assert first.status_code == 200, first.text
    assert first.headers["x-ratelimit-limit-tokens"] == "20"
    used = first.json()["usage"]["total_tokens"]
    assert used >= 20
    deadline = time.monotonic() + 10  # the tokens are recorded as the answer settles
    while True:
        second = _ask(url, key)
        if second.status_code == 429 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert second.status_code == 429, second.text
    assert second.json()["error"]["type"] == "tokens"
    assert second.headers["x-ratelimit-remaining-tokens"] == "0"


async def _concurrent(url: str, key: str, n: int, max_tokens: int = 16
                      ) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120) as http:
        body = {"model": "zoo-s", "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": "What is 2 + 3?"}]}
        return await asyncio.gather(*(
            http.post(f"{url}/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {key}"}) for _ in range(n)))


def test_a_budget_under_16_concurrent_requests_overspends_at_most_what_was_in_flight(
    tenant_server,
) -> None:
    url, keys, db_url, _ = tenant_server
    key = keys.plain["budget"]
    answered, refused = [], []
    for _ in range(10):  # waves of 16 at once until the budget refuses all of a wave
        wave = asyncio.run(_concurrent(url, key, 16))
        answered += [r for r in wave if r.status_code == 200]
        refused += [r for r in wave if r.status_code == 429]
        if all(r.status_code == 429 for r in wave):
            break
    assert refused and answered
    assert all(r.json()["error"]["code"] == "insufficient_quota" for r in refused)
    costs = [r.json()["usage"]["cost"]["total_usd"] for r in answered]
    spend = _store(db_url).spend(_store(db_url).get(keys.ids["budget"]))
    assert spend.reserved_usd == pytest.approx(0, abs=1e-12)
    assert spend.spent_usd == pytest.approx(sum(costs), rel=1e-6), "the ledger holds each bill"
    overspend = spend.spent_usd - BUDGET_USD
    print(f"budget ${BUDGET_USD}: {len(answered)} answered, spent ${spend.spent_usd:.5f}, "
          f"overspend ${max(overspend, 0):.5f} = {max(overspend, 0) / max(costs):.1f} "
          f"requests' cost (bound: 16 in flight)")
    assert overspend <= 16 * max(costs)
    with pytest.raises(openai.RateLimitError, match="quota"):
        _client(url, key).chat.completions.create(
            model="zoo-s", max_tokens=2, messages=[{"role": "user", "content": "hi"}])


def test_a_stream_that_spends_the_budget_finishes_and_the_next_is_refused(
    tenant_server,
) -> None:
    url, keys, _, _ = tenant_server
    client = _client(url, keys.plain["stream-budget"])
    chunks = list(client.chat.completions.create(
        model="zoo-s", max_tokens=64, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Count to twenty, slowly."}]))
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.model_extra["cost"]["total_usd"] > 0.001  # over the budget
    with pytest.raises(openai.RateLimitError, match="quota"):
        client.chat.completions.create(model="zoo-s", max_tokens=2,
                                       messages=[{"role": "user", "content": "hi"}])


def _frugal(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serving.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_a_key_revoked_with_the_cli_stops_on_every_replica_within_seconds(
    tenant_server,
) -> None:
    url, keys, db_url, _ = tenant_server
    key = keys.plain["to-revoke"]
    assert _ask(url, key).status_code == 200
    done = _frugal("keys", "revoke", "to-revoke", "--store-url", db_url)
    assert done.returncode == 0, done.stderr
    revoked_at = time.monotonic()
    while _ask(url, key).status_code != 401:
        assert time.monotonic() - revoked_at < 10, "still accepted 10 s after revoking"
        time.sleep(0.1)
    stopped_after = time.monotonic() - revoked_at
    statuses = [_ask(url, key).status_code for _ in range(8)]  # both replicas refuse
    print(f"revoked key refused after {stopped_after:.2f} s")
    assert statuses == [401] * 8


def test_batches_belong_to_their_key_and_are_billed_to_it(tenant_server) -> None:
    url, keys, db_url, _ = tenant_server
    owner, other = _client(url, keys.plain["batcher"]), _client(url, keys.plain["other"])
    rows = "\n".join(json.dumps({
        "custom_id": f"b-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "zoo-s", "max_tokens": 4,
                 "messages": [{"role": "user", "content": f"What is {i} + 1?"}]}})
        for i in range(3))
    uploaded = owner.files.create(file=("in.jsonl", io.BytesIO(rows.encode())),
                                  purpose="batch")
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(uploaded.id)
    batch = owner.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                 completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(batch.id)
    assert batch.id not in [b.id for b in other.batches.list()]
    deadline = time.monotonic() + 300
    while (done := owner.batches.retrieve(batch.id)).status not in ("completed", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert done.request_counts.completed == 3
    usage = {row.key_id: row for row in _store(db_url).usage()}
    billed = usage[keys.ids["batcher"]]
    assert billed.batch_requests == 3 and billed.cost_usd > 0
    assert keys.ids["other"] not in usage or usage[keys.ids["other"]].requests == 0


def test_usage_cli_reports_spend_per_key(tenant_server) -> None:
    url, keys, db_url, _ = tenant_server
    assert _ask(url, keys.plain["plain"]).status_code == 200
    done = _frugal("keys", "usage", "--json", "--store-url", db_url)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert isinstance(rows, list) and rows
    text = json.dumps(rows)
    assert "plain" in text or keys.ids["plain"] in text


def test_no_key_is_ever_written_in_plaintext(tenant_server) -> None:
    """The store holds hashes; the logs hold neither keys nor hashes' preimages."""
    url, keys, _, workdir = tenant_server
    assert _ask(url, keys.plain["plain"]).status_code == 200
    files = [p for p in workdir.rglob("*") if p.is_file()]
    ray_logs = Path("/tmp/ray/session_latest/logs")
    if ray_logs.exists():
        files += [p for p in ray_logs.rglob("*") if p.is_file()]
    assert any(p.name.startswith("frugal.db") for p in files)
    for path in files:
        data = path.read_bytes()
        for name, plain in keys.plain.items():
            assert plain.encode() not in data, f"key {name} in plaintext in {path}"
