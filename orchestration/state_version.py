"""The state folder records the version of ValueBias that wrote it, so that an older install never recomputes and
overwrites a newer one's results (its code versions would move backwards), and a newer install migrates it.

``<state_dir>/state_version.json`` holds ``{"project_version": "0.1.0", "state_schema": 1}``:

- written (atomically) by the first command that opens the Dagster instance of the folder;
- a folder of a newer state schema, or written by a newer project version, is refused in one line;
- a folder of an older state schema (a folder without the file is schema 0: written before it existed) is
  brought up to :data:`STATE_SCHEMA` by the functions of :data:`MIGRATIONS`, one schema at a time, then the file
  is rewritten;
- the Dagster instance's SQLite databases carry an alembic revision: one that the installed Dagster does not
  know (written by a newer Dagster) is refused in one line, before Dagster opens them.
"""

from __future__ import annotations

import json
import os
import sqlite3
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

from valuebias.errors import InputError

STATE_FILE = "state_version.json"
#: The layout of the state folder this version writes. Raise it with a migration in MIGRATIONS.
STATE_SCHEMA = 1


def _adopt_unversioned(state_dir: Path) -> None:
    """Schema 0 -> 1: a folder written before the state version file existed has the same layout; nothing moves."""


#: {schema: the function that migrates a state folder of that schema to the next one}
MIGRATIONS: dict[int, Callable[[Path], None]] = {0: _adopt_unversioned}


def project_version() -> str:
    try:
        return version("valuebias")
    except PackageNotFoundError:  # not installed (a checkout on PYTHONPATH): pyproject.toml says
        import tomllib

        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        return tomllib.loads(pyproject.read_text())["project"]["version"]


def _newer(a: str, b: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(a) > Version(b)
    except InvalidVersion:
        return False


def read_state_version(state_dir: Path) -> dict | None:
    path = Path(state_dir) / STATE_FILE
    if not path.exists():
        return None
    try:
        recorded = json.loads(path.read_text())
        return {"project_version": str(recorded["project_version"]), "state_schema": int(recorded["state_schema"])}
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"unreadable ({type(exc).__name__}: {exc}); it records the ValueBias version that wrote "
                         "this state folder: restore it, or remove the state folder to start afresh",
                         source=str(path), field="state_schema") from None


def write_state_version(state_dir: Path) -> None:
    path = Path(state_dir) / STATE_FILE
    tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}")
    tmp.write_text(json.dumps({"project_version": project_version(), "state_schema": STATE_SCHEMA}) + "\n")
    os.replace(tmp, path)


def check_state_version(state_dir: Path, say: Callable[[str], None] | None = None) -> None:
    """Refuses a state folder written by a newer ValueBias (one ``InputError`` line), migrates an older one, and
    records this version. Call it with the instance lock held."""
    state_dir = Path(state_dir)
    ours = project_version()
    recorded = read_state_version(state_dir)
    if recorded is None and not (state_dir / "dagster" / "history").exists():
        write_state_version(state_dir)  # a new state folder
        return
    recorded = recorded or {"project_version": "unrecorded", "state_schema": 0}
    schema, theirs = recorded["state_schema"], recorded["project_version"]
    if schema > STATE_SCHEMA or _newer(theirs, ours):
        raise InputError(f"this state folder was written by ValueBias {theirs} (state schema {schema}), newer than "
                         f"this one ({ours}, state schema {STATE_SCHEMA}): run the newer version, or set another "
                         "state_dir; an older version would recompute and overwrite its results",
                         source=str(state_dir / STATE_FILE), field="project_version")
    while schema < STATE_SCHEMA:
        MIGRATIONS[schema](state_dir)
        schema += 1
        if say is not None:
            say(f"migrated the state folder {state_dir} to state schema {schema}")
    if recorded != {"project_version": ours, "state_schema": STATE_SCHEMA}:
        write_state_version(state_dir)


def check_dagster_schema(home: Path) -> None:
    """Refuses, in one line, a Dagster instance whose SQLite databases carry an alembic revision the installed
    Dagster does not know (a newer Dagster wrote them)."""
    databases = [p for p in (home / "history" / "runs.db", home / "history" / "runs" / "index.db",
                             home / "schedules" / "schedules.db") if p.exists()]
    if not databases:
        return
    known = _known_dagster_revisions()
    for database in databases:
        try:
            with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
                rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        except sqlite3.Error:  # no alembic table yet (a database being created): Dagster stamps it
            continue
        for (revision,) in rows:
            if revision not in known:
                import dagster

                raise InputError(f"the Dagster database has schema revision {revision}, which the installed Dagster "
                                 f"({dagster.__version__}) does not know: a newer Dagster wrote it. Install the "
                                 "Dagster version of requirements.txt that wrote it, or set another state_dir",
                                 source=str(database), field="alembic_version")


def _known_dagster_revisions() -> set[str]:
    from alembic.script import ScriptDirectory
    from dagster._core.storage.sql import get_alembic_config
    import dagster._core.storage.runs.sqlite.sqlite_run_storage as run_storage

    script = ScriptDirectory.from_config(get_alembic_config(run_storage.__file__))
    return {revision.revision for revision in script.walk_revisions()}
