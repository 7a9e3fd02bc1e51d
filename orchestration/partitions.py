"""Partitions: every registered model is one partition of the scoring assets."""

import dagster as dg

MODELS_PARTITION = "models"

#: One partition per model id in the registry config. Kept in sync with the config by
#: ``orchestration.sensors.model_partitions_sensor`` and by ``valuebias run`` / ``valuebias ui``.
model_partitions = dg.DynamicPartitionsDefinition(name=MODELS_PARTITION)
