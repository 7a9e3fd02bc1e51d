"""The paper's Figure-1 analysis of explicit reward-model scores (METHOD §3, steps 1-5).

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
GROUP_VAR_TERM = "Group Var"


def _normalise_word(column: str = "word") -> pl.Expr:
    return pl.col(column).cast(pl.Utf8).str.strip_chars().str.to_lowercase()


def rank_words(scores: pl.DataFrame, dictionary: pl.DataFrame) -> pl.DataFrame:
    """METHOD §3 steps 1-2: join scores with the dictionary, then rank words per (model, prompt).

    ``scores`` has ``model, prompt, word, score``; ``dictionary`` has ``word, category`` (a word may
    belong to several categories). Words are lowercased and stripped on both sides, the inner join
    drops words outside the dictionary, and exact duplicate rows are dropped. Within each
    (model, prompt), rows are ranked by descending score over all joined rows together (not per
    category), ties getting the average rank, 1 = best. A word in two categories therefore appears
    twice, tied with itself.

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

    joined = scores.join(dictionary, on="word", how="inner").unique(maintain_order=True)
    return (
        joined
        .with_columns(
            pl.col("score").rank(method="average", descending=True).over("model", "prompt")
            .cast(pl.Float64).alias("rank"))
        .select("model", "prompt", "word", "category", "score", "rank")
        .sort("model", "prompt", "rank", "word", "category")
    )


def median_rank_cells(ranked: pl.DataFrame, prompts: pl.DataFrame,
                      families: pl.DataFrame) -> pl.DataFrame:
    """METHOD §3 step 3: the median rank per (model, category, prompt), the units of analysis.

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
    if not problems:
        present = cells.select("family", "category", "framing").unique()
        full = (cells.select("family").unique().join(cells.select("category").unique(), how="cross")
                .join(cells.select("framing").unique(), how="cross"))
        empty = full.join(present, on=["family", "category", "framing"], how="anti").sort(pl.all())
        if empty.height:
            problems.append("no cells for family x category x framing "
                            + ", ".join("/".join(r) for r in empty.iter_rows()))
    if problems:
        raise ValueError("the mixed model " + MIXED_MODEL_FORMULA + " + (1 | model) cannot be fitted: "
                         + "; ".join(problems))


def fit_mixed_model(cells: pl.DataFrame) -> MixedModelFit:
    """METHOD §3 step 4: ``median_rank ~ family * category * framing + (1 | model)``, REML.

    ``cells`` is the output of :func:`median_rank_cells`. Fitted with statsmodels
    ``smf.mixedlm(formula, data, groups=data["model"]).fit(reml=True)``; factor levels use treatment
    coding with the alphabetically first level as reference. Needs at least two levels of family,
    category and framing, two models, and every family x category x framing combination (else
    ``ValueError`` saying what is missing). Warnings raised while fitting are returned, not printed.
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
            raise ValueError(f"the mixed model could not be fitted (singular design): {err}") from err
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
    """METHOD §3 step 5: per (category, framing) panel, a permutation Welch t-test, A vs B.

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
            raise ValueError(f"family {name!r} has no cells; families present: {sorted(present)}")

    panels = cells.select("category", "framing").unique().sort("category", "framing")
    rows = []
    for category, framing in panels.iter_rows():
        panel = cells.filter((pl.col("category") == category) & (pl.col("framing") == framing))
        a = panel.filter(pl.col("family") == family_a)["median_rank"].to_numpy()
        b = panel.filter(pl.col("family") == family_b)["median_rank"].to_numpy()
        if len(a) < 2 or len(b) < 2:
            raise ValueError(f"panel {category}/{framing}: a Welch t-test needs at least 2 cells per "
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


def default_family_pair(families: pl.DataFrame | Iterable[str]) -> tuple[str, str]:
    """The (family_a, family_b) pair for :func:`family_tests` when there is no choice to make.

    ``families`` is a table with a ``family`` column or an iterable of family names. Returns the two
    families in alphabetical order when exactly two exist; otherwise ``ValueError`` asking the user to
    set the pair explicitly.
    """
    if isinstance(families, pl.DataFrame):
        require_columns(families, ["family"], "families")
        names = families["family"].drop_nulls().to_list()
    else:
        names = list(families)
    distinct = sorted(set(names))
    if len(distinct) != 2:
        raise ValueError(f"found {len(distinct)} families {distinct}; the family comparison needs "
                         "exactly two: name them in the config, e.g. `analysis: {families: [gemma, llama]}`")
    return distinct[0], distinct[1]
