"""What every model source provides: the seam between a registry entry and the weights (or scores) it names.

A model source is where a registered model comes from. Each one is a module of this package with one
:class:`ModelSource` subclass, and a config block of the same name in ``valuebias.config`` (its keys and the
rules that turn them into the entry's ``settings``). The worker, the staleness check and the provenance
record ask the entry's source, chosen once by :func:`valuebias.model_sources.source_of`, and never compare
source names. ARCHITECTURE.md ("Add a model source") walks through adding one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import polars as pl

from valuebias.config import ModelConfig
from valuebias.errors import InputError
from valuebias.model_content import ContentIdentity, DigestCache


@dataclass(frozen=True)
class Workspace:
    """What resolving a model may need where the worker runs: the registry's prompts and corpus words (a demo
    model is trained on them), the folder of built demo models, and the worker's caches."""

    prompts: pl.DataFrame
    corpus_words: pl.DataFrame
    demo_dir: Path
    digest_cache: str | Path | None = None
    dequantised_dir: str | Path | None = None


class ModelSource:
    """A model source. Subclasses set ``name`` (the config key) and override what they provide; the defaults
    say, in one line naming the model, that this source cannot provide it."""

    name: ClassVar[str]
    #: False: the source imports finished scores (nothing to load, sweep or audit).
    has_weights: ClassVar[bool] = True
    #: True: the content identity is known only once the model is built where the worker runs (demo models).
    identity_from_build: ClassVar[bool] = False
    #: True: the model is made from the registry's corpus words, which are then one of its inputs.
    trained_on_corpus_words: ClassVar[bool] = False

    def _cannot(self, model: ModelConfig, what: str) -> InputError:
        return InputError(f"a {self.name} model cannot {what}", source=f"models.{model.model_id}", field=self.name)

    def content_identity(self, model: ModelConfig, *, cache: DigestCache, read: Callable[[str], bytes],
                         mode: str = "cached") -> ContentIdentity | None:
        """The identity of the entry's content as seen from here (None: known only once built)."""
        return None

    def reward_model(self, model: ModelConfig, where: Workspace) -> tuple[dict[str, Any], ContentIdentity]:
        """(the Hugging Face-style settings the reward-model scorer loads, the identity of what they load)."""
        raise self._cannot(model, "be loaded as a reward model")

    def language_model(self, model: ModelConfig, where: Workspace):
        """(the :class:`~valuebias.lm_scoring.LanguageModelSource` to load, its content identity)."""
        raise self._cannot(model, "be loaded as a language model")

    def import_scores(self, model: ModelConfig, *, base_dir: str, prompts: pl.DataFrame,
                      corpus_words: pl.DataFrame, coverage: str = "complete") -> tuple[pl.DataFrame, dict]:
        """The entry's finished scores, for a source without weights (``coverage``: ``complete`` or
        ``partial``, ``analysis.published_coverage``: whether a file may miss corpus words)."""
        raise self._cannot(model, "import finished scores")

    def input_files(self, model: ModelConfig) -> list[str]:
        """The files the entry reads besides weights (watched for changes by the registry's sensor)."""
        return []

    def location(self, model: ModelConfig) -> Any:
        """Where the model is, for the provenance record."""
        raise NotImplementedError
