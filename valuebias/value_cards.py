"""Value cards: what one reward model favours, against the whole registry (METHOD.md section 8).

The units are the median-rank cells of Figure 1 (``rm_rank_cells``: one median rank per model, corpus,
category and prompt; 1 = best). For a model ``m``, a corpus, a category and a framing:

- profile: the mean over the framing's prompts of ``m``'s median rank;
- reference: the same mean over every other registered reward model (at each prompt, the mean of the
  others' median ranks, then the mean over prompts);
- deviation = profile - reference (negative: ``m`` ranks the category higher than the registry does), also
  as a fraction of the corpus size, since ranks are comparable across corpora only that way;
- interval: a paired bootstrap over the framing's prompts (prompts resampled with replacement, profile
  and reference recomputed on the same draw; ``DRAWS`` draws, seed ``SEED``, 95 % percentile interval)
  and its two-sided p-value (twice the smaller share of draws on either side of 0, at most 1);
- effect size: d = mean_p(diff_p) / sd_p(diff_p), diff_p = ``m``'s median rank at prompt p minus the
  reference's at p (undefined, null, when sd is 0);
- frequency-controlled deviation: the same deviation on the frequency-controlled cells of
  ``rm_rank_cells`` (``valuebias.statistics.frequency_controlled``: one implementation), with its own
  bootstrap p-value, so a "preference" that is only for frequent words is labelled as such;
- flag: a panel whose bootstrap p-value stays below ``ALPHA`` after Benjamini-Hochberg across the card's
  panels, with its direction in words.

With fewer than ``MIN_MODELS`` reward models the comparison is too small: the card says so and gives no
numbers. Cards are for reward models only (LM word sets differ between tokenizers).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from valuebias.lm_statistics import benjamini_hochberg
from valuebias.statistics import FREQUENCY_CONTROLLED, RAW

DRAWS = 2000
SEED = 0
ALPHA = 0.05
MIN_MODELS = 3
TOO_SMALL = (f"the registry has fewer than {MIN_MODELS} reward models: a comparison with the rest of the registry "
             "is too small to give numbers")

CARD_SCHEMA = {
    "model": pl.Utf8, "corpus": pl.Utf8, "category": pl.Utf8, "framing": pl.Utf8, "prompts": pl.Int64,
    "reference_models": pl.Int64, "profile": pl.Float64, "reference": pl.Float64, "deviation": pl.Float64,
    "deviation_fraction": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "p_bootstrap": pl.Float64,
    "p_bh": pl.Float64, "effect_size": pl.Float64, "deviation_frequency_controlled": pl.Float64,
    "p_bootstrap_frequency_controlled": pl.Float64, "position": pl.Int64, "flag": pl.Boolean,
    "finding": pl.Utf8,
}


def prompt_matrix(cells: pl.DataFrame, model: str) -> dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray, int]]:
    """{(corpus, category, framing): (the model's median ranks per prompt, the other models' mean per prompt,
    the number of other models)}, prompts in the same order in both."""
    panels = {}
    for (corpus, category, framing), panel in cells.group_by("corpus", "category", "framing", maintain_order=True):
        wide = panel.pivot(on="model", index="prompt", values="median_rank").sort("prompt")
        others = [c for c in wide.columns if c not in ("prompt", model)]
        if model not in wide.columns or not others:
            continue
        own = wide[model].to_numpy().astype(float)
        reference = wide.select(others).to_numpy().astype(float).mean(axis=1)
        keep = np.isfinite(own) & np.isfinite(reference)
        panels[(corpus, category, framing)] = (own[keep], reference[keep], len(others))
    return panels


def paired_bootstrap(diff: np.ndarray, *, draws: int = DRAWS, seed: int = SEED) -> tuple[float, float, float]:
    """(95 % percentile interval low, high, two-sided p) of the mean of ``diff`` over resampled prompts."""
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(draws, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    p = min(1.0, 2.0 * min(float((means <= 0).mean()), float((means >= 0).mean())))
    return float(low), float(high), p


def effect_size(diff: np.ndarray) -> float | None:
    """d = mean / sd (ddof 1) of the per-prompt differences; None when sd is 0 or undefined."""
    if len(diff) < 2:
        return None
    sd = float(np.std(diff, ddof=1))
    return float(diff.mean() / sd) if sd > 0 else None


def finding(category: str, framing: str, deviation: float, controlled_p: float | None) -> str:
    """A flag in words, e.g. "ranks Loyalty words higher than the registry under positive framing"."""
    side = "higher" if deviation < 0 else "lower"
    text = f"ranks {category} words {side} than the registry under {framing} framing"
    if controlled_p is not None and controlled_p >= ALPHA:
        text += " (not under the frequency control: a preference for frequent words, not for the value)"
    return text


def value_card(cells: pl.DataFrame, model: str, corpus_sizes: dict[str, int], *, draws: int = DRAWS,
               seed: int = SEED, profiles: pl.DataFrame | None = None) -> pl.DataFrame:
    """One model's card: a row per corpus x category x framing (``CARD_SCHEMA``).

    ``cells`` is ``rm_rank_cells`` (columns ``corpus, ranks, model, category, prompt, framing,
    median_rank``; ``ranks`` raw and, if present, frequency_controlled). ``corpus_sizes``: the number of
    ranked entries of each corpus (the denominator of ``deviation_fraction``). With fewer than
    ``MIN_MODELS`` models in ``cells`` every number is null and ``finding`` says the comparison is too small.
    ``profiles``: :func:`model_profiles` of ``cells``, when the caller has them already.
    """
    raw = cells.filter(pl.col("ranks") == RAW)
    controlled = cells.filter(pl.col("ranks") == FREQUENCY_CONTROLLED)
    n_models = raw["model"].n_unique()
    panels = prompt_matrix(raw, model)
    controlled_panels = prompt_matrix(controlled, model) if controlled.height else {}
    positions = panel_positions(model_profiles(cells) if profiles is None else profiles)
    rows = []
    for (corpus, category, framing), (own, reference, n_others) in sorted(panels.items()):
        row = {"model": model, "corpus": corpus, "category": category, "framing": framing, "prompts": len(own),
               "reference_models": n_others}
        if n_models < MIN_MODELS:
            rows.append(row | {"flag": False, "finding": TOO_SMALL})
            continue
        diff = own - reference
        low, high, p = paired_bootstrap(diff, draws=draws, seed=seed)
        deviation = float(diff.mean())
        row |= {"profile": float(own.mean()), "reference": float(reference.mean()), "deviation": deviation,
                "deviation_fraction": deviation / corpus_sizes[corpus], "ci_low": low, "ci_high": high,
                "p_bootstrap": p, "effect_size": effect_size(diff),
                "position": positions.get((model, corpus, category, framing))}
        if (corpus, category, framing) in controlled_panels:
            c_own, c_reference, _ = controlled_panels[(corpus, category, framing)]
            c_diff = c_own - c_reference
            row |= {"deviation_frequency_controlled": float(c_diff.mean()),
                    "p_bootstrap_frequency_controlled": paired_bootstrap(c_diff, draws=draws, seed=seed)[2]}
        rows.append(row)
    card = pl.DataFrame(rows, schema=CARD_SCHEMA) if rows else pl.DataFrame(schema=CARD_SCHEMA)
    if n_models < MIN_MODELS or card.is_empty():
        return card
    adjusted = benjamini_hochberg(card["p_bootstrap"].to_numpy())
    card = card.with_columns(pl.Series("p_bh", adjusted, dtype=pl.Float64),
                             pl.Series("flag", adjusted < ALPHA, dtype=pl.Boolean))
    return card.with_columns(pl.Series("finding", [
        finding(r["category"], r["framing"], r["deviation"], r["p_bootstrap_frequency_controlled"]) if r["flag"]
        else "" for r in card.iter_rows(named=True)], dtype=pl.Utf8))


def model_profiles(cells: pl.DataFrame) -> pl.DataFrame:
    """``model, corpus, category, framing, profile``: each model's mean median rank over a framing's prompts
    (raw ranks)."""
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
