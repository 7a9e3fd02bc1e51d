"""Implicit rewards of two language models: the mixture-weighted log ratio
(docs/METHOD.md#5-implicit-rewards-and-mwlr-table-1-figure-3).

A policy tuned with KL-regularised RL satisfies ``pi_r(y|x) ∝ pi_ref(y|x) exp(r(x, y) / beta)``, so the
log-ratio of two models is a reward up to a prompt-only constant. The paper compares two families
token by token with

    MWLR(t) = 0.5 * (p_a(t) + p_b(t)) * (log p_a(t) - log p_b(t))

for each decoded token string ``t`` after the same prompt. The two tokenizers differ, so tables are
joined on the decoded string; where several ids decode to the same string the highest log-prob is
kept (:func:`best_logprob_per_string`). MWLR is antisymmetric (swapping a and b negates it), shrinks
tokens neither model would say toward 0, and when both models share one vocabulary whose decoded
strings are distinct, its sum over the vocabulary is ``0.5 * (KL(p_a || p_b) - KL(p_b || p_a))``.

Inputs are :func:`valuebias.lm_scoring.next_token_logprobs` tables (``prompt, token, logprob``, plus
``token_id``); outputs are polars DataFrames.
"""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl

from valuebias.errors import InputError
from valuebias.table_checks import require_columns

MWLR_SCHEMA = {"prompt": pl.Utf8, "token": pl.Utf8, "logprob_a": pl.Float64, "logprob_b": pl.Float64,
               "mwlr": pl.Float64}


def best_logprob_per_string(logprobs: pl.DataFrame, *, source: str = "logprobs") -> pl.DataFrame:
    """Per (prompt, decoded token string), the highest log-prob among the ids that decode to it.

    Rows with a null token (output ids the tokenizer lacks) are dropped. Returns ``prompt, token,
    logprob`` (Float64) and, when the input has ``token_id``, the id that carried the maximum
    (the smallest such id on a tie); sorted by prompt and token.
    """
    require_columns(logprobs, ["prompt", "token", "logprob"], source)
    aggs = [pl.col("logprob").max().cast(pl.Float64)]
    if "token_id" in logprobs.columns:
        aggs.append(pl.col("token_id").sort_by(["logprob", "token_id"], descending=[True, False]).first())
    return (
        logprobs.lazy()
        .filter(pl.col("token").is_not_null())
        .group_by("prompt", "token")
        .agg(*aggs)
        .sort("prompt", "token")
        .collect()
    )


def mwlr(logprobs_a: pl.DataFrame, logprobs_b: pl.DataFrame) -> pl.DataFrame:
    """MWLR of model a against model b for every token string both vocabularies decode to.

    Each input is reduced with :func:`best_logprob_per_string`, then inner-joined on
    ``(prompt, token)``; strings one vocabulary lacks are dropped. Computed in float64:
    ``p = exp(logprob)``, ``mwlr = 0.5 * (p_a + p_b) * (logprob_a - logprob_b)``.

    Returns ``prompt, token, logprob_a, logprob_b, mwlr`` (Float64), sorted by prompt, then ``mwlr``
    descending, then token.
    """
    a = best_logprob_per_string(logprobs_a, source="logprobs_a").select(
        "prompt", "token", pl.col("logprob").alias("logprob_a"))
    b = best_logprob_per_string(logprobs_b, source="logprobs_b").select(
        "prompt", "token", pl.col("logprob").alias("logprob_b"))
    return (
        a.join(b, on=["prompt", "token"], how="inner")
        .with_columns(
            (0.5 * (pl.col("logprob_a").exp() + pl.col("logprob_b").exp())
             * (pl.col("logprob_a") - pl.col("logprob_b"))).alias("mwlr"))
        .select("prompt", "token", "logprob_a", "logprob_b", "mwlr")
        .sort(["prompt", "mwlr", "token"], descending=[False, True, False])
    )


def top_bottom_tokens(mwlr_table: pl.DataFrame, n: int = 15) -> pl.DataFrame:
    """Per prompt, the ``n`` strings with the highest MWLR and the ``n`` with the lowest (Table 1).

    ``rank`` is 1..n for the top (1 = highest MWLR, most favoured by model a) and -1..-n for the bottom
    (-1 = lowest, most favoured by model b); ``side`` is ``"top"`` or ``"bottom"``. Ties are broken by
    token string. With fewer than ``2n`` strings a string can appear on both sides. Returns
    ``prompt, side, rank, token, mwlr`` (plus ``logprob_a, logprob_b`` when present), sorted by prompt,
    then the top rows 1..n, then the bottom rows -n..-1: the table reads from most favoured by a to
    most favoured by b.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    require_columns(mwlr_table, ["prompt", "token", "mwlr"], "mwlr_table")
    extra = [c for c in ("logprob_a", "logprob_b") if c in mwlr_table.columns]
    base = mwlr_table.select("prompt", "token", "mwlr", *extra)
    top = (base.sort(["prompt", "mwlr", "token"], descending=[False, True, False])
           .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over("prompt").alias("rank"))
           .filter(pl.col("rank") <= n)
           .with_columns(pl.lit("top").alias("side")))
    bottom = (base.sort(["prompt", "mwlr", "token"], descending=[False, False, False])
              .with_columns((-pl.int_range(1, pl.len() + 1, dtype=pl.Int32)).over("prompt").alias("rank"))
              .filter(pl.col("rank") >= -n)
              .with_columns(pl.lit("bottom").alias("side")))
    return (pl.concat([top, bottom])
            .sort(pl.col("prompt"), pl.col("side") == "bottom", pl.col("rank"))
            .select("prompt", "side", "rank", "token", "mwlr", *extra))


def word_variants(word: str) -> list[str]:
    """The case and leading-space variants of a word: ``word, Word, WORD`` and each with a leading
    space, distinct, in that order."""
    base = word.strip().lower()
    forms = [base, base[:1].upper() + base[1:], base.upper()]
    return list(dict.fromkeys([*forms, *(" " + f for f in forms)]))


def word_mwlr(mwlr_table: pl.DataFrame, words: Iterable[str]) -> pl.DataFrame:
    """Per prompt and word, the mean MWLR over the word's variants present as decoded strings (Figure 3).

    Variants are :func:`word_variants` (``freedom, Freedom, FREEDOM`` and `` freedom, Freedom,
    FREEDOM``); each variant present in the MWLR table counts once. A word with no variant present
    in a prompt gets no row. Returns ``prompt, word, mwlr`` (Float64), ``n_variants`` (UInt32) and
    ``variants`` (the matched strings, sorted), sorted by prompt and word.
    """
    require_columns(mwlr_table, ["prompt", "token", "mwlr"], "mwlr_table")
    pairs = {}
    for i, word in enumerate(words):
        if not isinstance(word, str) or not word.strip():
            raise InputError(f"word must be a non-empty string, got {word!r}", source="words", row=i + 1,
                             field="word")
        base = word.strip().lower()
        for variant in word_variants(base):
            pairs[(variant, base)] = None
    lookup = pl.DataFrame({"token": [v for v, _ in pairs], "word": [w for _, w in pairs]},
                          schema={"token": pl.Utf8, "word": pl.Utf8})
    return (
        mwlr_table.select("prompt", "token", pl.col("mwlr").cast(pl.Float64))
        .join(lookup, on="token", how="inner")
        .group_by("prompt", "word")
        .agg(pl.col("mwlr").mean(), pl.len().cast(pl.UInt32).alias("n_variants"),
             pl.col("token").sort().alias("variants"))
        .select("prompt", "word", "mwlr", "n_variants", "variants")
        .sort("prompt", "word")
    )
