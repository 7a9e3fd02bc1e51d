"""Exact quantities against independent computations (issue 22): each test pins one number that a one-line
bug would change, computed here another way (scipy, statsmodels, numpy), not read back from the product.

- the omnibus likelihood-ratio test: its df counted from the design, its p = chi2.sf(statistic, df), its
  statistic from reference statsmodels mixed models fitted by ML (``reml=False``);
- the frequency control: a least-squares line per (model, prompt), not per model;
- the score-cache key: changes with the scoring convention and the run settings, not with the path;
- the invariance audit: one prompt with a low Kendall's tau fails it, even when the mean tau is high;
- a stored table that is readable but one row short of what was recorded is stale.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import stats

from valuebias import invariance, model_content
from valuebias.statistics import (MIXED_MODEL_FORMULA, _max_log_likelihood, frequency_controlled,
                                  interaction_test)


def _cells(seed: int = 3) -> pl.DataFrame:
    """Median-rank cells of 3 families x 3 models, 2 categories, 2 framings x 4 prompts, with a large random
    intercept per model (its ML variance is far from 0, so the fit is a mixed model, not its OLS boundary)
    and a family x category x framing interaction planted in one family."""
    rng = np.random.default_rng(seed)
    rows = []
    for family in ("gemma", "llama", "qwen"):
        for m in range(3):
            model, intercept = f"{family}-{m}", rng.normal(0.0, 8.0)
            for category in ("Agency", "Communion"):
                for framing in ("negative", "positive"):
                    effect = 8.0 if (family, category, framing) == ("llama", "Agency", "positive") else 0.0
                    for p in range(4):
                        rows.append((model, family, category, f"{framing}_{p}", framing,
                                     50.0 + intercept + effect + rng.normal(0.0, 2.0)))
    return pl.DataFrame(rows, schema=["model", "family", "category", "prompt", "framing", "median_rank"],
                        orient="row")


def _reference_ml_llf(formula: str, cells: pl.DataFrame) -> float:
    import statsmodels.formula.api as smf

    data = cells.to_pandas()
    fit = smf.mixedlm(formula, data, groups=data["model"]).fit(reml=False)
    assert fit.converged
    return float(fit.llf)


def test_the_interaction_test_is_an_ml_likelihood_ratio_with_the_design_df():
    cells = _cells()
    result = interaction_test(cells)

    # df counted from the design: (families - 1)(categories - 1)(framings - 1) three-way coefficients
    levels = {factor: cells[factor].n_unique() for factor in ("family", "category", "framing")}
    df = (levels["family"] - 1) * (levels["category"] - 1) * (levels["framing"] - 1)
    assert df == 2 and result["df"] == df

    # the statistic from reference ML fits of the full and the reduced model
    full = _reference_ml_llf(MIXED_MODEL_FORMULA, cells)
    reduced = _reference_ml_llf(f"{MIXED_MODEL_FORMULA} - family:category:framing", cells)
    assert result["statistic"] == pytest.approx(2.0 * (full - reduced), rel=1e-6)
    assert result["p"] == pytest.approx(stats.chi2.sf(result["statistic"], df), rel=1e-12)
    assert result["p"] < 0.01  # the planted interaction is found (a premise of this design, not a threshold)


def test_the_likelihoods_are_ml_not_reml():
    import statsmodels.formula.api as smf

    cells = _cells(seed=5)
    data = cells.select("model", "family", "category", "framing", "median_rank").to_pandas()
    llf, n_fixed = _max_log_likelihood(MIXED_MODEL_FORMULA, data)
    reference = _reference_ml_llf(MIXED_MODEL_FORMULA, cells)
    assert llf == pytest.approx(reference, rel=1e-7)
    assert n_fixed == 3 * 2 * 2  # every family x category x framing cell has its own mean
    # premises: the ML fit is not at its boundary (OLS), and REML's likelihood is another number
    assert reference > smf.ols(MIXED_MODEL_FORMULA, data).fit().llf + 10
    reml = smf.mixedlm(MIXED_MODEL_FORMULA, data, groups=data["model"]).fit(reml=True).llf
    assert abs(reml - reference) > 1.0


def test_the_frequency_control_fits_one_line_per_model_and_prompt():
    words = ["time", "people", "way", "quixotic", "ennui", "halcyon"]
    zipf = {"time": 6.4, "people": 6.3, "way": 6.2, "quixotic": 2.1, "ennui": 2.6, "halcyon": 2.3}
    # prompt p1: frequent words rank best (slope > 0 in zipf -> smaller rank); p2: the reverse; m2: no relation
    ranks = {("m1", "p1"): [1, 2, 3, 6, 4, 5], ("m1", "p2"): [6, 4, 5, 1, 3, 2],
             ("m2", "p1"): [1, 6, 2, 5, 3, 4], ("m2", "p2"): [3, 4, 1, 6, 2, 5]}
    ranked = pl.DataFrame(
        [(m, p, w, "c", float(-r), float(r)) for (m, p), rs in ranks.items() for w, r in zip(words, rs)],
        schema=["model", "prompt", "word", "category", "score", "rank"], orient="row")
    frequencies = pl.DataFrame({"word": list(zipf), "zipf": list(zipf.values())})

    controlled = frequency_controlled(ranked, frequencies)
    z = np.array([zipf[w] for w in words])
    for (model, prompt), rs in ranks.items():
        r = np.array(rs, dtype=float)
        slope, intercept = np.polyfit(z, r, 1)
        expected = r - (intercept + slope * z) + r.mean()  # residual of this group's own line, plus its mean
        got = controlled.filter((pl.col("model") == model) & (pl.col("prompt") == prompt))
        assert dict(zip(got["word"], got["rank"])) == pytest.approx(dict(zip(words, expected)), abs=1e-12)


def test_the_score_cache_key_follows_the_convention_and_the_settings(monkeypatch):
    identity = model_content.ContentIdentity("files", {"model.safetensors": "ab" * 32})
    settings = {"path": "/models/a", "revision": None, "dtype": "auto", "score": "logits[0]"}
    key = model_content.score_cache_key(settings, identity)
    assert model_content.score_cache_key({**settings, "path": "/elsewhere/a"}, identity) == key
    assert model_content.score_cache_key({**settings, "dtype": "bfloat16"}, identity) != key
    assert model_content.score_cache_key({**settings, "score": "score"}, identity) != key
    other = model_content.ContentIdentity("files", {"model.safetensors": "cd" * 32})
    assert model_content.score_cache_key(settings, other) != key
    monkeypatch.setattr(model_content, "SCORING_CONVENTION", model_content.SCORING_CONVENTION + 1)
    assert model_content.score_cache_key(settings, identity) != key


def test_one_prompt_with_a_low_tau_fails_the_audit_though_the_mean_is_high():
    words = [f"w{i:02d}" for i in range(64)]
    rows = []
    for p in range(10):
        # 32 near-tied pairs (1e-6 apart), 1.0 between pairs: a swap inside a pair moves a score by 1e-6
        single = np.repeat(np.arange(32.0), 2) + np.tile([0.0, 1e-6], 32)
        partition = single.copy()
        if p == 3:  # 15 of the near-tied pairs swapped: 15 of this prompt's 2016 word pairs flip
            for i in range(0, 30, 2):
                partition[i], partition[i + 1] = partition[i + 1], partition[i]
        rows += [(f"prompt_{p}", w, float(a), float(b)) for w, a, b in zip(words, partition, single)]
    paired = pl.DataFrame(rows, schema=["prompt", "word", "partition_score", "single_score"], orient="row")

    figures = invariance.compare_scores(paired)
    low = paired.filter(pl.col("prompt") == "prompt_3")
    tau = stats.kendalltau(low["partition_score"], low["single_score"]).statistic
    assert tau == pytest.approx(1 - 2 * 15 / 2016, abs=1e-12)
    assert figures["invariance_min_kendall_tau"] == pytest.approx(tau, abs=1e-12)
    assert figures["invariance_mean_kendall_tau"] == pytest.approx((9 + tau) / 10, abs=1e-12)
    assert figures["invariance_flipped_pair_share"] == pytest.approx(15 / (10 * 2016), abs=1e-15)
    # the differences (1e-6), the mean (0.9985) and the flipped share (0.07 %) are within bounds; the minimum is not
    assert figures["invariance_max_abs_diff"] == pytest.approx(1e-6, rel=1e-6)
    assert figures["invariance_mean_kendall_tau"] > invariance.MIN_KENDALL_TAU
    failures = invariance.audit_failures({**figures, "invariance_dtype": "float32"})
    assert failures == [f"min Kendall's tau {tau:.4f} < {invariance.MIN_KENDALL_TAU}"]


def test_a_readable_table_one_row_short_is_stale(tmp_path):
    from valuebias.assets.tables import TABLE_KEYS, stored_output_problem
    from valuebias.resources.storage import Storage
    from valuebias.table_version import content_version

    storage = Storage(uri=str(tmp_path / "data"))
    table = pl.DataFrame({"term": ["a", "b", "c"], "coef": [1.0, 2.0, 3.0]})
    key = TABLE_KEYS["rm_mixed_model"]
    storage.write_parquet(key, table)
    recorded = {"dagster/row_count": table.height}
    assert stored_output_problem(storage, "rm_mixed_model", None, recorded, content_version(table)) is None
    storage.write_parquet(key, table.head(2))  # readable, one row short
    assert stored_output_problem(storage, "rm_mixed_model", None, recorded, content_version(table)) == \
        f"stored output has 2 rows, 3 were recorded: {storage.full_uri(key)}"
