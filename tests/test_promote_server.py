"""`frugal bench promote` switches `auto`'s traffic on a running server, live.

Its own server: zoo-l and its 4-bit copy zoo-l-w4a16, and a router scorecard that knows
zoo-l only (the shipped scorecard's zoo-l card on 27 of its items), so `auto` sends
everything to zoo-l and the copy is a shadow deployment. Promotion scores the copy on
those 27 items through the server, finds it as good within the band at a quarter of the
price, and writes the scorecard; the running gateway reloads it and `auto` moves to the
copy, with no engine restarted.
"""

from __future__ import annotations

import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import REPO, started_server, zoo_model_path
from helpers import metric

from serving.evaluation.launcher import Running, frugal_command, session_pids

pytestmark = [pytest.mark.server, pytest.mark.slow]

SHIPPED = REPO / "deployments" / "router" / "scorecard.json"
PRICES = {"zoo-l": 0.08, "zoo-l-w4a16": 0.02}  # list prices: the copy is a quarter
PER_CELL = 3  # items per (family, difficulty) of the shipped scorecard


def _small_scorecard(out: Path) -> None:
    """The shipped scorecard cut to zoo-l alone on PER_CELL items per cell."""
    from serving.bench.eval import suite_hash
    from serving.router.predictor import train_predictor
    from serving.router.scorecard import Scorecard

    shipped = Scorecard.load(SHIPPED)
    taken: dict[tuple[str, int], int] = defaultdict(int)
    items = []
    for item in shipped.items:
        if taken[(item.family, item.difficulty)] < PER_CELL:
            taken[(item.family, item.difficulty)] += 1
            items.append(item)
    ids = {i.id for i in items}
    card = shipped.models["zoo-l"]
    results = [r for r in card.score.results if r.id in ids]
    score = card.score.model_copy(update={
        "items": len(results), "results": results,
        "accuracy": sum(r.correct for r in results) / len(results),
        "prompt_tokens": sum(r.prompt_tokens for r in results),
        "completion_tokens": sum(r.completion_tokens for r in results),
    })
    small = shipped.model_copy(update={
        "models": {"zoo-l": card.model_copy(update={"score": score})},
        "items": items, "suite": f"{shipped.suite}, {PER_CELL} per cell",
        "suite_hash": suite_hash(items),
    })
    small.save(out / "scorecard.json")
    train_predictor(small).save(out / "predictor.npz")


def _config(router_dir: Path) -> dict:
    def model(name: str, **engine: object) -> dict:
        deployment = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 1}}
        if name == "zoo-l":  # a setting of its own, that promotion hands to the copy
            deployment["max_ongoing_requests"] = 48
        return {
            "model_loading_config": {"model_id": name, "model_source": str(zoo_model_path(name))},
            "engine_kwargs": {"dtype": "bfloat16", "enforce_eager": True,
                              "max_model_len": 1024, **engine},
            "deployment_config": deployment,
            "runtime_env": {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
            "frugal": {"price": {"input_per_million": PRICES[name],
                                 "output_per_million": PRICES[name]}},
        }

    return {
        "ray": {"num_cpus": 8},
        "router": {"scorecard": str(router_dir / "scorecard.json"),
                   "predictor": str(router_dir / "predictor.npz"),
                   "min_quality": 0.5, "cascade": False, "reload_check_s": 0.5},
        "models": [model("zoo-l"), model("zoo-l-w4a16", quantization="compressed-tensors")],
    }


@pytest.fixture(scope="module")
def shadow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Path]]:
    workdir = tmp_path_factory.mktemp("promote")
    router_dir = workdir / "router"
    router_dir.mkdir()
    _small_scorecard(router_dir)
    with started_server(_config(router_dir), workdir, 900) as running:
        yield running, router_dir


def _routes(base_url: str, n: int = 3) -> list[str]:
    """The cells `auto` chose for `n` easy items (two-letter words to reverse)."""
    from serving.zoo.tasks import generate_items

    routes = []
    for item in generate_items("reverse", 2, n, 1_000_000_789):
        reply = httpx.post(f"{base_url}/chat/completions", timeout=120, json={
            "model": "auto", "messages": item.messages, "max_tokens": 16, "temperature": 0})
        assert reply.status_code == 200, reply.text
        routes.append(reply.headers["x-frugal-route"].split(";")[0])
    return routes


def test_promotion_moves_auto_to_the_cheaper_copy_without_a_restart(
    shadow_server: tuple[Running, Path],
) -> None:
    running, router_dir = shadow_server
    root = running.url.removesuffix("/v1")
    assert set(_routes(running.url)) == {"zoo-l"}  # the copy is in no scorecard yet
    processes = session_pids(running.session_id)
    config_path = running.log.with_suffix(".yaml")

    done = subprocess.run(
        [*frugal_command(), "bench", "promote", "zoo-l-w4a16", "--config", str(config_path),
         "--band", "0.2", "--concurrency", "4"],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "promoted zoo-l-w4a16 (replaces zoo-l)" in done.stdout + done.stderr

    from serving.router.scorecard import Scorecard

    assert set(Scorecard.load(router_dir / "scorecard.json").models) == {"zoo-l", "zoo-l-w4a16"}
    deadline = time.monotonic() + 60
    while (routes := _routes(running.url)).count("zoo-l-w4a16") == 0:
        assert time.monotonic() < deadline, f"auto still routes {routes} 60 s after promotion"
        time.sleep(1)
    assert metric(root, "frugal_router_reloads_total", result="ok") >= 1
    assert set(session_pids(running.session_id)) >= set(processes)  # no engine restarted

    promoted = yaml.safe_load(config_path.with_name(f"{config_path.stem}.promoted.yaml")
                              .read_text())
    by_id = {m["model_loading_config"]["model_id"]: m for m in promoted["models"]}
    assert by_id["zoo-l-w4a16"]["deployment_config"]["max_ongoing_requests"] == 48
    assert "max_ongoing_requests" not in by_id["zoo-l"]["deployment_config"]


def test_promoting_a_model_the_yaml_does_not_serve_is_refused(
    shadow_server: tuple[Running, Path],
) -> None:
    running, _ = shadow_server
    done = subprocess.run(
        [*frugal_command(), "bench", "promote", "zoo-xl", "--config",
         str(running.log.with_suffix(".yaml"))], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "not served" in done.stdout + done.stderr
