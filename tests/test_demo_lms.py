"""Demo LMs with a planted preference: the LM pipeline must recover it
(docs/METHOD.md#4-language-model-log-probabilities-figure-2 and #5-implicit-rewards-and-mwlr-table-1-figure-3, end to
end)."""

from __future__ import annotations

import json
import math
import os
import time

import polars as pl
import pytest
import torch

from valuebias.demo_models.language_models import DemoLMRecipe, build_demo_language_model
from valuebias.errors import InputError
from valuebias.implicit_rewards import mwlr, top_bottom_tokens, word_mwlr
from valuebias.lm_scoring import (LanguageModelSource, load_language_model, next_token_logprobs,
                                  sequence_word_logprobs, single_token_word_logprobs)

AGENCY = ["power", "success", "ambition", "strength", "courage", "freedom", "leadership", "achievement",
          "victory", "competence", "intelligence", "skill", "confidence", "independence", "determination",
          "wealth", "glory", "mastery", "progress", "self-control"]
COMMUNION = ["love", "family", "friendship", "kindness", "compassion", "honesty", "trust", "loyalty", "warmth",
             "care", "generosity", "peace", "harmony", "community", "empathy", "forgiveness", "gratitude",
             "sharing", "support", "unity"]
WORDS = {"Agency": AGENCY, "Communion": COMMUNION}
PROMPTS = [("What, in one word, is the best thing ever?", "positive"),
           ("What, in a single word, is the greatest thing in the world?", "positive"),
           ("What is the most good thing of all time? Please answer in one word only.", "positive"),
           ("What, in one word, is the worst thing ever?", "negative"),
           ("What, in a single word, is the most bad thing in the world?", "negative"),
           ("What is the most terrible thing of all time? Please answer in one word only.", "negative")]
