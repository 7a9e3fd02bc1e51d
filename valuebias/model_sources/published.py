"""Reward models known only by the scores their authors published: one wide score file per corpus."""

from __future__ import annotations

from typing import Callable

import polars as pl

from valuebias.config import ModelConfig
from valuebias.model_content import ContentIdentity, DigestCache, published_identity
from valuebias.model_sources.base import ModelSource
from valuebias.published import import_published_scores


class Published(ModelSource):
    name = "published"
    has_weights = False

    def content_identity(self, model: ModelConfig, *, cache: DigestCache, read: Callable[[str], bytes],
                         mode: str = "cached") -> ContentIdentity:
        """The SHA-256 of each published score file (settings: corpus id -> uri)."""
        return published_identity(model.settings, read)

    def import_scores(self, model: ModelConfig, *, base_dir: str, prompts: pl.DataFrame,
                      corpus_words: pl.DataFrame, coverage: str = "complete") -> tuple[pl.DataFrame, dict]:
        return import_published_scores(model.model_id, model.settings, base_dir, prompts, corpus_words, coverage)

    def input_files(self, model: ModelConfig) -> list[str]:
        return list(model.settings.values())

    def location(self, model: ModelConfig) -> dict[str, str]:
        return dict(model.settings)
