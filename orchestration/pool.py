"""The ``gpu`` concurrency pool after abnormal ends: slots of dead runs are freed, a waiting step sleeps (and
can be interrupted), and a run that waits says for what.

- A run killed with ``kill -9`` (an out-of-memory kill) or by a power-cut style kill of its process group
  never frees the pool slot its step claimed: Dagster frees it when the step ends, and the daemon's
  ``free_slots_after_run_end_seconds`` monitor only runs under ``valuebias ui``. :func:`free_slots_of_ended_runs`
  frees the slots of every run that is over (the next command marks dead runs failed first:
  :func:`valuebias.orchestration.state.fail_abandoned_runs`).
- Dagster 1.13's in-process executor waits for a slot in a loop whose sleep is always 0 s
  (``InstanceConcurrencyContext.interval_to_next_pending_claim_check`` returns ``min(0, ...)``): a waiting run
  spins at 100 % CPU, and a Ctrl-C or SIGTERM it captured outside a step is never acted on.
  :func:`install_waiting_fix` makes the wait sleep until the next claim check, in short naps that end the run
  as interrupted when a signal arrived.
- :func:`waiting_steps` says which steps of which runs wait for a slot, since when, and who holds the slots:
  ``valuebias run`` prints it every few seconds (:class:`valuebias.orchestration.progress.ProgressMonitor`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

POOL = "gpu"
#: The longest nap of a waiting run: how long a Ctrl-C or SIGTERM may wait to end it.
NAP_SECONDS = 0.5


def free_slots_of_ended_runs(instance) -> list[str]:
    """Frees the pool slots (and pending claims) of every run that is over or no longer exists; returns their
    run ids."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    freed = []
    for run_id in sorted(storage.get_concurrency_run_ids()):
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            storage.free_concurrency_slots_for_run(run_id)
            freed.append(run_id)
    return freed


@dataclass(frozen=True)
class Wait:
    """A step of run ``run_id`` waiting since ``since`` (epoch seconds) for a slot of ``pool``, whose
    ``limit`` slots are held by ``holders`` (``<job>[<partition>] (run <id>, <status>)`` each)."""

    run_id: str
    step_key: str
    pool: str
    since: float
    limit: int
    holders: tuple[str, ...]

    def line(self, label: str, now: float | None = None) -> str:
        waited = (time.time() if now is None else now) - self.since
        held = "; ".join(self.holders) or "none (a slot is being handed over)"
        return (f"  {label}: waiting {waited:.0f} s for a slot of the `{self.pool}` pool ({self.limit} slot(s), "
                f"held by {held}); a run holding one ends by itself, or stop it in `valuebias ui`")


def describe_run(instance, run_id: str) -> str:
    run = instance.get_run_by_id(run_id)
    if run is None:
        return f"run {run_id[:8]} (no longer recorded)"
    partition = run.tags.get("dagster/partition")
    return f"{run.job_name}{f'[{partition}]' if partition else ''} (run {run_id[:8]}, {run.status.value.lower()})"


def waiting_steps(instance, run_ids: set[str], pool: str = POOL) -> list[Wait]:
    """The steps of ``run_ids`` that wait for a slot of ``pool`` (claimed but not assigned one)."""
    storage = instance.event_log_storage
    if not run_ids or not storage.supports_global_concurrency_limits:
        return []
    info = storage.get_concurrency_info(pool)
    waiting = [s for s in info.pending_steps if s.assigned_timestamp is None and s.run_id in run_ids]
    if not waiting:
        return []
    holders = tuple(describe_run(instance, r) for r in sorted({s.run_id for s in info.claimed_slots}))
    return [Wait(s.run_id, s.step_key, pool, _epoch(s.enqueued_timestamp), info.slot_count, holders)
            for s in waiting]


def _epoch(moment) -> float:
    """Epoch seconds of a storage timestamp (SQLite gives naive UTC datetimes)."""
    from datetime import timezone

    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def _interval_to_next_pending_claim_check(self) -> float:
    """Seconds until the next claim of a pending step is due (0 when one is due now): Dagster's own returns
    ``min(0, ...)``, never positive, so its executor never sleeps."""
    if not self._pending_claims:
        return 0.0
    now = time.time()
    due = [ready_at - now for ready_at in self._pending_timeouts.values()]
    return max(0.0, min(due)) if due else 0.0


def _sleep_til_ready(self) -> None:
    """Sleeps until a step may be ready, in naps of at most :data:`NAP_SECONDS`; a Ctrl-C or SIGTERM captured
    meanwhile ends the run as interrupted (outside a step Dagster only records it)."""
    from dagster._core.errors import DagsterExecutionInterruptedError
    from dagster._utils.interrupts import pop_captured_interrupt

    deadline = time.monotonic() + max(0.0, self.sleep_interval())
    while True:
        if pop_captured_interrupt():
            raise DagsterExecutionInterruptedError("interrupted while waiting for a concurrency pool slot")
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, NAP_SECONDS))


def install_waiting_fix() -> None:
    """Installs the two methods above on Dagster's classes (idempotent)."""
    from dagster._core.execution.plan.active import ActiveExecution
    from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext

    InstanceConcurrencyContext.interval_to_next_pending_claim_check = _interval_to_next_pending_claim_check
    ActiveExecution.sleep_til_ready = _sleep_til_ready
