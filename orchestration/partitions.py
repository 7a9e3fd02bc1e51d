"""Partitions: one dynamic partition set per kind of thing, so that no asset shows a partition that
cannot succeed.

- ``reward_models``: every registered reward model (``rm_word_scores``);
- ``swept_reward_models``: the reward models whose entry switches ``vocabulary_sweep`` on
  (``rm_vocabulary_sweep``);
- ``language_models``: every registered language model (``lm_next_token_logprobs``, ``lm_word_logprobs``);
- ``pairs``: every ``pairs`` entry, keyed ``{model_a}__vs__{model_b}`` (``mwlr_pair``).

``PARTITION_KEYS`` says, once, which keys each set holds for a registry config. The sets are kept in step
with the config by ``valuebias.orchestration.sensors.model_partitions_sensor`` and by ``valuebias run`` / ``ui``
(``sync_partitions``). Partition keys are model ids, so materializations recorded before the split (one
``models`` set for every model) count under the new sets unchanged.
"""

from __future__ import annotations

from typing import Callable

import dagster as dg

from valuebias.config import RegistryConfig

REWARD_MODELS = "reward_models"
SWEPT_REWARD_MODELS = "swept_reward_models"
LANGUAGE_MODELS = "language_models"
PAIRS = "pairs"
#: The one set every model shared before the split; emptied when the partitions are synced.
LEGACY_PARTITION_SETS = ("models",)

reward_model_partitions = dg.DynamicPartitionsDefinition(name=REWARD_MODELS)
swept_reward_model_partitions = dg.DynamicPartitionsDefinition(name=SWEPT_REWARD_MODELS)
language_model_partitions = dg.DynamicPartitionsDefinition(name=LANGUAGE_MODELS)
pair_partitions = dg.DynamicPartitionsDefinition(name=PAIRS)

#: The keys each partition set holds for a registry config, in config order.
PARTITION_KEYS: dict[str, Callable[[RegistryConfig], list[str]]] = {
    REWARD_MODELS: lambda config: [m.model_id for m in config.reward_models()],
    SWEPT_REWARD_MODELS: lambda config: [m.model_id for m in config.reward_models() if m.vocabulary_sweep],
    LANGUAGE_MODELS: lambda config: [m.model_id for m in config.language_models()],
    PAIRS: lambda config: list(config.pair_models()),
}


def partition_keys(config: RegistryConfig, partitions_def: dg.PartitionsDefinition | None) -> list[str | None]:
    """The keys of a partitioned asset for this config; ``[None]`` for an unpartitioned one."""
    if partitions_def is None:
        return [None]
    return PARTITION_KEYS[partitions_def.name](config)


def partition_changes(config: RegistryConfig, existing: list[str], name: str) -> tuple[list[str], list[str]]:
    """(keys to add, keys to remove) so that partition set ``name`` equals what the config registers.
    Removing a partition keeps its stored data and its history in the Dagster instance."""
    wanted = PARTITION_KEYS[name](config)
    return [k for k in wanted if k not in existing], [k for k in existing if k not in wanted]


def sync_partitions(instance: dg.DagsterInstance, config: RegistryConfig) -> dict[str, tuple[list[str], list[str]]]:
    """Applies ``partition_changes`` to every set of an instance (the CLI does this; the sensor asks for
    the same changes in its result) and empties the pre-split ``models`` set. Returns
    ``{set name: (added, removed)}``."""
    changes = {}
    for name in PARTITION_KEYS:
        added, removed = partition_changes(config, instance.get_dynamic_partitions(name), name)
        if added:
            instance.add_dynamic_partitions(name, added)
        for key in removed:
            instance.delete_dynamic_partition(name, key)
        changes[name] = (added, removed)
    for legacy in LEGACY_PARTITION_SETS:
        for key in instance.get_dynamic_partitions(legacy):
            instance.delete_dynamic_partition(legacy, key)
    return changes


def sync_model_partitions(instance: dg.DagsterInstance, config: RegistryConfig) -> tuple[list[str], list[str]]:
    """Syncs every partition set; returns (models added, models removed), reward and language models."""
    changes = sync_partitions(instance, config)
    added = changes[REWARD_MODELS][0] + changes[LANGUAGE_MODELS][0]
    removed = changes[REWARD_MODELS][1] + changes[LANGUAGE_MODELS][1]
    return added, removed
