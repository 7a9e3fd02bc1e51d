"""What the runs say of an asset partition: ``running`` while a queued or started run plans to materialize it,
``failed`` (with that run's first error, on one line) when it is not fresh and the last run that tried failed.

``valuebias.orchestration.plan`` reads every partition's state through :func:`with_last_attempt`; the Figure-1
assets read :func:`excluded_failed_models` (``failed_models: exclude``), so this lives beside the assets, below
the orchestration that launches the runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import dagster as dg

from valuebias.assets.versions import ContentCheck, PartitionState, latest_record, partition_state
from valuebias.config import RegistryConfig

#: The tag of a run with ``{asset: inputs_digest}`` of what it computes.
INPUTS_TAG = "valuebias/inputs"


def inputs_digest(current: dict[str, str]) -> str:
    """A digest of the input versions an asset partition would be computed from, but its model content: a
    tick sees content by stat only, as an unverified identity until the scoring step has hashed the files,
    so a model's first attempt and the ticks after it would disagree on it."""
    rest = {k: v for k, v in current.items() if k != "model_content"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:16]


#: Run statuses of a run that will still (or is about to) materialize what it plans.
IN_PROGRESS = (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
               dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)


def with_last_attempt(instance: dg.DagsterInstance, state: PartitionState) -> PartitionState:
    """``state``, or ``running`` when a queued or started run plans to materialize the partition, or
    ``failed`` (with the run's first error on one line) when it is not fresh and the last run that planned
    to materialize it failed. Read from Dagster's planned-materialization events: a run plans its assets when
    it is created, whoever launched it (the CLI, the sensor, a schedule, the UI)."""
    if state.state == "error":
        return state
    planned = instance.get_latest_planned_materialization_info(dg.AssetKey(state.asset), state.partition)
    if planned is None:
        return state
    record = latest_record(instance, state.asset, state.partition)
    if record is not None and record.storage_id > planned.storage_id:
        return state  # materialized after the last plan
    run = instance.get_run_by_id(planned.run_id)
    if run is None:
        return state
    if run.status in IN_PROGRESS:
        return replace(state, state="running", reason=f"run {run.run_id[:8]} ({run.job_name}) is "
                                                      f"{run.status.value.lower()}", run_id=run.run_id)
    if run.status == dg.DagsterRunStatus.FAILURE and state.state != "fresh":
        attempted = json.loads(run.tags.get(INPUTS_TAG, "{}")).get(state.asset)
        return replace(state, state="failed", reason=first_error(instance, run), run_id=run.run_id,
                       metadata={**state.metadata, "attempted_inputs": attempted})
    return state


def first_error(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    """The first reason run ``run`` failed, on one line (:func:`failure_messages`)."""
    messages = failure_messages(instance, run.run_id)
    line = " ".join((messages[0].strip().splitlines() or ["run failed"])[0].split()) if messages else "run failed"
    return f"run {run.run_id[:8]} ({run.job_name}) failed: {line[:300]}"


def excluded_failed_models(instance: dg.DagsterInstance, config: RegistryConfig) -> list[str]:
    """With ``failed_models: exclude``: the reward models whose ``rm_word_scores`` partition is ``failed``,
    which ``rm_rank_cells`` (and so every Figure-1 table) computed now leaves out; [] with ``wait``."""
    if config.failed_models != "exclude":
        return []
    content = ContentCheck(config, mode="stat")
    return [m.model_id for m in config.reward_models() if with_last_attempt(
        instance, partition_state(instance, config, "rm_word_scores", m.model_id, content=content)).state == "failed"]


def _readable(error) -> str:
    """An error's message without its class path: a ``dg.Failure`` is its message, others keep their class
    name (``InputError: prompts.csv: row 7, ...``)."""
    message = error.message.strip()
    head, separator, rest = message.partition(": ")
    if separator and error.cls_name and head.endswith(error.cls_name) and " " not in head:  # a class path
        return rest if error.cls_name == "Failure" else f"{error.cls_name}: {rest}"
    return message


def user_error(error):
    """The error to show for a failed step: the outermost one that is not Dagster's wrapper of user code (an
    ``InputError`` naming the file and line, not the ``UnicodeDecodeError`` it was raised from); the innermost
    when every one is Dagster's."""
    chain = []
    while error is not None:
        chain.append(error)
        error = error.cause
    return next((e for e in chain if not (e.cls_name or "").startswith("Dagster")), chain[-1] if chain else None)


def failure_messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """Readable reasons a run failed or warns, from its event log: the error of each failed step (:func:`user_error`)
    and each failed check (a warn-level check fails in a successful run too)."""
    messages = []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        if event.is_step_failure:
            error = user_error(event.step_failure_data.error)
            messages.append(f"{event.step_key}: {_readable(error) if error is not None else 'step failed'}")
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            if not evaluation.passed:
                messages.append(f"check {evaluation.check_name} failed: {evaluation.description}")
        elif event.event_type == dg.DagsterEventType.RUN_FAILURE and not messages:  # its value is PIPELINE_FAILURE
            messages.append(entry.message or "run failed")
    return messages
