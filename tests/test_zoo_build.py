"""Zoo build: a tiny deterministic build, caching, checkpoint shape, zoo dir resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.zoo.build import build_zoo, hash_dir, read_manifest
from serving.zoo.train import TrainConfig

TINY = {"tiny": TrainConfig(shape="tiny", steps=2, batch_size=4, micro_batch=2, lr=1e-3)}


def test_tiny_build_is_deterministic_and_cached(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    assert build_zoo(first, specs=TINY, progress=False) == {"tiny": "built"}
    assert build_zoo(second, specs=TINY, progress=False) == {"tiny": "built"}
    assert hash_dir(first / "tiny") == hash_dir(second / "tiny")
    files = set(hash_dir(first / "tiny"))
    assert {"model.safetensors", "config.json", "tokenizer.json", "generation_config.json"} <= files
    manifest = read_manifest(first)
    assert manifest.models["tiny"].files == hash_dir(first / "tiny")
    assert manifest.models["tiny"].config == TINY["tiny"]

    # Valid cache: nothing to do. Tampered file or changed config: rebuilt.
    assert build_zoo(first, specs=TINY, progress=False) == {"tiny": "cached"}
    (first / "tiny" / "config.json").write_text("{}")
    assert build_zoo(first, specs=TINY, progress=False) == {"tiny": "built"}
    assert hash_dir(first / "tiny") == hash_dir(second / "tiny")
    changed = {"tiny": TINY["tiny"].model_copy(update={"seed": 5})}
    assert build_zoo(first, specs=changed, progress=False) == {"tiny": "built"}
    assert hash_dir(first / "tiny") != hash_dir(second / "tiny")


def test_a_task_change_rebuilds_only_the_models_that_train_on_it(
    tmp_path: Path, monkeypatch
) -> None:
    """The manifest fingerprints each model's training data: editing a level outside a
    model's curriculum keeps it cached, editing one inside rebuilds it."""
    import serving.zoo.tasks as tasks

    narrow = TINY["tiny"].model_copy(
        update={"max_difficulty": {"arithmetic": 1, "reverse": 2, "ranking": 2}}
    )
    specs = {"narrow": narrow, "wide": TINY["tiny"]}
    assert build_zoo(tmp_path, specs=specs, progress=False) == {"narrow": "built", "wide": "built"}
    ranking = tasks._GENERATORS["ranking"]

    def eight_players_all_named_z(rng, players, **options):
        fields, expected, scratch = ranking(rng, players, **options)
        return (fields, "Z", scratch) if players == 8 else (fields, expected, scratch)

    monkeypatch.setitem(tasks._GENERATORS, "ranking", eight_players_all_named_z)
    assert build_zoo(tmp_path, specs=specs, progress=False) == {
        "narrow": "cached",
        "wide": "built",
    }


def test_only_rejects_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown zoo model"):
        build_zoo(tmp_path, specs=TINY, only=["zoo-xl"], progress=False)


