"""What every model partition does first: find its registry entry, and report progress."""

import time
from typing import Callable

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


def progress_logger(context: dg.AssetExecutionContext, model_id: str, unit: str,
                    every_seconds: float = 10.0) -> Callable[[int, int], None]:
    """A progress callback that logs ``done/total <unit>`` to the run's log at most every few seconds."""
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] > every_seconds or done == total:
            last[0] = now
            context.log.info(f"{model_id}: {done}/{total} {unit}")

    return progress
