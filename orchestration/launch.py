"""Runs of ``valuebias run`` that the Dagster UI lists under their jobs.

A run made by ``execute_in_process`` or ``dg.materialize`` carries no job origin: the UI's Jobs and
Overview pages do not show it and re-execution warns. ``dagster job launch`` creates runs from the code
location instead (``instance.create_run`` with the remote job's origin and snapshots) and hands them to
the daemon; here the same run record is created from an in-process code location named like the one in
``workspace.yaml`` and executed at once in this process (``execute_run``, in-process executor): no daemon
needed, no process start-up per run, and the run is the one the UI would have launched.

Independent runs go side by side (:meth:`JobRuns.execute_side_by_side`), each in a child process: a Dagster
run captures its process's standard output and error while its steps run, so two runs cannot share one
process. The children are forked from a fork server that imported Dagster and the definitions once (a fork
of this process itself would inherit the thread pool polars started here without its threads, and hang).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import dagster as dg
import yaml

from valuebias.assets.attempts import failure_messages, user_error  # noqa: F401 (re-exported)
from valuebias.orchestration.pool import install_waiting_fix

install_waiting_fix()  # a run waiting for a pool slot sleeps and can be interrupted (orchestration/pool.py)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WORKSPACE = PROJECT_ROOT / "workspace.yaml"


def workspace_target() -> dict:
    """The code location ``workspace.yaml`` declares (module, attribute, location name): read, not repeated."""
    return yaml.safe_load(WORKSPACE.read_text())["load_from"][0]["python_module"]


@dataclass(frozen=True)
class RunRequest:
    """One run to make: a job, its partition, the assets it materializes, and how to name it to people."""

    label: str
    job: str
    partition: str | None
    assets: list[str] | None
    tags: dict[str, str] | None = None  # extra run tags (``valuebias.orchestration.plan.Work.tags``)


@dataclass
class RunOutcome:
    run_id: str
    success: bool
    errors: list[str] = field(default_factory=list)
    interrupted: bool = False  # Ctrl-C or SIGTERM reached the run (Dagster catches it and fails the run)


class JobRuns:
    """Creates and executes runs of the project's jobs against ``instance``; use as a context manager."""

    def __init__(self, instance: dg.DagsterInstance):
        from dagster._core.definitions.reconstruct import ReconstructableRepository
        from dagster._core.remote_origin import InProcessCodeLocationOrigin
        from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

        target = workspace_target()
        self.instance = instance
        origin = InProcessCodeLocationOrigin(
            LoadableTargetOrigin(executable_path=sys.executable, module_name=target["module_name"],
                                 attribute=target["attribute"], working_directory=str(PROJECT_ROOT)),
            location_name=target["location_name"])
        self.location = origin.create_location(instance)
        self.repository = next(iter(self.location.get_repositories().values()))
        self.reconstructable = ReconstructableRepository.for_module(
            target["module_name"], target["attribute"], working_directory=str(PROJECT_ROOT))

    def __enter__(self) -> "JobRuns":
        return self

    def __exit__(self, *exc) -> None:
        self.location.cleanup()

    def execute(self, job_name: str, *, partition: str | None, assets: list[str] | None,
                verbose: bool = False, ops: dict | None = None, tags: dict[str, str] | None = None) -> RunOutcome:
        """Creates the run (job origin, snapshots, partition tag, asset selection, ``ops``: the run config of its
        ops, e.g. a release's name; ``tags``: more run tags) and executes it here."""
        from dagster._core.execution.api import execute_run

        run = self._create_run(job_name, partition=partition, assets=assets, verbose=verbose, ops=ops, tags=tags)
        result = execute_run(self.reconstructable.get_reconstructable_job(job_name), run, self.instance)
        return RunOutcome(run.run_id, result.success, failure_messages(self.instance, run.run_id),
                          interrupted=not result.success and was_interrupted(self.instance, run.run_id))

    def execute_side_by_side(self, requests: list[RunRequest], slots: int, *, verbose: bool = False,
                             started: Callable[[RunRequest], None], finished: Callable[[RunRequest, RunOutcome], bool],
                             children: set[int] | None = None) -> bool:
        """Executes ``requests``, at most ``slots`` at a time, each in a forked child process (see the module
        docstring); ``started(request)`` and ``finished(request, outcome)`` run here, in order of events.
        ``finished`` says whether to go on: after a failure no new run starts, the running ones finish. The pids
        of the running children are kept in ``children`` (for :class:`valuebias.orchestration.progress.ProgressMonitor`).
        True when every run succeeded. The ``gpu`` pool's limit holds as well: each run's executor claims its
        slots from the instance."""
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(CHILD_PRELOAD))
        children = set() if children is None else children
        pending, running, ok = list(requests), {}, True
        while running or (pending and ok):
            while pending and ok and len(running) < max(1, slots):
                request = pending.pop(0)
                receive, send = context.Pipe(duplex=False)
                child = context.Process(target=_execute_in_child, args=(request, verbose, send),
                                        name=f"valuebias-{request.label}")
                started(request)
                # Ctrl-C is this process's to handle (it stops every child): the fork server, started with the
                # first child, and the run processes it forks inherit SIGINT blocked (a fork server interrupted
                # while it imports Dagster printed a traceback); here a Ctrl-C during the start is delivered after
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
                try:
                    child.start()
                finally:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
                send.close()
                children.add(child.pid)
                running[child.sentinel] = (request, child, receive)
            for sentinel in multiprocessing.connection.wait(list(running)):
                request, child, receive = running.pop(sentinel)
                try:
                    outcome = receive.recv() if receive.poll() else None
                except (EOFError, OSError):  # the child died before it sent its outcome (kill -9, out of memory)
                    outcome = None
                child.join()
                children.discard(child.pid)
                if outcome is None:
                    outcome = RunOutcome("", False, [child_ended(request.label, child.exitcode)])
                ok = finished(request, outcome) and ok
        return ok

    def _create_run(self, job_name: str, *, partition: str | None, assets: list[str] | None, verbose: bool,
                    ops: dict | None = None, tags: dict[str, str] | None = None):
        from dagster._core.definitions.selector import JobSubsetSelector

        keys = [dg.AssetKey(a) for a in assets] if assets else None
        selector = JobSubsetSelector(location_name=self.location.name, repository_name=self.repository.name,
                                     job_name=job_name, op_selection=None, asset_selection=keys)
        remote_job = self.location.get_job(selector)
        run_config = {"execution": {"config": {"in_process": {}}},
                      "loggers": {"console": {"config": {"log_level": "INFO" if verbose else "CRITICAL"}}},
                      **({"ops": ops} if ops else {})}
        plan = self.location.get_execution_plan(remote_job, run_config, step_keys_to_execute=None, known_state=None,
                                                instance=self.instance).execution_plan_snapshot
        from valuebias.orchestration.state import run_tags

        tags = {**remote_job.tags, **run_tags(), **(tags or {}),
                **({"dagster/partition": partition} if partition else {})}
        run = self.instance.create_run(
            job_name=job_name, run_id=None, run_config=run_config, resolved_op_selection=None,
            step_keys_to_execute=plan.step_keys_to_execute, op_selection=None, status=None, root_run_id=None,
            parent_run_id=None, tags=tags, job_snapshot=remote_job.job_snapshot, execution_plan_snapshot=plan,
            parent_job_snapshot=remote_job.parent_job_snapshot, remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(), asset_selection=frozenset(keys) if keys else None,
            asset_check_selection=None, asset_graph=self.repository.asset_graph)
        return run


