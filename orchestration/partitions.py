"""Partitions: every registered model is one partition of the scoring assets, every language-model
pair one partition of the implicit-reward asset."""

import dagster as dg

MODELS_PARTITION = "models"
PAIRS_PARTITION = "pairs"

#: One partition per model id in the registry config (reward models and language models). Kept in sync
#: with the config by ``orchestration.sensors.model_partitions_sensor`` and by ``valuebias run`` / ``ui``.
model_partitions = dg.DynamicPartitionsDefinition(name=MODELS_PARTITION)

#: One partition per ``pairs`` entry, keyed ``{model_a}__vs__{model_b}``; kept in sync the same way.
pair_partitions = dg.DynamicPartitionsDefinition(name=PAIRS_PARTITION)
