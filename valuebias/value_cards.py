"""Value cards: what one reward model favours, against the rest of the registry (docs/METHOD.md#84-value-cards).

Prompts and words are both samples (Clark 1973, "The language-as-fixed-effect fallacy"): a claim that a
model ranks "Care words" higher must hold for other Care words and other prompts, so a card's uncertainty
counts both. The units are word-level ranks (``valuebias.statistics.rank_words``: 1 = best within a
(model, prompt)), raw and, when the registry computes it, frequency-controlled.

For a model ``m``, per corpus, framing (P prompts) and ranking:

- y = m's rank of an entry (a word in a category) at a prompt minus the mean rank the *other* reward models
  give it there. The others' mean is read from the registry's rank sums (:func:`rank_sums`: one sum and one
  count per corpus, ranking, prompt and entry) as ``(sum - own rank) / (count - 1)``, so a card never reads
  the other models' tables.
- A word family is the Snowball English stem of the word within its category (:func:`word_families`):
  ``care``, ``caring`` and ``cared`` are one family, so inflections are not counted as independent words.
  d_f = mean y over family f's entries and the prompts; y_f(p) = the same at prompt p.
- D = mean d_f over the category's k families minus mean d_f over the corpus's K families (negative: m ranks
  the category higher than the registry does); also D / corpus size.
- D = sum a_f d_f, a_f = 1/k - 1/K inside the category, -1/K outside. Its variance has a word part,
  V_w = sum over categories g of (sum of a_f^2 over g) x the variance of d_f within g, and a prompt part,
  V_p = the variance over prompts of sum a_f y_f(p), divided by P (variances with n - 1). SE =
  sqrt(V_w + V_p); the Welch-Satterthwaite degrees of freedom take k_g - 1 for each category term and P - 1
  for V_p; the 95 % interval is D +- t(0.975, df) SE and p is the two-sided t p-value. SE = 0 gives p = 1
  when D = 0, else 0 (below ``ZERO`` ranks, floating-point rounding, D and SE count as 0). A category with fewer than 2 families gets no numbers; any other category with a
  single family adds nothing to V_w (its variance cannot be estimated) and no degrees of freedom.
- A = the chance that a random family of the category has a lower d_f than a random family from the rest of
  the corpus, ties counted half (0.5 = no effect; above 0.5 = the category ranks higher).
- Flag: Benjamini-Hochberg over all raw cells of the card (corpus x category x framing), adjusted p < 0.05;
  a flagged cell whose frequency-controlled p is >= 0.05 is labelled a frequency effect.
- With fewer than ``MIN_OTHER_MODELS`` other reward models the card gives no numbers; a reference of one
  family, or mostly one family (at least 2/3), is said in words (:func:`reference_note`).

Cards are for reward models only (language models' word sets differ between tokenizers).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import polars as pl
from scipy import stats

from valuebias.errors import InputError
from valuebias.lm_statistics import benjamini_hochberg
from valuebias.statistics import FREQUENCY_CONTROLLED, RAW

ALPHA = 0.05
MIN_OTHER_MODELS = 3
TOO_SMALL = f"fewer than {MIN_OTHER_MODELS} other reward models: no comparison"
TOO_FEW_FAMILIES = "fewer than 2 word families in this category: no numbers"
#: Said once per card, above its flags (docs/METHOD.md#flags-wording-and-the-reference).
CARD_SENTENCE = ("Intervals and flags allow for both the prompts and the words used, so a flag should hold for "
                 "other prompts and words of the category; deviations are from this registry, not from a neutral "
                 "standard.")
FREQUENCY_LABEL = " (not under the frequency control: a preference for frequent words, not for the value)"
#: The columns that identify one entry's rank: the rows of ``rm_rank_sums`` and of a model's ranks.
ENTRY_KEYS = ["corpus", "ranks", "prompt", "word", "category"]
#: Deviations and standard errors below this many ranks are rounding error (ranks are 1 apart): they count as 0.
ZERO = 1e-9

CARD_SCHEMA = {
    "model": pl.Utf8, "corpus": pl.Utf8, "category": pl.Utf8, "framing": pl.Utf8, "prompts": pl.Int64,
    "entries": pl.Int64, "families": pl.Int64, "reference_models": pl.Int64, "deviation": pl.Float64,
    "deviation_fraction": pl.Float64, "se": pl.Float64, "df": pl.Float64, "ci_low": pl.Float64,
    "ci_high": pl.Float64, "p": pl.Float64, "p_bh": pl.Float64, "effect_size_a": pl.Float64,
    "deviation_frequency_controlled": pl.Float64, "p_frequency_controlled": pl.Float64, "position": pl.Int64,
    "flag": pl.Boolean, "finding": pl.Utf8,
}


# ------------------------------------------------------------------------------------------ word families

@lru_cache(maxsize=1)
def _stemmer():
    import snowballstemmer

    return snowballstemmer.stemmer("english")


def word_families(words: Iterable[str]) -> dict[str, str]:
    """{word: its Snowball English stem} (``snowballstemmer``, the Snowball project's own Porter2 English
    stemmer, generated from the Snowball sources). Within a category, words with one stem are one family."""
    unique = sorted(set(words))
    return dict(zip(unique, _stemmer().stemWords(unique)))


# ----------------------------------------------------------------------------------------------- rank sums

def rank_sums(rankings: Iterable[pl.DataFrame]) -> pl.DataFrame:
    """The registry's rank sums: ``corpus, ranks, prompt, word, category, family, rank_sum, models`` (the sum of
    the ranks every model gives the entry at the prompt, how many models ranked it, and the word's family,
    its Snowball stem: :func:`word_families`, computed here once rather than in every card).

    ``rankings`` yields one table per model (and corpus) with the columns ``ENTRY_KEYS`` + ``rank``; they are
    folded in a few at a time so that memory stays that of a few models' ranks."""
    total: pl.DataFrame | None = None
    pending: list[pl.DataFrame] = []

    def fold(parts: list[pl.DataFrame]) -> pl.DataFrame:
        return (pl.concat(parts, how="vertical_relaxed").group_by(ENTRY_KEYS)
                .agg(pl.col("rank_sum").sum(), pl.col("models").sum()))

    for table in rankings:
        pending.append(table.select(*ENTRY_KEYS, pl.col("rank").cast(pl.Float64).alias("rank_sum"),
                                    pl.lit(1, pl.Int64).alias("models")))
        if len(pending) >= 16:
            total = fold(pending + ([total] if total is not None else []))
            pending = []
    if pending:
        total = fold(pending + ([total] if total is not None else []))
    if total is None:
        return pl.DataFrame(schema={**{k: pl.Utf8 for k in ENTRY_KEYS}, "family": pl.Utf8, "rank_sum": pl.Float64,
                                    "models": pl.Int64})
    families = word_families(total["word"].unique().to_list())
    return (total.with_columns(pl.col("word").replace_strict(families, return_dtype=pl.Utf8).alias("family"))
            .select(*ENTRY_KEYS, "family", "rank_sum", "models").sort(ENTRY_KEYS))


