"""Every model source the registry knows, by its config key. Adding a source: one module of this package,
one config block in ``valuebias.config`` (``SOURCE_RULES``), one line here, and its tests."""

from __future__ import annotations

from valuebias.config import ModelConfig
from valuebias.errors import InputError
from valuebias.model_sources.base import ModelSource
from valuebias.model_sources.demo import Demo
from valuebias.model_sources.huggingface import HuggingFace
from valuebias.model_sources.published import Published

SOURCES: dict[str, ModelSource] = {source.name: source for source in (HuggingFace(), Published(), Demo())}


def source_of(model: ModelConfig) -> ModelSource:
    """The source of a registry entry. An unknown name is an error, never a default."""
    source = SOURCES.get(model.source)
    if source is None:
        raise InputError(f"unknown model source '{model.source}' (known: {', '.join(SOURCES)})",
                         source=f"models.{model.model_id}")
    return source

