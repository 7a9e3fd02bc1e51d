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


#: How often ``model_partitions_sensor`` ticks, and how often a tick walks the whole plan when nothing it
#: watches changed (a tick in between only stats the input files and asks for runs finished since the last plan).
TICK_SECONDS, FULL_PLAN_SECONDS = 5, 30


def finished_since(instance: dg.DagsterInstance, timestamp: float) -> bool:
    """Whether a run of the project's jobs ended (success, failure, cancel) after ``timestamp``: one query."""
    from datetime import datetime, timezone

    ended = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
    return bool(instance.get_run_records(filters=dg.RunsFilter(
        statuses=ended, job_name=None, updated_after=datetime.fromtimestamp(timestamp, tz=timezone.utc)), limit=1))


def read_cursor(cursor: str | None) -> dict:
    """The sensor's cursor: ``{"inputs": stat signature, "planned_at": time of the last full plan, "waiting":
    what held work back then}``; a cursor of an older release (the bare signature) counts as a plan long ago."""
    import json

    if not cursor:
        return {}
    try:
        value = json.loads(cursor)
    except ValueError:
        return {"inputs": cursor, "planned_at": 0.0}
    return value if isinstance(value, dict) else {"inputs": cursor, "planned_at": 0.0}


@dg.sensor(minimum_interval_seconds=TICK_SECONDS, default_status=dg.DefaultSensorStatus.RUNNING, jobs=ALL_JOBS,
           description="Adds a partition for every registered reward model, swept reward model, language model "
                       "and pair, removes deleted ones (their stored data and history stay), and requests the "
                       "runs that are ready: missing or changed models (entry or content), their pairs, then "
                       "the statistics. Every 5 s it stats the config and local input files and looks for runs "
                       "that ended: a change or an ended run plans at once (a new model goes from the config "
                       "edit to its scores, the statistics and the value cards with no 30-second waits); else "
                       "it plans every 30 s. Partitions not in the config (added in the UI) are removed.")
def model_partitions_sensor(context: dg.SensorEvaluationContext, registry: Registry) -> dg.SensorResult:
    import json
    import time

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
    # The config and the local input files, by stat: when one changed since the last tick, this tick re-reads
    # them (hashing their content, as the schedules do) so that an edited word list is re-ingested now.
    seen, last, now = input_stat_signature(config), read_cursor(context.cursor), time.time()
    changed = seen != last.get("inputs")
    if not (partition_requests or changed or now - last.get("planned_at", 0.0) >= FULL_PLAN_SECONDS
            or finished_since(context.instance, last.get("planned_at", 0.0))):
        return dg.SensorResult(skip_reason=last.get("skip") or "nothing changed since the last plan")
    # runs for partitions added by this very result may be requested with it: Dagster adds them first
    runs, waiting = tick_plan(context, config, reread_inputs=changed, retry_failed=False)
    skip = (f"nothing ready; {waiting}" if waiting else
            "partitions match the config and every partition is fresh")[:2000]
    context.update_cursor(json.dumps({"inputs": seen, "planned_at": now, "skip": skip}))
    if waiting:
        context.log.warning(f"waiting: {waiting}")
    if not runs:
        return dg.SensorResult(skip_reason=skip, dynamic_partitions_requests=partition_requests or None)
    return dg.SensorResult(run_requests=runs, dynamic_partitions_requests=partition_requests or None)