# ------------------------------------------------------------------------------------------ one card cell

@dataclass(frozen=True)
class CellResult:
    """The numbers of one card cell (one corpus, ranking, framing and category)."""

    deviation: float
    se: float
    df: float
    ci_low: float
    ci_high: float
    p: float
    effect_size_a: float
    families: int
    entries: int
    prompts: int


def crossed_test(family_means: np.ndarray, prompt_means: np.ndarray, categories: np.ndarray, category: str,
                 entries: int = 0) -> CellResult | None:
    """D, its crossed (words and prompts) standard error, Welch-Satterthwaite t interval and p, and A.

    ``family_means``: d_f, one per family of the corpus; ``prompt_means``: y_f(p), families x prompts (the
    prompt part uses the prompts at which every family has entries: all of them when every model scored every
    word); ``categories``: the category of each family. None when the category has fewer than 2 families."""
    inside = categories == category
    k, big_k = int(inside.sum()), len(family_means)
    if k < 2 or big_k - k < 1:
        return None
    a = np.where(inside, 1.0 / k - 1.0 / big_k, -1.0 / big_k)
    deviation = float(a @ family_means)
    terms, dfs = [], []
    for group in np.unique(categories):
        members = categories == group
        if members.sum() < 2:
            continue  # a single family: its variance cannot be estimated
        terms.append(float((a[members] ** 2).sum() * family_means[members].var(ddof=1)))
        dfs.append(int(members.sum()) - 1)
    prompt_means = prompt_means[:, np.isfinite(prompt_means).all(axis=0)]  # prompts where every family has entries
    n_prompts = prompt_means.shape[1]
    if n_prompts >= 2:
        terms.append(float((a @ prompt_means).var(ddof=1) / n_prompts))
        dfs.append(n_prompts - 1)
    terms_a, dfs_a = np.array(terms), np.array(dfs, dtype=float)
    variance = float(terms_a.sum())
    se = float(np.sqrt(variance))
    if abs(deviation) < ZERO:
        deviation = 0.0
    if se < ZERO:
        se, df, half, p = 0.0, float("nan"), 0.0, 1.0 if deviation == 0.0 else 0.0
    else:
        df = float(variance ** 2 / (terms_a ** 2 / dfs_a).sum())
        half = float(stats.t.ppf(0.975, df) * se)
        p = float(2.0 * stats.t.sf(abs(deviation) / se, df))
    own, rest = family_means[inside], family_means[~inside]
    lower = (own[:, None] < rest[None, :]).mean() + 0.5 * (own[:, None] == rest[None, :]).mean()
    return CellResult(deviation, se, df, deviation - half, deviation + half, p, float(lower), k, entries, n_prompts)


