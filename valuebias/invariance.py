"""Invariance audit of a reward-model partition (docs/METHOD.md#85-invariance-audit).

A partition's scores come from the prefix-cached engine (``valuebias.engine``: packed batches against a
shared key/value cache). A score must not depend on which other sequences share its batch: ranks are what
every table is built on. The audit re-scores a fixed, seeded sample of the partition's sequences one at a
time with the straightforward path (``scoring.score_words`` with ``batch_size=1``: no padding, no cache,
no neighbours) and compares:

- ``invariance_max_abs_diff``: the largest |partition score - one-at-a-time score| over the sample;
- ``invariance_min_kendall_tau`` / ``invariance_mean_kendall_tau``: Kendall's tau-b (as
  ``scipy.stats.kendalltau``) between the two orders of each sampled prompt's words, minimum and mean
  over the sampled prompts;
- ``invariance_flipped_pair_share``: the share of word pairs (within a prompt, over every sampled prompt)
  whose order the two scorings reverse strictly (a < b in one, a > b in the other).

The sample (:func:`audit_sample`): one prompt per adjective (the prompt table's ``adjective`` column;
without it, ``FALLBACK_PROMPTS`` prompts drawn at random), and per chosen prompt up to
``WORDS_PER_PROMPT`` of the partition's words drawn at random (all of them when fewer); every draw is
seeded by ``SEED`` and the drawn item's own name, so it does not depend on the other prompts or on the
order of the tables. On the paper's 54 prompts that is 6 x 64 = 384 sequences.

Only :func:`audit_partition` imports torch (through ``valuebias.rm_scoring``); the Dagster code location reads
the thresholds through :func:`audit_failures`.
"""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np
import polars as pl

#: Seed of every draw of the sample.
SEED = 0
#: Words drawn per sampled prompt.
WORDS_PER_PROMPT = 64
#: Prompts drawn when the prompt table has no ``adjective`` column.
FALLBACK_PROMPTS = 6

#: Largest allowed |difference|, as a fraction of the score scale (the largest |score| of the sample, at
#: least 1), per dtype of the model. float32: the engine and the straightforward path agree to < 1e-6 on
#: the demonstration models (``valuebias.engine``: 8.9e-7 on a hidden-512, 8-layer model; the engine's
#: tests require 1e-4); 1e-3 leaves room for deeper real models and GPU kernels that pick their reduction
#: order by batch shape, and is still far below the gaps between the words of a ranking. bfloat16: the
#: engine's own acceptance bound (the two paths differ by about 3 bf16 ulps, 1.2e-2 at |score| <= 0.52, on
#: the hidden-512 benchmark model; the demo models in bf16 on CPU gave 7.8e-3 at scale 1.13 with no flipped
#: pair; no GPU was available to measure there); float16 carries 3 more mantissa bits: a bound 8 times tighter.
MAX_ABS_DIFF = {"float32": 1e-3, "float16": 4e-3, "bfloat16": 3e-2}
#: Smallest allowed Kendall's tau of one sampled prompt. Without ties tau = 1 - 2 x (share of flipped
#: pairs), so 0.99 allows 0.5 % of one prompt's pairs to flip: near-ties that rounding may swap, never a
#: score that moves with its neighbours (which reorders far more).
MIN_KENDALL_TAU = 0.99
#: Largest allowed share of flipped word pairs over the whole sample (the same 0.5 %).
MAX_FLIPPED_PAIR_SHARE = 0.005

#: ``invariance_audit`` of an audited partition; otherwise it says why it was not audited.
AUDITED = "audited"
NOT_AUDITED_IMPORTED = "not audited: imported scores (no weights to run)"


def audit_sample(prompts: pl.DataFrame, words: list[str], *, seed: int = SEED,
                 words_per_prompt: int = WORDS_PER_PROMPT) -> dict[str, list[str]]:
    """{prompt id: sampled words (sorted)}: one prompt per adjective (or ``FALLBACK_PROMPTS`` prompts
    drawn at random without an ``adjective`` column), up to ``words_per_prompt`` words each."""
    ids = sorted(prompts["prompt"].to_list())
    if "adjective" in prompts.columns:
        by_adjective: dict[str, list[str]] = {}
        for prompt_id, adjective in zip(prompts["prompt"].to_list(), prompts["adjective"].to_list()):
            by_adjective.setdefault(adjective, []).append(prompt_id)
        chosen = [random.Random(f"{seed}:adjective:{adjective}").choice(sorted(group))
                  for adjective, group in sorted(by_adjective.items())]
    else:
        chosen = sorted(random.Random(f"{seed}:prompts").sample(ids, min(FALLBACK_PROMPTS, len(ids))))
    pool = sorted(set(words))
    return {prompt_id: sorted(random.Random(f"{seed}:words:{prompt_id}").sample(pool, min(words_per_prompt,
                                                                                        len(pool))))
            for prompt_id in sorted(chosen)}


def pair_signs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sign(a_i - a_j) and sign(b_i - b_j) over every pair i < j."""
    upper = np.triu(np.ones((len(a), len(a)), dtype=bool), k=1)
    return np.sign(a[:, None] - a[None, :])[upper], np.sign(b[:, None] - b[None, :])[upper]


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b of two score vectors, as ``scipy.stats.kendalltau`` computes it (computed here from the
    pair signs: importing scipy.stats alone costs the worker 0.3-0.8 s, as much as the audit). Where tau-b
    is undefined (a constant vector): 1.0 when both are constant (the same order: all ties), else 0.0 (one
    order is lost entirely)."""
    sign_a, sign_b = pair_signs(a, b)
    untied_a, untied_b = int(np.count_nonzero(sign_a)), int(np.count_nonzero(sign_b))
    if untied_a == 0 or untied_b == 0:
        return 1.0 if untied_a == untied_b else 0.0
    return float(np.sum(sign_a * sign_b) / np.sqrt(float(untied_a) * float(untied_b)))