def test_random_checkpoint_fixture_loads_with_vllm_friendly_config(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from serving.zoo.checkpoint import write_checkpoint

    path = write_checkpoint("zoo-s", tmp_path / "zoo-s", seed=0)
    config = json.loads((path / "config.json").read_text())
    assert config["head_dim"] == 64 and config["hidden_size"] == 64 * config["num_attention_heads"]
    assert config["max_position_embeddings"] >= 1024
    gen = json.loads((path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == config["eos_token_id"]
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.eos_token_id == config["eos_token_id"] and tok.pad_token_id == config["pad_token_id"]
    assert tok.chat_template
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.vocab_size >= len(tok)


def test_cards_cache_keeps_other_seeds_and_drops_old_weights(
    tmp_path: Path, monkeypatch
) -> None:
    """Unit test of the cards cache only (a fake `make_card`; the real measurement through
    vLLM is `test_cards_cli_measures_a_served_model_and_caches_it`)."""
    import serving.zoo.cards as cards

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights v1")
    measured: list[tuple[int, int]] = []

    def fake_card(model_dir: Path, n: int, seed: int) -> cards.Card:
        measured.append((n, seed))
        return cards.Card(name=model_dir.name, params=1, bytes=1, max_model_len=8,
                          n_per_cell=n, seed=seed, accuracy={}, accuracy_think={})

    monkeypatch.setattr(cards, "make_card", fake_card)
    monkeypatch.setattr(cards, "_count_params", lambda p: 1)
    for n, seed in ((1, 10**9 + 7), (2, 10**9 + 9), (1, 10**9 + 7), (2, 10**9 + 9)):
        cards.zoo_cards(tmp_path, n, seed)
    assert measured == [(1, 10**9 + 7), (2, 10**9 + 9)]  # a second seed evicts nothing
    (model / "model.safetensors").write_bytes(b"weights v2")
    cards.zoo_cards(tmp_path, 1, 10**9 + 7)
    cache = json.loads((tmp_path / cards.CARDS_CACHE).read_text())
    assert len(measured) == 3 and len(cache) == 1  # the old weights' cards are gone


def test_default_zoo_dir(monkeypatch, tmp_path: Path) -> None:
    from serving.zoo.paths import default_zoo_dir

    monkeypatch.setenv("FRUGAL_ZOO_DIR", str(tmp_path))
    assert default_zoo_dir() == tmp_path
    monkeypatch.delenv("FRUGAL_ZOO_DIR")
    assert default_zoo_dir() == Path(__file__).resolve().parents[1] / "zoo"


def test_side_by_side_only_builds_keep_each_others_records(tmp_path: Path, monkeypatch) -> None:
    """`--only a` and `--only b` running at once: the one that finishes last must not write
    back the manifest it read at start, which lacks the other's record."""
    import serving.zoo.build as build

    specs = {"a": TINY["tiny"], "b": TINY["tiny"].model_copy(update={"seed": 2})}
    real_build_model = build.build_model

    def build_b_meanwhile(cfg, out_dir, *args, **kwargs):
        if out_dir.name == "a":  # "b" is built and recorded while "a" trains
            assert build_zoo(tmp_path, specs=specs, only=["b"], progress=False) == {"b": "built"}
        return real_build_model(cfg, out_dir, *args, **kwargs)

    monkeypatch.setattr(build, "build_model", build_b_meanwhile)
    assert build_zoo(tmp_path, specs=specs, only=["a"], progress=False) == {"a": "built"}
    assert set(read_manifest(tmp_path).models) == {"a", "b"}
    monkeypatch.setattr(build, "build_model", real_build_model)
    assert build_zoo(tmp_path, specs=specs, progress=False) == {"a": "cached", "b": "cached"}


@pytest.mark.slow
def test_cards_cli_measures_a_served_model_and_caches_it(tmp_path: Path) -> None:
    """`frugal zoo cards --json` through vLLM on the shipped zoo-s (two items per cell)."""
    import shutil

    from conftest import zoo_model_path
    from typer.testing import CliRunner

    from serving.cli import app
    from serving.zoo.tasks import DIFFICULTIES, FAMILIES

    shutil.copytree(zoo_model_path("zoo-s"), tmp_path / "zoo-s")
    args = ["zoo", "cards", "--zoo-dir", str(tmp_path), "--n", "2"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    [card] = json.loads(result.stdout)
    assert card["name"] == "zoo-s" and card["max_model_len"] == 1024
    assert 300_000 < card["params"] < 400_000 and card["bytes"] > 2 * card["params"]
    for key in ("accuracy", "accuracy_think"):
        assert set(card[key]) == set(FAMILIES)
        for family in FAMILIES:
            assert set(card[key][family]) == {str(d) for d in DIFFICULTIES[family]}
    # zoo-s answers the easiest sums (1.00 on 30 items in its card): measured, not assumed.
    assert card["accuracy"]["arithmetic"]["1"] == 1.0
    # Cached per (weights, n, seed): the table comes back without evaluating again.
    table = CliRunner().invoke(app, args)
    assert table.exit_code == 0 and "evaluating" not in table.output
    assert "| model | params | MB | ctx | think | sum 1 |" in table.stdout
