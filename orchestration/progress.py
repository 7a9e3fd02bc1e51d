"""What ``valuebias run`` shows while its runs work: a live bar per scoring partition on a terminal, plain
lines otherwise, read from the runs' own logs (the lines the UI shows in each run's log).

The scoring worker logs its progress as ``<label>: <done>/<total> <unit> (<rate>/s, <seconds> s left)``
(:func:`valuebias.scoring_worker.progress_line`). A :class:`ProgressMonitor` polls the event log of the runs this command started
(found by their ``valuebias/pid`` tag) and draws those lines as tqdm bars, or, when standard error is not a
terminal, prints one of them per partition every ``PLAIN_EVERY_SECONDS``.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time

import dagster as dg

from valuebias.scoring_worker import parse_progress

POLL_SECONDS = 1.0
PLAIN_EVERY_SECONDS = 10.0
#: How often a run that waits for a ``gpu`` pool slot is reported (the first time after one poll).
WAITING_EVERY_SECONDS = 10.0


class ProgressMonitor:
    """Polls the logs of the running runs tagged with one of ``pids()`` and shows their progress lines.

    ``say(text)`` prints a line without breaking the bars; use the monitor as a context manager."""

    def __init__(self, instance: dg.DagsterInstance, pids, *, terminal: bool | None = None):
        self.instance, self.pids = instance, pids
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self._cursors: dict[str, str | None] = {}
        self._bars: dict[str, object] = {}
        self._printed: dict[str, float] = {}
        self._waits_said: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="valuebias-progress", daemon=True)

    def __enter__(self) -> "ProgressMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()

    def say(self, text: str, *, error: bool = False) -> None:
        stream = sys.stderr if error else sys.stdout
        with self._lock:
            if self._bars:
                from tqdm import tqdm

                tqdm.write(text, file=stream)
            else:
                print(text, file=stream, flush=True)

    def _loop(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self.poll()
            except Exception:  # the display must never break a run; the next poll tries again
                continue

    def poll(self) -> None:
        """Reads what the running runs logged since the last poll and updates the display."""
        from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter
        from valuebias.orchestration.state import PID_TAG

        running = {run.run_id for pid in list(self.pids()) for run in self.instance.get_runs(
            RunsFilter(statuses=[DagsterRunStatus.STARTED], tags={PID_TAG: str(pid)}))}
        for run_id in running | set(self._cursors):  # a run that ended since the last poll: its last lines
            self._read(run_id)
        for run_id in [r for r in self._cursors if r not in running]:
            del self._cursors[run_id]
            with self._lock:
                if run_id in self._bars:
                    self._bars.pop(run_id).close()
        self._say_waits(running | {run.run_id for run in self.instance.get_runs(
            RunsFilter(statuses=[DagsterRunStatus.STARTED], tags={PID_TAG: str(os.getpid())}))})

    def _say_waits(self, run_ids: set[str]) -> None:
        """Says, every ``WAITING_EVERY_SECONDS``, which of ``run_ids`` wait for a pool slot, for how long and
        who holds the slots (the runs of this process too: with one slot they run here)."""
        from valuebias.orchestration.pool import waiting_steps

        now = time.monotonic()
        for wait in waiting_steps(self.instance, run_ids):
            key = (wait.run_id, wait.step_key)
            if now - self._waits_said.get(key, now - WAITING_EVERY_SECONDS) >= WAITING_EVERY_SECONDS:
                self._waits_said[key] = now
                run = self.instance.get_run_by_id(wait.run_id)
                partition = run.tags.get("dagster/partition") if run else None
                self.say(wait.line(f"{run.job_name if run else wait.run_id}{f'[{partition}]' if partition else ''}"))

    def _read(self, run_id: str) -> None:
        connection = self.instance.event_log_storage.get_records_for_run(run_id, cursor=self._cursors.get(run_id))
        self._cursors[run_id] = connection.cursor
        latest = None
        for record in connection.records:
            entry = record.event_log_entry
            if entry.dagster_event is None and entry.user_message:
                latest = parse_progress(entry.user_message) or latest
        if latest is not None:
            self._show(run_id, *latest)

    def _show(self, run_id: str, label: str, done: int, total: int, unit: str) -> None:
        with self._lock:
            if not self.terminal:
                now = time.monotonic()
                if now - self._printed.get(run_id, 0.0) >= PLAIN_EVERY_SECONDS or done == total:
                    self._printed[run_id] = now
                    print(f"  {label}: {done:,}/{total:,} {unit}", flush=True)
                return
            from tqdm import tqdm

            bar = self._bars.get(run_id)
            if bar is None:
                # the terminal's width, 100 where it reports none (a pseudo-terminal without a size)
                width = shutil.get_terminal_size((100, 24)).columns
                bar = self._bars[run_id] = tqdm(total=total, desc=label, unit=f" {unit.split()[0]}", unit_scale=True,
                                                ncols=width, leave=False, file=sys.stderr)
            bar.update(done - bar.n)
