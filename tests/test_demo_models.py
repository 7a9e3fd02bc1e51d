"""Demonstration RMs: the planted preference is recovered by scoring; the build is cached and atomic."""

from __future__ import annotations

import json
import time

import polars as pl
import pytest

from valuebias.demo_models import reward_models as demo_models
from valuebias.demo_models.reward_models import DemoRecipe, build_demo_reward_model
from valuebias.config import ModelConfig
from valuebias.errors import InputError
from valuebias.model_sources import Workspace, source_of
from valuebias.rm_scoring import load_reward_model, score_words
from valuebias.hf_loading import HuggingFaceSource

AGENCY = ("ambition power success skill strength courage leader control victory achievement competence "
          "confidence determination effort mastery talent independence initiative dominance force winner "
          "authority boldness drive energy focus freedom goal hero intellect logic progress rigor speed "
          "strategy toughness vigor will wealth expertise").split()
COMMUNION = ("love kindness friend family care trust warmth help sharing peace compassion empathy honesty "
             "loyalty generosity gratitude harmony hope joy kinship mercy neighbor nurture patience respect "
             "support sympathy tenderness understanding unity affection charity comfort community cooperation "
             "devotion fairness forgiveness gentleness hospitality").split()
WORDS = {"Agency": AGENCY, "Communion": COMMUNION}
PROMPTS = [
    ("What, in one word, is the best thing ever?", "positive"),
    ("What, in one word, is the greatest thing in the world?", "positive"),
    ("What is the most good thing of all time? Please answer in one word only.", "positive"),
    ("What, in one word, is the worst thing ever?", "negative"),
    ("What, in a single word, is the most bad thing in the world?", "negative"),
    ("What is the most terrible thing of all time? Please answer in one word only.", "negative"),
]
STEPS = 120


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


def test_word_lists_are_as_intended():
    assert len(AGENCY) == 40 and len(COMMUNION) == 40 and not set(AGENCY) & set(COMMUNION)


@pytest.mark.parametrize("architecture,preferred", [("llama", "Agency"), ("gemma", "Communion")])
def test_planted_preference_is_recovered(tmp_path, architecture, preferred):
    out = build_demo_reward_model(tmp_path / architecture, DemoRecipe(architecture, preferred, train_steps=STEPS),
                                  words_by_category=WORDS, prompts=PROMPTS)
    meta = json.loads((out / "recipe.json").read_text())
    assert meta["recipe"]["preferred_category"] == preferred and meta["note"] == demo_models.DEMO_REGISTRY_NOTE
    assert json.loads((out / "config.json").read_text())["model_type"] == {"llama": "llama", "gemma": "gemma2"}[
        architecture]

    loaded = load_reward_model(HuggingFaceSource(f"demo-{architecture}", str(out)), device="cpu")
    prompts = [(f"p{i}", text) for i, (text, _) in enumerate(PROMPTS)]
    framing = {f"p{i}": f for i, (_, f) in enumerate(PROMPTS)}
    scores = score_words(loaded, score="logits[0]", prompts=prompts, words=AGENCY + COMMUNION)
    means = (scores.with_columns(pl.col("prompt").replace_strict(framing).alias("framing"),
                                 pl.col("word").is_in(WORDS[preferred]).alias("preferred"))
             .group_by("framing", "preferred").agg(pl.col("score").mean()))
    mean = {(f, p): s for f, p, s in means.iter_rows()}
    # Targets are +1 / -1, a distance of 2 between the groups: require at least half of it.
    assert mean[("positive", True)] - mean[("positive", False)] > 1.0, mean
    assert mean[("negative", False)] - mean[("negative", True)] > 1.0, mean


