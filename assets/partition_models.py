"""What every model partition does first: find its registry entry."""

import dagster as dg

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
