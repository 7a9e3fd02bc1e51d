"""The paper's Figure-1 analysis of explicit reward-model scores (docs/METHOD.md#3-reward-model-scores-figure-1, steps
1-5).

The pipeline, exactly as the paper:

1. :func:`rank_words` inner-joins scores with a dictionary on the normalised word and drops exact
   duplicate rows;
2. :func:`rank_words` also ranks words within each (model, prompt) by descending score, ties averaged;
3. :func:`median_rank_cells` takes the median rank per (model, category, prompt): the units of analysis;
4. :func:`fit_mixed_model` fits ``median_rank ~ family * category * framing + (1 | model)`` by REML;
5. :func:`family_tests` runs a permutation Welch t-test per (category, framing) panel, family A vs B,
   Bonferroni-corrected over the panels.

Inputs and outputs are polars DataFrames; pandas is used only at the statsmodels boundary.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from valuebias.errors import InputError
from valuebias.table_checks import require_columns, require_no_nulls

MIXED_MODEL_FORMULA = "median_rank ~ family * category * framing"
#: The two rankings of ``rm_rank_cells.ranks``: the paper's, and residualised on word frequency.
RAW, FREQUENCY_CONTROLLED = "raw", "frequency_controlled"
GROUP_VAR_TERM = "Group Var"


def _normalise_word(column: str = "word") -> pl.Expr:
    return pl.col(column).cast(pl.Utf8).str.strip_chars().str.to_lowercase()


class NotFittable(Exception):
    """A statistical design that cannot be fitted or tested (too few models or families, a missing cell, a
    singular fit). Deliberately not a ValueError: bad input (``InputError``) must fail the run instead."""


#: The ``term`` of the row that stands for an analysis that could not be fitted (the reason is in ``note``).
NOT_FITTED = "not fitted"


def rank_words(scores: pl.DataFrame, dictionary: pl.DataFrame,
               category_overlap: str = "rank_slot_per_category") -> pl.DataFrame:
    """docs/METHOD.md#32-ranks (steps 1-2): join scores with the dictionary, then rank words per (model, prompt).

    ``scores`` has ``model, prompt, word, score``; ``dictionary`` has ``word, category`` (a word may
    belong to several categories). Words are lowercased and stripped on both sides, the inner join
    drops words outside the dictionary, and exact duplicate rows are dropped. Within each
    (model, prompt), rows are ranked by descending score over all joined rows together (not per
    category), ties getting the average rank, 1 = best. With ``category_overlap`` =
    ``rank_slot_per_category`` (the paper's convention) a word in two categories therefore appears
    twice, tied with itself, and takes two rank slots; with ``one_rank_slot`` each word is ranked once
    among the dictionary's words and that rank is given to each of its categories.

    Returns ``model, prompt, word, category, score, rank`` (``rank`` Float64), sorted by model, prompt
    and rank.
    """
    require_columns(scores, ["model", "prompt", "word", "score"], "scores")
    require_columns(dictionary, ["word", "category"], "dictionary")
    require_no_nulls(scores, ["model", "prompt", "word", "score"], "scores")
    require_no_nulls(dictionary, ["word", "category"], "dictionary")

    scores = scores.select(
        pl.col("model").cast(pl.Utf8), pl.col("prompt").cast(pl.Utf8), _normalise_word(),
        pl.col("score").cast(pl.Float64))
    dictionary = dictionary.select(_normalise_word(), pl.col("category").cast(pl.Utf8))

    rank = pl.col("score").rank(method="average", descending=True).over("model", "prompt").cast(pl.Float64)
    if category_overlap == "rank_slot_per_category":
        ranked = (scores.join(dictionary, on="word", how="inner").unique(maintain_order=True)
                  .with_columns(rank.alias("rank")))
    elif category_overlap == "one_rank_slot":
        ranked = (scores.join(dictionary.select("word").unique(), on="word", how="semi").unique(maintain_order=True)
                  .with_columns(rank.alias("rank"))
                  .join(dictionary.unique(), on="word", how="inner"))
    else:
        raise ValueError(f"unknown category_overlap {category_overlap!r}; expected rank_slot_per_category or "
                         "one_rank_slot")
    return (
        ranked
        .select("model", "prompt", "word", "category", "score", "rank")
        .sort("model", "prompt", "rank", "word", "category")
    )


def corpus_rankings(scores: pl.DataFrame, dictionary: pl.DataFrame, category_overlap: str = "rank_slot_per_category",
                    frequency_control: bool = False) -> dict[str, pl.DataFrame]:
    """{ranks: ranked table}: :func:`rank_words` (``raw``, the paper's) and, with ``frequency_control``, the
    same ranks residualised on word frequency (:func:`frequency_controlled`, ``frequency_controlled``)."""
    ranked = {RAW: rank_words(scores, dictionary, category_overlap)}
    if frequency_control:
        ranked[FREQUENCY_CONTROLLED] = frequency_controlled(
            ranked[RAW], word_frequencies(ranked[RAW]["word"].unique().to_list()))
    return ranked


def median_rank_cells(ranked: pl.DataFrame, prompts: pl.DataFrame,
                      families: pl.DataFrame) -> pl.DataFrame:
    """docs/METHOD.md#33-rank-cells (step 3): the median rank per (model, category, prompt), the units of analysis.

    ``ranked`` is the output of :func:`rank_words`; ``prompts`` has ``prompt, framing``; ``families``
    has ``model, family``. Every model and prompt in ``ranked`` must be described exactly once
    (else :class:`InputError` naming it). Returns
    ``model, family, category, prompt, framing, median_rank`` sorted by model, category, prompt.
    """
    require_columns(ranked, ["model", "prompt", "category", "rank"], "ranked")
    require_columns(prompts, ["prompt", "framing"], "prompts")
    require_columns(families, ["model", "family"], "families")
    require_no_nulls(prompts, ["prompt", "framing"], "prompts")
    require_no_nulls(families, ["model", "family"], "families")
    _require_unique(families.select("model", "family").unique(), "model", "families")

    known_models = set(families["model"].to_list())
    for model in ranked["model"].unique(maintain_order=True).to_list():
        if model not in known_models:
            raise InputError(f"model {model!r} has no family; add it to the family table",
                             source="families", field="model")
    framing = prompt_framings(ranked, prompts)

    return (
        median_ranks(ranked)
        .join(families.select("model", "family").unique(), on="model", how="left")
        .join(framing, on="prompt", how="left")
        .select("model", "family", "category", "prompt", "framing", "median_rank")
        .sort("model", "category", "prompt")
    )


def prompt_framings(ranked: pl.DataFrame, prompts: pl.DataFrame) -> pl.DataFrame:
    """``prompt, framing`` (one row per prompt) for the prompts of ``ranked``; an InputError names a
    prompt listed with two framings or a ranked prompt with none."""
    framing = prompts.select(pl.col("prompt").cast(pl.Utf8), pl.col("framing").cast(pl.Utf8)).unique()
    _require_unique(framing, "prompt", "prompts")
    known = set(framing["prompt"].to_list())
    for prompt in ranked["prompt"].unique(maintain_order=True).to_list():
        if prompt not in known:
            raise InputError(f"prompt {prompt!r} has no framing; add it to the prompt table",
                             source="prompts", field="prompt")
    return framing


def median_ranks(ranked: pl.DataFrame) -> pl.DataFrame:
    """The median rank of each category's words per model and prompt (one cell each)."""
    return (ranked.group_by("model", "category", "prompt")
            .agg(pl.col("rank").median().cast(pl.Float64).alias("median_rank")))


def _require_unique(df: pl.DataFrame, key: str, source: str) -> None:
    counts = df.group_by(key).len().filter(pl.col("len") > 1)
    if counts.height:
        value = counts[key][0]
        raise InputError(f"{key} {value!r} is listed with more than one value", source=source,
                         field=key)


@dataclass
class MixedModelFit:
    """The result of :func:`fit_mixed_model`.

    ``table`` has ``term, coef, se, z, p`` (fixed effects, then ``Group Var`` whose z and p are null);
    ``warnings`` holds the messages raised while fitting (e.g. convergence warnings) for metadata.
    It unpacks as a pair too: ``table, warnings = fit_mixed_model(cells)``.
    """

    table: pl.DataFrame
    warnings: list[str] = field(default_factory=list)
    converged: bool = True
    n_obs: int = 0
    n_groups: int = 0
    formula: str = MIXED_MODEL_FORMULA

    def __iter__(self):
        return iter((self.table, self.warnings))


def _check_design(cells: pl.DataFrame) -> None:
    require_columns(cells, ["model", "family", "category", "framing", "median_rank"], "cells")
    require_no_nulls(cells, ["model", "family", "category", "framing", "median_rank"], "cells")
    problems = []
    for factor in ("family", "category", "framing"):
        levels = cells[factor].unique().sort().to_list()
        if len(levels) < 2:
            problems.append(f"{factor} has {len(levels)} level(s) {levels}, needs at least 2")
    n_models = cells["model"].n_unique()
    if n_models < 2:
        problems.append(f"{n_models} model(s), the random intercept needs at least 2")
    elif cells.select("family", "model").unique().group_by("family").len()["len"].max() < 2:
        problems.append("every family has a single model, so the model's random intercept cannot be told apart "
                        "from the family effect: register a second model of at least one family")
    if not problems:
        present = cells.select("family", "category", "framing").unique()
        full = (cells.select("family").unique().join(cells.select("category").unique(), how="cross")
                .join(cells.select("framing").unique(), how="cross"))
        empty = full.join(present, on=["family", "category", "framing"], how="anti").sort(pl.all())
        if empty.height:
            problems.append("no cells for family x category x framing "
                            + ", ".join("/".join(r) for r in empty.iter_rows()))
    if problems:
        raise NotFittable("the mixed model " + MIXED_MODEL_FORMULA + " + (1 | model) cannot be fitted: "
                          + "; ".join(problems))


def fit_mixed_model(cells: pl.DataFrame) -> MixedModelFit:
    """docs/METHOD.md#34-mixed-model (step 4): ``median_rank ~ family * category * framing + (1 | model)``, REML.

    ``cells`` is the output of :func:`median_rank_cells`. Fitted with statsmodels
    ``smf.mixedlm(formula, data, groups=data["model"]).fit(reml=True)``; factor levels use treatment
    coding with the alphabetically first level as reference; ``family`` may have any number (>= 2) of
    levels. p-values are Wald z (coefficient over its standard error, two-sided normal), as statsmodels
    reports them and as the paper's analysis did. Needs at least two levels of family, category and
    framing, two models, and every family x category x framing combination (else :class:`NotFittable`
    saying what is missing). Warnings raised while fitting are returned, not printed.
    """
    import statsmodels.formula.api as smf  # imported lazily: it is slow to import
    from scipy.stats import norm

    _check_design(cells)
    data = cells.select("model", "family", "category", "framing", "median_rank").to_pandas()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = smf.mixedlm(MIXED_MODEL_FORMULA, data, groups=data["model"]).fit(reml=True)
        except np.linalg.LinAlgError as err:
            raise NotFittable(f"the mixed model could not be fitted (singular design): {err}") from err
    messages = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))

    fe = result.fe_params
    se = np.sqrt(np.diag(result.cov_params().iloc[: len(fe), : len(fe)]))
    z = fe.to_numpy() / se
    p = 2 * norm.sf(np.abs(z))
    group_var = float(result.cov_re.iloc[0, 0])
    group_se = float(np.sqrt(result.scale) * result.bse.iloc[len(fe)])

    def finite_or_none(x: float) -> float | None:
        return x if np.isfinite(x) else None

    table = pl.DataFrame(
        {
            "term": [*fe.index.astype(str), GROUP_VAR_TERM],
            "coef": [*map(float, fe), group_var],
            "se": [*map(float, se), finite_or_none(group_se)],
            "z": [*map(float, z), None],
            "p": [*map(float, p), None],
        },
        schema={"term": pl.Utf8, "coef": pl.Float64, "se": pl.Float64, "z": pl.Float64,
                "p": pl.Float64},
    )
    return MixedModelFit(table=table, warnings=messages, converged=bool(result.converged),
                         n_obs=int(result.nobs), n_groups=int(result.model.n_groups))


