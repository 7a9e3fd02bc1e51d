"""Figure-2 statistics (docs/METHOD.md#43-anova-and-post-hoc-tests): ranks, medians, type-II ANOVA, Welch post-hocs
with BH."""

from __future__ import annotations

import itertools
import math

import numpy as np
import polars as pl
import pytest
from scipy import stats

from valuebias.errors import InputError
from valuebias.lm_statistics import benjamini_hochberg, common_words, lm_anova, lm_posthoc, lm_rank_cells
from valuebias.statistics import NotFittable

DICTIONARY = pl.DataFrame({
    "word": ["power", "success", "love", "family", "kindness"],
    "category": ["Agency", "Agency", "Communion", "Communion", "Communion"],
})
PROMPTS = pl.DataFrame({"prompt": ["best_ever_one", "worst_ever_one"], "framing": ["positive", "negative"]})


def _word_logprobs() -> pl.DataFrame:
    rows = []
    logprobs = {
        ("m1", "best_ever_one"): {"Power": -1, "success": -2, "love": -3, "family": -4, "kindness": -0.5,
                                  "table": -0.1},
        ("m1", "worst_ever_one"): {"Power": -4, "success": -3, "love": -2, "family": -1, "table": -0.1},
        ("m2", "best_ever_one"): {"power": -2, "success": -2, "love": -1, "family": -3, "table": -9},
        ("m2", "worst_ever_one"): {"power": -1, "success": -5, "love": -2, "family": -3, "table": -9},
    }
    for (model, prompt), values in logprobs.items():
        for word, lp in values.items():
            rows.append({"model": model, "prompt": prompt, "word": word, "logprob": float(lp)})
    return pl.DataFrame(rows)


def _cell(cells: pl.DataFrame, model: str, prompt: str, category: str) -> float:
    row = cells.filter((pl.col("model") == model) & (pl.col("prompt") == prompt)
                       & (pl.col("category") == category))
    assert row.height == 1
    return row["median_rank"][0]


def test_common_words():
    table = _word_logprobs().with_columns(pl.col("word").str.to_lowercase())
    assert common_words(table) == ["family", "love", "power", "success", "table"]
    assert common_words(table, ["m1"]) == ["family", "kindness", "love", "power", "success", "table"]


def test_lm_rank_cells_hand_checked():
    cells = lm_rank_cells(_word_logprobs(), DICTIONARY, PROMPTS, ["m1", "m2"])  # "Power" counts as "power"
    assert cells.columns == ["prompt", "category", "valence", "model", "median_rank"]
    assert cells.height == 8
    # m1 best: power 1, success 2, love 3, family 4 (kindness is not scored by m2: dropped)
    assert _cell(cells, "m1", "best_ever_one", "Agency") == 1.5
    assert _cell(cells, "m1", "best_ever_one", "Communion") == 3.5
    # m1 worst: family 1, love 2, success 3, power 4
    assert _cell(cells, "m1", "worst_ever_one", "Agency") == 3.5
    assert _cell(cells, "m1", "worst_ever_one", "Communion") == 1.5
    # m2 best: love 1, power and success tied at 2.5, family 4
    assert _cell(cells, "m2", "best_ever_one", "Agency") == 2.5
    assert _cell(cells, "m2", "best_ever_one", "Communion") == 2.5
    # m2 worst: power 1, love 2, family 3, success 4
    assert _cell(cells, "m2", "worst_ever_one", "Agency") == 2.5
    assert _cell(cells, "m2", "worst_ever_one", "Communion") == 2.5
    valence = dict(cells.select("prompt", "valence").unique().iter_rows())
    assert valence == {"best_ever_one": "positive", "worst_ever_one": "negative"}


def test_lm_rank_cells_without_the_common_word_rule_and_model_subset():
    table = _word_logprobs()
    cells = lm_rank_cells(table, DICTIONARY, PROMPTS, common_words_only=False)
    # m1 best now ranks kindness first: kindness 1, power 2, success 3, love 4, family 5
    assert _cell(cells, "m1", "best_ever_one", "Agency") == 2.5
    assert _cell(cells, "m1", "best_ever_one", "Communion") == 4.0
    only_m2 = lm_rank_cells(table, DICTIONARY, PROMPTS, ["m2"])
    assert only_m2["model"].unique().to_list() == ["m2"]
    with pytest.raises(InputError, match="m3"):
        lm_rank_cells(table, DICTIONARY, PROMPTS, ["m1", "m3"])
    with pytest.raises(InputError, match="no framing"):
        lm_rank_cells(table, DICTIONARY, PROMPTS.head(1), ["m1"])
    with pytest.raises(InputError, match="logprob"):
        lm_rank_cells(table.drop("logprob"), DICTIONARY, PROMPTS)


