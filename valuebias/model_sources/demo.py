"""Demonstration models: tiny transformers the project trains offline from a recipe (``valuebias.demo_models``),
built where the worker runs and cached under the state folder. Their identity is their build fingerprint."""

from __future__ import annotations

import re
from typing import Any

import polars as pl

from valuebias.config import ModelConfig
from valuebias.model_content import ContentIdentity
from valuebias.model_sources.base import ModelSource, Workspace

# A demo LM is trained on the words of its corpus made of letters only: a word the pre-tokenizer splits
# (hyphen, apostrophe, digits) would need one extra training sequence per prompt and multiply the
# build time ~50-fold, for words the paper's single-token rule drops anyway.
DEMO_LM_WORD_PATTERN = re.compile(r"^[a-z]+$")


class Demo(ModelSource):
    name = "demo"
    identity_from_build = True
    trained_on_corpus_words = True

    def reward_model(self, model: ModelConfig, where: Workspace) -> tuple[dict[str, Any], ContentIdentity]:
        from valuebias.demo_models.reward_models import DemoRecipe, build_demo_reward_model

        settings = model.settings
        recipe = DemoRecipe(architecture=settings["architecture"], preferred_category=settings.get("preferred_category"),
                            seed=settings["seed"], hidden_size=settings["hidden_size"],
                            num_layers=settings["num_layers"], train_steps=settings["train_steps"],
                            prefers=settings.get("prefers", "category"))
        path = build_demo_reward_model(
            where.demo_dir / model.model_id, recipe,
            words_by_category=training_words(where.corpus_words, settings["train_corpus"]),
            prompts=_prompt_texts(where.prompts), source=f"models.{model.model_id}.demo")
        return {"path": str(path), "score": "logits[0]"}, demo_identity(path)

    def language_model(self, model: ModelConfig, where: Workspace):
        from valuebias.demo_models.language_models import DemoLMRecipe, build_demo_language_model
        from valuebias.lm_scoring import LanguageModelSource

        settings = model.settings
        recipe = DemoLMRecipe(architecture=settings["architecture"], variant=model.variant,
                              preferred_category=settings["preferred_category"], seed=settings["seed"],
                              hidden_size=settings["hidden_size"], num_layers=settings["num_layers"],
                              train_steps=settings["train_steps"])
        path = build_demo_language_model(
            where.demo_dir / model.model_id, recipe,
            words_by_category=training_words(where.corpus_words, settings["train_corpus"], DEMO_LM_WORD_PATTERN),
            prompts=_prompt_texts(where.prompts), source=f"models.{model.model_id}.demo")
        return LanguageModelSource(model_id=model.model_id, path=str(path), variant=model.variant), demo_identity(path)

    def location(self, model: ModelConfig) -> str:
        return f"demo build under the state folder ({model.model_id})"


def training_words(corpus_words: pl.DataFrame, corpus: str, pattern: re.Pattern | None = None) -> dict[str, list[str]]:
    """The training words of a demo model: the words of one corpus (matching ``pattern``), by category."""
    rows = corpus_words.filter(pl.col("corpus") == corpus)
    if pattern is not None:
        rows = rows.filter(pl.col("word").str.contains(pattern.pattern))
    return {cat: sorted(group["word"].to_list()) for (cat,), group in rows.group_by("category", maintain_order=True)}


def demo_identity(folder) -> ContentIdentity:
    """A built demonstration model is its build fingerprint (recipe, training words, prompts, code)."""
    from valuebias.demo_models.tiny_models import read_build_fingerprint

    return ContentIdentity("demo", {"build": read_build_fingerprint(folder) or "unbuilt"})


def _prompt_texts(prompts: pl.DataFrame) -> list[tuple[str, str]]:
    return list(zip(prompts["text"].to_list(), prompts["framing"].to_list()))