def family_tests(cells: pl.DataFrame, family_a: str, family_b: str, *, n_resamples: int = 10000,
                 seed: int = 0) -> pl.DataFrame:
    """docs/METHOD.md#35-family-tests (step 5): per (category, framing) panel, a permutation Welch t-test, A vs B.

    The samples are the median-rank cells (one per model x prompt) of each family in the panel.
    ``t`` is Welch's statistic (``mean_a - mean_b`` over its standard error; negative = family A ranks
    the category better); ``p`` is two-sided from ``n_resamples`` random relabellings
    (``scipy.stats.ttest_ind(equal_var=False, method=PermutationMethod(...))``), each panel drawing
    from ``numpy.random.default_rng(seed)`` so results are reproducible and independent of which
    other panels exist. ``p_bonferroni = min(1, p * number_of_panels)``.

    Returns ``category, framing, family_a, family_b, n_a, n_b, mean_a, mean_b, t, p, p_bonferroni``,
    one row per panel sorted by category and framing.
    """
    from scipy import stats

    require_columns(cells, ["family", "category", "framing", "median_rank"], "cells")
    require_no_nulls(cells, ["family", "category", "framing", "median_rank"], "cells")
    if family_a == family_b:
        raise ValueError(f"both compared families are {family_a!r}; list two different ones in the config's "
                         "`analysis.families`")
    present = set(cells["family"].unique().to_list())
    for name in (family_a, family_b):
        if name not in present:
            raise NotFittable(f"family {name!r} has no cells; families present: {sorted(present)}")

    panels = cells.select("category", "framing").unique().sort("category", "framing")
    rows = []
    for category, framing in panels.iter_rows():
        panel = cells.filter((pl.col("category") == category) & (pl.col("framing") == framing))
        a = panel.filter(pl.col("family") == family_a)["median_rank"].to_numpy()
        b = panel.filter(pl.col("family") == family_b)["median_rank"].to_numpy()
        if len(a) < 2 or len(b) < 2:
            raise NotFittable(f"panel {category}/{framing}: a Welch t-test needs at least 2 cells per "
                             f"family, got {len(a)} for {family_a!r} and {len(b)} for {family_b!r}")
        method = stats.PermutationMethod(n_resamples=n_resamples, rng=np.random.default_rng(seed))
        result = stats.ttest_ind(a, b, equal_var=False, method=method)
        rows.append({
            "category": category, "framing": framing, "family_a": family_a, "family_b": family_b,
            "n_a": len(a), "n_b": len(b), "mean_a": float(a.mean()), "mean_b": float(b.mean()),
            "t": float(result.statistic), "p": float(result.pvalue),
        })

    n_panels = len(rows)
    return pl.DataFrame(
        rows,
        schema={"category": pl.Utf8, "framing": pl.Utf8, "family_a": pl.Utf8, "family_b": pl.Utf8,
                "n_a": pl.Int64, "n_b": pl.Int64, "mean_a": pl.Float64, "mean_b": pl.Float64,
                "t": pl.Float64, "p": pl.Float64},
    ).with_columns(pl.min_horizontal(pl.col("p") * n_panels, pl.lit(1.0)).alias("p_bonferroni"))