def child_ended(label: str, exitcode: int | None) -> str:
    """The line for a run process that ended without reporting its outcome (``label``: job[partition] ...)."""
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else f"signal {-exitcode}"
        how = f"was killed by {name}" + (" (kill -9, or the out-of-memory killer)" if -exitcode == signal.SIGKILL
                                         else "")
    else:
        how = f"exited with code {exitcode}"
    return (f"{label}: the process running it {how} before it finished; run `valuebias run` again to retry "
            "this partition")


#: What the fork server imports once for every child (Dagster, the definitions and what they import).
CHILD_PRELOAD = ("valuebias.orchestration.launch", "valuebias.orchestration.definitions")


def _execute_in_child(request: RunRequest, verbose: bool, send) -> None:
    """A child of :meth:`JobRuns.execute_side_by_side`: the instance and the code location of this process
    (``DAGSTER_HOME`` and ``VALUEBIAS_CONFIG`` come from the parent), one run, its outcome sent back."""
    import warnings

    # the parent process shows Dagster's preview warning about Pipes once; a child would repeat it
    warnings.filterwarnings("ignore", category=dg.PreviewWarning, message=".*expected_writer_count")
    try:
        with JobRuns(dg.DagsterInstance.get()) as runs:
            outcome = runs.execute(request.job, partition=request.partition, assets=request.assets, verbose=verbose,
                                   tags=request.tags)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent says so, in one line
        os._exit(130)
    except BaseException as error:  # a crash outside the run's steps still reaches the parent, named
        outcome = RunOutcome("", False, [f"{request.label}: {type(error).__name__}: {error}"])
    try:
        send.send(outcome)
        send.close()
    except (KeyboardInterrupt, OSError):  # interrupted, or the parent is gone: nothing left to tell it
        os._exit(130)


def was_interrupted(instance: dg.DagsterInstance, run_id: str) -> bool:
    """Whether a failed run was interrupted (Dagster turns Ctrl-C and SIGTERM into
    ``DagsterExecutionInterruptedError`` in the step that was running)."""
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        error = None
        if event.is_step_failure:
            error = event.step_failure_data.error
        elif event.event_type == dg.DagsterEventType.RUN_FAILURE:  # interrupted outside a step (waiting for a slot)
            error = getattr(event.event_specific_data, "error", None)
        if error is not None:
            while error is not None:
                if error.cls_name in ("DagsterExecutionInterruptedError", "KeyboardInterrupt"):
                    return True
                error = error.cause
    return False
