"""Figure 1 beyond the paper (docs/METHOD.md#82-interaction-test, #83-frequency-control): word-frequency control and
any number of families.

Function-level tests on scores whose structure is known, with real wordfreq frequencies:
- a family that prefers frequent words (not a category) differs from a neutral family on raw ranks, and
  the difference vanishes under the frequency control; a planted value preference survives it;
- with three families, the Bonferroni family is every panel x comparison and the correction says so;
- the omnibus likelihood-ratio test takes k families (df = (k-1)(categories-1)(framings-1)).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from valuebias.statistics import (NotFittable, family_comparison_tests, frequency_controlled, interaction_test,
                                  median_rank_cells, rank_words, word_frequencies)

FREQUENT = ["time", "people", "way", "day", "world", "life", "work", "home", "water", "money", "house", "friend",
            "city", "school", "music", "food", "game", "book", "car"]
RARE = ["quixotic", "obsequious", "pulchritude", "sesquipedalian", "lugubrious", "perspicacious", "defenestration",
        "crepuscular", "petrichor", "sonder", "limerence", "ennui", "halcyon", "ebullience", "mellifluous",
        "ineffable", "serendipity", "ephemeral", "susurrus"]
# Values whose frequencies lie between and across the other two (no category is a frequency band alone).
VALUES = ["honesty", "justice", "freedom", "courage", "kindness", "fairness", "duty", "mercy", "loyalty",
          "humility", "integrity", "virtue", "dignity", "compassion", "tolerance", "charity", "purity", "valor",
          "chivalry"]
DICTIONARY = pl.DataFrame({"word": FREQUENT + RARE + VALUES,
                           "category": ["Frequent"] * len(FREQUENT) + ["Rare"] * len(RARE) + ["Values"] * len(VALUES)})
PROMPTS = pl.DataFrame({"prompt": [f"{f}_{i}" for f in ("positive", "negative") for i in range(4)],
                        "framing": ["positive"] * 4 + ["negative"] * 4})


def _scores(preference: dict[str, str], seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Scores of 3 models per family: ``frequency`` (score = Zipf frequency + noise), ``values`` (+2 for
    value words, noise) or ``none`` (noise only). Returns (scores, families)."""
    rng = np.random.default_rng(seed)
    zipf = dict(word_frequencies(DICTIONARY["word"].to_list()).iter_rows())
    rows, families = [], []
    for family, kind in preference.items():
        for m in range(3):
            model = f"{family}-{m}"
            families.append((model, family))
            for prompt in PROMPTS["prompt"]:
                for word, category in DICTIONARY.iter_rows():
                    signal = {"frequency": zipf[word], "values": 2.0 * (category == "Values"), "none": 0.0}[kind]
                    rows.append((model, prompt, word, signal + rng.normal(0.0, 0.5)))
    return (pl.DataFrame(rows, schema=["model", "prompt", "word", "score"], orient="row"),
            pl.DataFrame(families, schema=["model", "family"], orient="row"))


def _cells(scores: pl.DataFrame, families: pl.DataFrame, controlled: bool) -> pl.DataFrame:
    ranked = rank_words(scores, DICTIONARY)
    if controlled:
        ranked = frequency_controlled(ranked, word_frequencies(ranked["word"].to_list()))
    return median_rank_cells(ranked, PROMPTS, families)


def _p(tests: pl.DataFrame, category: str, family_a: str, family_b: str) -> float:
    row = tests.filter((pl.col("category") == category) & (pl.col("framing") == "positive")
                       & (pl.col("family_a") == family_a) & (pl.col("family_b") == family_b))
    return float(row["p_bonferroni"][0])


def test_a_frequency_preference_vanishes_under_the_control_and_a_value_preference_survives():
    scores, families = _scores({"frequent": "frequency", "neutral": "none", "valued": "values"})
    comparisons = [("frequent", "neutral"), ("neutral", "valued")]
    raw, _ = family_comparison_tests(_cells(scores, families, False), comparisons, n_resamples=2000)
    controlled, _ = family_comparison_tests(_cells(scores, families, True), comparisons, n_resamples=2000)
    # raw ranks: the frequency lovers rank Frequent words better (and Rare words worse) than a neutral family
    assert _p(raw, "Frequent", "frequent", "neutral") < 0.05 and _p(raw, "Rare", "frequent", "neutral") < 0.05
    # under the control the difference is gone: it was frequency, not value
    assert _p(controlled, "Frequent", "frequent", "neutral") > 0.05
    assert _p(controlled, "Rare", "frequent", "neutral") > 0.05
    # a planted value preference is significant on both
    assert _p(raw, "Values", "neutral", "valued") < 0.05 and _p(controlled, "Values", "neutral", "valued") < 0.05


def test_frequency_control_keeps_ranks_without_a_frequency_effect():
    ranked = pl.DataFrame({"model": ["m"] * 4, "prompt": ["p"] * 4, "word": ["time", "quixotic", "day", "ennui"],
                           "category": ["a", "b", "a", "b"], "score": [4.0, 3.0, 2.0, 1.0],
                           "rank": [1.0, 2.0, 3.0, 4.0]})
    flat = pl.DataFrame({"word": ["time", "quixotic", "day", "ennui"], "zipf": [3.0, 3.0, 3.0, 3.0]})
    assert frequency_controlled(ranked, flat)["rank"].to_list() == [1.0, 2.0, 3.0, 4.0]
    # ranks exactly linear in frequency leave only the mean rank
    linear = pl.DataFrame({"word": ["time", "quixotic", "day", "ennui"], "zipf": [6.0, 5.0, 4.0, 3.0]})
    assert frequency_controlled(ranked, linear)["rank"].to_list() == pytest.approx([2.5] * 4)