def family_comparison_tests(cells: pl.DataFrame, comparisons: Iterable[tuple[str, str]], *,
                            n_resamples: int = 10000, seed: int = 0, label: str = ""
                            ) -> tuple[pl.DataFrame, dict[str, str]]:
    """:func:`family_tests` for every comparison (family A vs B), Bonferroni over every panel x comparison.

    ``p_bonferroni = min(1, p * panels * comparisons run)``; ``correction`` names that family of tests
    (e.g. ``Bonferroni over 4 panels x 1 comparison (big2, raw ranks)``, ``label`` giving the part in
    parentheses). With one comparison this is the paper's step 5 exactly. A comparison that cannot be
    tested (a family with no cells, fewer than 2 cells per family in a panel) is left out and returned in
    the second value, {"A vs B": why}. Returns (table, not tested).
    """
    parts, not_tested = [], {}
    for family_a, family_b in comparisons:
        try:
            parts.append(family_tests(cells, family_a, family_b, n_resamples=n_resamples, seed=seed))
        except NotFittable as why:
            not_tested[f"{family_a} vs {family_b}"] = str(why)
    if not parts:
        return pl.DataFrame(), not_tested
    table = pl.concat(parts)
    n_panels = table.select("category", "framing").unique().height
    n_tests = table.height
    runs = len(parts)
    correction = (f"Bonferroni over {n_panels} panels x {runs} comparison{'s' if runs > 1 else ''}"
                  + (f" ({label})" if label else ""))
    return table.with_columns(pl.min_horizontal(pl.col("p") * n_tests, pl.lit(1.0)).alias("p_bonferroni"),
                              pl.lit(correction).alias("correction")), not_tested