def deviations(own_ranks: pl.DataFrame, sums: pl.DataFrame, framings: pl.DataFrame) -> pl.DataFrame:
    """y per entry and prompt: ``corpus, ranks, framing, prompt, category, family, y`` (the model's rank minus
    the other models' mean rank, from the rank sums). An entry that no other model ranked is left out."""
    return (own_ranks.select(*ENTRY_KEYS, "rank")
            .join(sums, on=ENTRY_KEYS, how="inner")
            .filter(pl.col("models") >= 2)
            .join(framings.select("prompt", "framing"), on="prompt", how="inner")
            .select("corpus", "ranks", "framing", "prompt", "category", "family",
                    (pl.col("rank") - (pl.col("rank_sum") - pl.col("rank")) / (pl.col("models") - 1)).alias("y")))


def panel_cells(y: pl.DataFrame) -> dict[tuple[str, str, str, str], CellResult | None]:
    """{(corpus, ranks, framing, category): its :class:`CellResult`} from :func:`deviations`' y."""
    panel_keys = ["corpus", "ranks", "framing"]
    per_prompt = (y.group_by(*panel_keys, "category", "family", "prompt")
                  .agg(pl.col("y").sum().alias("total"), pl.len().alias("n")))
    results = {}
    for (corpus, ranks, framing), panel in per_prompt.group_by(panel_keys, maintain_order=True):
        index = ["category", "family"]
        totals = panel.pivot(on="prompt", index=index, values="total").sort(index)
        counts = panel.pivot(on="prompt", index=index, values="n").sort(index)
        total = totals.drop(index).to_numpy().astype(float)
        n = counts.drop(index).fill_null(0).to_numpy().astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            prompt_means = total / n  # y_f(p); NaN where a family has no entry at a prompt
        family_means = np.nansum(total, axis=1) / n.sum(axis=1)  # d_f: over the family's entries and the prompts
        categories = totals["category"].to_numpy()
        entries = n.max(axis=1)
        for category in np.unique(categories):
            results[(corpus, ranks, framing, str(category))] = crossed_test(
                family_means, prompt_means, categories, category, entries=int(entries[categories == category].sum()))
    return results


# --------------------------------------------------------------------------------------------- the card

def reference_note(reference_families: dict[str, str]) -> str | None:
    """How the card's reference (the other reward models) is made up, when a reader must know it: all of one
    family, or mostly one family (at least 2/3). None for a mixed reference or one too small for numbers."""
    n = len(reference_families)
    if n < MIN_OTHER_MODELS:
        return None
    counts = pl.Series(list(reference_families.values())).value_counts(sort=True)
    family, count = counts.row(0)
    if count == n:
        return f"compared with {n} models, all of family {family}"
    if 3 * count >= 2 * n:
        return f"the reference is mostly family {family} ({count} of {n}): a flag may be a family difference"
    return None


def finding(category: str, framing: str, deviation_fraction: float, low: float, high: float, a: float,
            controlled_p: float | None) -> str:
    """A flag in words, e.g. "ranks Care words higher than the registry under positive framing: -3.1 % of the
    corpus (95 % interval -5.0 to -1.2), A = 0.62" (interval bounds as % of the corpus)."""
    side = "higher" if deviation_fraction < 0 else "lower"
    text = (f"ranks {category} words {side} than the registry under {framing} framing: "
            f"{100 * deviation_fraction:+.1f} % of the corpus (95 % interval {100 * low:+.1f} to {100 * high:+.1f}), "
            f"A = {a:.2f}")
    if controlled_p is not None and controlled_p >= ALPHA:
        text += FREQUENCY_LABEL
    return text


