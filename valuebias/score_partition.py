"""Scores one reward-model partition: every corpus word x every prompt (METHOD.md section 3).

Plain functions that take a partition's inputs and return the score table. The scoring worker
(``resources.scoring_worker``, run through Dagster Pipes in a subprocess or a Kubernetes pod) calls
them. It imports torch and transformers; the Dagster code location does not.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import polars as pl

from valuebias.model_content import ContentIdentity, demo_identity, resolve_for_loading, score_cache_key, text_sha256

SCORE_SCHEMA = {"model": pl.Utf8, "corpus": pl.Utf8, "prompt": pl.Utf8, "word": pl.Utf8, "score": pl.Float64}


def demo_words_by_category(corpus_words: pl.DataFrame, corpus: str) -> dict[str, list[str]]:
    """The training words of a demonstration model: the words of one corpus, by category."""
    rows = corpus_words.filter(pl.col("corpus") == corpus)
    return {cat: sorted(group["word"].to_list())
            for (cat,), group in rows.group_by("category", maintain_order=True)}


def resolve_model_path(model_id: str, source: str, settings: dict[str, Any], *, demo_dir: Path,
                       prompts: pl.DataFrame, corpus_words: pl.DataFrame,
                       digest_cache: str | Path | None = None) -> tuple[dict[str, Any], ContentIdentity]:
    """(the huggingface-style settings to load, the content identity of what they load): as configured
    (a hub id pinned to the commit it resolves to now), or a demo model built (cached) on disk."""
    if source != "demo":
        return resolve_for_loading(model_id, source, settings, digest_cache=digest_cache)
    from valuebias.demo_models import DemoRecipe, build_demo_reward_model

    recipe = DemoRecipe(architecture=settings["architecture"], preferred_category=settings.get("preferred_category"),
                        seed=settings["seed"], hidden_size=settings["hidden_size"],
                        num_layers=settings["num_layers"], train_steps=settings["train_steps"],
                        prefers=settings.get("prefers", "category"))
    path = build_demo_reward_model(
        demo_dir / model_id, recipe,
        words_by_category=demo_words_by_category(corpus_words, settings["train_corpus"]),
        prompts=list(zip(prompts["text"].to_list(), prompts["framing"].to_list())), source=f"models.{model_id}.demo",
    )
    return {"path": str(path), "score": "logits[0]"}, demo_identity(path)


class ScoreCache(Protocol):
    """Where finished chunks of scores are kept: rows (key, score), one chunk per prompt."""

    def read(self) -> pl.DataFrame: ...

    def write_chunk(self, prompt_id: str, chunk: pl.DataFrame) -> None: ...


def empty_cache() -> pl.DataFrame:
    return pl.DataFrame(schema={"key": pl.Utf8, "score": pl.Float64})


def provenance(identity: ContentIdentity, tokenizer, *, template_used: bool = True) -> dict[str, Any]:
    """What the worker knows about the scores it produced: the content identity of the model, the hash of
    the chat template actually used, and the torch and transformers versions."""
    import torch
    import transformers

    template = text_sha256(tokenizer.chat_template) if template_used else "none (raw prompt text)"
    return {"content": identity.to_metadata(), "chat_template_sha256": template,
            "torch": torch.__version__, "transformers": transformers.__version__}


def sequence_key(rendered: str) -> str:
    """Cache key of one scored sequence: a hash of the rendered conversation (template + prompt + word).
    The cache folder itself is specific to the model (its fingerprint)."""
    return hashlib.sha256(rendered.encode()).hexdigest()[:32]


def score_reward_model(model_id: str, source: str, settings: dict[str, Any], *, prompts: pl.DataFrame,
                       corpus_words: pl.DataFrame, demo_dir: Path, batch_size: int = 64,
                       device: str | None = None, cache: Callable[[str], ScoreCache] | None = None,
                       progress: Callable[[int, int], None] | None = None,
                       digest_cache: str | Path | None = None) -> tuple[pl.DataFrame, dict]:
    """Scores every unique corpus word under every prompt with the model's own chat template.

    ``cache(key)`` gives the score cache of the resolved model, keyed by its content identity
    (``valuebias.model_content.score_cache_key``: other weights never share a cache). With it,
    sequences already scored by this model (same rendered conversation) are reused,
    and each prompt's new scores are saved as one chunk as soon as they are computed, so an interrupted
    partition resumes where it stopped. Returns the long table (model, corpus, prompt, word, score) and
    run metadata (``sequences_scored``, ``sequences_reused``, engine, timings)."""
    from valuebias import engine
    from valuebias.scoring import HuggingFaceSource, check_source, load_reward_model, render_conversation

    started = time.perf_counter()
    hf, identity = resolve_model_path(model_id, source, settings, demo_dir=demo_dir, prompts=prompts,
                                      corpus_words=corpus_words, digest_cache=digest_cache)
    src = HuggingFaceSource(model_id=model_id, **hf)
    words = sorted(corpus_words["word"].unique().to_list())
    tokenizer = _load_tokenizer(check_source(src))
    cache = cache(score_cache_key(hf, identity)) if cache is not None else None
    cached = cache.read() if cache is not None else empty_cache()
    known = dict(zip(cached["key"].to_list(), cached["score"].to_list()))

    loaded, infos, rows, scored, score_seconds = None, [], [], 0, 0.0
    total = len(prompts) * len(words)
    for prompt_id, text in zip(prompts["prompt"].to_list(), prompts["text"].to_list()):
        keys = [sequence_key(render_conversation(tokenizer, text, w, source=src.source)) for w in words]
        missing = [w for w, k in zip(words, keys) if k not in known]
        if missing:
            if loaded is None:
                loaded = load_reward_model(src, device=device)
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
    return table.cast(SCORE_SCHEMA), metadata


SWEEP_SCHEMA = {"model": pl.Utf8, "prompt": pl.Utf8, "token_id": pl.Int32, "token": pl.Utf8, "score": pl.Float64}


def sweep_reward_model(model_id: str, source: str, settings: dict[str, Any], sweep: dict[str, Any], *,
                       prompts: pl.DataFrame, corpus_words: pl.DataFrame, demo_dir: Path, batch_size: int = 64,
                       device: str | None = None, digest_cache: str | Path | None = None) -> tuple[pl.DataFrame, dict]:
    """Scores every vocabulary token, decoded, as the response to each sweep prompt (METHOD.md section 6,
    the FAccT predecessor). Ids that decode to the same string share one score (same conversation).
    Returns (model, prompt, token_id, token, score) and metadata."""
    from valuebias import engine
    from valuebias.lm_scoring import decoded_vocabulary
    from valuebias.scoring import HuggingFaceSource, load_reward_model

    chosen = prompts.filter(pl.col("prompt").is_in(sweep["prompts"]))
    unknown = sorted(set(sweep["prompts"]) - set(chosen["prompt"].to_list()))
    if unknown:
        from valuebias.errors import InputError

        raise InputError(f"unknown prompt id(s) {unknown}", source=f"models.{model_id}",
                         field="vocabulary_sweep.prompts")
    started = time.perf_counter()
    hf, identity = resolve_model_path(model_id, source, settings, demo_dir=demo_dir, prompts=prompts,
                                      corpus_words=corpus_words, digest_cache=digest_cache)
    src = HuggingFaceSource(model_id=model_id, **hf)
    loaded = load_reward_model(src, device=device)
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


def _load_tokenizer(kwargs: dict):
    """The tokenizer alone (cheap), to render conversations and look them up in the cache."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(**{k: v for k, v in kwargs.items() if k != "use_safetensors"})