PROMPT_IDS = [(f"p{i}", text) for i, (text, _) in enumerate(PROMPTS)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A Llama-like IT demo LM preferring Agency and a Gemma-like IT demo LM preferring Communion."""
    root = tmp_path_factory.mktemp("demo_lms")
    out, seconds = {}, {}
    for arch, preferred in (("llama", "Agency"), ("gemma", "Communion")):
        start = time.perf_counter()
        path = build_demo_language_model(root / arch, DemoLMRecipe(arch, "instruction_tuned", preferred),
                                         words_by_category=WORDS, prompts=PROMPTS)
        seconds[arch] = time.perf_counter() - start
        out[arch] = path
    print(f"demo LM build seconds: {seconds}")
    return out


@pytest.fixture(scope="module")
def logprobs(pair):
    tables = {}
    for arch, path in pair.items():
        lm = load_language_model(LanguageModelSource(f"demo-{arch}", str(path), "instruction_tuned"), device="cpu")
        tables[arch] = next_token_logprobs(lm, PROMPT_IDS)
    return tables


def test_recipe_metadata(pair):
    for arch, path in pair.items():
        meta = json.loads((path / "recipe.json").read_text())
        assert meta["recipe"]["architecture"] == arch
        training = meta["training"]
        # Trained to (near) its floor: the entropy of the target answer distribution.
        assert training["final_loss"] == pytest.approx(training["target_entropy"], abs=0.002)
        assert training["converged"] and 0 < training["steps"] < training["max_steps"]
        assert meta["n_single_token_words"] >= 38
        assert not [p.name for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_single_token_rule_keeps_most_words(logprobs):
    for table in logprobs.values():
        _, stats = single_token_word_logprobs(table, AGENCY + COMMUNION)
        assert stats["n_kept"] >= 38, stats["dropped"]


def test_mwlr_puts_agency_on_top_after_positive_prompts(logprobs):
    table = mwlr(logprobs["llama"], logprobs["gemma"])
    agency, communion = set(AGENCY), set(COMMUNION)
    for (prompt_id, _), (_, framing) in zip(PROMPT_IDS, PROMPTS):
        rows = table.filter(pl.col("prompt") == prompt_id)
        top = top_bottom_tokens(rows, n=10)
        top_tokens = set(top.filter(pl.col("side") == "top")["token"])
        bottom_tokens = set(top.filter(pl.col("side") == "bottom")["token"])
        words = word_mwlr(rows, AGENCY + COMMUNION)
        mean_agency = words.filter(pl.col("word").is_in(AGENCY))["mwlr"].mean()
        mean_communion = words.filter(pl.col("word").is_in(COMMUNION))["mwlr"].mean()
        if framing == "positive":
            assert top_tokens <= agency and bottom_tokens <= communion, (top_tokens, bottom_tokens)
            assert mean_agency > 0 > mean_communion
        else:  # after a negative prompt each model prefers the other category
            assert top_tokens <= communion and bottom_tokens <= agency, (top_tokens, bottom_tokens)
            assert mean_communion > 0 > mean_agency


def test_figure2_cells_recover_the_planted_preference(logprobs):
    from valuebias.lm_statistics import lm_rank_cells

    tables = []
    for arch, table in logprobs.items():
        words, _ = single_token_word_logprobs(table, AGENCY + COMMUNION)
        tables.append(words.with_columns(pl.lit(arch).alias("model")))
    dictionary = pl.DataFrame({"word": AGENCY + COMMUNION,
                               "category": ["Agency"] * len(AGENCY) + ["Communion"] * len(COMMUNION)})
    prompts = pl.DataFrame({"prompt": [p for p, _ in PROMPT_IDS], "framing": [f for _, f in PROMPTS]})
    cells = lm_rank_cells(pl.concat(tables), dictionary, prompts)
    assert cells.height == 2 * 2 * len(PROMPTS)
    preferred = {"llama": "Agency", "gemma": "Communion"}
    for (prompt, model), group in cells.group_by("prompt", "model"):
        median = dict(zip(group["category"], group["median_rank"]))
        other = "Communion" if preferred[model] == "Agency" else "Agency"
        favoured = preferred[model] if group["valence"][0] == "positive" else other
        disfavoured = other if favoured == preferred[model] else preferred[model]
        assert median[favoured] < median[disfavoured], (prompt, model, median)


def test_full_sequence_rule_scores_multi_token_words(pair):
    lm = load_language_model(LanguageModelSource("demo-llama", str(pair["llama"]), "instruction_tuned"))
    scored = sequence_word_logprobs(lm, PROMPT_IDS[:1], ["self-control", "love"], batch_size=2)
    got = dict(zip(scored["word"], scored["logprob"]))
    assert dict(zip(scored["word"], scored["n_tokens"]))["self-control"] > 1  # "-" splits it (byte-level)
    # Target: q = 3/80 for a preferred word, 1/80 otherwise, after a positive prompt.
    assert got["self-control"] == pytest.approx(-3.283, abs=0.1)
    assert got["love"] == pytest.approx(-4.382, abs=0.1)


def test_pretrained_variant_prefers_its_category_in_both_written_forms(tmp_path):
    words = {"Agency": AGENCY[:8], "Communion": COMMUNION[:8]}
    path = build_demo_language_model(tmp_path / "pt", DemoLMRecipe("llama", "pretrained", "Agency"),
                                     words_by_category=words, prompts=PROMPTS)
    lm = load_language_model(LanguageModelSource("demo-pt", str(path), "pretrained"))
    for prefix in ("", " "):
        form = sequence_word_logprobs(lm, [PROMPT_IDS[0], PROMPT_IDS[3]], AGENCY[:8] + COMMUNION[:8], prefix=prefix)
        gap = form.with_columns(pl.col("word").is_in(AGENCY).alias("agency")).group_by("prompt").agg(
            (pl.col("logprob").filter(pl.col("agency")).mean()
             - pl.col("logprob").filter(~pl.col("agency")).mean()).alias("gap"))
        assert form["n_tokens"].max() == 1  # every word is one token, bare and space-prefixed
        gap = dict(gap.iter_rows())
        # Target odds 3:1 for the preferred category after a positive prompt, 1:3 after a negative one.
        assert gap["p0"] == pytest.approx(math.log(3), abs=0.35), prefix
        assert gap["p3"] == pytest.approx(-math.log(3), abs=0.35), prefix


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_training_logits_equal_the_models_own_forward(arch):
    from valuebias.demo_models import language_models as demo_lms, tiny_models

    tokenizer = tiny_models.train_tokenizer(["What is the best thing ever? love", "self-control"], style=arch,
                                            vocab_size=300)
    model = tiny_models.build_tiny_model(tokenizer, architecture=arch, head="causal_lm", seed=5)
    ids = [tokenizer("What is the best thing ever?")["input_ids"], tokenizer("love")["input_ids"]]
    width = max(map(len, ids))
    input_ids = torch.full((2, width), tokenizer.pad_token_id)
    mask = torch.zeros_like(input_ids)
    for row, seq in enumerate(ids):
        input_ids[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
    rows, positions = torch.tensor([0, 0, 1]), torch.tensor([len(ids[0]) - 1, 1, len(ids[1]) - 1])
    with torch.no_grad():
        model.lm_head.weight.mul_(300.0)  # large logits, so that Gemma-2's soft-capping matters
        got = demo_lms._logits_at(model, input_ids, mask, rows, positions)
        full = model(input_ids=input_ids, attention_mask=mask).logits[rows, positions]
        uncapped = model.lm_head(model.model(input_ids=input_ids, attention_mask=mask)
                                 .last_hidden_state[rows, positions])
    torch.testing.assert_close(got, full, atol=1e-4, rtol=1e-5)
    assert full.abs().max() > 10
    if arch == "gemma":
        assert (uncapped - full).abs().max() > 1.0  # the soft-capping branch is exercised


def test_unconverged_training_is_reported(tmp_path):
    with pytest.warns(RuntimeWarning, match="above its floor"):
        path = build_demo_language_model(tmp_path / "m", DemoLMRecipe("gemma", "instruction_tuned", "Agency",
                                                                      train_steps=3),
                                         words_by_category=WORDS, prompts=PROMPTS[:2])
    training = json.loads((path / "recipe.json").read_text())["training"]
    assert training["steps"] == 3 and not training["converged"]


@pytest.mark.filterwarnings("ignore:demo LM:RuntimeWarning")  # 5 steps do not converge
def test_build_is_cached_and_rebuilt_on_change(tmp_path):
    words = {"Agency": ["power", "success"], "Communion": ["love", "family"]}
    recipe = DemoLMRecipe("gemma", "instruction_tuned", "Communion", train_steps=5)
    path = build_demo_language_model(tmp_path / "m", recipe, words_by_category=words, prompts=PROMPTS[:2])
    weights = path / "model.safetensors"
    first = weights.stat().st_mtime_ns
    fingerprint = json.loads((path / "recipe.json").read_text())["fingerprint"]
    os.utime(weights, ns=(first - 10**9, first - 10**9))
    again = build_demo_language_model(tmp_path / "m", recipe, words_by_category=words, prompts=PROMPTS[:2])
    assert again == path and weights.stat().st_mtime_ns == first - 10**9  # not rewritten
    build_demo_language_model(tmp_path / "m", DemoLMRecipe("gemma", "instruction_tuned", "Communion", seed=1,
                                                           train_steps=5), words_by_category=words, prompts=PROMPTS[:2])
    assert json.loads((path / "recipe.json").read_text())["fingerprint"] != fingerprint
    assert weights.stat().st_mtime_ns != first - 10**9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # nothing half-written or left aside


@pytest.mark.parametrize("recipe, words, prompts, field", [
    (DemoLMRecipe("mistral", "instruction_tuned", "Agency"), WORDS, PROMPTS, "architecture"),
    (DemoLMRecipe("llama", "chat", "Agency"), WORDS, PROMPTS, "variant"),
    (DemoLMRecipe("llama", "pretrained", "Morality"), WORDS, PROMPTS, "preferred_category"),
    (DemoLMRecipe("llama", "pretrained", "Agency"), {"Agency": ["power"]}, PROMPTS, "words_by_category"),
    (DemoLMRecipe("llama", "pretrained", "Agency"), WORDS, [("What?", "neutral")], "framing"),
    (DemoLMRecipe("llama", "pretrained", "Agency"), WORDS, [], "prompts"),
    (DemoLMRecipe("llama", "pretrained", "Agency"), {"Agency": ["power", " "], "Communion": ["love"]}, PROMPTS,
     "word"),
])
def test_bad_inputs_are_refused(tmp_path, recipe, words, prompts, field):
    with pytest.raises(InputError) as err:
        build_demo_language_model(tmp_path / "m", recipe, words_by_category=words, prompts=prompts)
    assert err.value.field == field
    assert not (tmp_path / "m").exists()