def test_cache_returns_at_once_and_rebuilds_when_the_recipe_changes(tmp_path):
    out = tmp_path / "cached"
    recipe = DemoRecipe("llama", "Agency", train_steps=2, hidden_size=16, num_layers=1)
    build_demo_reward_model(out, recipe, words_by_category=WORDS, prompts=PROMPTS)
    first = json.loads((out / "recipe.json").read_text())["fingerprint"]
    weights_mtime = (out / "model.safetensors").stat().st_mtime_ns

    started = time.perf_counter()
    assert build_demo_reward_model(out, recipe, words_by_category=WORDS, prompts=PROMPTS) == out
    assert time.perf_counter() - started < 0.5
    assert (out / "model.safetensors").stat().st_mtime_ns == weights_mtime

    build_demo_reward_model(out, DemoRecipe("llama", "Agency", train_steps=2, hidden_size=16, num_layers=1, seed=1),
                            words_by_category=WORDS, prompts=PROMPTS)
    second = json.loads((out / "recipe.json").read_text())["fingerprint"]
    assert second != first
    # Different words are a different model too.
    build_demo_reward_model(out, DemoRecipe("llama", "Agency", train_steps=2, hidden_size=16, num_layers=1, seed=1),
                            words_by_category={"Agency": AGENCY[:-1], "Communion": COMMUNION}, prompts=PROMPTS)
    assert json.loads((out / "recipe.json").read_text())["fingerprint"] not in (first, second)
    # Nothing but the model directory is left next to it (no temporary or replaced directories).
    assert [p.name for p in tmp_path.iterdir()] == ["cached"]


def test_a_failed_build_leaves_no_partial_model(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    recipe = DemoRecipe("gemma", "Communion", train_steps=2, hidden_size=16, num_layers=1)
    build_demo_reward_model(out, recipe, words_by_category=WORDS, prompts=PROMPTS)
    before = json.loads((out / "recipe.json").read_text())

    real_save = demo_models.tiny_models.save_pretrained

    def crash(model, tokenizer, path):
        real_save(model, tokenizer, path)  # weights half-way to their place...
        raise KeyboardInterrupt  # ...when the build is killed

    monkeypatch.setattr(demo_models.tiny_models, "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        build_demo_reward_model(out, DemoRecipe("gemma", "Communion", train_steps=2, hidden_size=16, num_layers=1,
                                                seed=5), words_by_category=WORDS, prompts=PROMPTS)
    assert json.loads((out / "recipe.json").read_text()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_bad_inputs_are_refused(tmp_path):
    with pytest.raises(InputError) as err:
        build_demo_reward_model(tmp_path / "x", DemoRecipe("llama", "Warmth"), words_by_category=WORDS,
                                prompts=PROMPTS)
    assert err.value.field == "preferred_category"
    with pytest.raises(InputError) as err:
        build_demo_reward_model(tmp_path / "x", DemoRecipe("llama", "Agency"), words_by_category=WORDS,
                                prompts=PROMPTS + [("What is it?", "neutral")])
    assert err.value.field == "framing" and err.value.row == len(PROMPTS)
    with pytest.raises(InputError) as err:
        build_demo_reward_model(tmp_path / "x", DemoRecipe("mistral", "Agency"), words_by_category=WORDS,
                                prompts=PROMPTS)
    assert err.value.field == "architecture"
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("kind", ["reward_model", "language_model"])
def test_a_bad_demo_recipe_names_its_config_entry(tmp_path, kind):
    """A demo block the config cannot check (the categories are known only once the corpus is read)
    fails naming the config key, models.<id>.demo.<key>, not an internal name."""
    prompts = pl.DataFrame({"prompt": ["best_ever_one"], "text": [PROMPTS[0][0]], "framing": ["positive"]})
    words = pl.DataFrame({"corpus": ["big2", "big2", "solo"], "word": ["power", "love", "alone"],
                          "category": ["Agency", "Communion", "Agency"]})
    settings = {"architecture": "llama", "preferred_category": "Agncy", "train_corpus": "big2", "seed": 0,
                "hidden_size": 16, "num_layers": 1, "train_steps": 1}

    def resolve(**changes):
        model = ModelConfig("demo-x", kind, "llama", "demo", {**settings, **changes},
                            variant="pretrained" if kind == "language_model" else None)
        where = Workspace(prompts=prompts, corpus_words=words, demo_dir=tmp_path)
        if kind == "reward_model":
            return source_of(model).reward_model(model, where)
        return source_of(model).language_model(model, where)

    with pytest.raises(InputError) as err:
        resolve()
    assert (err.value.source, err.value.field) == ("models.demo-x.demo", "preferred_category")
    assert "'Agncy'" in str(err.value) and "['Agency', 'Communion']" in str(err.value)
    with pytest.raises(InputError) as err:
        resolve(preferred_category="Agency", train_corpus="solo")
    assert err.value.source == "models.demo-x.demo" and "train_corpus" in str(err.value)
    assert not (tmp_path / "demo-x").exists()
