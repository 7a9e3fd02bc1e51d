"""Model sources: where a registered model comes from (see ``valuebias.model_sources.base``)."""

from valuebias.model_sources.base import ModelSource, Workspace
from valuebias.model_sources.catalogue import SOURCES, source_of

__all__ = ["SOURCES", "ModelSource", "Workspace", "source_of"]
