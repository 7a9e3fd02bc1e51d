"""Reward-model scoring as a Dagster resource: where models run, and how published scores are imported.

torch and transformers are imported only inside ``score`` (through ``valuebias.score_partition``),
so loading the code location or the webserver never imports them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import dagster as dg
import polars as pl

from resources.storage import Storage, read_input_uri
from valuebias.config import ModelConfig, RegistryConfig
from valuebias.errors import InputError
from valuebias.published import read_published_scores


class RewardModelScorer(dg.ConfigurableResource):
    """Scores reward models on this machine (CUDA in bf16 when available, CPU float32 otherwise).

    ``batch_size`` of 0 means: use the registry's ``scoring.batch_size``. ``device`` forces a torch
    device (``cpu``, ``cuda:0``); empty means automatic."""

    batch_size: int = 0
    device: str = ""

    def score(self, model: ModelConfig, config: RegistryConfig, storage: Storage, prompts: pl.DataFrame,
              corpus_words: pl.DataFrame,
              progress: Callable[[int, int], None] | None = None) -> tuple[pl.DataFrame, dict]:
        if model.source == "published":
            return import_published_scores(model, config, prompts, corpus_words)
        from valuebias.score_partition import score_reward_model

        if config.scoring_threads:
            import torch

            torch.set_num_threads(config.scoring_threads)

        return score_reward_model(
            model.model_id, model.source, model.settings, prompts=prompts, corpus_words=corpus_words,
            demo_dir=Path(config.state_dir) / "demo_models",
            batch_size=self.batch_size or config.scoring_batch_size, device=self.device or None,
            cache=lambda identity: StorageScoreCache(storage, f"score_cache/{model.model_id}/{identity}/"),
            progress=progress,
        )


def sweep_vocabulary(scorer: RewardModelScorer, model: ModelConfig, config: RegistryConfig, prompts: pl.DataFrame,
                     corpus_words: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    """The full-vocabulary sweep of one reward model (``vocabulary_sweep`` in its registry entry)."""
    from valuebias.score_partition import sweep_reward_model

    if model.source == "published":
        raise InputError("a published model has no weights to sweep", source=f"models.{model.model_id}",
                         field="vocabulary_sweep")
    if config.scoring_threads:
        import torch

        torch.set_num_threads(config.scoring_threads)
    return sweep_reward_model(model.model_id, model.source, model.settings, model.vocabulary_sweep,
                              prompts=prompts, corpus_words=corpus_words,
                              demo_dir=Path(config.state_dir) / "demo_models",
                              batch_size=scorer.batch_size or config.scoring_batch_size,
                              device=scorer.device or None)


class StorageScoreCache:
    """The score cache of one model in product storage: one parquet chunk per scored prompt, each
    written atomically, so a killed partition keeps every finished chunk and never a partial one."""

    def __init__(self, storage: Storage, prefix: str):
        self.storage, self.prefix = storage, prefix

    def read(self) -> pl.DataFrame:
        from valuebias.score_partition import empty_cache

        keys = [k for k in self.storage.list(self.prefix) if k.endswith(".parquet")]
        return pl.concat([self.storage.read_parquet(k) for k in keys]) if keys else empty_cache()

    def write_chunk(self, name: str, chunk: pl.DataFrame) -> None:
        self.storage.write_parquet(f"{self.prefix}{name}.parquet", chunk)


def import_published_scores(model: ModelConfig, config: RegistryConfig, prompts: pl.DataFrame,
                            corpus_words: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    """Reads the authors' wide score files (``response`` + one column per prompt id), one per corpus,
    keeping the words of that corpus. Metadata counts what matched and what did not."""
    prompt_ids = prompts["prompt"].to_list()
    tables, metadata = [], {}
    for corpus_id, uri in model.settings.items():
        scores = read_published_scores(read_input_uri(uri, base_dir=config.base_dir), source=uri,
                                       prompt_ids=prompt_ids).unique(maintain_order=True)  # exact duplicates
        clash = scores.filter(pl.struct("prompt", "word").is_duplicated())
        if not clash.is_empty():
            raise InputError(f"word '{clash['word'][0]}' has two different scores (after lowercasing and "
                             "trimming); keep one row per word", source=uri, field="response")
        words = corpus_words.filter(pl.col("corpus") == corpus_id).select("word").unique()
        kept = scores.join(words, on="word", how="inner")
        file_words = scores["word"].n_unique()
        metadata[f"{corpus_id}/file"] = uri
        metadata[f"{corpus_id}/words_in_file"] = file_words
        metadata[f"{corpus_id}/words_matched"] = kept["word"].n_unique()
        metadata[f"{corpus_id}/corpus_words_without_score"] = len(words) - kept["word"].n_unique()
        tables.append(kept.select(pl.lit(model.model_id).alias("model"), pl.lit(corpus_id).alias("corpus"),
                                  "prompt", "word", "score"))
    table = pl.concat(tables).sort("corpus", "prompt", "word")
    metadata["sequences_scored"] = 0
    metadata["rows_imported"] = len(table)
    return table, metadata
