"""Partitions: one dynamic partition set per kind of thing, so that no asset shows a partition that
cannot succeed.

- ``reward_models``: every registered reward model (``rm_word_scores``);
- ``swept_reward_models``: the reward models whose entry switches ``vocabulary_sweep`` on
  (``rm_vocabulary_sweep``);
- ``language_models``: every registered language model (``lm_next_token_logprobs``, ``lm_word_logprobs``);
- ``pairs``: every ``pairs`` entry, keyed ``{model_a}__vs__{model_b}`` (``mwlr_pair``).

``PARTITION_KEYS`` says, once, which keys each set holds for a registry config. The assets are declared on
these sets; ``valuebias.orchestration.partitions`` keeps them in step with the config (``valuebias run`` / ``ui``
and ``model_partitions_sensor``). Partition keys are model ids, so materializations recorded before the split (one
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

#: What to say when a partition set is empty for a config (``{config}``: its path).
NONE_REGISTERED = {
    REWARD_MODELS: "no reward models are registered in {config}",
    SWEPT_REWARD_MODELS: ("no model in {config} has a vocabulary_sweep: add `vocabulary_sweep: {{prompts: "
                          "[best_ever_one], top_n: 20}}` to a reward model under models.<id>, then "
                          "`valuebias run --config {config}`"),
    LANGUAGE_MODELS: "no language models are registered in {config}",
    PAIRS: "no pairs are configured in {config}: add `pairs: [[model_a, model_b]]` (two registered language models)",
}


def partition_keys(config: RegistryConfig, partitions_def: dg.PartitionsDefinition | None) -> list[str | None]:
    """The keys of a partitioned asset for this config; ``[None]`` for an unpartitioned one."""
    if partitions_def is None:
        return [None]
    return PARTITION_KEYS[partitions_def.name](config)
