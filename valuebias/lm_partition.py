"""One language-model partition (METHOD.md section 4): next-token log-probs, then word log-probs.

This is the LM counterpart of ``valuebias.score_partition``: plain functions that take a partition's
inputs and return tables. The scoring worker (``resources.scoring_worker``, run through Dagster Pipes in
a subprocess or a Kubernetes pod) calls them. It imports torch and transformers; the Dagster code
location does not.

- :func:`score_language_model`: the log-softmax over the whole vocabulary at the last position of every
  prompt (one forward pass per prompt), as ``model, prompt, token_id, token, logprob`` (Int32 ids,
  Float32 log-probs, the token string as ``tokenizer.decode([id])``).
- :func:`language_model_word_logprobs`: every corpus word's log-prob under the paper's
  ``single_token`` rule, or with ``full_sequence`` additionally the whole-sequence log-prob of the words
  that are not one token.

Demonstration LMs (``source: demo``) are built (cached) under ``<demo_dir>/<model id>`` from the
letters-only words of their training corpus (``demo_training_words``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

NEXT_TOKEN_SCHEMA = {"model": pl.Utf8, "prompt": pl.Utf8, "token_id": pl.Int32, "token": pl.Utf8,
                     "logprob": pl.Float32}
WORD_SCHEMA = {"model": pl.Utf8, "corpus": pl.Utf8, "prompt": pl.Utf8, "word": pl.Utf8, "logprob": pl.Float64,
               "rule": pl.Utf8}
# A demo LM is trained on the words of its corpus made of letters only: a word the pre-tokenizer splits
# (hyphen, apostrophe, digits) would need one extra training sequence per prompt and multiply the
# build time ~50-fold, for words the paper's single-token rule drops anyway.
DEMO_WORD_PATTERN = re.compile(r"^[a-z]+$")
# The probabilities of one prompt's next-token distribution sum to 1 within this (float32 over the
# whole vocabulary); anything further off means the table is broken.
PROBABILITY_SUM_TOLERANCE = 1e-2


def demo_training_words(corpus_words: pl.DataFrame, corpus: str) -> dict[str, list[str]]:
    """The training words of a demonstration LM: the letters-only words of one corpus, by category."""
    rows = corpus_words.filter((pl.col("corpus") == corpus) & pl.col("word").str.contains(DEMO_WORD_PATTERN.pattern))
    return {cat: sorted(group["word"].to_list())
            for (cat,), group in rows.group_by("category", maintain_order=True)}


def resolve_language_model(model_id: str, source: str, settings: dict[str, Any], variant: str, *, demo_dir: Path,
                           prompts: pl.DataFrame, corpus_words: pl.DataFrame,
                           digest_cache: str | Path | None = None):
    """(the :class:`~valuebias.lm_scoring.LanguageModelSource` to load, its content identity): as configured
    (a hub id pinned to the commit it resolves to now), or a demo LM built (cached by its recipe
    fingerprint) under ``demo_dir / model_id``."""
    from valuebias.lm_scoring import LanguageModelSource
    from valuebias.model_content import demo_identity, resolve_for_loading

    if source == "demo":
        from valuebias.demo_lms import DemoLMRecipe, build_demo_language_model

        recipe = DemoLMRecipe(architecture=settings["architecture"], variant=variant,
                              preferred_category=settings["preferred_category"], seed=settings["seed"],
                              hidden_size=settings["hidden_size"], num_layers=settings["num_layers"],
                              train_steps=settings["train_steps"])
        path = build_demo_language_model(
            demo_dir / model_id, recipe,
            words_by_category=demo_training_words(corpus_words, settings["train_corpus"]),
            prompts=list(zip(prompts["text"].to_list(), prompts["framing"].to_list())),
            source=f"models.{model_id}.demo")
        return LanguageModelSource(model_id=model_id, path=str(path), variant=variant), demo_identity(path)
    if source != "huggingface":
        from valuebias.errors import InputError

        raise InputError(f"a language model cannot come from a '{source}' source", source=f"models.{model_id}")
    resolved, identity = resolve_for_loading(model_id, source, settings, digest_cache=digest_cache)
    return LanguageModelSource(model_id=model_id, path=resolved["path"], variant=variant,
                               revision=resolved.get("revision"), dtype=resolved.get("dtype", "auto"),
                               trust_remote_code=resolved.get("trust_remote_code", False),
                               allow_pickle=resolved.get("allow_pickle", False),
                               clean_up_tokenization_spaces=resolved.get("clean_up_tokenization_spaces")), identity


def _demo_summary(path: str) -> dict[str, Any]:
    recipe = Path(path) / "recipe.json"
    if not recipe.is_file():
        return {}
    meta = json.loads(recipe.read_text())
    training = meta.get("training", {})
    return {"demo_training_steps": training.get("steps"), "demo_final_loss": training.get("final_loss"),
            "demo_target_entropy": training.get("target_entropy"), "demo_converged": training.get("converged"),
            "demo_training_words": meta.get("n_preferred_words", 0) + meta.get("n_other_words", 0),
            "demo_note": meta.get("note")}


def score_language_model(model_id: str, source: str, settings: dict[str, Any], variant: str, *,
                         prompts: pl.DataFrame, corpus_words: pl.DataFrame, demo_dir: Path,
                         device: str | None = None, progress: Callable[[int, int], None] | None = None,
                         digest_cache: str | Path | None = None) -> tuple[pl.DataFrame, dict]:
    """Next-token log-probs over the whole vocabulary for every prompt (one forward pass each).

    Returns ``model, prompt, token_id, token, logprob`` (prompt-major, ids ascending) and metadata:
    vocabulary size, device, dtype, timings, the largest deviation of a prompt's probabilities from
    summing to 1, and for a demo LM its training summary. Raises ``ValueError`` when a prompt's
    probabilities do not sum to 1 (within ``PROBABILITY_SUM_TOLERANCE``)."""
    from valuebias.lm_scoring import load_language_model, next_token_logprobs
    from valuebias.score_partition import provenance

    started = time.perf_counter()
    src, identity = resolve_language_model(model_id, source, settings, variant, demo_dir=demo_dir, prompts=prompts,
                                           corpus_words=corpus_words, digest_cache=digest_cache)
    built = time.perf_counter()
    loaded = load_language_model(src, device=device)
    t0 = time.perf_counter()
    table = next_token_logprobs(loaded, list(zip(prompts["prompt"].to_list(), prompts["text"].to_list())),
                                progress=progress)
    score_seconds = time.perf_counter() - t0
    table = table.select(pl.lit(model_id, dtype=pl.Utf8).alias("model"), "prompt", "token_id", "token",
                         "logprob")
    sums = table.group_by("prompt").agg(pl.col("logprob").cast(pl.Float64).exp().sum().alias("p"))
    deviation = float((sums["p"] - 1.0).abs().max()) if len(sums) else 0.0
    if deviation > PROBABILITY_SUM_TOLERANCE:
        raise ValueError(f"{model_id}: next-token probabilities of a prompt sum to {1 + deviation:.4f}, not 1")
    metadata = {
        "prompts": len(prompts),
        "vocabulary_size": len(loaded.decoded_vocabulary()),
        "variant": variant,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).replace("torch.", ""),
        "max_probability_sum_error": round(deviation, 8),
        "build_seconds": round(built - started, 3),
        "score_seconds": round(score_seconds, 3),
        "total_seconds": round(time.perf_counter() - started, 3),
        "model_path": src.path,
        **_demo_summary(src.path),
        **provenance(identity, loaded.tokenizer, template_used=variant == "instruction_tuned"),
    }
    return table.cast(NEXT_TOKEN_SCHEMA), metadata


def language_model_word_logprobs(model_id: str, next_token: pl.DataFrame, corpus_words: pl.DataFrame,
                                 prompts: pl.DataFrame, *, rule: str = "single_token",
                                 load: Callable[[], Any] | None = None,
                                 batch_size: int = 64) -> tuple[pl.DataFrame, dict]:
    """Every corpus word's log-prob after every prompt, per corpus.

    ``rule="single_token"`` (the paper's): a word is kept when a vocabulary token decodes to it exactly
    (lowercase, no leading space), with that token's log-prob (the highest among such tokens).
    ``rule="full_sequence"``: in addition, every other word gets the log-prob of its whole token
    sequence (``load()`` gives the loaded model for that). The ``rule`` column says which rule gave each
    row. Returns ``model, corpus, prompt, word, logprob, rule`` and metadata with, per corpus, how many
    words each rule kept and how many were dropped.
    """
    from valuebias.lm_scoring import WORD_RULES, sequence_word_logprobs, single_token_word_logprobs

    if rule not in WORD_RULES:
        raise ValueError(f"unknown word rule {rule!r}; expected one of {list(WORD_RULES)}")
    words = sorted(corpus_words["word"].unique().to_list())
    single, stats = single_token_word_logprobs(next_token.select("prompt", "token", "logprob"), words)
    parts = [single]
    if rule == "full_sequence" and stats["dropped"]:
        if load is None:
            raise ValueError("the full_sequence rule needs the model: pass load")
        texts = dict(zip(prompts["prompt"].to_list(), prompts["text"].to_list()))
        ordered = [(pid, texts[pid]) for pid in next_token["prompt"].unique(maintain_order=True).to_list()]
        multi = sequence_word_logprobs(load(), ordered, stats["dropped"], batch_size=batch_size)
        parts.append(multi.select("prompt", "word", "logprob", "rule"))
    scored = pl.concat(parts)
    table = (corpus_words.select("corpus", "word").unique()
             .join(scored, on="word", how="inner")
             .select(pl.lit(model_id, dtype=pl.Utf8).alias("model"), "corpus", "prompt", "word", "logprob", "rule")
             .sort("corpus", "prompt", "word")
             .cast(WORD_SCHEMA))
    kept = table.select("corpus", "word", "rule").unique()
    per_corpus = {}
    for (corpus_id,), group in corpus_words.select("corpus", "word").unique().group_by("corpus", maintain_order=True):
        rules = kept.filter(pl.col("corpus") == corpus_id)
        n_single = int((rules["rule"] == "single_token").sum())
        n_full = int((rules["rule"] == "full_sequence").sum())
        per_corpus[corpus_id] = {"words": len(group), "single_token": n_single, "full_sequence": n_full,
                                 "dropped": len(group) - n_single - n_full}
    metadata = {"word_rule": rule, "words_kept": per_corpus,
                "words_single_token": stats["n_kept"],
                "words_full_sequence": len(stats["dropped"]) if rule == "full_sequence" else 0,
                "words_dropped": 0 if rule == "full_sequence" else stats["n_dropped"]}
    return table, metadata
