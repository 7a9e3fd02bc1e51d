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


def interrupted_run(config: Path, signum: int, *, whole_group: bool) -> tuple[int, str, list[psutil.Process]]:
    """Starts `valuebias run` in a session of its own, sends ``signum`` once a scoring run has started (to the
    whole process group, as a terminal's Ctrl-C does, or to the main process only, as `kill` does), and
    returns (exit code, everything it printed, the processes of its session still alive afterwards)."""
    proc = subprocess.Popen(command(config), cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
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