def _balanced_cells(seed: int = 3, replicates: int = 3) -> tuple[pl.DataFrame, np.ndarray, list, list, list]:
    rng = np.random.default_rng(seed)
    categories, valences, models = ["Agency", "Communion"], ["negative", "positive"], ["gemma", "llama", "qwen"]
    y = rng.normal(50, 10, size=(2, 2, 3, replicates))
    y[0, 1, 1] += 60  # one shifted cell: main effects and interactions, so no term is trivially zero
    rows = []
    for (i, c), (j, v), (k, m) in itertools.product(enumerate(categories), enumerate(valences), enumerate(models)):
        for r in range(replicates):
            rows.append({"prompt": f"{v}_{r}", "category": c, "valence": v, "model": m, "median_rank": y[i, j, k, r]})
    return pl.DataFrame(rows), y, categories, valences, models


def test_lm_anova_matches_hand_sums_of_squares_in_a_balanced_design():
    cells, y, *_ = _balanced_cells()
    I, J, K, R = y.shape
    g = y.mean()
    m_i, m_j, m_k = y.mean(axis=(1, 2, 3)), y.mean(axis=(0, 2, 3)), y.mean(axis=(0, 1, 3))
    m_ij, m_ik, m_jk = y.mean(axis=(2, 3)), y.mean(axis=(1, 3)), y.mean(axis=(0, 3))
    m_ijk = y.mean(axis=3)
    ss = {
        "category": J * K * R * ((m_i - g) ** 2).sum(),
        "valence": I * K * R * ((m_j - g) ** 2).sum(),
        "model": I * J * R * ((m_k - g) ** 2).sum(),
        "category:valence": K * R * ((m_ij - m_i[:, None] - m_j[None, :] + g) ** 2).sum(),
        "category:model": J * R * ((m_ik - m_i[:, None] - m_k[None, :] + g) ** 2).sum(),
        "valence:model": I * R * ((m_jk - m_j[:, None] - m_k[None, :] + g) ** 2).sum(),
        "category:valence:model": R * ((m_ijk - m_ij[:, :, None] - m_ik[:, None, :] - m_jk[None, :, :]
                                        + m_i[:, None, None] + m_j[None, :, None] + m_k[None, None, :] - g) ** 2).sum(),
        "Residual": ((y - m_ijk[..., None]) ** 2).sum(),
    }
    df = {"category": 1, "valence": 1, "model": 2, "category:valence": 1, "category:model": 2, "valence:model": 2,
          "category:valence:model": 2, "Residual": I * J * K * (R - 1)}
    # The decomposition is complete: the parts add up to the total sum of squares.
    assert sum(ss.values()) == pytest.approx(((y - g) ** 2).sum())

    table = lm_anova(cells)
    assert table.columns == ["term", "sum_sq", "df", "F", "p"]
    assert set(table["term"]) == set(ss)
    mse = ss["Residual"] / df["Residual"]
    for row in table.iter_rows(named=True):
        term = row["term"]
        assert row["sum_sq"] == pytest.approx(ss[term], rel=1e-9), term
        assert row["df"] == df[term]
        if term == "Residual":
            assert row["F"] is None and row["p"] is None
        else:
            f = ss[term] / df[term] / mse
            assert row["F"] == pytest.approx(f, rel=1e-9), term
            assert row["p"] == pytest.approx(stats.f.sf(f, df[term], df["Residual"]), rel=1e-9), term
    interaction = table.filter(pl.col("term") == "category:valence:model")
    assert interaction["p"][0] < 0.05


def _rss(data: pl.DataFrame, terms: list[tuple[str, ...]]) -> float:
    """Residual sum of squares of an OLS fit with treatment-coded factors and the given terms."""
    dummies = {}
    for factor in ("category", "valence", "model"):
        levels = sorted(data[factor].unique())
        dummies[factor] = [(data[factor] == level).cast(pl.Float64).to_numpy() for level in levels[1:]]
    columns = [np.ones(data.height)]
    for term in terms:
        for combo in itertools.product(*(dummies[f] for f in term)):
            columns.append(np.prod(combo, axis=0))
    x = np.column_stack(columns)
    y = data["median_rank"].to_numpy()
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    return float(((y - x @ beta) ** 2).sum())


def test_lm_anova_is_type_two_in_an_unbalanced_design():
    cells, *_ = _balanced_cells(seed=5, replicates=4)
    cells = cells.with_row_index().filter(~pl.col("index").is_in([0, 1, 2, 9, 17, 30])).drop("index")
    table = {r["term"]: r for r in lm_anova(cells).iter_rows(named=True)}
    c, v, m = ("category",), ("valence",), ("model",)
    cv, cm, vm = ("category", "valence"), ("category", "model"), ("valence", "model")
    # Type II: each term against the model with every term that does not contain it.
    expected = {
        "category": _rss(cells, [v, m, vm]) - _rss(cells, [c, v, m, vm]),
        "valence": _rss(cells, [c, m, cm]) - _rss(cells, [c, v, m, cm]),
        "model": _rss(cells, [c, v, cv]) - _rss(cells, [c, v, m, cv]),
        "category:valence": _rss(cells, [c, v, m, cm, vm]) - _rss(cells, [c, v, m, cm, vm, cv]),
    }
    for term, ss in expected.items():
        assert table[term]["sum_sq"] == pytest.approx(ss, rel=1e-8), term
    # Type I (sequential) would differ here: the design is unbalanced.
    assert _rss(cells, []) - _rss(cells, [c]) != pytest.approx(expected["category"], rel=1e-3)


