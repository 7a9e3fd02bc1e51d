"""Faults of the machine during `valuebias run` (issue 22), with real processes, each compared with a run that
had none:

- Ctrl-C and SIGTERM: every child process stops (run processes, their fork server, scoring workers), the
  terminal shows one line saying what was interrupted and that a rerun resumes, no traceback; the rerun
  completes to the same tables;
- a full disk (the state folder on an 8 MiB tmpfs, filled but 400 KiB): one line naming the folder, every stored table still
  readable, and after space is freed the rerun completes to the same tables.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import psutil
import pytest

from tests.registry_fixtures import build_random_reward_model, random_models_entry, write_small_registry

PROJECT = Path(__file__).resolve().parents[1]
TABLES = ["rm_word_scores/llama-a.parquet", "rm_word_scores/gemma-a.parquet", "tables/rm_rank_cells.parquet",
          "tables/rm_family_tests.parquet"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    return {"llama-a": ("llama", build_random_reward_model(root / "llama-a", architecture="llama", seed=1)),
            "gemma-a": ("gemma", build_random_reward_model(root / "gemma-a", architecture="gemma", seed=2))}


def registry(root: Path, models) -> Path:
    # the scoring workers are subprocesses, two side by side in child processes
    return write_small_registry(root, models=random_models_entry(models), launcher=None,
                                extra="concurrency: {gpu: 2}\n")


def command(config: Path) -> list[str]:
    return [sys.executable, "-m", "valuebias.orchestration.cli", "run", "--config", str(config)]


def interrupted_run(config: Path, signum: int, *, whole_group: bool,
                    sigint_ignored: bool = False) -> tuple[int, str, list[psutil.Process]]:
    """Starts `valuebias run` in a session of its own, sends ``signum`` once a scoring run has started (to the
    whole process group, as a terminal's Ctrl-C does, or to the main process only, as `kill` does), and
    returns (exit code, everything it printed, the processes of its session still alive afterwards). With
    ``sigint_ignored`` it starts with SIGINT ignored, as `valuebias run &` in a script does."""
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    proc = subprocess.Popen(command(config), cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=ignore)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while not any(line.startswith("rm_scoring_job[") for line in lines):
        assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
        time.sleep(0.1)
    time.sleep(2.0)  # inside the scoring workers
    os.killpg(proc.pid, signum) if whole_group else proc.send_signal(signum)
    code = proc.wait(timeout=120)
    reader.join(timeout=10)
    left = [p for p in psutil.process_iter(["pid"]) if _session(p) == proc.pid and _alive(p)]
    return code, "".join(lines), left


def _session(process: psutil.Process) -> int | None:
    try:
        return os.getsid(process.pid)
    except OSError:
        return None


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def check_one_line(code: int, output: str, left) -> None:
    assert code == 130, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    interrupted = [line for line in output.splitlines() if line.startswith("valuebias: interrupted")]
    assert len(interrupted) == 1, output
    assert interrupted[0].startswith("valuebias: interrupted during rm_scoring_job[")
    assert interrupted[0].endswith("finished work is kept: run `valuebias run` again to resume")
    assert left == [], [p.cmdline() for p in left]


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, models) -> Path:
    """The stored data of a run with no fault."""
    root = tmp_path_factory.mktemp("clean")
    subprocess.run(command(registry(root, models)), cwd=PROJECT, check=True, capture_output=True, timeout=900)
    return root / ".valuebias" / "data"


def same_tables(data: Path, clean: Path) -> None:
    for table in TABLES:
        assert pl.read_parquet(data / table).equals(pl.read_parquet(clean / table)), table


def test_ctrl_c_and_sigterm_stop_every_child_and_the_rerun_resumes_to_the_same_tables(tmp_path, models, clean_run):
    config = registry(tmp_path / "interrupted", models)
    check_one_line(*interrupted_run(config, signal.SIGINT, whole_group=True))  # Ctrl-C on a terminal
    check_one_line(*interrupted_run(config, signal.SIGTERM, whole_group=False))  # `kill <pid>`

    rerun = subprocess.run(command(config), cwd=PROJECT, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    same_tables(tmp_path / "interrupted" / ".valuebias" / "data", clean_run)


@pytest.fixture
def small_filesystem(tmp_path):
    """An 8 MiB tmpfs mounted at ``tmp_path/small`` (mounting needs root: the suite runs as root in CI)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_ends_in_one_line_and_the_rerun_after_freeing_space_completes(tmp_path, models, clean_run,
                                                                                    small_filesystem):
    config = registry(tmp_path / "full", models)
    state = small_filesystem / "state"
    config.write_text(f"state_dir: {state}\n" + config.read_text())
    filler = small_filesystem / "filler"
    filler.write_bytes(b"\0" * (8 * 2**20 - 400 * 2**10))  # 400 KiB left: the run fills it

    full = subprocess.run(command(config), cwd=PROJECT, capture_output=True, text=True, timeout=900)
    output = full.stdout + full.stderr
    assert full.returncode == 1, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if "no space left" in line]
    assert len(errors) == 1 and f"no space left on the file system of {state}" in errors[0], output
    assert errors[0].endswith("free space there and run `valuebias run` again; finished work is kept and nothing "
                              "stored was left half written")
    for table in (state / "data").rglob("*.parquet"):  # nothing stored is half written
        pl.read_parquet(table)

    filler.unlink()
    rerun = subprocess.run(command(config), cwd=PROJECT, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    same_tables(state / "data", clean_run)


def one_slot_registry(root: Path, models) -> Path:
    """The registry with one slot in the `gpu` pool (a GPU machine, or a CPU config that uses every core)."""
    return write_small_registry(root, models=random_models_entry(models), launcher=None,
                                extra="concurrency: {gpu: 1}\n")


def _start(config: Path, *, stderr_on_terminal: bool = False):
    """Starts `valuebias run` in a session of its own; returns (process, its lines as they come). With
    ``stderr_on_terminal`` its standard error is a pseudo-terminal, so its scoring runs go to child processes."""
    import pty

    stderr, master = (None, None)
    if stderr_on_terminal:
        master, stderr = pty.openpty()
    proc = subprocess.Popen(command(config), cwd=PROJECT, stdout=subprocess.PIPE,
                            stderr=stderr if stderr is not None else subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    if master is not None:
        os.close(stderr)

        def read_terminal():
            buffer = b""
            while True:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                buffer += chunk
                *done, buffer = buffer.split(b"\n")
                # a terminal ends lines with "\r\n"; a progress bar redraws its line after "\r"
                lines.extend(line.decode(errors="replace").rstrip("\r").split("\r")[-1] + "\n" for line in done)
        threading.Thread(target=read_terminal, daemon=True).start()
    return proc, lines


def _wait_for(proc, lines, predicate, what: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not any(predicate(line) for line in lines):
        assert proc.poll() is None and time.monotonic() < deadline, f"no {what}:\n" + "".join(lines)
        time.sleep(0.1)


def _scoring_worker(session: int):
    """The scoring worker process (`python -m valuebias.scoring_worker`) of the session ``session``, if any."""
    for process in psutil.process_iter(["cmdline"]):
        if ("valuebias.scoring_worker" in " ".join(process.info["cmdline"] or []) and _session(process) == session
                and _alive(process)):
            return process
    return None


def test_dead_runs_free_their_pool_slot_a_waiting_run_says_so_and_the_rerun_completes(tmp_path, models, clean_run,
                                                                                     monkeypatch):
    """With one slot in the `gpu` pool: (1) a run whose slot is held by another live run waits without spinning,
    says for what and for how long, and `kill` (SIGTERM) ends it in one line; (2) the holder ends: the next
    command frees its slot; (3) kill -9 of a run's own process (a child, as on a terminal) ends the command in
    one line naming the partition; (4) kill -9 of the whole process group; (5) the rerun completes to the
    tables of a clean run."""
    import socket

    import dagster as dg

    from valuebias.orchestration.state import HOST_TAG, PID_TAG, project_instance
    from valuebias.config import load_config

    config = one_slot_registry(tmp_path / "slots", models)
    # (1) a live run (this test's process) holds the only slot
    monkeypatch.setenv("DAGSTER_HOME", "")
    monkeypatch.setenv("VALUEBIAS_CONFIG", "")
    instance = project_instance(load_config(config))
    holder = dg.DagsterRun(job_name="rm_scoring_job", run_id=str(__import__("uuid").uuid4()), status=dg.DagsterRunStatus.STARTED,
                           tags={PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname(),
                                 "dagster/partition": "holder"})
    instance.add_run(holder)
    instance.event_log_storage.set_concurrency_slots("gpu", 1)
    assert instance.event_log_storage.claim_concurrency_slot("gpu", holder.run_id, "rm_word_scores").is_claimed

    proc, lines = _start(config)
    _wait_for(proc, lines, lambda line: "waiting" in line and "`gpu` pool" in line, "waiting line")
    waits = [line for line in lines if "waiting" in line]
    assert waits[0].strip().startswith("rm_scoring_job[llama-a]: waiting "), waits
    assert f"held by rm_scoring_job[holder] (run {holder.run_id[:8]}, started)" in waits[0], waits
    process = psutil.Process(proc.pid)
    before = sum(process.cpu_times()[:2])
    time.sleep(12.0)  # a second line comes (every 10 s), and the waiting process sleeps meanwhile
    assert sum(process.cpu_times()[:2]) - before < 3.0, "the waiting run spins"
    seconds = [int(line.split("waiting ")[1].split(" s ")[0]) for line in lines if "waiting" in line]
    assert len(seconds) >= 2 and seconds[-1] >= seconds[0] + 9, lines
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    time.sleep(0.5)
    left = [p for p in psutil.process_iter(["pid"]) if _session(p) == proc.pid and _alive(p)]
    check_one_line(code, "".join(lines), left)

    # (2) the holder ends (failed, as a run the UI terminated): the next command frees its slot
    instance.report_run_failed(instance.get_run_by_id(holder.run_id), "ended by the test")
    assert holder.run_id in instance.event_log_storage.get_concurrency_info("gpu").active_run_ids

    # (3) kill -9 of the process running rm_scoring_job[llama-a] (a child of `valuebias run` on a terminal)
    proc, lines = _start(config, stderr_on_terminal=True)
    _wait_for(proc, lines, lambda line: line.startswith("valuebias: freed"), "line about the freed slot")
    assert f"rm_scoring_job[holder] (run {holder.run_id[:8]}, failure)" in "".join(lines)
    deadline = time.monotonic() + 300
    while (worker := _scoring_worker(proc.pid)) is None:
        assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
        time.sleep(0.2)
    time.sleep(2.0)
    run_process = worker.parent()
    assert run_process.pid != proc.pid
    run_process.kill()
    code = proc.wait(timeout=120)
    time.sleep(2.0)  # the last lines through the terminal
    output = "".join(lines)
    worker.wait(timeout=30)  # the worker ends with its run process (no orphan keeps scoring)
    assert code == 1, output
    assert "Traceback" not in output and "EOFError" not in output, output
    killed = [line for line in output.splitlines() if "the process running it was killed" in line]
    assert len(killed) == 1 and killed[0].strip().startswith("error: rm_scoring_job[llama-a] ("), output
    assert "killed by SIGKILL" in killed[0], output

    # (4) kill -9 of the whole process group while the run (in the main process, one slot and no terminal) scores
    proc, lines = _start(config)
    _wait_for(proc, lines, lambda line: line.startswith("rm_scoring_job["), "scoring run")
    while (worker := _scoring_worker(proc.pid)) is None:
        assert proc.poll() is None, "".join(lines)
        time.sleep(0.2)
    assert worker.ppid() == proc.pid  # one slot, no terminal: the run is in the main process
    time.sleep(2.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)

    # (5) the rerun frees the dead run's slot, completes, and its tables are a clean run's
    rerun = subprocess.run(command(config), cwd=PROJECT, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "valuebias: freed the concurrency pool slots held by 1 ended run(s): rm_scoring_job[" in rerun.stdout
    assert instance.event_log_storage.get_concurrency_info("gpu").claimed_slots == []
    same_tables(tmp_path / "slots" / ".valuebias" / "data", clean_run)


def test_sigterm_stops_a_run_started_with_sigint_ignored(tmp_path, models):
    """`valuebias run &` in a script starts with SIGINT ignored, and Dagster gives SIGTERM the handler of SIGINT:
    `kill` (SIGTERM) still stops it, its children too, in one line (issue 28). Two slots: the main process waits
    for its run processes, outside any Dagster run."""
    config = registry(tmp_path / "background", models)
    check_one_line(*interrupted_run(config, signal.SIGTERM, whole_group=False, sigint_ignored=True))


@pytest.mark.parametrize("port", ["99999", "0", "http"])
def test_a_port_outside_1_to_65535_is_one_line(tmp_path, port):
    proc = subprocess.run([sys.executable, "-m", "valuebias.orchestration.cli", "ui", "--port", port,
                           "--config", str(tmp_path / "unused.yaml")],
                          cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"valuebias: error: --port {port}: not a TCP port; give a whole number from "
                                        "1 to 65535, e.g. --port 3000"]