INTERACTION_TERM = "family:category:framing"
INTERACTION_TEST = f"likelihood ratio, ML fits: with vs without {INTERACTION_TERM}"


def interaction_test(cells: pl.DataFrame) -> dict:
    """docs/METHOD.md#82-interaction-test: does the family x category x framing interaction exist, for any number of
    families?

    A likelihood-ratio test of nested linear mixed models fitted by maximum likelihood (REML likelihoods
    are not comparable across different fixed effects; see :func:`_max_log_likelihood`): ``median_rank ~ family * category * framing +
    (1 | model)`` against the same model without the three-way term. ``statistic`` = 2 (llf_full -
    llf_reduced), compared with chi-squared on ``df`` = the number of three-way coefficients. Raises
    :class:`NotFittable` when the design cannot be fitted. Returns ``test, statistic, df, p, n_families,
    n_models``.
    """
    from scipy.stats import chi2

    _check_design(cells)
    data = cells.select("model", "family", "category", "framing", "median_rank").to_pandas()
    full = _max_log_likelihood(MIXED_MODEL_FORMULA, data)
    reduced = _max_log_likelihood(f"{MIXED_MODEL_FORMULA} - {INTERACTION_TERM}", data)
    df = full[1] - reduced[1]
    statistic = max(0.0, 2.0 * (full[0] - reduced[0]))
    if df < 1 or not np.isfinite(statistic):
        raise NotFittable(f"the likelihood-ratio test is undefined (df {df}, statistic {statistic})")
    return {"test": INTERACTION_TEST, "statistic": statistic,
            "df": df, "p": float(chi2.sf(statistic, df)), "n_families": cells["family"].n_unique(),
            "n_models": cells["model"].n_unique()}


