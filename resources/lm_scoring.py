"""Language-model scoring as a Dagster resource (METHOD.md section 4).

torch and transformers are imported only inside the methods (through ``valuebias.lm_partition``), so
loading the code location or the webserver never imports them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import dagster as dg
import polars as pl

from valuebias.config import ModelConfig, RegistryConfig


class LanguageModelScorer(dg.ConfigurableResource):
    """Runs language models on this machine (CUDA in bf16 when available, CPU float32 otherwise).

    ``batch_size`` (sequences per forward pass of the ``full_sequence`` word rule) of 0 means: use the
    registry's ``scoring.batch_size``. ``device`` forces a torch device (``cpu``, ``cuda:0``); empty
    means automatic."""

    batch_size: int = 0
    device: str = ""

    def next_token_logprobs(self, model: ModelConfig, config: RegistryConfig, prompts: pl.DataFrame,
                            corpus_words: pl.DataFrame,
                            progress: Callable[[int, int], None] | None = None) -> tuple[pl.DataFrame, dict]:
        from valuebias.lm_partition import score_language_model

        return score_language_model(model.model_id, model.source, model.settings, model.variant, prompts=prompts,
                                    corpus_words=corpus_words, demo_dir=Path(config.state_dir) / "demo_models",
                                    device=self.device or None, progress=progress)

    def word_logprobs(self, model: ModelConfig, config: RegistryConfig, next_token: pl.DataFrame,
                      prompts: pl.DataFrame, corpus_words: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
        from valuebias.lm_partition import language_model_word_logprobs

        def load():
            from valuebias.lm_partition import resolve_language_model
            from valuebias.lm_scoring import load_language_model

            src = resolve_language_model(model.model_id, model.source, model.settings, model.variant,
                                         demo_dir=Path(config.state_dir) / "demo_models", prompts=prompts,
                                         corpus_words=corpus_words)
            return load_language_model(src, device=self.device or None)

        return language_model_word_logprobs(model.model_id, next_token, corpus_words, prompts,
                                            rule=config.implicit_rewards.word_rule, load=load,
                                            batch_size=self.batch_size or config.scoring_batch_size)
