"""The router's algorithms without a server: features, predictor training, the `auto`
policy, the cascade, min_quality validation and the offline route benchmark.

The scorecards here are synthetic (three models whose correctness is a known function of
the item), so the assertions are about the learning and selection logic, not the zoo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from serving.bench.route_bench import apply_policies, check_held_out, ratios
from serving.config import Price, load_config
from serving.evaluation.items import Checker, EvalItem, grade
from serving.pricing import Throughput
from serving.router.features import DIM, HASH_DIM, featurize, word_shape
from serving.router.predictor import Predictor, auc, scorecard_id, train_predictor
from serving.router.runtime import (
    ANY_EFFORT,
    Router,
    cheapest_first,
    escalation_order,
    validate_min_quality,
)
from serving.router.scorecard import (
    ItemResult,
    ModelCard,
    ModelScore,
    Percentiles,
    Scorecard,
)
from serving.zoo.tasks import DIFFICULTIES, mixed_suite

MODELS = ("tiny", "mid", "big")
PRICES = {
    "tiny": Price(input_per_million=0.01, output_per_million=0.04),
    "mid": Price(input_per_million=0.05, output_per_million=0.2),
    "big": Price(input_per_million=0.25, output_per_million=1.0),
}


def _truth(model: str, family: str, difficulty: int) -> bool:
    """tiny solves the easiest level, mid all but the hardest, big everything."""
    level = DIFFICULTIES[family].index(difficulty)
    return {"tiny": level == 0, "mid": level <= 1, "big": True}[model]


def synthetic_scorecard(n_per_cell: int = 40, seed: int = 11) -> Scorecard:
    items = mixed_suite(n_per_cell, seed)
    cards = {}
    for model in MODELS:
        results = []
        for item in items:
            correct = _truth(model, item.family, item.difficulty)
            results.append(
                ItemResult(
                    id=item.id,
                    correct=correct,
                    prompt_tokens=20 + len(item.messages[-1]["content"]) // 3,
                    completion_tokens=4,
                    latency_s=0.1,
                    # Confident when right, unsure when wrong: what the cascade learns.
                    logprobs=[-0.01, -0.02] if correct else [-0.05, -1.7],
                )
            )
        score = ModelScore(
            model=model, think=False, concurrency=4, items=len(items),
            accuracy=sum(r.correct for r in results) / len(results),
            accuracy_by_family={}, accuracy_by_difficulty={},
            prompt_tokens=sum(r.prompt_tokens for r in results),
            completion_tokens=sum(r.completion_tokens for r in results),
            ttft_s=Percentiles(p50=0.1, p95=0.2), itl_s=Percentiles(p50=0.01, p95=0.02),
            requests_per_s=10.0,
            throughput=Throughput(prefill_tokens_per_s=1000, decode_tokens_per_s=100),
            results=results,
        )
        cards[model] = ModelCard(
            model_hash=model, price=PRICES[model], price_source="list", score=score
        )
    return Scorecard(
        created="2026-01-01T00:00:00+00:00", suite="synthetic", suite_hash="abc", seed=seed,
        node_usd_per_hour=1.0, models=cards,
        items=[EvalItem.model_validate(item.model_dump()) for item in items],
    )


@pytest.fixture(scope="module")
def scorecard() -> Scorecard:
    return synthetic_scorecard()


@pytest.fixture(scope="module")
def predictor(scorecard: Scorecard) -> Predictor:
    return train_predictor(scorecard)


@pytest.fixture(scope="module")
def router(predictor: Predictor) -> Router:
    return Router(predictor, list(MODELS), default_min_quality=0.9, prices=PRICES)


# --- features --------------------------------------------------------------------------


def test_word_shape_is_generic() -> None:
    assert word_shape("4567") == "0{4}"
    assert word_shape("Reverse") == "Aa{6}"
    assert word_shape("K=042") == "A=0{3}"


def test_features_are_deterministic_sparse_and_bounded() -> None:
    messages = [{"role": "user", "content": "What is 12 + 7?"}]
    i1, v1 = featurize(messages)
    i2, v2 = featurize(messages)
    assert np.array_equal(i1, i2) and np.array_equal(v1, v2)
    assert len(set(i1.tolist())) == len(i1)
    assert i1.max() < DIM and (i1[:-5] < HASH_DIM).all()
    deeper = messages + [{"role": "assistant", "content": "19"}] + messages
    assert not np.array_equal(featurize(deeper)[1][-5:], v1[-5:])  # depth and length count


# --- predictor -------------------------------------------------------------------------


def test_predictor_learns_difficulty_held_out(predictor: Predictor) -> None:
    """Trained on seed 11, scored on an unseen seed: easy items high for tiny, hard low."""
    held_out = mixed_suite(10, seed=1_000_000_321)
    probs = predictor.predict_many([item.messages for item in held_out])
    for j, model in enumerate(predictor.models):
        truth = np.array([_truth(model, i.family, i.difficulty) for i in held_out], float)
        if 0 < truth.mean() < 1:
            assert auc(truth, probs[:, j]) > 0.9, model
    assert predictor.meta.cv["tiny"]["auc"] > 0.85


def test_predictor_round_trips(tmp_path: Path, predictor: Predictor) -> None:
    path = tmp_path / "router" / "predictor.npz"
    predictor.save(path)
    loaded = Predictor.load(path)
    messages = [{"role": "user", "content": "Reverse the word abcdef."}]
    for model, p in predictor.predict(messages).items():
        assert loaded.predict(messages)[model] == pytest.approx(p, abs=2e-3)
    assert loaded.meta.scorecard == predictor.meta.scorecard


def test_confidence_separates_sure_from_unsure(predictor: Predictor) -> None:
    assert predictor.confidence("tiny", [-0.01, -0.02]) > 0.8
    assert predictor.confidence("tiny", [-0.05, -1.7]) < 0.2
    assert predictor.confidence("unknown", [-0.01]) is None


# --- the auto policy -------------------------------------------------------------------


def test_easy_goes_small_hard_goes_large(router: Router, scorecard: Scorecard) -> None:
    easy = next(i for i in mixed_suite(5, 1_000_000_555) if i.difficulty == 1)
    hard = next(i for i in mixed_suite(5, 1_000_000_555) if i.difficulty == 3)
    assert router.choose(easy.messages, None).model == "tiny"
    decision = router.choose(hard.messages, None)
    assert decision.model == "big"
    assert decision.candidates == list(MODELS)
    assert set(decision.predicted) == set(MODELS)
    assert "cheapest" in decision.reason and decision.min_quality == 0.9


def test_higher_target_never_picks_a_cheaper_model(router: Router) -> None:
    for item in mixed_suite(3, 1_000_000_777):
        chosen = [router.choose(item.messages, q).model for q in (0.3, 0.9, 0.999)]
        ranks = [MODELS.index(m) for m in chosen]
        assert ranks == sorted(ranks)


def test_unreachable_target_takes_cheapest_best(router: Router) -> None:
    item = mixed_suite(1, 1_000_000_888)[-1]
    decision = router.choose(item.messages, 1.0)
    assert decision.model in MODELS and "none predicted" in decision.reason


class FixedPredictor:
    """Predictions given by the test, so the fallback rules are checked exactly."""

    def __init__(self, predicted: dict[str, float]) -> None:
        self.predicted = predicted
        self.models = list(predicted)

    def predict(self, messages: list[dict[str, str]]) -> dict[str, float]:
        return dict(self.predicted)


def test_hopeless_request_goes_to_the_cheapest() -> None:
    messages = [{"role": "user", "content": "anything"}]
    hopeless = Router(FixedPredictor({"tiny": 0.05, "mid": 0.2, "big": 0.4}), list(MODELS))
    decision = hopeless.choose(messages, 0.9)
    assert decision.model == "tiny" and "cheapest" in decision.reason
    # The best model is more likely right than wrong: pay for it.
    worth_it = Router(FixedPredictor({"tiny": 0.05, "mid": 0.2, "big": 0.6}), list(MODELS))
    assert worth_it.choose(messages, 0.9).model == "big"
    # hopeless_below=0 restores "always the best-predicted model".
    quality_first = Router(
        FixedPredictor({"tiny": 0.05, "mid": 0.2, "big": 0.4}), list(MODELS), hopeless_below=0
    )
    assert quality_first.choose(messages, 0.9).model == "big"
    # A target some model meets is unaffected.
    assert hopeless.choose(messages, 0.3).model == "big"
    assert hopeless.choose(messages, 0.15).model == "mid"


def test_choose_featurizes_once_and_learns_nothing(
    router: Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot path's work is fixed: one featurization of the request and one sparse dot
    product per model, whatever the target or the number of candidates; no training and
    no state. How long that takes is measured, not asserted here (a unit test on a shared
    machine cannot time it reliably): docs/router.md, "How it decides", has the figures
    and the command."""
    import serving.router.predictor as predictor_module
    import serving.router.runtime as runtime_module

    featurized = []
    real_featurize = predictor_module.featurize

    def counting_featurize(messages: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        featurized.append(messages)
        return real_featurize(messages)

    def no_training(*_: object, **__: object) -> None:
        raise AssertionError("choose trained a predictor")

    monkeypatch.setattr(predictor_module, "featurize", counting_featurize)
    monkeypatch.setattr(runtime_module, "train_predictor", no_training)
    weights, bias = router.predictor.weights.copy(), router.predictor.bias.copy()
    messages = mixed_suite(1, 1_000_000_999)[-1].messages  # the longest prompt family
    decisions = [router.choose(messages, target) for target in (None, 0.5, 0.99, None)]
    assert len(featurized) == len(decisions)
    assert decisions[0] == decisions[-1]  # pure: the same request, the same decision
    assert np.array_equal(router.predictor.weights, weights)
    assert np.array_equal(router.predictor.bias, bias)


# --- the cascade -----------------------------------------------------------------------


def test_escalation(router: Router) -> None:
    easy = next(i for i in mixed_suite(5, 1_000_000_555) if i.difficulty == 1)
    decision = router.choose(easy.messages, None)
    assert decision.model == "tiny"
    assert router.escalation(decision, "tiny", [-0.01, -0.02]) is None
    assert router.escalation(decision, "tiny", [-0.05, -1.7]) in ("mid", "big")
    assert router.escalation(decision, "tiny", None) is None
    assert router.escalation(decision, "tiny", [-0.01], checked=False) in ("mid", "big")
    assert router.escalation(decision, "tiny", [-3.0], checked=True) is None
    assert router.escalation(decision, "big", [-3.0]) is None  # nothing larger
    off = Router(router.predictor, list(MODELS), cascade=False)
    assert off.escalation(decision, "tiny", [-3.0]) is None


# --- min_quality -----------------------------------------------------------------------


@pytest.mark.parametrize("good", [0.5, 1, 1.0, 0.97])
def test_valid_min_quality(good: float) -> None:
    assert validate_min_quality(good) == float(good)


@pytest.mark.parametrize("bad", [0, -0.1, 1.01, float("nan"), float("inf"), "0.9", None, True, []])
def test_bad_min_quality_is_a_value_error(bad: object) -> None:
    with pytest.raises(ValueError, match="min_quality"):
        validate_min_quality(bad)


# --- scorecard files and Router.load ---------------------------------------------------


def test_scorecard_round_trip_and_version(tmp_path: Path, scorecard: Scorecard) -> None:
    path = tmp_path / "card.json"
    scorecard.save(path)
    assert Scorecard.load(path) == scorecard
    path.write_text(path.read_text().replace('"version": 1', '"version": 99', 1))
    with pytest.raises(ValueError, match="version"):
        Scorecard.load(path)


def _yaml(tmp_path: Path, router: dict, models: tuple[str, ...] = MODELS) -> Path:
    path = tmp_path / "frugal.yaml"
    entries = [
        {
            "model_loading_config": {"model_id": m, "model_source": f"org/{m}"},
            "frugal": {"price": PRICES[m].model_dump()},
        }
        for m in models
    ]
    path.write_text(yaml.safe_dump({"router": router, "models": entries}))
    return path


def test_router_load_retrains_a_stale_predictor(
    tmp_path: Path, scorecard: Scorecard, predictor: Predictor
) -> None:
    scorecard.save(tmp_path / "card.json")
    stale = Predictor(predictor.meta.model_copy(update={"scorecard": "other@t"}),
                      predictor.weights, predictor.bias, predictor.conf_weights,
                      predictor.conf_bias)
    stale.save(tmp_path / "p.npz")
    config = load_config(_yaml(tmp_path, {"scorecard": "card.json", "predictor": "p.npz"}))
    router = Router.load(config)
    assert router is not None
    assert router.predictor.meta.scorecard == scorecard_id(scorecard)
    assert router.candidates == list(MODELS)


def test_router_load_uses_only_served_models_and_is_off_without_scorecard(
    tmp_path: Path, scorecard: Scorecard, predictor: Predictor
) -> None:
    scorecard.save(tmp_path / "card.json")
    predictor.save(tmp_path / "p.npz")
    files = {"scorecard": "card.json", "predictor": "p.npz"}
    config = load_config(_yaml(tmp_path, files, models=("big", "tiny")))
    router = Router.load(config)
    assert router is not None and router.candidates == ["tiny", "big"]
    assert Router.load(load_config(_yaml(tmp_path, {}))) is None
    assert Router.load(load_config(_yaml(tmp_path, {"enabled": False,
                                                    "scorecard": "card.json"}))) is None


# --- checkers and the offline route benchmark ------------------------------------------


def test_checkers() -> None:
    item = EvalItem(id="x", family="custom", difficulty=0,
                    messages=[{"role": "user", "content": "pi?"}], expected="",
                    checker=Checker(type="number", value=3.14159, tol=1e-3))
    assert grade(item, "<think>hmm</think> 3.1416")
    assert not grade(item, "three")
    regex = item.model_copy(update={"checker": Checker(type="regex", value=r"[a-z]+")})
    assert grade(regex, "abc") and not grade(regex, "abc1")


def test_policies_on_known_results(router: Router) -> None:
    items = mixed_suite(10, 1_000_000_444)
    results = {
        m: {
            i.id: ItemResult(
                id=i.id, correct=_truth(m, i.family, i.difficulty), prompt_tokens=30,
                completion_tokens=4, latency_s=0.1,
                logprobs=[-0.01] if _truth(m, i.family, i.difficulty) else [-0.05, -1.7],
            )
            for i in items
        }
        for m in MODELS
    }
    policies = apply_policies(router, items, results, PRICES, seed=1)
    assert policies["largest"].share["big"] == 1.0 and policies["largest"].accuracy == 1.0
    assert policies["smallest"].share["tiny"] == 1.0
    assert policies["oracle"].accuracy == 1.0
    for name in ("auto", "largest", "random"):  # nothing that is always right is cheaper
        assert policies["oracle"].cost_usd <= policies[name].cost_usd + 1e-12
    assert policies["auto"].accuracy >= 0.97
    # Without thinking cells the joint policies are the models-only ones.
    assert policies["auto"] == policies["auto-models"]
    assert policies["oracle"] == policies["oracle-models"]
    assert policies["largest@high"] == policies["largest"]
    values, _ = ratios(policies)
    # A third of these items need the big model; the calibrated predictor should still
    # land close to the oracle.
    assert values["auto_cost_over_oracle"] <= 1.3 and values["auto_cost_over_largest_high"] < 0.6
    card = synthetic_scorecard(2, seed=5)
    with pytest.raises(ValueError, match="training seed"):
        check_held_out(card, 5)


def test_route_results_round_trip_and_match_only_their_workload() -> None:
    """`frugal bench route --reuse-results` re-applies policies to saved answers only
    when they are the same workload (seed, items per cell) and cover every candidate."""
    from serving.bench.route_bench import RouteResults

    row = ItemResult(id="a", correct=True, prompt_tokens=3, completion_tokens=1, latency_s=0.1)
    saved = RouteResults(seed=7, per_cell=2, models={"tiny": [row], "big": [row]})
    loaded = RouteResults.model_validate_json(saved.model_dump_json())
    assert loaded.result_maps()["big"]["a"] == row
    assert loaded.matches(7, 2, ["tiny", "big"])
    assert not loaded.matches(8, 2, ["tiny", "big"])
    assert not loaded.matches(7, 3, ["tiny"])
    assert not loaded.matches(7, 2, ["tiny", "mid"])


def test_params_priced_scales_prices_by_size_and_keeps_the_largest(
    tmp_path: Path, router: Router, scorecard: Scorecard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`frugal bench route --price-by params`: price proportional to weight bytes,
    anchored on the largest model, and the candidates re-ordered by the new prices."""
    import serving.bench.route_bench as route_bench

    sizes = {"org/tiny": 1_000, "org/mid": 4_000, "org/big": 10_000}
    monkeypatch.setattr(route_bench, "weight_bytes", lambda source: sizes[str(source)])
    config = load_config(_yaml(tmp_path, {}))
    priced = route_bench.params_priced(router, config, scorecard)
    big = router.prices["big"]
    assert priced.prices["big"] == big
    assert priced.prices["tiny"].output_per_million == pytest.approx(big.output_per_million / 10)
    assert priced.prices["mid"].input_per_million == pytest.approx(big.input_per_million * 0.4)
    assert priced.candidates == ["tiny", "mid", "big"]
    assert priced.predictor is router.predictor


def test_route_bench_refuses_to_report_an_unreachable_endpoint(tmp_path: Path) -> None:
    """With the endpoint down every answer would count as wrong: `frugal bench route`
    must say so and write nothing (no report, no saved answers), not print a table."""
    from typer.testing import CliRunner

    from serving.bench.cli import app

    out = tmp_path / "route.json"
    result = CliRunner().invoke(app, [
        "route", "--config", str(Path(__file__).parents[1] / "deployments" / "local.yaml"),
        "--seed", "1000000124",
        "--per-cell", "1", "--out", str(out), "--base-url", "http://127.0.0.1:1/v1",
    ])
    assert result.exit_code == 1, result.output
    assert "failed" in result.output and "nothing written" in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_merged_scorecard_keeps_the_other_models_cards_cheapest_first() -> None:
    """`frugal bench eval --models NEW --merge`: the new model is scored, the others'
    cards come from the earlier scorecard, and the order is by price again."""
    from serving.bench.eval import build_scorecard
    from serving.config import FrugalConfig

    old = synthetic_scorecard(n_per_cell=4)
    config = FrugalConfig.model_validate({"models": [
        {"model_loading_config": {"model_id": m, "model_source": m},
         "frugal": {"price": PRICES[m].model_dump()}} for m in MODELS]})
    items = mixed_suite(4, 11)
    rescored = old.models["mid"].score
    merged = build_scorecard(config, {"mid": rescored}, items, suite="synthetic",
                             keep={m: old.models[m] for m in ("big", "tiny")})
    assert list(merged.models) == ["tiny", "mid", "big"]
    assert merged.models["big"] == old.models["big"]
    assert merged.models["mid"].score == rescored


def _thinking_router(**settings: Any) -> tuple[Router, Scorecard, Any]:
    """tiny, mid, big, and `mid@high`: mid answers everything when it thinks (as big
    does without), at mid's price for three times big's tokens (cheaper than big); and
    a hard item."""
    plain = synthetic_scorecard(n_per_cell=20)
    big = plain.models["big"]
    thinking = big.model_copy(update={"price": PRICES["mid"], "score": big.score.model_copy(
        update={"model": "mid", "think": True,
                "completion_tokens": big.score.completion_tokens * 3})})
    cards = {**plain.models, "mid@high": thinking}
    scorecard = plain.model_copy(update={"models": cards})
    predictor = train_predictor(scorecard)
    order = cheapest_first(scorecard, PRICES, set(cards))
    router = Router(predictor, order, default_min_quality=0.9, prices=PRICES, **settings)
    hard = next(i for i in mixed_suite(2, 5) if i.difficulty == DIFFICULTIES[i.family][-1])
    return router, scorecard, hard


def test_a_request_that_asks_for_thinking_is_routed_among_the_thinking_cells() -> None:
    """A hard request at effort high goes to mid@high; the same request without thinking
    (effort None: `none`, or an exact budget) to big."""
    router, _, hard = _thinking_router()
    order = router.candidates
    assert order.index("mid@high") < order.index("big")
    routed = router.choose(hard.messages, None, effort="high")
    assert (routed.model, routed.cell, routed.effort) == ("mid", "mid@high", "high")
    assert routed.candidates == ["mid@high"] and routed.header().startswith("mid@high;")
    plain = router.choose(hard.messages, None)
    assert (plain.model, plain.effort) == ("big", None)
    assert router.choose(hard.messages, None, effort="low").candidates == [
        m for m in order if "@" not in m]  # no cells at low: the models without thinking


def test_a_request_without_effort_may_go_to_a_cell_with_thinking() -> None:
    """Joint routing: a hard request that states no effort goes to the cheapest cell
    predicted good enough, mid@high (a small model that thinks beats a large one that
    does not); an easy one stays on a model without thinking. `choose_effort: false`
    keeps such requests on the cells without thinking."""
    router, _, hard = _thinking_router()
    routed = router.choose(hard.messages, None, effort=ANY_EFFORT)
    assert (routed.cell, routed.effort) == ("mid@high", "high")
    assert routed.candidates == router.candidates  # every cell was a candidate
    easy = next(i for i in mixed_suite(2, 5) if i.difficulty == DIFFICULTIES[i.family][0])
    assert router.choose(easy.messages, 0.5, effort=ANY_EFFORT).effort is None
    off, _, _ = _thinking_router(choose_effort=False)
    assert off.choose(hard.messages, None, effort=ANY_EFFORT).cell == "big"


def test_joint_policies_use_the_cells_with_thinking() -> None:
    """mid@high answers everything at less than big's price: joint `auto` and the joint
    oracle use it and cost less than their models-only counterparts, as accurate."""
    router, _, _ = _thinking_router()
    items = mixed_suite(6, 1_000_000_444)

    def result(cell: str, item: Any) -> ItemResult:
        right = _truth("big" if cell == "mid@high" else cell, item.family, item.difficulty)
        return ItemResult(id=item.id, correct=right, prompt_tokens=30,
                          completion_tokens=12 if cell == "mid@high" else 4, latency_s=0.1,
                          logprobs=[-0.01] if right else [-0.05, -1.7])

    results = {c: {i.id: result(c, i) for i in items} for c in router.candidates}
    policies = apply_policies(router, items, results, PRICES, seed=1)
    assert policies["oracle"].cost_usd < policies["oracle-models"].cost_usd
    assert policies["oracle"].accuracy == policies["oracle-models"].accuracy == 1.0
    assert policies["auto"].cost_usd < policies["auto-models"].cost_usd
    assert policies["auto"].share["mid@high"] > 0 and policies["auto-models"].share["mid@high"] == 0
    assert policies["auto"].accuracy >= 0.97 * policies["largest@high"].accuracy


def test_escalation_tries_more_effort_before_a_larger_model() -> None:
    keys = ["tiny", "mid", "tiny@high", "mid@low", "mid@high", "big", "big@high"]
    assert escalation_order(keys, "mid") == ["mid@low", "mid@high", "tiny@high", "big",
                                             "big@high"]
    assert escalation_order(keys, "mid@low") == ["mid@high", "big", "big@high"]
    assert escalation_order(keys, "tiny@high") == ["mid@low", "mid@high", "big", "big@high"]
    assert escalation_order(keys, "big@high") == []


def test_a_low_confidence_answer_is_retried_at_more_effort_first() -> None:
    """mid's unsure answer goes to mid@high (predicted good enough, and cheaper than
    big), not to big."""
    router, _, hard = _thinking_router(escalate_below=0.99)
    decision = router.choose(hard.messages, 0.01, effort=ANY_EFFORT)
    decision = decision.model_copy(update={"cell": "mid", "model": "mid", "min_quality": 0.9})
    assert router.escalation(decision, "mid", [-3.0, -2.5]) == "mid@high"
    assert router.escalation(decision, "mid@high", None, checked=False) == "big"


def test_the_effort_auto_routes_on_is_read_as_the_reasoning_lever_reads_it() -> None:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    from serving.levers.router import effort_level
    from serving.pipeline.context import Endpoint, RequestContext

    def level(extras=None, **fields):
        request = ChatCompletionRequest(model="auto", messages=[{"role": "user", "content": "hi"}],
                                        **fields)
        return effort_level(RequestContext(endpoint=Endpoint.CHAT, request=request,
                                           extras=extras or {}))

    assert level(reasoning_effort="xhigh") == "high"
    assert level({"reasoning": {"effort": "low"}}) == "low"
    assert level({"reasoning": {"max_tokens": 64}}) is None  # an exact budget: no level
    assert level(reasoning_effort="none") is None
    assert level(chat_template_kwargs={"enable_thinking": True}) is None  # the client's own
    assert level() == ANY_EFFORT  # stated nothing: the router may choose the effort
