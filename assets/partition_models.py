"""What every model partition does first: find its registry entry and the versions of its inputs."""

import dagster as dg

from assets.versions import current_input_versions
from resources.registry import Registry
from valuebias.config import ModelConfig, RegistryConfig


def registered_model(config: RegistryConfig, model_id: str, kind: str) -> ModelConfig:
    """The registry entry of partition ``model_id``; a clear Failure when it is gone or of another kind."""
    model = config.models.get(model_id)
    if model is None:
        raise dg.Failure(f"model '{model_id}' is not in {config.path} any more; its stored outputs are kept "
                         "but it is left out of the statistics")
    if model.kind != kind:
        raise dg.Failure(f"model '{model_id}' is a {model.kind}, not a {kind.replace('_', ' ')}")
    return model


def partition_model(context: dg.AssetExecutionContext, registry: Registry, asset: str,
                    kind: str) -> tuple[RegistryConfig, ModelConfig, dict[str, str]]:
    """(config, the partition's registry entry, the versions of what ``asset`` reads for it now)."""
    config = registry.load()
    model = registered_model(config, context.partition_key, kind)
    return config, model, current_input_versions(context.instance, config, asset, context.partition_key)
