"""The sensor: keeps the partition sets in step with the registry config and requests what is ready."""

import dagster as dg

from orchestration.automation import tick_plan
from orchestration.jobs import ALL_JOBS
from orchestration.partitions import PARTITION_KEYS, partition_changes
from resources.registry import Registry


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING, jobs=ALL_JOBS,
           description="Adds a partition for every registered reward model, swept reward model, language model "
                       "and pair, removes deleted ones (their stored data and history stay), and requests the "
                       "runs that are ready: missing or changed models (entry or content), their pairs, then "
                       "the statistics.")
def model_partitions_sensor(context: dg.SensorEvaluationContext, registry: Registry) -> dg.SensorResult:
    config = registry.load()
    partition_requests, added = [], set()
    for name in PARTITION_KEYS:
        new, gone = partition_changes(config, context.instance.get_dynamic_partitions(name), name)
        added.update(new)
        if new:
            partition_requests.append(dg.AddDynamicPartitionsRequest(name, new))
        if gone:
            partition_requests.append(dg.DeleteDynamicPartitionsRequest(name, gone))
    if partition_requests:  # runs for new partitions are requested on the next tick, once they exist
        return dg.SensorResult(dynamic_partitions_requests=partition_requests)
    runs, waiting = tick_plan(context, config, reread_inputs=False)
    if waiting:
        context.log.warning(f"waiting: {waiting}")
    if not runs:
        return dg.SensorResult(skip_reason=f"nothing ready; {waiting}" if waiting else
                               "partitions match the config and every partition is fresh")
    return dg.SensorResult(run_requests=runs)
