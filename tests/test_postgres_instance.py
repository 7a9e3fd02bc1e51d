"""The Dagster instance on PostgreSQL, as in the cluster deployment.

A real PostgreSQL server is started for this module (``initdb`` + ``pg_ctl`` into a temporary folder,
listening on 127.0.0.1 at a free port, password authentication). The instance is built from
``deploy/dagster.yaml`` itself, with only the Postgres host, port, user and database pointed at that
server; the password is read from ``DAGSTER_PG_PASSWORD`` exactly as in the cluster. The run launcher
(Kubernetes) is never used: the jobs run in process, as the tests elsewhere do.

PostgreSQL is found as ``initdb`` on PATH, else under ``/usr/lib/postgresql/*/bin``. When it is missing
the test is skipped, or fails when the ``CI`` environment variable is set (scripts/test.sh installs it).
PostgreSQL refuses to run as root: as root, the server runs as the user ``postgres`` (else ``nobody``).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    dbname: str

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}:{quote(self.password)}@{self.host}:{self.port}/{self.dbname}"

    def connect(self):
        import psycopg2

        return psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                                dbname=self.dbname)


def find_postgres_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: from PATH (symlinks resolved), else the newest
    ``/usr/lib/postgresql/<version>/bin`` (Debian/Ubuntu's layout)."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve()] if on_path else []
    candidates += sorted((Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
                         key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
                         reverse=True)
    for initdb in candidates:
        if (initdb.parent / "pg_ctl").exists():
            return initdb.parent
    return None


def unprivileged_user() -> pwd.struct_passwd | None:
    """As root, the user to run PostgreSQL as (``postgres``, else ``nobody``); otherwise None."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.fail("tests/test_postgres_instance.py: running as root, but neither user 'postgres' nor 'nobody' "
                "exists to run PostgreSQL as")


def as_user(command: list[str], user: pwd.struct_passwd | None) -> list[str]:
    if user is None:
        return command
    if shutil.which("runuser"):
        return ["runuser", "-u", user.pw_name, "--", *command]
    return ["su", "-s", "/bin/sh", user.pw_name, "-c", shlex.join(command)]


def run(command: list[str], what: str, log: Path | None = None) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        server_log = log.read_text() if log is not None and log.exists() else ""
        pytest.fail(f"tests/test_postgres_instance.py: {what} failed ({shlex.join(command)}):\n"
                    f"{result.stdout}\n{result.stderr}\n{server_log}")


@pytest.fixture(scope="module")
def postgres_server():
    """A throwaway PostgreSQL server on 127.0.0.1; yields its coordinates, stops it afterwards."""
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        message = ("tests/test_postgres_instance.py: PostgreSQL not found (no initdb on PATH nor under "
                   "/usr/lib/postgresql/*/bin)")
        if os.environ.get("CI"):
            pytest.fail(f"{message}: scripts/test.sh should have installed it (apt-get install postgresql)")
        pytest.skip(f"{message}; install the 'postgresql' package, or run scripts/test.sh")

    user = unprivileged_user()
    # Not under pytest's tmp dir: that is private to root (0700), so the server user could not enter it.
    root = Path(tempfile.mkdtemp(prefix="valuebias-pg-"))
    data, log, password_file = root / "data", root / "server.log", root / "password"
    password = secrets.token_urlsafe(16)
    password_file.write_text(password + "\n")
    if user is not None:
        for path in (root, password_file):
            os.chown(path, user.pw_uid, user.pw_gid)

    server = PostgresServer(host="127.0.0.1", port=free_port(), user="dagster", password=password,
                            dbname="valuebias_test")
    pg_ctl = str(bin_dir / "pg_ctl")
    started = False
    try:
        # Password (SCRAM) authentication over TCP, as a real server; trust only on the private socket.
        run(as_user([str(bin_dir / "initdb"), "-D", str(data), "-U", server.user, "--pwfile", str(password_file),
                     "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-locale", "--no-sync"],
                    user), "initdb")
        options = (f"-c listen_addresses=127.0.0.1 -p {server.port} -c unix_socket_directories={root} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        run(as_user([pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options, "start"], user),
            "pg_ctl start", log)
        started = True

        import psycopg2

        admin = psycopg2.connect(host=server.host, port=server.port, user=server.user, password=password,
                                 dbname="postgres")
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {server.dbname}")
        admin.close()
        yield server
    finally:
        if started:
            subprocess.run(as_user([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], user),
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def postgres_instance(postgres_server, tmp_path, monkeypatch):
    """A DagsterInstance loaded from deploy/dagster.yaml, with the Postgres coordinates of the test server."""
    import dagster as dg

    config = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    postgres_db = config["storage"]["postgres"]["postgres_db"]
    assert postgres_db["password"] == {"env": "DAGSTER_PG_PASSWORD"}, \
        "deploy/dagster.yaml: storage.postgres.postgres_db.password must be {env: DAGSTER_PG_PASSWORD}"
    postgres_db.update(hostname=postgres_server.host, port=postgres_server.port,
                       username=postgres_server.user, db_name=postgres_server.dbname)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", postgres_server.password)
    monkeypatch.setenv("DAGSTER_HOME", str(home))

    instance = dg.DagsterInstance.from_config(str(home))
    try:
        yield instance
    finally:
        instance.dispose()


def test_a_partition_materializes_on_postgres(tmp_path, postgres_server, postgres_instance):
    import dagster as dg
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    from valuebias.orchestration.definitions import build_definitions
    from valuebias.orchestration.partitions import REWARD_MODELS
    from valuebias.orchestration.partitions import sync_model_partitions
    from tests.registry_fixtures import build_random_reward_model, random_models_entry, write_small_registry
    from valuebias.config import load_config

    instance = postgres_instance
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)

    # Two registered models (two partitions), one tiny random RM on disk: only one partition is scored.
    weights = build_random_reward_model(tmp_path / "rm", architecture="gemma", seed=1)
    models = {"rm-gemma": ("gemma", weights), "rm-llama": ("llama", weights)}
    config_path = write_small_registry(tmp_path / "registry", models=random_models_entry(models))
    defs = build_definitions(config_path)

    ingest = defs.resolve_job_def("ingest_job").execute_in_process(instance=instance)
    assert ingest.success
    added, _ = sync_model_partitions(instance, load_config(config_path))
    assert sorted(added) == sorted(models)
    assert sorted(instance.get_dynamic_partitions(REWARD_MODELS)) == sorted(models)

    scoring = defs.resolve_job_def("rm_scoring_job").execute_in_process(instance=instance, partition_key="rm-gemma")
    assert scoring.success

    # Through Dagster's API: the event log in Postgres has this partition's materialization, only this one.
    key = dg.AssetKey("rm_word_scores")
    assert instance.get_materialized_partitions(key) == {"rm-gemma"}
    event = instance.get_latest_materialization_event(key)
    assert event.asset_materialization.partition == "rm-gemma"
    assert event.run_id == scoring.run_id

    # Straight from PostgreSQL: both runs, finished, and the materialization row of the partition.
    with postgres_server.connect() as connection, connection.cursor() as cursor:
        cursor.execute("SELECT run_id, status FROM runs")
        runs = dict(cursor.fetchall())
        cursor.execute("SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
                       "AND asset_key = %s AND partition = %s", (key.to_string(), "rm-gemma"))
        (materializations,) = cursor.fetchone()
    assert runs == {ingest.run_id: "SUCCESS", scoring.run_id: "SUCCESS"}
    assert materializations == 1
