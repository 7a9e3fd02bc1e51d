"""The sensor: keeps the partition sets in step with the registry config and requests what is ready."""

import dagster as dg

from valuebias.orchestration.automation import tick_plan
from valuebias.orchestration.jobs import ALL_JOBS
from valuebias.orchestration.partitions import PARTITION_KEYS, partition_changes
from valuebias.resources.registry import Registry


def input_stat_signature(config) -> str:
    """A digest of (size, mtime, inode) of the config file and of every local input file it names (prompts,
    corpora, published score files): cheap, read on every tick; a change makes the tick re-read the inputs."""
    import hashlib
    import os

    from valuebias.config import resolve_uri
    from valuebias.model_sources import source_of

    paths = [str(config.path), config.prompts_uri] + [c.uri for c in config.corpora.values()] + [
        resolve_uri(uri, config.base_dir) for m in config.models.values() for uri in source_of(m).input_files(m)]
    stats = []
    for path in paths:
        local = path[len("file://"):] if path.startswith("file://") else path
        if "://" in local:
            continue  # package files do not change; remote ones are re-read by the schedules
        try:
            st = os.stat(local)
            stats.append((local, st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError:
            stats.append((local, None))
    return hashlib.sha256(repr(sorted(stats, key=str)).encode()).hexdigest()[:16]


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING, jobs=ALL_JOBS,
           description="Adds a partition for every registered reward model, swept reward model, language model "
                       "and pair, removes deleted ones (their stored data and history stay), and requests the "
                       "runs that are ready: missing or changed models (entry or content), their pairs, then "
                       "the statistics. A changed config or local input file (by stat) is re-read and "
                       "re-ingested on the next tick. Partitions not in the config (added in the UI) are removed.")
def model_partitions_sensor(context: dg.SensorEvaluationContext, registry: Registry) -> dg.SensorResult:
    config = registry.load()
    partition_requests, added = [], set()
    for name in PARTITION_KEYS:
        new, gone = partition_changes(config, context.instance.get_dynamic_partitions(name), name)
        added.update(new)
        if new:
            partition_requests.append(dg.AddDynamicPartitionsRequest(name, new))
        if gone:  # e.g. added from the UI's "add partition" dialog: the config is the registry
            context.log.warning(f"removing {name} partition(s) {', '.join(gone)}: not registered in {config.path} "
                                "(register a model or pair there; partitions added in the UI are removed)")
            partition_requests.append(dg.DeleteDynamicPartitionsRequest(name, gone))
    if partition_requests:  # runs for new partitions are requested on the next tick, once they exist
        return dg.SensorResult(dynamic_partitions_requests=partition_requests)
    # The config and the local input files, by stat: when one changed since the last tick, this tick re-reads
    # them (hashing their content, as the schedules do) so that an edited word list is re-ingested now.
    seen = input_stat_signature(config)
    runs, waiting = tick_plan(context, config, reread_inputs=seen != context.cursor, retry_failed=False)
    context.update_cursor(seen)
    if waiting:
        context.log.warning(f"waiting: {waiting}")
    if not runs:
        return dg.SensorResult(skip_reason=f"nothing ready; {waiting}" if waiting else
                               "partitions match the config and every partition is fresh")
    return dg.SensorResult(run_requests=runs)