def flipped_pairs(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(pairs i < j whose order ``a`` and ``b`` reverse strictly, all pairs i < j)."""
    sign_a, sign_b = pair_signs(a, b)
    return int(np.count_nonzero(sign_a * sign_b < 0)), len(sign_a)


def compare_scores(paired: pl.DataFrame) -> dict[str, Any]:
    """The audit's figures from ``paired``: columns ``prompt``, ``word``, ``partition_score``,
    ``single_score`` (one row per sampled sequence)."""
    partition, single = paired["partition_score"].to_numpy(), paired["single_score"].to_numpy()
    taus, flipped, pairs = [], 0, 0
    for (_,), group in paired.sort("prompt", "word").group_by("prompt", maintain_order=True):
        a, b = group["partition_score"].to_numpy(), group["single_score"].to_numpy()
        taus.append(kendall_tau(a, b))
        group_flipped, group_pairs = flipped_pairs(a, b)
        flipped, pairs = flipped + group_flipped, pairs + group_pairs
    return {
        "invariance_sequences": len(paired),
        "invariance_prompts": len(taus),
        "invariance_max_abs_diff": float(np.max(np.abs(partition - single))) if len(paired) else 0.0,
        "invariance_score_scale": max(1.0, float(np.max(np.abs(partition)))) if len(paired) else 1.0,
        "invariance_min_kendall_tau": min(taus) if taus else 1.0,
        "invariance_mean_kendall_tau": float(np.mean(taus)) if taus else 1.0,
        "invariance_flipped_pairs": flipped,
        "invariance_flipped_pair_share": flipped / pairs if pairs else 0.0,
    }


def audit_partition(loaded, *, score: str, prompts: pl.DataFrame, scores: pl.DataFrame, seed: int = SEED,
                    words_per_prompt: int = WORDS_PER_PROMPT) -> dict[str, Any]:
    """Re-scores the sample of the partition ``scores`` (columns ``prompt``, ``word``, ``score``) one
    sequence at a time with ``loaded`` (a ``scoring.LoadedModel``) and ``score`` (the registry's reader).
    Returns the ``invariance_*`` metadata: the figures, the dtype, the thresholds they are held to, and
    the seconds the audit took."""
    from valuebias.rm_scoring import score_words

    started = time.perf_counter()
    sample = audit_sample(prompts, scores["word"].unique().to_list(), seed=seed, words_per_prompt=words_per_prompt)
    texts = dict(zip(prompts["prompt"].to_list(), prompts["text"].to_list()))
    single = pl.concat([score_words(loaded, score=score, prompts=[(prompt_id, texts[prompt_id])], words=words,
                                    batch_size=1) for prompt_id, words in sample.items()])
    paired = (single.rename({"score": "single_score"})
              .join(scores.select("prompt", "word", pl.col("score").alias("partition_score")),
                    on=["prompt", "word"], how="inner"))
    dtype = str(loaded.dtype).replace("torch.", "")
    return {"invariance_audit": AUDITED, **compare_scores(paired), "invariance_dtype": dtype,
            **thresholds(dtype), "invariance_seed": seed,
            "invariance_seconds": round(time.perf_counter() - started, 3)}


def thresholds(dtype: str) -> dict[str, float]:
    """The thresholds the figures of a model run in ``dtype`` are held to (as ``invariance_*`` metadata)."""
    return {"invariance_max_abs_diff_allowed": MAX_ABS_DIFF.get(dtype, MAX_ABS_DIFF["bfloat16"]),
            "invariance_min_kendall_tau_allowed": MIN_KENDALL_TAU,
            "invariance_max_flipped_pair_share_allowed": MAX_FLIPPED_PAIR_SHARE}


def audit_failures(figures: dict[str, Any]) -> list[str]:
    """What in an audit's ``invariance_*`` figures exceeds its thresholds (empty: the audit passes)."""
    limits = thresholds(figures["invariance_dtype"])
    failures = []
    allowed_diff = limits["invariance_max_abs_diff_allowed"] * figures["invariance_score_scale"]
    if figures["invariance_max_abs_diff"] > allowed_diff:
        failures.append(f"max |score difference| {figures['invariance_max_abs_diff']:.3g} > {allowed_diff:.3g} "
                        f"({limits['invariance_max_abs_diff_allowed']:g} x score scale "
                        f"{figures['invariance_score_scale']:.3g}, {figures['invariance_dtype']})")
    if figures["invariance_min_kendall_tau"] < limits["invariance_min_kendall_tau_allowed"]:
        failures.append(f"min Kendall's tau {figures['invariance_min_kendall_tau']:.4f} < "
                        f"{limits['invariance_min_kendall_tau_allowed']}")
    if figures["invariance_flipped_pair_share"] > limits["invariance_max_flipped_pair_share_allowed"]:
        failures.append(f"flipped word pairs {figures['invariance_flipped_pair_share']:.2%} > "
                        f"{limits['invariance_max_flipped_pair_share_allowed']:.1%}")
    return failures
