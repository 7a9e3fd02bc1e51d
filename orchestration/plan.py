"""What to run, walked from Dagster's asset graph: the state of every asset partition the registry
defines, and the work that brings the missing and stale ones up to date.

``valuebias run``, ``valuebias status``, ``model_partitions_sensor`` and the ``<job>_refresh`` schedules all
use these two functions, so none of them keeps its own list of assets, downstream maps or run order:

- :func:`registry_states`: one :class:`~valuebias.assets.versions.PartitionState` per asset partition, assets in
  the graph's topological order, partitions as the config registers them (``valuebias.orchestration.partitions``);
- :func:`ready_work`: the runs to launch now: per job and partition, the non-fresh assets none of whose
  upstream assets is itself missing, stale, failed or failing.

Two states come from the runs rather than the data: ``running`` (a queued or started run plans to
materialize the partition: nothing else requests it, and what reads it waits for it: one run per piece of
work) and ``failed`` (not fresh, and the last run that tried to materialize it failed: the reason is that
run's first error, on one line; what reads it waits, unless ``failed_models: exclude`` lets the statistics
recompute without it, see :func:`waits_for`). An asset that is only stale runs alone, and what
  reads it runs afterwards only if its data version changed (a recomputed table that comes out the same
  leaves its readers fresh); a missing one runs with everything that reads it in the same job.

Which job materializes an asset is read from the jobs' own selections (``valuebias.orchestration.jobs``).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from valuebias.assets.attempts import (INPUTS_TAG, excluded_failed_models, first_error, inputs_digest,  # noqa: F401
                                       with_last_attempt)
from valuebias.assets.versions import ContentCheck, PartitionState, partition_state, upstream_partitions
from valuebias.orchestration.jobs import ALL_JOBS
from valuebias.orchestration.partitions import partition_keys
from valuebias.config import RegistryConfig

INGEST_JOB = "ingest_job"


@dataclass(frozen=True)
class Work:
    """One run to launch: ``assets`` of ``job`` for ``partition`` (None: unpartitioned), and why."""

    job: str
    partition: str | None
    assets: tuple[str, ...]
    reason: str

    @property
    def label(self) -> str:
        return f"{self.job}[{self.partition}]" if self.partition else f"{self.job}[{', '.join(self.assets)}]"

    def run_key(self, states: dict[tuple[str, str | None], PartitionState]) -> str:
        """The same work for the same inputs is requested once (sensor and schedule run keys)."""
        current = {a: states[(a, self.partition)].current for a in self.assets}
        digest = hashlib.sha256(json.dumps(current, sort_keys=True).encode()).hexdigest()[:16]
        return f"{self.job}:{self.partition or ''}:{','.join(self.assets)}:{digest}"

    def tags(self, states: dict[tuple[str, str | None], PartitionState]) -> dict[str, str]:
        """The run's tags: why it runs, and the inputs each asset is computed from (``INPUTS_TAG``: a sensor
        tick does not request again what failed with the same inputs)."""
        return {"valuebias/reason": self.reason[:200], INPUTS_TAG: json.dumps(
            {a: inputs_digest(states[(a, self.partition)].current) for a in self.assets}, sort_keys=True)}

    def run_request(self, states) -> dg.RunRequest:
        return dg.RunRequest(job_name=self.job, partition_key=self.partition, run_key=self.run_key(states),
                             asset_selection=[dg.AssetKey(a) for a in self.assets], tags=self.tags(states))


def same_inputs(attempted: str | None, current: dict[str, str]) -> bool:
    """Whether a run tagged with ``attempted`` (``inputs_digest``) computed from the inputs ``current``."""
    return attempted is not None and attempted == inputs_digest(current)


class RegistryGraph:
    """Dagster's asset graph as the plan reads it: topological order, partitions, parents, and each asset's
    job. Built from ``Definitions.resolve_asset_graph()`` (the CLI) or a tick context's
    ``repository_def.asset_graph`` (sensor, schedules: nothing is rebuilt on a tick)."""

    def __init__(self, graph):
        keys = graph.get_all_asset_keys()
        self.partitions_def = {key.to_user_string(): graph.get(key).partitions_def for key in keys}
        self.parents = {key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
                        for key in keys}
        self.job_of: dict[str, str] = {}
        for job in ALL_JOBS:
            for key in job.selection.resolve(graph):
                self.job_of.setdefault(key.to_user_string(), job.name)
        # the registry's assets in the graph's order; an asset in none of its jobs (``registry_release``: on
        # demand only) is never planned
        self.order = [key.to_user_string() for key in graph.toposorted_asset_keys
                      if key.to_user_string() in self.job_of]
        # the jobs whose steps score models: their assets run in the ``gpu`` pool
        self.scoring_jobs = {self.job_of[key.to_user_string()] for key in keys
                             if "gpu" in (graph.get(key).pools or ())}

    def applies(self, asset: str, config: RegistryConfig) -> bool:
        """Whether the registry has anything for ``asset``: an unpartitioned table computed from partitioned
        ones needs at least one registered partition among them (no reward models: no Figure-1 tables)."""
        partitioned = [a for a in self.ancestors(asset) if self.partitions_def[a] is not None]
        return (self.partitions_def[asset] is not None or not partitioned
                or any(partition_keys(config, self.partitions_def[a]) for a in partitioned))

    @functools.cache
    def ancestors(self, asset: str) -> frozenset[str]:
        found = set(self.parents[asset])
        for parent in self.parents[asset]:
            found |= self.ancestors(parent)
        return frozenset(found)


def registry_states(graph: RegistryGraph, instance: dg.DagsterInstance, config: RegistryConfig,
                    content: ContentCheck, *, reread_inputs: bool = True,
                    check_outputs: bool = True) -> list[PartitionState]:
    """The state of every asset partition the registry defines, in the graph's order. With
    ``reread_inputs`` the input files are read again, so an edited word list shows as stale ingest and
    stale scores before any run (sensor ticks skip that: they compare with what was last ingested). With
    ``check_outputs`` a fresh partition whose stored output is missing, truncated or altered is stale, naming the
    file (``valuebias.assets.tables.stored_output_problem``: on local storage a table whose (size, mtime, inode) changed
    is hashed again, as model files are; ``--verify`` hashes every table)."""
    from valuebias.assets.tables import stored_output_problem
    from valuebias.resources.storage import Storage
    from valuebias.model_content import DigestCache

    storage = Storage(uri=config.storage_uri)
    output_digests = DigestCache(output_digests_path(config))
    would_be = None
    if reread_inputs:
        from valuebias.assets.ingest import ingest_versions

        would_be = ingest_versions(config)
    rows = []
    for asset in graph.order:
        if not graph.applies(asset, config):
            continue
        for key in partition_keys(config, graph.partitions_def[asset]):
            state = partition_state(instance, config, asset, key, overrides=would_be, content=content)
            if would_be and asset in would_be and state.state != "missing" and state.data_version != would_be[asset]:
                state = PartitionState(asset, None, "stale", "input file changed", state.run_id, state.data_version,
                                       state.metadata)
            elif check_outputs and state.state == "fresh":
                problem = stored_output_problem(storage, asset, key, state.metadata, state.data_version,
                                                verify=content.mode == "verify", digests=output_digests,
                                                mode=content.mode)
                if problem:
                    state = PartitionState(asset, key, "stale", problem, state.run_id, state.data_version,
                                           state.metadata, state.current)
            rows.append(with_last_attempt(instance, state))
    output_digests.save()
    return rows


def output_digests_path(config: RegistryConfig) -> Path:
    """The content versions of stored tables, each trusted while its file's (size, mtime, inode) is unchanged
    (``valuebias.model_content.DigestCache``, as for model files)."""
    return Path(config.state_dir) / "output_digests.json"


def ready_work(graph: RegistryGraph, states: list[PartitionState], config: RegistryConfig, *,
               everything: bool = False, retry_failed: bool = True) -> list[Work]:
    """The runs that can start now (see the module docstring), in the graph's order. An (asset, partition)
    waits while anything it reads (``valuebias.assets.versions.upstream_partitions``: a pair waits for its own two
    models only) is missing, stale or failing, or waits itself. ``everything``: every partition of every
    asset, one run per job and partition (``valuebias run --all``), in the graph's order. Without
    ``retry_failed`` (sensor ticks) a partition whose last run failed with the inputs it has now is not
    requested again (the CLI and the refresh schedules retry it; a changed entry or file retries it)."""
    by_key = {(s.asset, s.partition): s for s in states}
    waiting = {key for key, s in by_key.items() if everything or s.state != "fresh"}

    @functools.cache
    def dirty(key: tuple[str, str | None]) -> bool:
        return key in waiting or any(dirty(up) for up in upstream_partitions(config, *key)
                                     if up in by_key and not excused(graph, by_key, config, up, key))

    groups: dict[tuple[str, str | None], list[str]] = {}
    for asset, partition in [(s.asset, s.partition) for s in states if (s.asset, s.partition) in waiting]:
        state = by_key[(asset, partition)]
        if state.state in ("error", "running"):  # cannot run, or runs already: what reads it waits
            continue
        if (state.state == "failed" and not retry_failed and not everything
                and same_inputs(state.metadata.get("attempted_inputs"), state.current)):
            continue  # failed with these very inputs: not again on every tick
        groups.setdefault((graph.job_of[asset], partition), []).append(asset)
    work = []
    for (job, partition), members in groups.items():
        frontier = [a for a in members if not (graph.ancestors(a) & set(members))]
        missing = any(by_key[(a, partition)].state == "missing" for a in frontier)
        chosen = members if everything or missing else frontier

        def waits(assets: list[str], running_with: list[str]) -> bool:  # an input outside the run is not ready
            inside = {(c, partition) for c in running_with}
            return any(dirty(up) for a in assets for up in upstream_partitions(config, a, partition)
                       if up in by_key and up not in inside and not excused(graph, by_key, config, up, (a, partition)))

        if not everything and waits(chosen, chosen):
            continue  # an input is still missing, stale or failing: it runs first
        if not everything and any(carries_readers(by_key[(a, partition)]) for a in frontier):
            for reader in readers_in_job(graph, by_key, job, partition, chosen):
                if not waits([reader], chosen + [reader]):
                    chosen = chosen + [reader]
        first = by_key[(chosen[0], partition)]
        reason = "recompute (--all)" if everything else f"{first.state}{': ' + first.reason if first.reason else ''}"
        work.append(Work(job, partition, tuple(chosen), reason))
    if everything:  # one pass in order: every job after the jobs it reads from
        work.sort(key=lambda w: min(graph.order.index(a) for a in w.assets))
    return work


def carries_readers(state: PartitionState) -> bool:
    """Whether a stale table carries what reads it (in its own job) into its run: it is stale because a
    partition it reads (a model's scores, a pair) or a registered model was added, removed or changed, so
    its rows change and so do its readers' (one run instead of one run per layer, each waiting for a tick).
    A table stale for another reason (its code, a setting) runs alone, and its readers follow only if its
    data version changed."""
    return state.state == "stale" and any("[" in key for key in state.changed)


def readers_in_job(graph: RegistryGraph, by_key: dict, job: str, partition: str | None,
                   chosen: list[str]) -> list[str]:
    """The assets of ``job`` (for ``partition``) downstream of ``chosen``, in the graph's order, that no other
    run is materializing or cannot run."""
    return [a for a in graph.order if graph.job_of[a] == job and a not in chosen and graph.ancestors(a) & set(chosen)
            and (a, partition) in by_key and by_key[(a, partition)].state not in ("running", "error")]


#: The partitioned assets whose failed partitions ``failed_models: exclude`` leaves out of the statistics, and
#: the tables that leave them out (the value cards' reference, ``rm_rank_sums``, leaves them out too).
EXCLUDABLE = {"rm_word_scores": ("rm_rank_cells", "rm_rank_sums")}


def excused(graph: RegistryGraph, by_key: dict, config: RegistryConfig, up: tuple[str, str | None],
            reader: tuple[str, str | None]) -> bool:
    """Whether ``reader`` goes on without ``up``: ``failed_models: exclude`` and ``up`` is a failed scoring
    partition that the statistics table ``reader`` leaves out (named in its metadata, ``excluded_models``)."""
    return (config.failed_models == "exclude" and by_key[up].state == "failed"
            and reader[0] in EXCLUDABLE.get(up[0], ()))


def waiting_summary(graph: RegistryGraph, states: list[PartitionState], config: RegistryConfig) -> str:
    """What holds work back, in one line (the sensor's skip reason, the CLI's last words): the failed and
    running partitions, and the assets that wait for them."""
    by_key = {(s.asset, s.partition): s for s in states}
    holding = {key: s for key, s in by_key.items() if s.state in ("failed", "running", "error")}
    if not holding:
        return ""

    @functools.cache
    def held_by(key: tuple[str, str | None]) -> frozenset:
        found = set()
        for up in upstream_partitions(config, *key):
            if up in by_key and excused(graph, by_key, config, up, key):
                continue
            if up in holding:
                found.add(up)
            elif up in by_key:
                found |= held_by(up)
        return frozenset(found)

    waiting = {}
    for key, s in by_key.items():
        if s.state != "fresh" and key not in holding and held_by(key):
            waiting.setdefault(s.asset, set()).update(held_by(key))
    name = lambda key: f"{key[0]}[{key[1]}]" if key[1] else key[0]  # noqa: E731
    parts = [f"{s.state}: {name(key)} ({s.reason})" for key, s in holding.items()]
    parts += [f"{asset} waits for {', '.join(sorted(name(k) for k in keys))}" for asset, keys in waiting.items()]
    return "; ".join(parts)


def errors(states: list[PartitionState]) -> list[PartitionState]:
    """The partitions whose inputs cannot be read (a model folder or file that disappeared)."""
    return [s for s in states if s.state == "error"]
