"""Sensors: keep the model partitions in step with the registry config."""


import dagster as dg

from orchestration.partitions import MODELS_PARTITION
from orchestration.automation import stale_scoring_requests
from resources.registry import Registry
from valuebias.config import RegistryConfig


def partition_changes(config: RegistryConfig, existing: list[str]) -> tuple[list[str], list[str]]:
    """(model ids to add, model ids to remove) so that the partitions equal the registered models.
    Removing a partition keeps its stored scores and its history in the Dagster instance."""
    wanted = list(config.models)
    return [m for m in wanted if m not in existing], [m for m in existing if m not in wanted]


def sync_model_partitions(instance: dg.DagsterInstance, config: RegistryConfig) -> tuple[list[str], list[str]]:
    """Applies ``partition_changes`` directly to an instance (used by the CLI)."""
    added, removed = partition_changes(config, instance.get_dynamic_partitions(MODELS_PARTITION))
    if added:
        instance.add_dynamic_partitions(MODELS_PARTITION, added)
    for model_id in removed:
        instance.delete_dynamic_partition(MODELS_PARTITION, model_id)
    return added, removed


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING, job_name="rm_scoring_job",
           description="Adds a partition for every model in the registry config, removes deleted ones "
                       "(their stored scores and history stay), and rescores models whose entry changed.")
def model_partitions_sensor(context: dg.SensorEvaluationContext, registry: Registry) -> dg.SensorResult:
    config = registry.load()
    added, removed = partition_changes(config, context.instance.get_dynamic_partitions(MODELS_PARTITION))
    requests = []
    if added:
        requests.append(dg.AddDynamicPartitionsRequest(MODELS_PARTITION, added))
    if removed:
        requests.append(dg.DeleteDynamicPartitionsRequest(MODELS_PARTITION, removed))
    # A changed model entry (new fingerprint) is invisible to data versions: request exactly those partitions.
    changed = [r for r in stale_scoring_requests(context.instance, registry)
               if r.partition_key not in added and "model" in r.tags.get("valuebias/reason", "")]
    run_requests = [dg.RunRequest(job_name=r.job_name, partition_key=r.partition_key, tags=r.tags,
                                  run_key=f"{r.partition_key}:{config.models[r.partition_key].fingerprint}")
                    for r in changed]
    if not requests and not run_requests:
        return dg.SensorResult(skip_reason="model partitions match the config")
    return dg.SensorResult(dynamic_partitions_requests=requests, run_requests=run_requests)
