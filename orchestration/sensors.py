"""Sensors: keep the model and pair partitions in step with the registry config."""


import hashlib
import json

import dagster as dg

from orchestration.automation import stale_language_model_requests, stale_pair_requests, stale_scoring_requests
from orchestration.jobs import lm_scoring_job, mwlr_job, rm_scoring_job
from orchestration.partitions import MODELS_PARTITION, PAIRS_PARTITION
from resources.registry import Registry
from valuebias.config import RegistryConfig


def partition_changes(config: RegistryConfig, existing: list[str],
                      partition: str = MODELS_PARTITION) -> tuple[list[str], list[str]]:
    """(keys to add, keys to remove) so that the partitions equal the registered models (``models``) or
    the registered pairs (``pairs``). Removing a partition keeps its stored data and its history in the
    Dagster instance."""
    wanted = list(config.models) if partition == MODELS_PARTITION else list(config.pair_models())
    return [m for m in wanted if m not in existing], [m for m in existing if m not in wanted]


def sync_partitions(instance: dg.DagsterInstance, config: RegistryConfig) -> dict[str, tuple[list[str], list[str]]]:
    """Applies ``partition_changes`` for models and pairs directly to an instance (used by the CLI);
    returns ``{partition name: (added, removed)}``."""
    changes = {}
    for name in (MODELS_PARTITION, PAIRS_PARTITION):
        added, removed = partition_changes(config, instance.get_dynamic_partitions(name), name)
        if added:
            instance.add_dynamic_partitions(name, added)
        for key in removed:
            instance.delete_dynamic_partition(name, key)
        changes[name] = (added, removed)
    return changes


def sync_model_partitions(instance: dg.DagsterInstance, config: RegistryConfig) -> tuple[list[str], list[str]]:
    """Syncs the model and pair partitions; returns (models added, models removed)."""
    return sync_partitions(instance, config)[MODELS_PARTITION]


def _run_key(request: dg.RunRequest) -> str:
    """The same request for the same reason is made once."""
    digest = hashlib.sha256(json.dumps(request.tags, sort_keys=True).encode()).hexdigest()[:16]
    return f"{request.job_name}:{request.partition_key}:{digest}"


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           jobs=[rm_scoring_job, lm_scoring_job, mwlr_job],
           description="Adds a partition for every model and pair in the registry config, removes deleted ones "
                       "(their stored data and history stay), rescores models whose entry changed, and computes "
                       "pairs that are missing or whose two language models changed.")
def model_partitions_sensor(context: dg.SensorEvaluationContext, registry: Registry) -> dg.SensorResult:
    config = registry.load()
    requests, added_keys = [], set()
    for name in (MODELS_PARTITION, PAIRS_PARTITION):
        added, removed = partition_changes(config, context.instance.get_dynamic_partitions(name), name)
        added_keys.update(added)
        if added:
            requests.append(dg.AddDynamicPartitionsRequest(name, added))
        if removed:
            requests.append(dg.DeleteDynamicPartitionsRequest(name, removed))
    # A changed model entry (new fingerprint) or content is invisible to data versions: request exactly those
    # partitions, once per (entry, content) state.
    changed = [r for r in stale_scoring_requests(context.instance, registry)
               + stale_language_model_requests(context.instance, registry)
               if r.partition_key not in added_keys and "model" in r.tags.get("valuebias/reason", "")]
    run_requests = [dg.RunRequest(job_name=r.job_name, partition_key=r.partition_key, tags=r.tags,
                                  asset_selection=r.asset_selection,
                                  run_key=f"{r.partition_key}:{config.models[r.partition_key].fingerprint}:"
                                          f"{r.tags.get('valuebias/content', '')}")
                    for r in changed]
    # A pair reads two model partitions (no partition mapping says so): compute missing and stale pairs here.
    run_requests += [dg.RunRequest(job_name=r.job_name, partition_key=r.partition_key, tags=r.tags,
                                   run_key=_run_key(r))
                     for r in stale_pair_requests(context.instance, registry) if r.partition_key not in added_keys]
    if not requests and not run_requests:
        return dg.SensorResult(skip_reason="partitions match the config")
    return dg.SensorResult(dynamic_partitions_requests=requests, run_requests=run_requests)
