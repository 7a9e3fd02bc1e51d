"""One state folder, several processes at once (issue 12): commands started together through a barrier on a
new state folder, and a `valuebias run` killed in the middle of a run."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from tests.registry_fixtures import (AGENCY, COMMUNION, build_random_reward_model, random_models_entry,
                                     write_small_registry)

PROJECT = Path(__file__).resolve().parents[1]
#: A `valuebias` command that imports everything, says it is ready, then waits for the go file: all the
#: processes of a test start their real work at the same moment.
BARRIER = ("import sys, time; from pathlib import Path; from valuebias.orchestration.cli import main; "
           "Path(sys.argv[1]).write_text('ready'); go = Path(sys.argv[2]); "
           "[time.sleep(0.002) for _ in iter(lambda: not go.exists(), False)]; sys.exit(main(sys.argv[3:]))")


def env() -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("VALUEBIAS_CONFIG", "DAGSTER_HOME")}
    return {**clean, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DAGSTER_DISABLE_TELEMETRY": "1"}


def start_together(tmp_path: Path, commands: list[list[str]]) -> list[subprocess.CompletedProcess]:
    go = tmp_path / "go"
    procs = []
    for i, args in enumerate(commands):
        ready = tmp_path / f"ready-{i}"
        procs.append((ready, subprocess.Popen([sys.executable, "-c", BARRIER, str(ready), str(go), *args],
                                              cwd=PROJECT, env=env(), stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True)))
    deadline = time.monotonic() + 300
    while not all(ready.exists() for ready, _ in procs):
        assert time.monotonic() < deadline, "the processes never got ready"
        assert all(p.poll() is None for _, p in procs), [p.communicate() for _, p in procs if p.poll() is not None]
        time.sleep(0.05)
    go.write_text("go")
    results = []
    for _, proc in procs:
        out, err = proc.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    return {"llama-a": ("llama", build_random_reward_model(root / "llama-a", architecture="llama", seed=1)),
            "gemma-a": ("gemma", build_random_reward_model(root / "gemma-a", architecture="gemma", seed=2))}


def test_commands_started_together_on_a_new_state_folder(tmp_path, models):
    """20 `status` and 2 `run` released at once by a barrier on a new state folder: every command succeeds,
    each Dagster database has one migration head, every partition is materialized once (the second run
    waited for the first, naming it, then skipped the work), and the tables equal a single-process run's."""
    config = write_small_registry(tmp_path / "shared", models=random_models_entry(models))
    commands = [["status", "--config", str(config)]] * 20 + [["run", "--config", str(config)]] * 2
    results = start_together(tmp_path, commands)
    for result in results:
        assert result.returncode == 0, result.stderr
    runs = [r.stdout for r in results[20:]]
    waited = [out for out in runs if "valuebias: waiting for another `valuebias run`" in out]
    assert len(waited) == 1 and "(pid " in waited[0]
    assert "rm_scoring_job[llama-a] skipped: fresh" in waited[0]

    home = tmp_path / "shared" / ".valuebias" / "dagster"
    for db in (home / "history" / "runs.db", home / "schedules" / "schedules.db"):
        with sqlite3.connect(db) as connection:
            assert len(connection.execute("select * from alembic_version").fetchall()) == 1, db
    check = ("import json, dagster as dg; i = dg.DagsterInstance.get(); print(json.dumps({p: len(i.fetch_materializations("
             "dg.AssetRecordsFilter(asset_key=dg.AssetKey('rm_word_scores'), asset_partitions=[p]), limit=10).records)"
             " for p in ('llama-a', 'gemma-a')}))")
    counts = subprocess.run([sys.executable, "-c", check], cwd=PROJECT, env={**env(), "DAGSTER_HOME": str(home)},
                            capture_output=True, text=True, check=True).stdout
    assert counts.strip() == '{"llama-a": 1, "gemma-a": 1}'

    reference = write_small_registry(tmp_path / "reference", models=random_models_entry(models))
    subprocess.run([sys.executable, "-m", "valuebias.orchestration.cli", "run", "--config", str(reference)], cwd=PROJECT,
                   env=env(), check=True, capture_output=True)
    for table in ("tables/rm_rank_cells.parquet", "tables/rm_family_tests.parquet", "rm_word_scores/llama-a.parquet"):
        shared = pl.read_parquet(tmp_path / "shared" / ".valuebias" / "data" / table)
        alone = pl.read_parquet(tmp_path / "reference" / ".valuebias" / "data" / table)
        assert shared.equals(alone), table


def test_a_killed_run_is_marked_failed_by_the_next_command(tmp_path, models):
    """SIGKILL `valuebias run` while a run is started: the next command marks that run failed, naming why."""
    import dagster as dg

    words = [f"{w}{i}" for i in range(40) for w in AGENCY + COMMUNION]  # enough work to be caught midway
    config = write_small_registry(tmp_path, models=random_models_entry(models))
    (tmp_path / "words.csv").write_text("word,category\n" + "".join(
        f"{w},{'Agency' if i % 2 else 'Communion'}\n" for i, w in enumerate(words)))
    config.write_text(config.read_text().replace("batch_size: 32", "batch_size: 4"))
    proc = subprocess.Popen([sys.executable, "-m", "valuebias.orchestration.cli", "run", "--config", str(config)], cwd=PROJECT,
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    home = tmp_path / ".valuebias" / "dagster"
    deadline = time.monotonic() + 240
    started = None
    while started is None:
        assert time.monotonic() < deadline and proc.poll() is None, "no scoring run was caught started"
        if (home / "history" / "runs.db").exists():
            try:
                with sqlite3.connect(home / "history" / "runs.db") as connection:
                    row = connection.execute("select run_id from runs where status = 'STARTED' and "
                                             "pipeline_name = 'rm_scoring_job'").fetchone()
                started = row[0] if row else None
            except sqlite3.OperationalError:
                pass
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    status = subprocess.run([sys.executable, "-m", "valuebias.orchestration.cli", "status", "--config", str(config)],
                            cwd=PROJECT, env=env(), capture_output=True, text=True)
    assert status.returncode == 0, status.stderr
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        with dg.DagsterInstance.get() as instance:
            run = instance.get_run_by_id(started)
            assert run.status == dg.DagsterRunStatus.FAILURE
            messages = [e.message for e in instance.all_logs(started) if e.dagster_event
                        and e.dagster_event.event_type_value == "PIPELINE_FAILURE"]
            assert any("is gone: it was killed or crashed" in m for m in messages), messages
    finally:
        os.environ.pop("DAGSTER_HOME")
