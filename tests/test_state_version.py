"""The state folder records the ValueBias version that wrote it: an older version refuses a newer one's folder in
one line, a newer one migrates an older folder, and a Dagster database of an unknown schema revision is refused
in one line (issue 28)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from valuebias.orchestration import state_version
from valuebias.orchestration.state_version import STATE_FILE, STATE_SCHEMA, check_state_version, project_version
from tests.registry_fixtures import write_small_registry
from valuebias.errors import InputError

PROJECT = Path(__file__).resolve().parents[1]


def valuebias_status(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "valuebias.orchestration.cli", "status", "--config", str(config)],
                          cwd=PROJECT, capture_output=True, text=True, timeout=600)


def test_a_new_folder_records_its_version_an_old_one_migrates_a_newer_one_is_refused(tmp_path, monkeypatch):
    state = tmp_path / "state"
    state.mkdir()
    check_state_version(state)
    recorded = json.loads((state / STATE_FILE).read_text())
    assert recorded == {"project_version": project_version(), "state_schema": STATE_SCHEMA}
    assert project_version() == "0.1.0"  # pyproject.toml's

    # a folder written before the file existed (an instance, no file) is schema 0: each migration runs once
    (state / "dagster" / "history").mkdir(parents=True)
    (state / STATE_FILE).unlink()
    ran, said = [], []
    monkeypatch.setitem(state_version.MIGRATIONS, 0, lambda folder: ran.append(folder))
    check_state_version(state, said.append)
    assert ran == [state]
    assert said == [f"migrated the state folder {state} to state schema 1"]
    assert json.loads((state / STATE_FILE).read_text())["state_schema"] == STATE_SCHEMA
    check_state_version(state, said.append)  # nothing more to migrate
    assert ran == [state] and len(said) == 1

    for newer in ({"project_version": "0.2.0", "state_schema": STATE_SCHEMA},
                  {"project_version": project_version(), "state_schema": STATE_SCHEMA + 1}):
        (state / STATE_FILE).write_text(json.dumps(newer))
        with pytest.raises(InputError) as error:
            check_state_version(state)
        assert str(error.value) == (
            f"{state / STATE_FILE}: field 'project_version': this state folder was written by ValueBias "
            f"{newer['project_version']} (state schema {newer['state_schema']}), newer than this one "
            f"({project_version()}, state schema {STATE_SCHEMA}): run the newer version, or set another state_dir; "
            "an older version would recompute and overwrite its results")
        assert json.loads((state / STATE_FILE).read_text()) == newer  # left as the newer version wrote it


def test_the_cli_refuses_a_newer_state_folder_and_an_unknown_dagster_schema_in_one_line(tmp_path):
    config = write_small_registry(tmp_path)
    state = tmp_path / ".valuebias"
    first = valuebias_status(config)
    assert first.returncode == 0, first.stdout + first.stderr
    assert json.loads((state / STATE_FILE).read_text())["project_version"] == project_version()

    (state / STATE_FILE).write_text(json.dumps({"project_version": "9.0.0", "state_schema": STATE_SCHEMA}))
    refused = valuebias_status(config)
    assert refused.returncode == 2 and refused.stdout == "", refused.stdout + refused.stderr
    assert refused.stderr.splitlines() == [
        f"valuebias: error: {state / STATE_FILE}: field 'project_version': this state folder was written by "
        f"ValueBias 9.0.0 (state schema {STATE_SCHEMA}), newer than this one ({project_version()}, state schema "
        f"{STATE_SCHEMA}): run the newer version, or set another state_dir; an older version would recompute and "
        "overwrite its results"]

    (state / STATE_FILE).write_text(json.dumps({"project_version": project_version(), "state_schema": STATE_SCHEMA}))
    runs = state / "dagster" / "history" / "runs.db"
    with sqlite3.connect(runs) as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    refused = valuebias_status(config)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    import dagster

    assert refused.stderr.splitlines() == [
        f"valuebias: error: {runs}: field 'alembic_version': the Dagster database has schema revision ffffffffffff, "
        f"which the installed Dagster ({dagster.__version__}) does not know: a newer Dagster wrote it. Install the "
        "Dagster version of requirements.txt that wrote it, or set another state_dir"]
