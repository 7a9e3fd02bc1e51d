"""Keeping the partition sets (``valuebias.assets.partitions``, where the assets declare them) in step with the
registry config: ``valuebias run`` / ``ui`` call :func:`sync_partitions`, ``model_partitions_sensor`` asks for
:func:`partition_changes`."""

from __future__ import annotations

import dagster as dg

from valuebias.assets.partitions import (LANGUAGE_MODELS, LEGACY_PARTITION_SETS, PAIRS, PARTITION_KEYS,  # noqa: F401
                                         REWARD_MODELS, SWEPT_REWARD_MODELS, language_model_partitions, pair_partitions,
                                         partition_keys, reward_model_partitions, swept_reward_model_partitions)
from valuebias.config import RegistryConfig


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