def _max_log_likelihood(formula: str, data) -> tuple[float, int]:
    """The maximised ML log-likelihood of ``formula + (1 | model)`` and its number of fixed effects.

    statsmodels' optimisers can fail or return an infinite log-likelihood when the model variance is at
    its boundary (0), which the demo designs reach. So the maximum is taken over every finite candidate:
    the fits of two optimisers and the boundary itself (variance 0: the OLS fit, whose Gaussian ML
    log-likelihood is the mixed model's there). Each candidate is a point of the parameter space, so
    the largest one is the best attained maximum.
    """
    import statsmodels.formula.api as smf

    boundary = smf.ols(formula, data).fit()
    candidates = [float(boundary.llf)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method in ("bfgs", ["powell", "lbfgs"]):
            try:
                fit = smf.mixedlm(formula, data, groups=data["model"]).fit(reml=False, method=method)
            except (np.linalg.LinAlgError, ValueError):
                continue
            if np.isfinite(fit.llf):
                candidates.append(float(fit.llf))
    return max(candidates), len(boundary.params)


def word_frequencies(words: Iterable[str]) -> pl.DataFrame:
    """``word, zipf``: each word's Zipf frequency in English (wordfreq's ``best`` list; 0 when unknown)."""
    from wordfreq import zipf_frequency

    unique = sorted(set(words))
    return pl.DataFrame({"word": unique, "zipf": [zipf_frequency(w, "en") for w in unique]},
                        schema={"word": pl.Utf8, "zipf": pl.Float64})


def frequency_controlled(ranked: pl.DataFrame, frequencies: pl.DataFrame) -> pl.DataFrame:
    """docs/METHOD.md#83-frequency-control: ranks residualised on word frequency within each (model, prompt).

    ``ranked`` is :func:`rank_words`'s output; ``frequencies`` is :func:`word_frequencies`'s. Within each
    (model, prompt), the least-squares line ``rank ~ zipf`` is fitted over the ranked rows and ``rank``
    becomes its residual plus the group's mean rank (so the scale stays that of ranks: a group with no
    frequency effect keeps its ranks exactly; residual ranks may fall below 1). Medians of these per
    (model, category, prompt) then go through steps 4-5 as usual.
    """
    z, r = pl.col("zipf"), pl.col("rank")
    over = ("model", "prompt")
    slope = ((z - z.mean().over(over)) * (r - r.mean().over(over))).sum().over(over) / \
        ((z - z.mean().over(over)) ** 2).sum().over(over)
    return (ranked.join(frequencies, on="word", how="left").with_columns(pl.col("zipf").fill_null(0.0))
            .with_columns(pl.when(slope.is_finite()).then(slope).otherwise(0.0).alias("_slope"))
            .with_columns((r - pl.col("_slope") * (z - z.mean().over(over))).alias("rank"))
            .drop("_slope", "zipf"))
