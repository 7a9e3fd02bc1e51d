"""The paper's Figure-2 analysis of language-model log-probabilities
(docs/METHOD.md#4-language-model-log-probabilities-figure-2).

1. :func:`common_words` keeps the words every compared model scored (the paper keeps words that are
   a single token in both models);
2. :func:`lm_rank_cells` ranks dictionary words by log-prob within (model, prompt) (descending, ties
   averaged, 1 = best, over all dictionary words together as in Figure 1) and takes the median rank per
   (prompt, category, model): the units of analysis;
3. :func:`lm_anova`: type-II three-way ANOVA ``median_rank ~ C(category) * C(valence) * C(model)``;
4. :func:`lm_posthoc`: Welch t-test per category x valence between two models, Benjamini-Hochberg
   adjusted over the panels.

Figure 2 is run per pair of models (docs/METHOD.md#81-figure-2-per-pair): the assets call these functions once per
pair (and once for the pooled group when ``analysis.pool_language_models`` is on) with only that group's models.
A design that cannot be fitted or tested raises :class:`valuebias.statistics.NotFittable`; bad input
(a missing column, a null, an unknown model) raises :class:`valuebias.errors.InputError`.

Inputs and outputs are polars DataFrames; pandas is used only at the statsmodels boundary.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import polars as pl

from valuebias.errors import InputError
from valuebias.table_checks import require_columns, require_no_nulls
from valuebias.statistics import NotFittable, median_ranks, prompt_framings, rank_words

ANOVA_FORMULA = "median_rank ~ C(category) * C(valence) * C(model)"
FACTORS = ("category", "valence", "model")


def common_words(word_logprobs: pl.DataFrame, models: Sequence[str] | None = None) -> list[str]:
    """The words present (for at least one prompt) in the log-prob table of every model, sorted
    (compared as given: :func:`lm_rank_cells` strips and lowercases them first)."""
    require_columns(word_logprobs, ["model", "word"], "word_logprobs")
    models = list(dict.fromkeys(models)) if models is not None else \
        word_logprobs["model"].unique(maintain_order=True).to_list()
    if not models:
        return []
    counts = (word_logprobs.filter(pl.col("model").is_in(models))
              .select("model", "word").unique()
              .group_by("word").len())
    return sorted(counts.filter(pl.col("len") == len(models))["word"].to_list())


def lm_rank_cells(word_logprobs: pl.DataFrame, dictionary: pl.DataFrame, prompts: pl.DataFrame,
                  models: Sequence[str] | None = None, *, common_words_only: bool = True,
                  category_overlap: str = "rank_slot_per_category") -> pl.DataFrame:
    """Median rank of each category per (prompt, model): the units of the Figure-2 ANOVA.

    ``word_logprobs``: ``model, prompt, word, logprob`` (e.g. :func:`single_token_word_logprobs`
    tables with a ``model`` column added, stacked). ``dictionary``: ``word, category``. ``prompts``:
    ``prompt, framing`` (``positive``/``negative``; the paper's "valence"). ``models``: the models to
    analyse (default: all in ``word_logprobs``; each must be present).

    ``common_words_only`` (default, the paper's rule): only words that every analysed model scored
    are ranked, so all models rank the same word set. Ranking is :func:`valuebias.statistics.rank_words`
    (words lowercased and stripped, inner join with the dictionary, exact duplicate rows dropped,
    descending log-prob, average ties, 1 = best, over all dictionary words together), with
    ``category_overlap`` passed through (``rank_slot_per_category``, the paper's, or ``one_rank_slot``).

    Returns ``prompt, category, valence, model, median_rank`` (Float64), sorted by model, category,
    prompt.
    """
    require_columns(word_logprobs, ["model", "prompt", "word", "logprob"], "word_logprobs")
    require_columns(prompts, ["prompt", "framing"], "prompts")
    require_no_nulls(prompts, ["prompt", "framing"], "prompts")
    present = word_logprobs["model"].unique(maintain_order=True).to_list()
    if models is None:
        models = present
    models = list(dict.fromkeys(models))
    for model in models:
        if model not in present:
            raise InputError(f"model {model!r} has no word log-probs; models present: {sorted(map(str, present))}",
                             source="word_logprobs", field="model")
    data = (word_logprobs.filter(pl.col("model").is_in(models))
            .with_columns(pl.col("word").cast(pl.Utf8).str.strip_chars().str.to_lowercase()))
    if common_words_only:
        data = data.filter(pl.col("word").is_in(common_words(data, models)))
    scores = data.select("model", "prompt", "word", pl.col("logprob").alias("score"))
    ranked = rank_words(scores, dictionary, category_overlap)

    framing = prompt_framings(ranked, prompts)
    return (
        median_ranks(ranked)
        .join(framing.rename({"framing": "valence"}), on="prompt", how="left")
        .select("prompt", "category", "valence", "model", "median_rank")
        .sort("model", "category", "prompt")
    )


def _check_cells(cells: pl.DataFrame) -> None:
    require_columns(cells, [*FACTORS, "median_rank"], "cells")
    require_no_nulls(cells, [*FACTORS, "median_rank"], "cells")


def lm_anova(cells: pl.DataFrame) -> pl.DataFrame:
    """Type-II three-way ANOVA ``median_rank ~ C(category) * C(valence) * C(model)`` (statsmodels
    ``ols`` + ``anova_lm(typ=2)``).

    Needs at least two levels of each factor, every category x valence x model combination, and more
    cells than combinations (a residual); otherwise :class:`NotFittable` names what is missing (bad
    input, such as a missing column or a null, is an :class:`InputError`). Returns ``term, sum_sq, df,
    F, p``: terms are ``category, valence, model, category:valence, category:model, valence:model,
    category:valence:model, Residual`` (the statsmodels names without ``C(...)``); ``F`` and ``p`` are
    null for ``Residual``.
    """
    import statsmodels.formula.api as smf  # imported lazily: it is slow to import
    from statsmodels.stats.anova import anova_lm

    _check_cells(cells)
    problems = []
    for factor in FACTORS:
        levels = cells[factor].unique().sort().to_list()
        if len(levels) < 2:
            problems.append(f"{factor} has {len(levels)} level(s) {levels}, needs at least 2")
    if not problems:
        full = (cells.select("category").unique().join(cells.select("valence").unique(), how="cross")
                .join(cells.select("model").unique(), how="cross"))
        empty = full.join(cells.select(*FACTORS).unique(), on=list(FACTORS), how="anti").sort(pl.all())
        if empty.height:
            problems.append("no cells for category x valence x model "
                            + ", ".join("/".join(map(str, r)) for r in empty.iter_rows()))
        elif cells.height <= full.height:
            problems.append(f"{cells.height} cells for {full.height} combinations leave no residual")
    if problems:
        raise NotFittable(f"the ANOVA {ANOVA_FORMULA} cannot be fitted: " + "; ".join(problems))

    data = cells.select(*(pl.col(f).cast(pl.Utf8) for f in FACTORS),
                        pl.col("median_rank").cast(pl.Float64)).to_pandas()
    table = anova_lm(smf.ols(ANOVA_FORMULA, data=data).fit(), typ=2)

    def clean(term: str) -> str:
        return ":".join(part[2:-1] if part.startswith("C(") else part for part in term.split(":"))

    def finite_or_none(x) -> float | None:
        x = float(x)
        return x if np.isfinite(x) else None

    return pl.DataFrame(
        {"term": [clean(str(t)) for t in table.index],
         "sum_sq": [float(x) for x in table["sum_sq"]],
         "df": [float(x) for x in table["df"]],
         "F": [finite_or_none(x) for x in table["F"]],
         "p": [finite_or_none(x) for x in table["PR(>F)"]]},
        schema={"term": pl.Utf8, "sum_sq": pl.Float64, "df": pl.Float64, "F": pl.Float64, "p": pl.Float64},
    )


def benjamini_hochberg(p_values: Iterable[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (``scipy.stats.false_discovery_control``, method 'bh')."""
    from scipy import stats

    p = np.asarray(list(p_values), dtype=float)
    if p.size == 0:
        return p
    return stats.false_discovery_control(p, method="bh")


def lm_posthoc(cells: pl.DataFrame, model_a: str | None = None, model_b: str | None = None) -> pl.DataFrame:
    """Per (category, valence) panel, Welch's t-test of the median-rank cells of two models.

    The samples are a model's cells (one per prompt) in the panel. ``t`` is Welch's statistic
    (``scipy.stats.ttest_ind(a, b, equal_var=False)``; negative = model a ranks the category better),
    ``p`` its two-sided p-value, ``p_bh`` the Benjamini-Hochberg adjustment over the panels of this
    pair. When ``model_a``/``model_b`` are omitted the cells must hold exactly two models (taken in
    alphabetical order). Returns ``category, valence, model_a, model_b, n_a, n_b, mean_a, mean_b, t,
    p, p_bh``, sorted by category and valence.

    A design that cannot be tested (a model without cells, a panel with fewer than 2 cells of a model)
    raises :class:`NotFittable`; naming the models wrongly (the same model twice, only one of them, no
    names with other than two models present) is a caller's mistake and raises ``ValueError``.
    """
    from scipy import stats

    _check_cells(cells)
    present = sorted(set(cells["model"].cast(pl.Utf8).to_list()))
    if model_a is None and model_b is None:
        if len(present) != 2:
            raise ValueError(f"found {len(present)} models {present}; set model_a and model_b explicitly")
        model_a, model_b = present
    if model_a is None or model_b is None:
        raise ValueError("set both model_a and model_b, or neither")
    if model_a == model_b:
        raise ValueError(f"model_a and model_b are both {model_a!r}; choose two different models")
    for name in (model_a, model_b):
        if name not in present:
            raise NotFittable(f"model {name!r} has no cells; models present: {present}")

    rows = []
    panels = cells.select("category", "valence").unique().sort("category", "valence")
    for category, valence in panels.iter_rows():
        panel = cells.filter((pl.col("category") == category) & (pl.col("valence") == valence))
        a = panel.filter(pl.col("model") == model_a)["median_rank"].cast(pl.Float64).to_numpy()
        b = panel.filter(pl.col("model") == model_b)["median_rank"].cast(pl.Float64).to_numpy()
        if len(a) < 2 or len(b) < 2:
            raise NotFittable(f"panel {category}/{valence}: a Welch t-test needs at least 2 cells per model, "
                              f"got {len(a)} for {model_a!r} and {len(b)} for {model_b!r}")
        result = stats.ttest_ind(a, b, equal_var=False)
        rows.append({"category": category, "valence": valence, "model_a": model_a, "model_b": model_b,
                     "n_a": len(a), "n_b": len(b), "mean_a": float(a.mean()), "mean_b": float(b.mean()),
                     "t": float(result.statistic), "p": float(result.pvalue)})
    table = pl.DataFrame(
        rows,
        schema={"category": pl.Utf8, "valence": pl.Utf8, "model_a": pl.Utf8, "model_b": pl.Utf8,
                "n_a": pl.Int64, "n_b": pl.Int64, "mean_a": pl.Float64, "mean_b": pl.Float64,
                "t": pl.Float64, "p": pl.Float64},
    )
    # A panel whose cells are all equal gives t = p = NaN: it is left out of the adjustment.
    p = table["p"].to_numpy()
    adjusted = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    adjusted[finite] = benjamini_hochberg(p[finite])
    return table.with_columns(pl.Series("p_bh", adjusted, dtype=pl.Float64).fill_nan(None))
