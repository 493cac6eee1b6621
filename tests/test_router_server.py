"""`model="auto"` through the real server with the `openai` SDK.

Starts its own frugal (zoo-s, zoo-m, zoo-l and the shipped router artefacts in
`router/`), because the shared session server serves zoo-s only. The cascade threshold is
set to 0.5 here so that a hard item forced onto zoo-s (a tiny quality target) escalates.
Tenants are on: a YAML key without a target, and two store keys (`frugal keys create
--min-quality`) whose targets make them route differently.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from conftest import REPO, started_server, zoo_model_path

pytestmark = [pytest.mark.server, pytest.mark.slow]

ROUTER_DIR = REPO / "deployments" / "router"
HELD_OUT_SEED = 1_000_000_456  # an eval seed the shipped predictor was not trained on


# List prices in proportion to size, so the ladder's order is explicit here: on 2 CPU
# cores the prices derived from throughput put zoo-s and zoo-m level (docs/router.md).
PRICES = {"zoo-s": 0.01, "zoo-m": 0.04, "zoo-l": 0.08}
KEY = "key-default"  # no target of its own: router.min_quality applies
KEY_TARGETS = {"lenient": 0.01, "strict": 0.99}  # store keys' min_quality
#: The store keys' plaintext, by name, filled by the `auto_server` fixture.
STORE_KEYS: dict[str, str] = {}


def _config(store_url: str) -> dict:
    engine = {"dtype": "bfloat16", "enforce_eager": True, "max_model_len": 1024}
    models = [
        {
            "model_loading_config": {"model_id": name, "model_source": str(zoo_model_path(name))},
            "engine_kwargs": engine,
            "deployment_config": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 1}},
            "runtime_env": {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
            "frugal": {"price": {"input_per_million": p, "output_per_million": p}},
        }
        for name, p in PRICES.items()
    ]
    return {
        "ray": {"num_cpus": 8},
        "cost": {"node_usd_per_hour": 0.10},
        "gateway": {"api_keys": [KEY]},
        "store": {"url": store_url},
        "tenants": {"enabled": True},
        "router": {
            "scorecard": str(ROUTER_DIR / "scorecard.json"),
            "predictor": str(ROUTER_DIR / "predictor.npz"),
            "min_quality": 0.9,
            "escalate_below": 0.5,
        },
        "models": models,
    }


@pytest.fixture(scope="module")
def auto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not (ROUTER_DIR / "scorecard.json").exists():
        pytest.skip("deployments/router/scorecard.json missing: run `frugal bench eval` "
                    "(docs/router.md)")
    from serving.zoo.paths import default_zoo_dir

    zoo = default_zoo_dir()
    untrained = [n for n in ("zoo-m", "zoo-l") if not (zoo / n / "config.json").exists()]
    if untrained:
        pytest.skip(f"{', '.join(untrained)} not trained yet: `frugal zoo build` (docs/zoo.md)")
    from serving.store.db import open_engine, session_factory
    from serving.tenants.keys import KeySettings
    from serving.tenants.store import KeyStore

    workdir = tmp_path_factory.mktemp("auto")
    store_url = f"sqlite:///{workdir / 'frugal.db'}"
    store = KeyStore(session_factory(open_engine(store_url)))
    for name, target in KEY_TARGETS.items():
        STORE_KEYS[name] = store.create(KeySettings(name=name, min_quality=target))[1]
    with started_server(_config(store_url), workdir, 900) as running:
        yield running.url


@pytest.fixture(scope="module")
def client(auto_server: str):
    from openai import OpenAI

    return OpenAI(base_url=auto_server, api_key=KEY, max_retries=0, timeout=120)


def _items(family: str, difficulty: int, n: int = 4) -> list:
    from serving.zoo.tasks import generate_items

    return generate_items(family, difficulty, n, HELD_OUT_SEED)


def _route(client, messages, **frugal):
    extra = {"frugal": frugal} if frugal else None
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=messages, max_tokens=32, temperature=0, extra_body=extra
    )
    return raw.parse(), raw.headers.get("x-frugal-route", "")


def test_easy_items_go_to_a_small_model(client) -> None:
    chosen = []
    for item in _items("reverse", 2):
        response, route = _route(client, item.messages)
        chosen.append(route.split(";")[0])
        assert response.model in ("zoo-s", "zoo-m", "zoo-l")
        assert route, "x-frugal-route header missing"
    assert chosen.count("zoo-l") <= 1, chosen


def test_hard_items_go_to_the_large_model(client) -> None:
    """Six-letter words: only zoo-l is trained that far and answers them (docs/zoo.md)."""
    chosen = [_route(client, i.messages)[1].split(";")[0] for i in _items("reverse", 6)]
    assert chosen.count("zoo-l") >= 3, chosen


def test_low_confidence_escalates(client) -> None:
    """A tiny target sends hard items to zoo-s; its unsure answers go to a larger model."""
    escalated = 0
    for item in _items("reverse", 6, n=6):
        response, route = _route(client, item.messages, min_quality=0.01)
        assert route.startswith("zoo-s"), route
        if "escalated" in route:
            escalated += 1
            assert response.model in ("zoo-m", "zoo-l")
    assert escalated >= 1


@pytest.mark.parametrize("bad", [0, 1.5, -1, "high", None, True])
def test_bad_min_quality_is_400(auto_server: str, bad: object) -> None:
    response = httpx.post(f"{auto_server}/chat/completions", timeout=60, json={
        "model": "auto", "messages": [{"role": "user", "content": "hi"}],
        "frugal": {"min_quality": bad},
    }, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 400, response.text
    assert "min_quality" in response.json()["error"]["message"]


def test_each_key_routes_by_its_own_quality_target(auto_server: str) -> None:
    """A key's `min_quality`: the same hard items go to zoo-s for a key content with
    anything, and to a larger model for a key that wants near-certainty."""
    from openai import OpenAI

    chosen: dict[str, list[str]] = {}
    for key in KEY_TARGETS:
        keyed = OpenAI(base_url=auto_server, api_key=STORE_KEYS[key], max_retries=0,
                       timeout=120)
        chosen[key] = [_route(keyed, item.messages)[1].split(";")[0]
                       for item in _items("reverse", 6)]
    assert chosen["lenient"] == ["zoo-s"] * 4, chosen
    assert all(model != "zoo-s" for model in chosen["strict"]), chosen


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key", "Basic a2V5LWRlZmF1bHQ="])
def test_missing_or_wrong_key_is_401(auto_server: str, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    for method, path, payload in (("POST", "/chat/completions", body),
                                  ("POST", "/completions", {"model": "zoo-s", "prompt": "1"}),
                                  ("GET", "/models", None)):
        response = httpx.request(method, f"{auto_server}{path}", json=payload, headers=headers,
                                 timeout=60)
        assert response.status_code == 401, (path, response.text)
        error = response.json()["error"]
        assert error["type"] == "AuthenticationError" and error["code"] == 401
