"""Scores one reward-model partition: every corpus word x every prompt (METHOD.md section 3).

This is the scoring entry point. It takes a partition's spec and its inputs and returns (or writes)
the score table, so the Dagster asset can call it in-process today and run it out of process
(``python -m valuebias.score_partition spec.json``, e.g. through Dagster Pipes on a GPU pod) later
without a rewrite. It imports torch and transformers; the Dagster code location does not.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import polars as pl

SCORE_SCHEMA = {"model": pl.Utf8, "corpus": pl.Utf8, "prompt": pl.Utf8, "word": pl.Utf8, "score": pl.Float64}


def demo_words_by_category(corpus_words: pl.DataFrame, corpus: str) -> dict[str, list[str]]:
    """The training words of a demonstration model: the words of one corpus, by category."""
    rows = corpus_words.filter(pl.col("corpus") == corpus)
    return {cat: sorted(group["word"].to_list())
            for (cat,), group in rows.group_by("category", maintain_order=True)}


def resolve_model_path(model_id: str, source: str, settings: dict[str, Any], *, demo_dir: Path,
                       prompts: pl.DataFrame, corpus_words: pl.DataFrame) -> dict[str, Any]:
    """The huggingface-style settings to load: as configured, or a demo model built (cached) on disk."""
    if source != "demo":
        return dict(settings)
    from valuebias.demo_models import DemoRecipe, build_demo_reward_model

    recipe = DemoRecipe(architecture=settings["architecture"], preferred_category=settings["preferred_category"],
                        seed=settings["seed"], hidden_size=settings["hidden_size"],
                        num_layers=settings["num_layers"], train_steps=settings["train_steps"])
    path = build_demo_reward_model(
        demo_dir / model_id, recipe,
        words_by_category=demo_words_by_category(corpus_words, settings["train_corpus"]),
        prompts=list(zip(prompts["text"].to_list(), prompts["framing"].to_list())),
    )
    return {"path": str(path), "score": "logits[0]"}


def score_reward_model(model_id: str, source: str, settings: dict[str, Any], *, prompts: pl.DataFrame,
                       corpus_words: pl.DataFrame, demo_dir: Path, batch_size: int = 64,
                       device: str | None = None,
                       progress: Callable[[int, int], None] | None = None) -> tuple[pl.DataFrame, dict]:
    """Scores every unique corpus word under every prompt with the model's own chat template.

    Returns the long table (model, corpus, prompt, word, score) and run metadata."""
    from valuebias.scoring import HuggingFaceSource, load_reward_model, score_words

    started = time.perf_counter()
    hf = resolve_model_path(model_id, source, settings, demo_dir=demo_dir, prompts=prompts,
                            corpus_words=corpus_words)
    src = HuggingFaceSource(model_id=model_id, **hf)
    loaded = load_reward_model(src, device=device)
    loaded_at = time.perf_counter()
    words = sorted(corpus_words["word"].unique().to_list())
    scores = score_words(loaded, score=src.score, prompts=list(zip(prompts["prompt"], prompts["text"])),
                         words=words, batch_size=batch_size, progress=progress)
    scored_at = time.perf_counter()
    table = (corpus_words.select("corpus", "word").unique()
             .join(scores, on="word", how="inner")
             .select(pl.lit(model_id).alias("model"), "corpus", "prompt", "word", "score")
             .sort("corpus", "prompt", "word"))
    sequences = len(scores)
    metadata = {
        "sequences_scored": sequences,
        "unique_words": len(words),
        "prompts": len(prompts),
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).replace("torch.", ""),
        "batch_size": batch_size,
        "load_seconds": round(loaded_at - started, 3),
        "score_seconds": round(scored_at - loaded_at, 3),
        "sequences_per_second": round(sequences / max(scored_at - loaded_at, 1e-9), 1),
        "model_path": hf["path"],
    }
    return table.cast(SCORE_SCHEMA), metadata


def main(argv: list[str] | None = None) -> int:
    """``python -m valuebias.score_partition SPEC.json``: the out-of-process form of one partition.

    SPEC names the model (``model_id``, ``source``, ``settings``), the input parquet files
    (``prompts``, ``corpus_words``), ``demo_dir``, ``batch_size`` and the ``output`` parquet path;
    the metadata is written next to the output as JSON."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(main.__doc__, file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    table, metadata = score_reward_model(
        spec["model_id"], spec["source"], spec["settings"],
        prompts=pl.read_parquet(spec["prompts"]), corpus_words=pl.read_parquet(spec["corpus_words"]),
        demo_dir=Path(spec["demo_dir"]), batch_size=int(spec.get("batch_size", 64)),
        device=spec.get("device"),
    )
    output = Path(spec["output"])
    tmp = output.with_suffix(".partial")
    table.write_parquet(tmp)
    tmp.replace(output)
    output.with_suffix(".json").write_text(json.dumps(metadata, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