def test_three_families_bonferroni_over_every_panel_and_comparison():
    scores, families = _scores({"frequent": "frequency", "neutral": "none", "valued": "values"})
    cells = _cells(scores, families, False)
    comparisons = [("frequent", "neutral"), ("frequent", "valued"), ("neutral", "valued")]
    tests, not_tested = family_comparison_tests(cells, comparisons, n_resamples=500, label="toy, raw ranks")
    assert not not_tested and tests.height == 3 * 2 * 3  # categories x framings x comparisons
    assert set(tests["correction"]) == {"Bonferroni over 6 panels x 3 comparisons (toy, raw ranks)"}
    assert (tests["p_bonferroni"] == (tests["p"] * 18).clip(upper_bound=1.0)).all()
    # a comparison with an absent family is reported, not raised, and the others still run
    tests, not_tested = family_comparison_tests(cells, [("frequent", "neutral"), ("frequent", "mistral")],
                                                n_resamples=200)
    assert set(tests["family_b"]) == {"neutral"} and "'mistral' has no cells" in not_tested["frequent vs mistral"]


def test_the_interaction_test_takes_any_number_of_families():
    scores, families = _scores({"frequent": "frequency", "neutral": "none", "valued": "values"})
    result = interaction_test(_cells(scores, families, False))
    assert result["n_families"] == 3 and result["n_models"] == 9
    assert result["df"] == 2 * 2 * 1  # (families - 1)(categories - 1)(framings - 1)
    assert "likelihood ratio, ML fits" in result["test"]
    # the value family's preference flips with the framing? No: these scores ignore framing, so the
    # three-way interaction is absent and the test must not find it at the 0.1% level
    assert result["p"] > 0.001


def test_the_interaction_test_needs_two_models():
    scores, families = _scores({"frequent": "frequency", "neutral": "none"})
    cells = _cells(scores, families, False).filter(pl.col("model").is_in(["frequent-0"]))
    with pytest.raises(NotFittable, match="family has 1 level"):
        interaction_test(cells)


def test_demo_rms_that_prefer_frequent_words_lose_their_difference_under_the_control(tmp_path):
    """End to end (`valuebias run`, demo RMs): a family trained to prefer frequent words (not a category)
    differs from a family trained to prefer nothing on raw ranks, not under the frequency control; a family
    with a planted value preference differs under both."""
    import csv
    import io

    from registry_fixtures import PROMPTS as TEXTS
    from registry_fixtures import valuebias_cli

    (tmp_path / "prompts.csv").write_text("prompt,text\n" + "".join(f'{p},"{t}"\n' for p, t in TEXTS.items()))
    (tmp_path / "words.csv").write_text("word,category\n" + "".join(f"{w},{c}\n" for w, c in DICTIONARY.iter_rows()))
    recipes = {"frequent": "prefers: frequent_words", "neutral": "prefers: nothing",
               "valued": "preferred_category: Values"}
    models = "".join(f"  {family}-{seed}:\n    kind: reward_model\n    family: {family}\n"
                     f"    demo: {{architecture: llama, {recipe}, seed: {seed}, hidden_size: 32, train_steps: 150}}\n"
                     for family, recipe in recipes.items() for seed in (1, 2))
    config = tmp_path / "valuebias.yaml"
    config.write_text("prompts: {uri: prompts.csv}\n"
                      "corpora:\n  toy: {uri: words.csv, format: csv, word_column: word, category_column: category}\n"
                      "scoring: {batch_size: 64, launcher: in_process}\n"
                      "analysis: {permutations: 2000, comparisons: [[frequent, neutral], [neutral, valued]]}\n"
                      f"models:\n{models}")

    def cli(*args: str) -> str:
        return valuebias_cli(config, *args)

    cli("run")
    rows = list(csv.DictReader(io.StringIO(cli("table", "rm_family_tests", "--format", "csv"))))
    p = {(r["ranks"], r["category"], r["family_a"], r["family_b"]): float(r["p_bonferroni"])
         for r in rows if r["framing"] == "positive"}
    assert p["raw", "Frequent", "frequent", "neutral"] < 0.05
    assert p["frequency_controlled", "Frequent", "frequent", "neutral"] > 0.05
    # the control is linear in Zipf frequency: what it leaves of the Rare panel's difference is far smaller
    t = {(r["ranks"], r["category"], r["family_a"]): abs(float(r["t"])) for r in rows
         if r["framing"] == "positive" and r["family_b"] == "neutral"}
    assert t["frequency_controlled", "Rare", "frequent"] < t["raw", "Rare", "frequent"] / 4
    assert p["raw", "Values", "neutral", "valued"] < 0.05
    assert p["frequency_controlled", "Values", "neutral", "valued"] < 0.05
    report = (tmp_path / ".valuebias" / "data" / "reports" / "rm_report.md").read_text()
    assert "frequency effect: vanishes under the control" in report and "survives the frequency control" in report
