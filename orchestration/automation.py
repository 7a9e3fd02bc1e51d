"""Automation: what recomputes by itself, and when. One engine, walked from the asset graph
(``valuebias.orchestration.plan``), so the CLI, the sensor and the schedule agree on what is missing, stale and
ready:

- ``model_partitions_sensor`` (every 5 s, running by default; it plans when the config or an input file
  changed by stat, when a run ended since its last plan, or every 30 s) keeps the partition sets in step with the
  registry config and requests the work that is ready: new or changed models (their config entry or their
  content: a published file, a model folder's files, the commit a hub id resolves to), the pairs whose
  models changed, then the statistics once every score they read is fresh. A table that recomputes to the
  same data version leaves its readers fresh. Sensor ticks never hash weights (``ContentCheck`` mode
  ``stat``): a file whose size, mtime or inode changed makes its partition requested, and the scoring
  worker computes the digest. They compare with what was last ingested (reading the input files is the
  schedule's and the CLI's job).
- the ``<job>_refresh`` schedules (one per job, all on the cron of ``schedule.cron``, default nightly)
  re-read the input files and request every missing and stale partition of every kind (ingest, reward
  models, swept reward models, language models, pairs, statistics) whose inputs are up to date; the
  sensor carries on with what becomes ready as those runs finish.

Dagster's declarative automation (``AutomationCondition``) is not used: a model's entry and content are not
Dagster data versions, and a pair reads two partitions of another partition set, which no partition
mapping expresses (see ``assets/versions.py``). A new model reaches ``rm_report`` and the value cards in
minutes because the sensor plans as soon as a run ends (not on a 30-second clock) and a statistics table
whose partition inputs changed carries its readers into its own run (ARCHITECTURE.md, "A new model
through in minutes").
"""

import dagster as dg

from valuebias.assets.versions import ContentCheck
from valuebias.resources.registry import Registry
from valuebias.config import RegistryConfig


def ready_requests(context, config: RegistryConfig, *, reread_inputs: bool) -> list[dg.RunRequest]:
    """For a sensor or schedule tick: a run request (with a run key: the same work for the same inputs is
    requested once) for every run that can start now (``valuebias.orchestration.plan.ready_work``). Ticks see model
    content by stat only, never hashing weights."""
    return tick_plan(context, config, reread_inputs=reread_inputs)[0]


def tick_plan(context, config: RegistryConfig, *, reread_inputs: bool,
              retry_failed: bool | None = None) -> tuple[list[dg.RunRequest], str]:
    """``ready_requests`` and what holds work back (``valuebias.orchestration.plan.waiting_summary``: failed and
    running partitions and what waits for them), for a tick's skip reason or log."""
    from valuebias.orchestration.plan import RegistryGraph, ready_work, registry_states, waiting_summary

    graph = RegistryGraph(context.repository_def.asset_graph)
    states = registry_states(graph, context.instance, config, ContentCheck(config, mode="stat"),
                             reread_inputs=reread_inputs,
                             check_outputs=reread_inputs)  # sensor ticks leave storage alone
    by_key = {(s.asset, s.partition): s for s in states}
    # a sensor tick does not request again what failed with the same inputs; a schedule tick retries it
    retry = reread_inputs if retry_failed is None else retry_failed
    return ([work.run_request(by_key) for work in ready_work(graph, states, config, retry_failed=retry)],
            waiting_summary(graph, states, config))


def build_refresh_schedules(cron: str) -> list[dg.ScheduleDefinition]:
    """One ``<job>_refresh`` schedule per job (a Dagster schedule launches runs of one job), all on the same
    cron: each requests the ready work of its job, so together they cover every kind of partition."""
    from valuebias.orchestration.jobs import ALL_JOBS

    def refresh(job_name: str) -> dg.ScheduleDefinition:
        @dg.schedule(cron_schedule=cron, job_name=job_name, name=f"{job_name}_refresh",
                     default_status=dg.DefaultScheduleStatus.RUNNING,
                     description=f"Re-reads the input files and requests every missing and stale partition of "
                                 f"{job_name} whose inputs are up to date (model_partitions_sensor carries on "
                                 "from there).")
        def schedule(context: dg.ScheduleEvaluationContext, registry: Registry):
            requests = [r for r in ready_requests(context, registry.load(), reread_inputs=True)
                        if r.job_name == job_name]
            return requests or dg.SkipReason(f"nothing of {job_name} is missing or stale with fresh inputs")

        return schedule

    return [refresh(job.name) for job in ALL_JOBS]
