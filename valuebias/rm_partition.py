"""One reward-model partition, as the scoring worker runs it: every corpus word x every prompt through the
model's own chat template (:func:`score_reward_model`, docs/METHOD.md#31-scoring), and the vocabulary sweep
(:func:`sweep_reward_model`). The model arrives resolved by its source (``valuebias.model_sources``); the
scoring itself is ``valuebias.engine`` (checked against ``valuebias.rm_scoring.score_words``), and
``valuebias.invariance`` audits it.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Callable, Protocol

import polars as pl

from valuebias.model_content import ContentIdentity, score_cache_key
from valuebias.rm_scoring import load_reward_model, render_conversations
from valuebias.hf_loading import HuggingFaceSource, load_tokenizer, check_source, provenance


SCORE_SCHEMA = {"model": pl.Utf8, "corpus": pl.Utf8, "prompt": pl.Utf8, "word": pl.Utf8, "score": pl.Float64}


class ScoreCache(Protocol):
    """Where finished chunks of scores are kept: rows (key, score), one chunk per prompt."""

    def read(self) -> pl.DataFrame: ...

    def write_chunk(self, prompt_id: str, chunk: pl.DataFrame) -> None: ...


def empty_cache() -> pl.DataFrame:
    return pl.DataFrame(schema={"key": pl.Utf8, "score": pl.Float64})


def sequence_key(rendered: str) -> str:
    """Cache key of one scored sequence: a hash of the rendered conversation (template + prompt + word).
    The cache folder itself is specific to the model (its fingerprint)."""
    return hashlib.sha256(rendered.encode()).hexdigest()[:32]


def score_reward_model(model_id: str, resolve: Callable[[], tuple[dict[str, Any], ContentIdentity]], *,
                       prompts: pl.DataFrame, corpus_words: pl.DataFrame, batch_size: int = 64,
                       device: str | None = None, cache: Callable[[str], ScoreCache] | None = None,
                       progress: Callable[[int, int], None] | None = None) -> tuple[pl.DataFrame, dict]:
    """Scores every unique corpus word under every prompt with the model's own chat template.

    ``resolve()`` gives the Hugging Face-style settings to load and the content identity of what they load
    (its model source's ``reward_model``, ``valuebias.model_sources``: a hub id pinned, a demo model built).

    ``cache(key)`` gives the score cache of the resolved model, keyed by its content identity
    (``valuebias.model_content.score_cache_key``: other weights never share a cache). With it,
    sequences already scored by this model (same rendered conversation) are reused,
    and each prompt's new scores are saved as one chunk as soon as they are computed, so an interrupted
    partition resumes where it stopped. Returns the long table (model, corpus, prompt, word, score) and
    run metadata (``sequences_scored``, ``sequences_reused``, engine, timings, and the ``invariance_*``
    figures of the invariance audit, ``valuebias.invariance``)."""
    from valuebias import engine

    started = time.perf_counter()
    hf, identity = resolve()
    src = HuggingFaceSource(model_id=model_id, **hf)
    words = sorted(corpus_words["word"].unique().to_list())
    tokenizer = load_tokenizer(check_source(src))
    cache = cache(score_cache_key(hf, identity)) if cache is not None else None
    cached = cache.read() if cache is not None else empty_cache()
    known = dict(zip(cached["key"].to_list(), cached["score"].to_list()))

    loaded, infos, rows, scored, score_seconds = None, [], [], 0, 0.0
    total = len(prompts) * len(words)
    for prompt_id, text in zip(prompts["prompt"].to_list(), prompts["text"].to_list()):
        keys = [sequence_key(rendered) for rendered in render_conversations(tokenizer, text, words, source=src.source)]
        missing = [w for w, k in zip(words, keys) if k not in known]
        if missing:
            if loaded is None:
                loaded = load_reward_model(src, device=device, identity=identity)
            t0 = time.perf_counter()
            table, info = engine.score_prefix_cached(loaded, score=src.score, prompts=[(prompt_id, text)],
                                                     words=missing, batch_size=batch_size)
            score_seconds += time.perf_counter() - t0
            infos.append(info)
            new = dict(zip(table["word"].to_list(), table["score"].to_list()))
            chunk = pl.DataFrame({"key": [k for w, k in zip(words, keys) if w in new],
                                  "score": [new[w] for w, k in zip(words, keys) if w in new]},
                                 schema={"key": pl.Utf8, "score": pl.Float64})
            if cache is not None:
                cache.write_chunk(prompt_id, chunk)
            known.update(zip(chunk["key"].to_list(), chunk["score"].to_list()))
            scored += len(missing)
        rows.append(pl.DataFrame({"prompt": prompt_id, "word": words, "score": [known[k] for k in keys]},
                                 schema={"prompt": pl.Utf8, "word": pl.Utf8, "score": pl.Float64}))
        if progress is not None:
            progress(sum(len(r) for r in rows), total)

    scores = pl.concat(rows)
    table = (corpus_words.select("corpus", "word").unique()
             .join(scores, on="word", how="inner")
             .select(pl.lit(model_id).alias("model"), "corpus", "prompt", "word", "score")
             .sort("corpus", "prompt", "word"))
    engines = sorted({i["engine"] for i in infos})
    metadata = {
        "sequences_scored": scored,
        "sequences_reused": total - scored,
        "unique_words": len(words),
        "prompts": len(prompts),
        "engine": ", ".join(engines) if engines else "none (everything reused)",
        "oom_halvings": sum(i.get("oom_halvings", 0) for i in infos),
        "device": str(loaded.device) if loaded else "not loaded",
        "dtype": str(loaded.dtype).replace("torch.", "") if loaded else "not loaded",
        "batch_size": batch_size,
        "score_seconds": round(score_seconds, 3),
        "total_seconds": round(time.perf_counter() - started, 3),
        "sequences_per_second": round(scored / score_seconds, 1) if score_seconds else None,
        "model_path": hf["path"],
        **provenance(identity, tokenizer),
    }
    # Invariance audit (valuebias.invariance): also when every score was reused from the cache (the model is
    # then loaded for it: cheap next to scoring, and the reused scores are the ones the tables are built on).
    from valuebias.invariance import audit_partition

    if loaded is None:
        loaded = load_reward_model(src, device=device, identity=identity)
    metadata.update(audit_partition(loaded, score=src.score, prompts=prompts, scores=scores))
    metadata["total_seconds"] = round(time.perf_counter() - started, 3)
    return table.cast(SCORE_SCHEMA), metadata


SWEEP_SCHEMA = {"model": pl.Utf8, "prompt": pl.Utf8, "token_id": pl.Int32, "token": pl.Utf8, "score": pl.Float64}


def sweep_reward_model(model_id: str, resolve: Callable[[], tuple[dict[str, Any], ContentIdentity]],
                       sweep: dict[str, Any], *, prompts: pl.DataFrame, batch_size: int = 64,
                       device: str | None = None) -> tuple[pl.DataFrame, dict]:
    """Scores every vocabulary token, decoded, as the response to each sweep prompt (docs/METHOD.md#6-vocabulary-sweep,
    the FAccT predecessor). Ids that decode to the same string share one score (same conversation).
    Returns (model, prompt, token_id, token, score) and metadata."""
    from valuebias import engine
    from valuebias.lm_scoring import decoded_vocabulary

    chosen = prompts.filter(pl.col("prompt").is_in(sweep["prompts"]))
    unknown = sorted(set(sweep["prompts"]) - set(chosen["prompt"].to_list()))
    if unknown:
        from valuebias.errors import InputError

        raise InputError(f"unknown prompt id(s) {unknown}", source=f"models.{model_id}",
                         field="vocabulary_sweep.prompts")
    started = time.perf_counter()
    hf, identity = resolve()
    src = HuggingFaceSource(model_id=model_id, **hf)
    loaded = load_reward_model(src, device=device, identity=identity)
    vocabulary = decoded_vocabulary(loaded.tokenizer, len(loaded.tokenizer))
    strings = sorted(set(vocabulary.drop_nulls().to_list()))
    scores, info = engine.score_prefix_cached(loaded, score=src.score,
                                              prompts=list(zip(chosen["prompt"], chosen["text"])),
                                              words=strings, batch_size=batch_size)
    ids = pl.DataFrame({"token_id": pl.arange(0, len(vocabulary), eager=True).cast(pl.Int32),
                        "token": vocabulary})
    table = (ids.join(scores.rename({"word": "token"}), on="token", how="inner")
             .select(pl.lit(model_id).alias("model"), "prompt", "token_id", "token", "score")
             .sort("prompt", "token_id"))
    return table.cast(SWEEP_SCHEMA), {
        "vocabulary_size": len(vocabulary), "distinct_strings": len(strings), "prompts": chosen.height,
        "sequences_scored": len(strings) * chosen.height, "engine": info["engine"],
        "oom_halvings": info.get("oom_halvings", 0), "seconds": round(time.perf_counter() - started, 3),
        "device": str(loaded.device), "dtype": str(loaded.dtype).replace("torch.", ""),
        **provenance(identity, loaded.tokenizer)}


def sweep_extremes(sweep: pl.DataFrame, top_n: int) -> pl.DataFrame:
    """Per (model, prompt): the ``top_n`` best and worst distinct token strings, rank 1..n from the top
    (side ``top``) and -1..-n from the bottom (side ``bottom``)."""
    distinct = sweep.unique(subset=["model", "prompt", "token"], keep="first").sort("score", "token",
                                                                                      descending=[True, False])
    ranked = distinct.with_columns(pl.int_range(1, pl.len() + 1).over("model", "prompt").alias("from_top"),
                                   pl.len().over("model", "prompt").alias("n"))
    top = ranked.filter(pl.col("from_top") <= top_n).with_columns(pl.lit("top").alias("side"),
                                                                   pl.col("from_top").alias("rank"))
    bottom = ranked.filter(pl.col("from_top") > pl.col("n") - top_n).with_columns(
        pl.lit("bottom").alias("side"), (pl.col("from_top") - pl.col("n") - 1).alias("rank"))
    return (pl.concat([top, bottom]).select("model", "prompt", "side", pl.col("rank").cast(pl.Int64), "token",
                                            "score").sort("model", "prompt", "score", descending=[False, False, True]))