def test_lm_anova_refuses_designs_it_cannot_fit():
    cells, *_ = _balanced_cells()
    with pytest.raises(NotFittable, match="no cells for"):
        lm_anova(cells.filter(~((pl.col("model") == "qwen") & (pl.col("category") == "Agency")
                                & (pl.col("valence") == "positive"))))
    with pytest.raises(NotFittable, match="model has 1 level"):
        lm_anova(cells.filter(pl.col("model") == "qwen"))
    one_each = cells.unique(["category", "valence", "model"], keep="first")
    with pytest.raises(NotFittable, match="no residual"):
        lm_anova(one_each)
    # Bad input is not a design that cannot be fitted: it stays an InputError (a ValueError), never NotFittable.
    assert not issubclass(NotFittable, ValueError)
    with pytest.raises(InputError, match="median_rank"):
        lm_anova(cells.drop("median_rank"))
    with pytest.raises(InputError, match="valence.*missing value"):
        lm_anova(cells.with_columns(pl.when(pl.col("model") == "qwen").then(None).otherwise(pl.col("valence"))
                                    .alias("valence")))


def test_benjamini_hochberg_by_hand():
    # sorted: 0.01 (rank 1) -> 0.04; 0.03 (2) -> 0.06; 0.04 (3) -> 0.0533; 0.20 (4) -> 0.20;
    # then the running minimum from the largest rank down: 0.06 becomes 0.0533.
    got = benjamini_hochberg([0.01, 0.04, 0.03, 0.20])
    np.testing.assert_allclose(got, [0.04, 0.16 / 3, 0.16 / 3, 0.20], rtol=1e-12)


def _hand_bh(p: list[float]) -> list[float]:
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted = [0.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, p[i] * m / rank)
        adjusted[i] = running
    return adjusted


def test_lm_posthoc_welch_and_bh():
    cells, *_ = _balanced_cells(seed=11, replicates=4)
    cells = cells.filter(pl.col("model") != "qwen")
    table = lm_posthoc(cells, "llama", "gemma")
    assert table.columns == ["category", "valence", "model_a", "model_b", "n_a", "n_b", "mean_a", "mean_b", "t",
                             "p", "p_bh"]
    assert table.height == 4
    for row in table.iter_rows(named=True):
        panel = cells.filter((pl.col("category") == row["category"]) & (pl.col("valence") == row["valence"]))
        a = panel.filter(pl.col("model") == "llama")["median_rank"].to_numpy()
        b = panel.filter(pl.col("model") == "gemma")["median_rank"].to_numpy()
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        t = (a.mean() - b.mean()) / math.sqrt(va + vb)
        dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
        assert row["t"] == pytest.approx(t, rel=1e-9)
        assert row["p"] == pytest.approx(2 * stats.t.sf(abs(t), dof), rel=1e-7)
        assert (row["n_a"], row["n_b"]) == (4, 4)
        assert row["mean_a"] == pytest.approx(a.mean())
    np.testing.assert_allclose(table["p_bh"].to_numpy(), _hand_bh(table["p"].to_list()), rtol=1e-12)
    assert (table["p_bh"] >= table["p"]).all()

    # Without names, the two models present are taken alphabetically.
    auto = lm_posthoc(cells)
    assert auto["model_a"][0] == "gemma"
    np.testing.assert_allclose(auto["t"].to_numpy(), -table["t"].to_numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="3 models"):  # a caller's mistake, not a design
        lm_posthoc(_balanced_cells()[0])
    with pytest.raises(NotFittable, match="no cells"):
        lm_posthoc(cells, "llama", "mistral")
    one_prompt = cells.filter(~((pl.col("model") == "gemma") & (pl.col("category") == "Agency")
                                & (pl.col("valence") == "positive") & (pl.col("prompt") != "positive_0")))
    with pytest.raises(NotFittable, match="at least 2 cells per model"):
        lm_posthoc(one_prompt, "llama", "gemma")


def test_lm_rank_cells_passes_category_overlap_through():
    # "power" is in both categories: ranked twice (the paper's) or once (one_rank_slot).
    dictionary = pl.concat([DICTIONARY, pl.DataFrame({"word": ["power"], "category": ["Communion"]})])
    slots = lm_rank_cells(_word_logprobs(), dictionary, PROMPTS, ["m1", "m2"])
    once = lm_rank_cells(_word_logprobs(), dictionary, PROMPTS, ["m1", "m2"], category_overlap="one_rank_slot")
    # m1 best, rank slot per category: power 1.5 (tied with itself), success 3, love 4, family 5
    assert _cell(slots, "m1", "best_ever_one", "Agency") == 2.25
    assert _cell(slots, "m1", "best_ever_one", "Communion") == 4.0
    # m1 best, one rank slot: power 1, success 2, love 3, family 4
    assert _cell(once, "m1", "best_ever_one", "Agency") == 1.5
    assert _cell(once, "m1", "best_ever_one", "Communion") == 3.0
