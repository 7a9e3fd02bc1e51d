"""Tests for valuebias.statistics (docs/METHOD.md#3-reward-model-scores-figure-1) on small hand-made and synthetic
data."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import scipy.stats
import statsmodels.formula.api as smf

from valuebias.errors import InputError
from valuebias.statistics import (
    NotFittable,
    family_tests,
    fit_mixed_model,
    median_rank_cells,
    rank_words,
)


# ---------------------------------------------------------------- steps 1-2: join and rank

def _scores(rows):
    return pl.DataFrame(rows, schema=["model", "prompt", "word", "score"], orient="row")


DICTIONARY = pl.DataFrame({
    "word": ["Love", "love", "power", " skill", "love"],
    "category": ["Agency", "Communion", "Agency", "Agency", "Communion"],  # last row: exact duplicate
})


def test_rank_words_ties_average_and_word_in_two_categories():
    scores = _scores([
        ("m1", "p1", " Love ", 3.0),
        ("m1", "p1", "power", 1.0),
        ("m1", "p1", "skill", 2.0),
        ("m1", "p1", "zebra", 9.0),   # not in the dictionary: dropped, so it takes no rank
        ("m1", "p1", "LOVE", 3.0),    # the same row as " Love " once normalised: dropped
    ])
    ranked = rank_words(scores, DICTIONARY)

    assert ranked.columns == ["model", "prompt", "word", "category", "score", "rank"]
    assert ranked.schema["rank"] == pl.Float64
    got = {(r["word"], r["category"]): r["rank"] for r in ranked.iter_rows(named=True)}
    # scores 3 (love/Agency), 3 (love/Communion), 1 (power), 2 (skill) -> ranks 1.5, 1.5, 4, 3
    assert got == {("love", "Agency"): 1.5, ("love", "Communion"): 1.5,
                   ("power", "Agency"): 4.0, ("skill", "Agency"): 3.0}


def test_rank_words_ranks_within_each_model_and_prompt():
    scores = _scores([
        ("m1", "p1", "love", 3.0), ("m1", "p1", "power", 1.0), ("m1", "p1", "skill", 2.0),
        ("m1", "p2", "love", 1.0), ("m1", "p2", "power", 2.0), ("m1", "p2", "skill", 3.0),
        ("m2", "p1", "love", 0.5), ("m2", "p1", "power", 0.7), ("m2", "p1", "skill", 0.7),
    ])
    ranked = rank_words(scores, DICTIONARY)
    got = {(r["model"], r["prompt"], r["word"], r["category"]): r["rank"]
           for r in ranked.iter_rows(named=True)}
    assert got[("m1", "p2", "skill", "Agency")] == 1.0
    assert got[("m1", "p2", "power", "Agency")] == 2.0
    assert got[("m1", "p2", "love", "Agency")] == 3.5
    assert got[("m1", "p2", "love", "Communion")] == 3.5
    # m2: power and skill tie for best, love (twice) ties for last
    assert got[("m2", "p1", "power", "Agency")] == 1.5
    assert got[("m2", "p1", "skill", "Agency")] == 1.5
    assert got[("m2", "p1", "love", "Communion")] == 3.5
    assert ranked.height == 12


def test_rank_words_keeps_different_scores_for_the_same_word():
    # Not exact duplicates (the score differs): both rows stay, as in the paper.
    scores = _scores([("m1", "p1", "power", 2.0), ("m1", "p1", "Power", 1.0)])
    ranked = rank_words(scores, DICTIONARY)
    assert ranked["rank"].to_list() == [1.0, 2.0]


def test_rank_words_rejects_missing_columns_and_values():
    with pytest.raises(InputError) as err:
        rank_words(pl.DataFrame({"model": ["m"], "prompt": ["p"], "word": ["w"]}), DICTIONARY)
    assert err.value.field == "score"
    with pytest.raises(InputError) as err:
        rank_words(_scores([("m", "p", "love", 1.0), ("m", "p", "power", None)]), DICTIONARY)
    assert (err.value.row, err.value.field) == (2, "score")


# ---------------------------------------------------------------- step 3: median cells

PROMPTS = pl.DataFrame({"prompt": ["best_a", "worst_a"], "framing": ["positive", "negative"]})
FAMILIES = pl.DataFrame({"model": ["m1", "m2"], "family": ["gemma", "llama"]})


def _ranked(rows):
    return pl.DataFrame(rows, schema=["model", "prompt", "word", "category", "score", "rank"],
                        orient="row")


def test_median_rank_cells_by_hand():
    ranked = _ranked([
        ("m1", "best_a", "a", "Agency", 0.0, 1.0),
        ("m1", "best_a", "b", "Agency", 0.0, 3.0),
        ("m1", "best_a", "c", "Agency", 0.0, 4.0),
        ("m1", "best_a", "d", "Communion", 0.0, 2.0),
        ("m1", "best_a", "e", "Communion", 0.0, 5.0),
        ("m1", "worst_a", "a", "Agency", 0.0, 2.5),
        ("m1", "worst_a", "b", "Agency", 0.0, 2.5),
        ("m2", "best_a", "a", "Agency", 0.0, 7.0),
    ])
    cells = median_rank_cells(ranked, PROMPTS, FAMILIES)
    assert cells.columns == ["model", "family", "category", "prompt", "framing", "median_rank"]
    assert cells.rows() == [
        ("m1", "gemma", "Agency", "best_a", "positive", 3.0),      # median of 1, 3, 4
        ("m1", "gemma", "Agency", "worst_a", "negative", 2.5),     # median of 2.5, 2.5
        ("m1", "gemma", "Communion", "best_a", "positive", 3.5),   # median of 2, 5
        ("m2", "llama", "Agency", "best_a", "positive", 7.0),
    ]


def test_median_rank_cells_requires_a_family_for_every_model():
    ranked = _ranked([("m3", "best_a", "a", "Agency", 0.0, 1.0)])
    with pytest.raises(InputError, match="'m3' has no family"):
        median_rank_cells(ranked, PROMPTS, FAMILIES)


def test_median_rank_cells_requires_a_framing_for_every_prompt():
    ranked = _ranked([("m1", "meh_a", "a", "Agency", 0.0, 1.0)])
    with pytest.raises(InputError, match="'meh_a' has no framing"):
        median_rank_cells(ranked, PROMPTS, FAMILIES)


def test_median_rank_cells_rejects_a_model_in_two_families():
    families = pl.DataFrame({"model": ["m1", "m1"], "family": ["gemma", "llama"]})
    with pytest.raises(InputError, match="more than one"):
        median_rank_cells(_ranked([("m1", "best_a", "a", "Agency", 0.0, 1.0)]), PROMPTS, families)


# ---------------------------------------------------------------- step 4: mixed model

PLANTED = -6.0  # llama x Communion interaction


def _synthetic_cells(seed: int = 7) -> pl.DataFrame:
    """3 models per family, 2 categories, 2 framings, 8 prompts per framing; planted interaction."""
    rng = np.random.default_rng(seed)
    rows = []
    for family in ("gemma", "llama"):
        for m in range(3):
            model = f"{family}-{m}"
            model_effect = rng.normal(0.0, 2.0)
            for framing in ("negative", "positive"):
                for k in range(8):
                    prompt = f"{framing}-{k}"
                    for category in ("Agency", "Communion"):
                        mean = 50.0 + model_effect
                        mean += 10.0 if category == "Communion" else 0.0
                        mean += 3.0 if framing == "positive" else 0.0
                        mean += PLANTED if (family, category) == ("llama", "Communion") else 0.0
                        rows.append((model, family, category, prompt, framing,
                                     mean + rng.normal(0.0, 1.5)))
    return pl.DataFrame(rows, schema=["model", "family", "category", "prompt", "framing",
                                      "median_rank"], orient="row")


def test_mixed_model_recovers_planted_interaction_and_matches_ols():
    cells = _synthetic_cells()
    fit = fit_mixed_model(cells)
    table = {r["term"]: r for r in fit.table.iter_rows(named=True)}

    interaction = table["family[T.llama]:category[T.Communion]"]
    assert interaction["coef"] < 0
    assert abs(interaction["coef"] - PLANTED) < 1.5
    assert interaction["p"] < 0.05
    assert fit.n_obs == 192 and fit.n_groups == 6

    # In a balanced design the REML fixed effects equal the OLS estimates of the same formula.
    ols = smf.ols("median_rank ~ family * category * framing", cells.to_pandas()).fit()
    fixed = fit.table.filter(pl.col("term") != "Group Var")
    assert fixed["term"].to_list() == list(ols.params.index)
    np.testing.assert_allclose(fixed["coef"].to_numpy(), ols.params.to_numpy(), atol=1e-4)

    group = table["Group Var"]
    assert group["coef"] > 0 and group["z"] is None and group["p"] is None
    assert math.isclose(interaction["z"], interaction["coef"] / interaction["se"])


def test_mixed_model_group_variance_is_the_reml_anova_estimate():
    # In a balanced design the REML variance of the random intercept equals the ANOVA estimate
    # (MS_model - MS_residual) / n_per_model (when positive); ML would shrink it by its df.
    cells = _synthetic_cells().with_columns(
        model_mean=pl.col("median_rank").mean().over("model"),
        family_mean=pl.col("median_rank").mean().over("family"),
        cell_mean=pl.col("median_rank").mean().over("family", "category", "framing"))
    per_model = 32  # 2 categories x 2 framings x 8 prompts
    models = cells.unique("model")
    ms_model = per_model * ((models["model_mean"] - models["family_mean"]) ** 2).sum() / (6 - 2)
    residual = (cells["median_rank"] - cells["cell_mean"] - cells["model_mean"]
                + cells["family_mean"])
    ms_residual = (residual**2).sum() / (192 - 8 - (6 - 2))
    expected = (ms_model - ms_residual) / per_model

    fit = fit_mixed_model(cells.select("model", "family", "category", "prompt", "framing",
                                       "median_rank"))
    group_var = fit.table.filter(pl.col("term") == "Group Var")["coef"][0]
    assert expected > 0
    assert math.isclose(group_var, expected, rel_tol=1e-3)


def test_mixed_model_returns_convergence_warnings(recwarn):
    # Every model has exactly the same values: the model variance sits on the boundary (0).
    noise = np.random.default_rng(0).normal(size=16)
    rows = []
    for family in ("gemma", "llama"):
        for m in range(3):
            i = 0
            for category in ("Agency", "Communion"):
                for framing in ("negative", "positive"):
                    for k in range(4):
                        rows.append((f"{family}{m}", family, category, f"{framing}{k}", framing,
                                     float(noise[i])))
                        i += 1
    cells = pl.DataFrame(rows, schema=["model", "family", "category", "prompt", "framing",
                                       "median_rank"], orient="row")
    fit = fit_mixed_model(cells)
    assert any(w.startswith("ConvergenceWarning: The MLE may be on the boundary") for w in fit.warnings)
    assert not [w for w in recwarn if "boundary" in str(w.message)]  # returned, not emitted
    assert fit.table.filter(pl.col("term") == "Group Var")["coef"][0] < 1e-6
    table, warnings = fit  # the pair form used by the Dagster asset
    assert table is fit.table and warnings == fit.warnings


def test_mixed_model_needs_two_families():
    cells = _synthetic_cells().filter(pl.col("family") == "gemma")
    with pytest.raises(NotFittable, match="family has 1 level"):
        fit_mixed_model(cells)


def test_mixed_model_reports_missing_design_cells():
    cells = _synthetic_cells().filter(
        ~((pl.col("family") == "llama") & (pl.col("category") == "Agency")
          & (pl.col("framing") == "positive")))
    with pytest.raises(NotFittable, match="llama/Agency/positive"):
        fit_mixed_model(cells)


# ---------------------------------------------------------------- step 5: family tests

def _panel_cells() -> pl.DataFrame:
    rows = []
    values = {
        ("Agency", "positive"): ([1.0, 2.0, 3.0], [4.0, 6.0, 8.0]),
        ("Agency", "negative"): ([5.0, 6.0, 7.0], [5.0, 6.0, 8.0]),
        ("Communion", "positive"): ([9.0, 8.0, 7.0], [1.0, 2.0, 4.0]),
        ("Communion", "negative"): ([2.0, 4.0, 6.0], [3.0, 3.5, 4.0]),
    }
    for (category, framing), (a, b) in values.items():
        for i, v in enumerate(a):
            rows.append((f"g{i}", "gemma", category, f"{framing}-p", framing, v))
        for i, v in enumerate(b):
            rows.append((f"l{i}", "llama", category, f"{framing}-p", framing, v))
    return pl.DataFrame(rows, schema=["model", "family", "category", "prompt", "framing",
                                      "median_rank"], orient="row")


def test_family_tests_by_hand():
    result = family_tests(_panel_cells(), "gemma", "llama", n_resamples=10000, seed=0)
    assert result.columns == ["category", "framing", "family_a", "family_b", "n_a", "n_b", "mean_a",
                              "mean_b", "t", "p", "p_bonferroni"]
    assert result.select("category", "framing").rows() == [
        ("Agency", "negative"), ("Agency", "positive"),
        ("Communion", "negative"), ("Communion", "positive")]
    row = result.filter((pl.col("category") == "Agency") & (pl.col("framing") == "positive")).row(
        0, named=True)
    assert (row["n_a"], row["n_b"], row["mean_a"], row["mean_b"]) == (3, 3, 2.0, 6.0)
    # Welch: var_a = 1, var_b = 4, se = sqrt(1/3 + 4/3), t = (2 - 6) / se
    assert math.isclose(row["t"], -4.0 / math.sqrt(5.0 / 3.0), rel_tol=1e-12)
    # 3 vs 3 cells have C(6, 3) = 20 relabellings, so the test is exact: only the observed split
    # and its mirror reach |t| >= 3.098, p = 2 / 20.
    assert math.isclose(row["p"], 0.1, rel_tol=1e-12)
    assert math.isclose(row["p_bonferroni"], 0.4, rel_tol=1e-12)


def test_family_tests_matches_scipy_welch_and_bonferroni():
    rng = np.random.default_rng(3)
    rows = []
    for category in ("Agency", "Communion"):
        for framing in ("positive", "negative"):
            for family, shift, n in (("gemma", 0.0, 20), ("llama", 1.0, 30)):
                for i, v in enumerate(rng.normal(10.0 + shift, 2.0, n)):
                    rows.append((f"{family}{i}", family, category, f"p{i}", framing, float(v)))
    cells = pl.DataFrame(rows, schema=["model", "family", "category", "prompt", "framing",
                                       "median_rank"], orient="row")
    result = family_tests(cells, "gemma", "llama", n_resamples=2000, seed=11)

    panel = cells.filter((pl.col("category") == "Communion") & (pl.col("framing") == "negative"))
    a = panel.filter(pl.col("family") == "gemma")["median_rank"].to_numpy()
    b = panel.filter(pl.col("family") == "llama")["median_rank"].to_numpy()
    row = result.filter((pl.col("category") == "Communion") & (pl.col("framing") == "negative")).row(
        0, named=True)
    assert math.isclose(row["t"], scipy.stats.ttest_ind(a, b, equal_var=False).statistic,
                        rel_tol=1e-12)
    assert math.isclose(row["mean_a"], sum(a) / len(a))
    assert (row["n_a"], row["n_b"]) == (20, 30)

    assert result.height == 4
    for r in result.iter_rows(named=True):
        assert math.isclose(r["p_bonferroni"], min(1.0, 4 * r["p"]))
        assert 1 / 2001 <= r["p"] <= 1.0

    again = family_tests(cells, "gemma", "llama", n_resamples=2000, seed=11)
    assert again["p"].to_list() == result["p"].to_list()


def test_family_tests_bonferroni_is_capped_at_one():
    result = family_tests(_panel_cells(), "gemma", "llama", n_resamples=100, seed=0)
    row = result.filter((pl.col("category") == "Agency") & (pl.col("framing") == "negative")).row(
        0, named=True)
    assert row["p"] > 0.25 and row["p_bonferroni"] == 1.0


def test_family_tests_rejects_an_absent_family():
    with pytest.raises(NotFittable, match="'mistral' has no cells"):
        family_tests(_panel_cells(), "gemma", "mistral")




def test_category_overlap_is_a_named_option():
    scores = pl.DataFrame({"model": ["m"] * 3, "prompt": ["p"] * 3, "word": ["love", "power", "care"],
                           "score": [3.0, 2.0, 1.0]})
    dictionary = pl.DataFrame({"word": ["love", "love", "power", "care"],
                               "category": ["Agency", "Communion", "Agency", "Communion"]})
    paper = rank_words(scores, dictionary)  # rank_slot_per_category: love takes two slots, tied with itself
    assert sorted(zip(paper["word"], paper["category"], paper["rank"])) == [
        ("care", "Communion", 4.0), ("love", "Agency", 1.5), ("love", "Communion", 1.5), ("power", "Agency", 3.0)]
    once = rank_words(scores, dictionary, "one_rank_slot")  # each word ranked once, its rank in each category
    assert sorted(zip(once["word"], once["category"], once["rank"])) == [
        ("care", "Communion", 3.0), ("love", "Agency", 1.0), ("love", "Communion", 1.0), ("power", "Agency", 2.0)]
    with pytest.raises(ValueError, match="unknown category_overlap"):
        rank_words(scores, dictionary, "twice")
