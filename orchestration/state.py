"""One state folder, used by several processes at once: the Dagster instance is created and migrated by
one process at a time, one ``valuebias run`` works on it at a time (a second one waits, naming the holder),
one process scores a given partition at a time (the CLI's runs and the daemon's alike), and runs whose
process was killed are marked failed when the next command starts.

File locks (``filelock``) on the state folder: they hold between processes on one machine. On a cluster,
where the state is a PostgreSQL instance shared by several machines, Dagster's run queue and the ``gpu``
pool are what keep work apart.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Callable

from filelock import FileLock

from valuebias.config import RegistryConfig

#: Tags of the runs ``valuebias run`` executes in its own process (so a later command can tell a killed one).
PID_TAG, HOST_TAG = "valuebias/pid", "valuebias/host"


def use_project_instance(config: RegistryConfig) -> Path:
    """Points Dagster at ``<state_dir>/dagster`` (created with telemetry off) and at this config."""
    home = Path(config.state_dir) / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    settings = home / "dagster.yaml"
    if not settings.exists():
        tmp = home / f".dagster.yaml.{os.getpid()}"
        tmp.write_text("telemetry:\n  enabled: false\n")
        os.replace(tmp, settings)
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ["VALUEBIAS_CONFIG"] = str(config.path)
    return home


def project_instance(config: RegistryConfig, say: Callable[[str], None] | None = None):
    """The project's Dagster instance. Its storages are created (and migrated) under a lock, so that two
    commands started at once on a new state folder cannot both stamp a schema (two alembic heads). Runs whose
    process is gone are marked failed and the ``gpu`` pool slots of every ended run are freed (``say`` is told
    which)."""
    import dagster as dg

    from valuebias.orchestration.pool import describe_run, free_slots_of_ended_runs
    from valuebias.orchestration.state_version import check_dagster_schema, check_state_version

    home = use_project_instance(config)
    with FileLock(str(home / ".instance.lock")):
        check_state_version(Path(config.state_dir), say)  # a newer version's state folder is refused
        check_dagster_schema(home)
        instance = dg.DagsterInstance.get()
        instance.get_runs(limit=1)  # run storage
        instance.event_log_storage.get_asset_records([])  # event log storage
        instance.all_instigator_state()  # schedule storage
        fail_abandoned_runs(instance)
        freed = free_slots_of_ended_runs(instance)
    if say is not None and freed:
        say(f"freed the concurrency pool slots held by {len(freed)} ended run(s): "
            + ", ".join(describe_run(instance, run_id) for run_id in freed))
    return instance


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_abandoned_runs(instance) -> list[str]:
    """Marks failed the runs a ``valuebias run`` on this machine left created or started when its process was
    killed or interrupted (else they would read as ``running`` and hold their partitions for good)."""
    import dagster as dg

    failed = []
    records = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED,
                                                                dg.DagsterRunStatus.STARTING,
                                                                dg.DagsterRunStatus.NOT_STARTED],
                                                      tags={HOST_TAG: socket.gethostname()}))
    for run in records:
        pid = int(run.tags.get(PID_TAG, "0") or 0)
        if pid and pid != os.getpid() and not _alive(pid):
            instance.report_run_failed(run, f"the process that ran it (pid {pid}) is gone: it was killed or "
                                            "crashed; marked failed by the next valuebias command")
            failed.append(run.run_id)
    return failed


def run_tags() -> dict[str, str]:
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def run_lock(config: RegistryConfig, say: Callable[[str], None]):
    """One ``valuebias run`` per state folder at a time."""
    from valuebias.locks import exclusive

    return exclusive(Path(config.state_dir) / "locks" / "run.lock",
                     f"another `valuebias run` on {config.state_dir}", say)


def remove_finished_staging(storage, instance) -> int:
    """Removes the tables staged under ``staging/<run id>/`` by runs that are over (a run killed or failed
    between staging and publishing leaves them); tables of runs still in progress are kept. Returns how
    many files were removed."""
    by_run: dict[str, list[str]] = {}
    for key in storage.list("staging/"):
        by_run.setdefault(key.split("/")[1], []).append(key)
    removed = 0
    for run_id, keys in by_run.items():
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            for key in keys:
                storage.delete(key)
            removed += len(keys)
    return removed