def value_card(own_ranks: pl.DataFrame, sums: pl.DataFrame, framings: pl.DataFrame, model: str,
               corpus_sizes: dict[str, int], reference_families: dict[str, str],
               positions: dict[tuple[str, str, str, str], int] | None = None) -> pl.DataFrame:
    """One model's card: a row per corpus x category x framing (``CARD_SCHEMA``).

    ``own_ranks``: the model's word ranks (``ENTRY_KEYS`` + ``rank``; ``ranks`` raw and, if the registry
    has it, frequency_controlled); ``sums``: the registry's :func:`rank_sums`, this model included;
    ``framings``: ``prompt, framing``; ``corpus_sizes``: the ranked entries of each corpus (the denominator of
    ``deviation_fraction``); ``reference_families``: {other reward model: family}; ``positions``: where the
    model sits among all models per (model, corpus, category, framing), when known."""
    n_reference = len(reference_families)
    counted = int(sums["models"].max() or 0) - 1 if sums.height else 0
    if sums.height and counted != n_reference:
        raise InputError(f"the registry's rank sums count {counted} other reward model(s), the registry has "
                         f"{n_reference}: recompute rm_rank_sums", source="rm_rank_sums", field="models")
    y = deviations(own_ranks, sums, framings)
    prompts = dict(((c, f), n) for c, f, n in y.group_by("corpus", "framing").agg(pl.col("prompt").n_unique()).iter_rows())
    cells = panel_cells(y)
    rows = []
    for (corpus, ranks, framing, category), cell in sorted(cells.items()):
        if ranks != RAW:
            continue
        row = {"model": model, "corpus": corpus, "category": category, "framing": framing,
               "prompts": prompts[(corpus, framing)], "reference_models": n_reference, "flag": False}
        if n_reference < MIN_OTHER_MODELS:
            rows.append(row | {"finding": TOO_SMALL})
            continue
        if cell is None:
            rows.append(row | {"finding": TOO_FEW_FAMILIES})
            continue
        controlled = cells.get((corpus, FREQUENCY_CONTROLLED, framing, category))
        rows.append(row | {
            "entries": cell.entries, "families": cell.families, "deviation": cell.deviation,
            "deviation_fraction": cell.deviation / corpus_sizes[corpus], "se": cell.se,
            "df": None if np.isnan(cell.df) else cell.df, "ci_low": cell.ci_low, "ci_high": cell.ci_high,
            "p": cell.p, "effect_size_a": cell.effect_size_a,
            "deviation_frequency_controlled": controlled.deviation if controlled else None,
            "p_frequency_controlled": controlled.p if controlled else None,
            "position": (positions or {}).get((model, corpus, category, framing)), "finding": ""})
    card = pl.DataFrame(rows, schema=CARD_SCHEMA) if rows else pl.DataFrame(schema=CARD_SCHEMA)
    tested = card["p"].is_not_null()
    if not tested.any():
        return card
    adjusted = np.full(card.height, np.nan)
    adjusted[tested.to_numpy()] = benjamini_hochberg(card.filter(tested)["p"].to_numpy())
    card = card.with_columns(pl.Series("p_bh", adjusted, dtype=pl.Float64).fill_nan(None))
    card = card.with_columns(pl.col("p_bh").lt(ALPHA).fill_null(False).alias("flag"))
    return card.with_columns(pl.Series("finding", [
        finding(r["category"], r["framing"], r["deviation_fraction"], r["ci_low"] / corpus_sizes[r["corpus"]],
                r["ci_high"] / corpus_sizes[r["corpus"]], r["effect_size_a"], r["p_frequency_controlled"])
        if r["flag"] else r["finding"] for r in card.iter_rows(named=True)], dtype=pl.Utf8))


# ------------------------------------------------------------------------ where a model sits in the registry

def model_profiles(cells: pl.DataFrame) -> pl.DataFrame:
    """``model, corpus, category, framing, profile``: each model's mean median rank over a framing's prompts
    (raw ranks of ``rm_rank_cells``)."""
    return (cells.filter(pl.col("ranks") == RAW)
            .group_by("model", "corpus", "category", "framing")
            .agg(pl.col("median_rank").mean().alias("profile")))


def panel_positions(profiles: pl.DataFrame) -> dict[tuple[str, str, str, str], int]:
    """{(model, corpus, category, framing): where the model sits among all models (1 = ranks the category
    highest, i.e. the lowest mean median rank)}; ``profiles`` from :func:`model_profiles`."""
    ranked = profiles.with_columns(
        pl.col("profile").rank(method="min").over("corpus", "category", "framing").cast(pl.Int64).alias("position"))
    return {(r["model"], r["corpus"], r["category"], r["framing"]): r["position"]
            for r in ranked.iter_rows(named=True)}


def neighbours(profiles: pl.DataFrame, model: str, corpus_sizes: dict[str, int]) -> tuple[str | None, str | None]:
    """(nearest, farthest) other model by profile (``profiles`` from :func:`model_profiles`): Euclidean distance
    over every corpus x category x framing profile, each as a fraction of its corpus size."""
    profiles = profiles.with_columns(
        (pl.col("profile") / pl.col("corpus").replace_strict(corpus_sizes, return_dtype=pl.Float64)).alias("scaled"))
    wide = profiles.pivot(on=["corpus", "category", "framing"], index="model", values="scaled").sort("model")
    if model not in wide["model"].to_list() or wide.height < 2:
        return None, None
    names = wide["model"].to_list()
    matrix = wide.drop("model").to_numpy().astype(float)
    own = matrix[names.index(model)]
    distances = {name: float(np.sqrt(np.nansum((row - own) ** 2)))
                 for name, row in zip(names, matrix) if name != model}
    return min(distances, key=distances.get), max(distances, key=distances.get)
