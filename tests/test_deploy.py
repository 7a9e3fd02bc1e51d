"""The Kubernetes deployment files in ``deploy/``, checked offline.

- ``deploy/dagster.yaml`` goes through Dagster's own validation: the instance schema
  (``dagster_instance_config``, what ``DagsterInstance`` runs on load), the ``config_type()`` of the
  run launcher and of the Postgres storage, and the run launcher's own Kubernetes Job builder.
- ``deploy/helm/values.yaml``, ``deploy/Dockerfile`` and ``deploy/README.md`` must use the same names
  (image, module, port, namespace, secrets, Postgres) as ``dagster.yaml`` and the project.
- No file in ``deploy/`` may contain a literal password or key.

Nothing is built or fetched: no docker, no helm, no cluster.
"""

from __future__ import annotations

import re
import shlex
import shutil
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
INSTANCE_YAML = DEPLOY / "dagster.yaml"
VALUES_YAML = DEPLOY / "helm" / "values.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
DEPLOY_README = DEPLOY / "README.md"

FAKE_PASSWORD = "test-only-not-a-secret"


def load_yaml(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.relative_to(ROOT)}: expected a YAML mapping at the top"
    return data


def dig(data: dict, dotted: str, where: Path):
    """``data['a']['b']`` for ``'a.b'``; a missing key fails naming the file and the key path."""
    value = data
    for part in dotted.split("."):
        assert isinstance(value, dict) and part in value, f"{where.relative_to(ROOT)}: missing key '{dotted}'"
        value = value[part]
    return value


@pytest.fixture
def pg_password(monkeypatch):
    """The environment variable that deploy/dagster.yaml reads the Postgres password from."""
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", FAKE_PASSWORD)


def validated_instance_config(base_dir: Path, label: str = "deploy/dagster.yaml") -> dict:
    """The instance config as Dagster validates it when it loads an instance from ``base_dir``; an
    invalid file fails with Dagster's message prefixed by ``label`` (the file's name)."""
    from dagster._core.errors import DagsterInvalidConfigError
    from dagster._core.instance.config import dagster_instance_config

    try:
        config, custom_instance_class = dagster_instance_config(str(base_dir))
    except DagsterInvalidConfigError as error:
        raise AssertionError(f"{label}: {error}") from error
    assert custom_instance_class is None, f"{label}: no custom instance class expected"
    return dict(config)


def process(config_schema, value, where: str) -> dict:
    """Validates ``value`` against a Dagster config schema and resolves ``{env: ...}`` sources."""
    from dagster._config import process_config

    result = process_config(config_schema, value)
    assert result.success, f"{where}: " + "; ".join(error.message for error in result.errors or [])
    return result.value


# --------------------------------------------------------------------------------------------------
# deploy/dagster.yaml against Dagster's own validation
# --------------------------------------------------------------------------------------------------

def test_instance_config_passes_dagster_validation(pg_password):
    from dagster._serdes.config_class import class_from_code_pointer
    from dagster_k8s import K8sRunLauncher
    from dagster_postgres import DagsterPostgresStorage

    config = validated_instance_config(DEPLOY)

    # Run launcher: the Kubernetes one, with a config its own schema accepts (the instance schema
    # only checks module/class/config, so this is the check that catches a wrong launcher key).
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher"), \
        "deploy/dagster.yaml: run_launcher must be dagster_k8s.K8sRunLauncher"
    assert class_from_code_pointer(launcher["module"], launcher["class"]) is K8sRunLauncher
    launcher_config = process(K8sRunLauncher.config_type(), launcher["config"],
                              "deploy/dagster.yaml: run_launcher.config")
    assert launcher_config["env_secrets"] == ["valuebias-s3-credentials"]

    # Storage: PostgreSQL, password resolved from the environment, never written in the file.
    assert list(config["storage"]) == ["postgres"], "deploy/dagster.yaml: storage must be postgres"
    storage = process(DagsterPostgresStorage.config_type(), config["storage"]["postgres"],
                      "deploy/dagster.yaml: storage.postgres")
    assert storage["postgres_db"]["password"] == FAKE_PASSWORD
    # The URL Dagster will build must name a database driver that is installed (SQLAlchemy 2.1 maps a
    # bare "postgresql://" to psycopg 3, which dagster-postgres does not install).
    from dagster_postgres.utils import pg_url_from_config
    from sqlalchemy.engine import make_url

    url = make_url(pg_url_from_config(storage))
    try:
        url.get_dialect().import_dbapi()
    except ImportError as error:
        pytest.fail(f"deploy/dagster.yaml: storage.postgres.postgres_db.scheme: the driver of "
                    f"'{url.drivername}' is not installed ({error})")

    assert config["telemetry"] == {"enabled": False}, "deploy/dagster.yaml: telemetry.enabled must be false"
    assert config["concurrency"]["pools"]["default_limit"] >= 1


def test_dagster_reads_the_file_as_an_instance_with_postgres_and_kubernetes(tmp_path, pg_password):
    """``InstanceRef.from_dir`` is what ``DagsterInstance.get()`` calls; it resolves every class."""
    from dagster._core.instance.ref import InstanceRef
    from dagster._core.run_coordinator.queued_run_coordinator import QueuedRunCoordinator

    shutil.copy(INSTANCE_YAML, tmp_path / "dagster.yaml")  # from_dir may create folders: not in deploy/
    validated_instance_config(tmp_path)  # the same validation, failing with the file's name
    ref = InstanceRef.from_dir(str(tmp_path))
    assert ref.storage_data.class_name == "DagsterPostgresStorage"
    assert ref.run_launcher_data.class_name == "K8sRunLauncher"
    # The run coordinator needs no cluster: build it for real.
    assert isinstance(ref.run_coordinator, QueuedRunCoordinator)


def test_the_password_comes_only_from_the_environment(monkeypatch):
    from dagster_postgres import DagsterPostgresStorage
    from dagster._config import process_config

    monkeypatch.delenv("DAGSTER_PG_PASSWORD", raising=False)
    storage = load_yaml(INSTANCE_YAML)["storage"]["postgres"]
    assert storage["postgres_db"]["password"] == {"env": "DAGSTER_PG_PASSWORD"}
    result = process_config(DagsterPostgresStorage.config_type(), storage)
    assert not result.success
    assert "DAGSTER_PG_PASSWORD" in " ".join(error.message for error in result.errors)


@pytest.mark.parametrize("good, bad, check", [
    # A storage key: caught by the instance schema itself.
    ("      hostname:", "      hostnme:", "instance"),
    # A launcher key: the instance schema lets launcher config through, its config_type() does not.
    ("    job_namespace:", "    job_namepsace:", "launcher"),
])
def test_a_misspelled_key_fails_validation_naming_it(tmp_path, pg_password, good, bad, check):
    """Proves the validation above is real: one typo in a copy of the file makes it fail."""
    from dagster._core.errors import DagsterInvalidConfigError
    from dagster_k8s import K8sRunLauncher
    from dagster._config import process_config

    text = INSTANCE_YAML.read_text()
    assert text.count(good) == 1, f"deploy/dagster.yaml: expected exactly one line starting {good.strip()!r}"
    (tmp_path / "dagster.yaml").write_text(text.replace(good, bad))
    typo = bad.strip().rstrip(":")
    if check == "instance":
        with pytest.raises(AssertionError) as error:
            validated_instance_config(tmp_path, label="copy of deploy/dagster.yaml")
        assert isinstance(error.value.__cause__, DagsterInvalidConfigError)  # Dagster's own verdict
        message = str(error.value)
        assert message.startswith("copy of deploy/dagster.yaml: ")
    else:
        config = validated_instance_config(tmp_path, label="copy of deploy/dagster.yaml")
        result = process_config(K8sRunLauncher.config_type(), config["run_launcher"]["config"])
        assert not result.success
        message = " ".join(e.message for e in result.errors)
    assert typo in message, message


def test_the_run_launcher_builds_a_valid_kubernetes_job(pg_password):
    """Feeds the launcher config to dagster_k8s's own Job builder and reads back the pod spec:
    volumes, mounts and resources must be real Kubernetes objects, secrets referenced by name."""
    import kubernetes
    from dagster_k8s import K8sRunLauncher
    from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job

    config = validated_instance_config(DEPLOY)
    launcher = process(K8sRunLauncher.config_type(), config["run_launcher"]["config"],
                       "deploy/dagster.yaml: run_launcher.config")
    image = "{repository}:{tag}".format(**code_location(load_yaml(VALUES_YAML))["image"])
    job_config = DagsterK8sJobConfig(
        job_image=image,
        **{key: launcher[key] for key in (
            "dagster_home", "image_pull_policy", "service_account_name", "instance_config_map",
            "postgres_password_secret", "env_secrets", "env_vars", "volume_mounts", "volumes")})
    job = construct_dagster_k8s_job(
        job_config, args=["dagster", "api", "execute_run", "{}"], job_name="valuebias-test-run",
        user_defined_k8s_config=UserDefinedDagsterK8sConfig.from_dict(launcher["run_k8s_config"]))
    manifest = kubernetes.client.ApiClient().sanitize_for_serialization(job)

    pod = manifest["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "valuebias"
    container = pod["containers"][0]
    assert container["image"] == image
    assert {"secretRef": {"name": "valuebias-s3-credentials"}} in container["envFrom"]
    env = {e["name"]: e for e in container["env"]}
    assert env["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "dagster-postgresql-secret", "key": "postgresql-password"}
    assert env["VALUEBIAS_CONFIG"]["value"] == "/opt/valuebias/config/valuebias.yaml"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["valuebias-config"]["configMap"]["name"] == "valuebias-config"
    assert "emptyDir" in volumes["valuebias-state"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/opt/valuebias/config"] == "valuebias-config"
    assert container["resources"]["requests"]["memory"] == "2Gi"


# --------------------------------------------------------------------------------------------------
# Helm values, Dockerfile and README agree with dagster.yaml and the project
# --------------------------------------------------------------------------------------------------

def code_location(values: dict) -> dict:
    deployments = dig(values, "dagster-user-deployments.deployments", VALUES_YAML)
    names = [d.get("name") for d in deployments]
    assert names == ["valuebias"], f"deploy/helm/values.yaml: dagster-user-deployments.deployments: {names}"
    return deployments[0]


def dockerfile_cmd() -> list[str]:
    lines = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith("CMD ")]
    assert len(lines) == 1, "deploy/Dockerfile: expected exactly one CMD"
    return yaml.safe_load(lines[0][len("CMD "):])  # the JSON (exec) form is YAML too


def test_helm_values_agree_with_dagster_yaml(pg_password):
    values = load_yaml(VALUES_YAML)
    instance = validated_instance_config(DEPLOY)
    launcher = instance["run_launcher"]["config"]
    pg = instance["storage"]["postgres"]["postgres_db"]
    k8s = dig(values, "runLauncher.config.k8sRunLauncher", VALUES_YAML)

    def same(dotted: str, expected, instance_key: str):
        actual = dig(values, dotted, VALUES_YAML)
        assert actual == expected, (f"deploy/helm/values.yaml: '{dotted}' is {actual!r} but deploy/dagster.yaml "
                                    f"'{instance_key}' is {expected!r}")

    assert dig(values, "runLauncher.type", VALUES_YAML) == "K8sRunLauncher"
    same("runLauncher.config.k8sRunLauncher.jobNamespace", launcher["job_namespace"], "run_launcher.config.job_namespace")
    same("runLauncher.config.k8sRunLauncher.imagePullPolicy", launcher["image_pull_policy"],
         "run_launcher.config.image_pull_policy")
    same("runLauncher.config.k8sRunLauncher.loadInclusterConfig", launcher["load_incluster_config"],
         "run_launcher.config.load_incluster_config")
    same("runLauncher.config.k8sRunLauncher.failPodOnRunFailure", launcher["fail_pod_on_run_failure"],
         "run_launcher.config.fail_pod_on_run_failure")
    same("runLauncher.config.k8sRunLauncher.runK8sConfig.containerConfig",
         launcher["run_k8s_config"]["container_config"], "run_launcher.config.run_k8s_config.container_config")
    assert [s["name"] for s in k8s["envSecrets"]] == launcher["env_secrets"], \
        "deploy/helm/values.yaml: runLauncher...envSecrets differ from deploy/dagster.yaml env_secrets"
    same("global.serviceAccountName", launcher["service_account_name"], "run_launcher.config.service_account_name")
    same("global.postgresqlSecretName", launcher["postgres_password_secret"],
         "run_launcher.config.postgres_password_secret")
    same("global.dagsterHome", launcher["dagster_home"], "run_launcher.config.dagster_home")
    # The chart names the instance ConfigMap "<release>-instance"; the README installs release "dagster".
    assert launcher["instance_config_map"] == f"{helm_release_name()}-instance", \
        "deploy/dagster.yaml: run_launcher.config.instance_config_map must be '<helm release>-instance'"

    # External Postgres, password only from the existing secret.
    same("postgresql.enabled", False, "storage.postgres (external server)")
    same("generatePostgresqlPasswordSecret", False, "storage.postgres.postgres_db.password (from a secret)")
    same("postgresql.postgresqlPassword", "", "storage.postgres.postgres_db.password")
    same("postgresql.postgresqlHost", pg["hostname"], "storage.postgres.postgres_db.hostname")
    same("postgresql.postgresqlUsername", pg["username"], "storage.postgres.postgres_db.username")
    same("postgresql.postgresqlDatabase", pg["db_name"], "storage.postgres.postgres_db.db_name")
    same("postgresql.service.port", pg["port"], "storage.postgres.postgres_db.port")
    same("postgresql.postgresqlScheme", pg.get("scheme"), "storage.postgres.postgres_db.scheme")

    # The code location passes its env, secrets and volumes to run pods: the same as the launcher's.
    location = code_location(values)
    assert location["includeConfigInLaunchedRuns"] == {"enabled": True}
    env = [f"{e['name']}={e['value']}" for e in location["env"]]
    assert env == launcher["env_vars"], f"deploy/helm/values.yaml: code location env {env} != env_vars"
    assert [s["name"] for s in location["envSecrets"]] == launcher["env_secrets"]
    assert location["volumes"] == launcher["volumes"], "deploy/helm/values.yaml: code location volumes differ"
    assert location["volumeMounts"] == launcher["volume_mounts"], \
        "deploy/helm/values.yaml: code location volumeMounts differ"

    # Daemon, queue, concurrency (camelCase in the chart, snake_case in dagster.yaml), monitoring, telemetry.
    same("dagsterDaemon.enabled", True, "run_coordinator (needs the daemon)")
    same("dagsterDaemon.runCoordinator.type", instance["run_coordinator"]["class"], "run_coordinator.class")
    queued = dig(values, "dagsterDaemon.runCoordinator", VALUES_YAML).get("config") or {}
    assert not queued, ("deploy/helm/values.yaml: dagsterDaemon.runCoordinator.config must stay unset: "
                        "run limits are in 'concurrency' (the chart refuses both)")
    same("concurrency.enabled", True, "concurrency")
    pools, runs = instance["concurrency"]["pools"], instance["concurrency"]["runs"]
    same("concurrency.pools", {"defaultLimit": pools["default_limit"], "granularity": pools["granularity"]},
         "concurrency.pools")
    same("concurrency.runs", {"maxConcurrentRuns": runs["max_concurrent_runs"]}, "concurrency.runs")
    monitoring = instance["run_monitoring"]
    same("dagsterDaemon.runMonitoring", {
        "enabled": monitoring["enabled"], "startTimeoutSeconds": monitoring["start_timeout_seconds"],
        "pollIntervalSeconds": monitoring["poll_interval_seconds"],
        "freeSlotsAfterRunEndSeconds": monitoring["free_slots_after_run_end_seconds"]}, "run_monitoring")
    same("telemetry.enabled", False, "telemetry.enabled")


def helm_release_name() -> str:
    commands = [line for line in DEPLOY_README.read_text().splitlines() if "helm upgrade --install" in line]
    assert len(commands) == 1, "deploy/README.md: expected one 'helm upgrade --install' command"
    words = shlex.split(commands[0].rstrip("\\"))
    return words[words.index("--install") + 1]


def test_image_module_and_port_agree_across_files():
    values = load_yaml(VALUES_YAML)
    location = code_location(values)
    image = "{repository}:{tag}".format(**location["image"])

    # The module Dagster loads: pyproject, workspace.yaml, Helm args and the Dockerfile's CMD.
    module = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dagster"]["module_name"]
    workspace = load_yaml(ROOT / "workspace.yaml")["load_from"][0]["python_module"]["module_name"]
    assert workspace == module, f"workspace.yaml: module_name {workspace!r} != pyproject.toml {module!r}"
    assert location["dagsterApiGrpcArgs"] == ["-m", module], \
        f"deploy/helm/values.yaml: dagsterApiGrpcArgs must be ['-m', '{module}']"
    cmd = dockerfile_cmd()
    assert cmd[:3] == ["dagster", "api", "grpc"], f"deploy/Dockerfile: CMD must start 'dagster api grpc': {cmd}"
    assert cmd[cmd.index("-m") + 1] == module, f"deploy/Dockerfile: CMD -m must be {module}"
    assert cmd[cmd.index("-h") + 1] == "0.0.0.0", "deploy/Dockerfile: CMD must listen on 0.0.0.0"
    port = int(cmd[cmd.index("-p") + 1])
    assert location["port"] == port, f"deploy/helm/values.yaml: port {location['port']} != Dockerfile CMD -p {port}"
    assert f"EXPOSE {port}" in DOCKERFILE.read_text(), f"deploy/Dockerfile: expected 'EXPOSE {port}'"

    # The image the README builds and pushes is the one the chart runs.
    readme = DEPLOY_README.read_text()
    assert f"docker build -f deploy/Dockerfile -t {image} ." in readme, \
        f"deploy/README.md: the docker build command must tag {image} (deploy/helm/values.yaml image)"
    assert f"docker push {image}" in readme, f"deploy/README.md: expected 'docker push {image}'"
    for secret in ("valuebias-s3-credentials", "dagster-postgresql-secret", "postgresql-password"):
        assert secret in readme, f"deploy/README.md: the secret '{secret}' is not documented"


def test_dockerfile_installs_what_the_project_pins():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M), "deploy/Dockerfile: base must be python:3.11-slim"
    torch_pin = next(line for line in (ROOT / "requirements.txt").read_text().splitlines()
                     if line.startswith("torch=="))
    assert f'ARG TORCH_SPEC="{torch_pin}"' in text, \
        f"deploy/Dockerfile: ARG TORCH_SPEC must default to requirements.txt's pin {torch_pin}"
    assert "pip install -r" in text and "requirements.txt" in text
    taters = re.search(r"taters==[\d.]+", (ROOT / "scripts" / "setup.sh").read_text()).group(0)
    assert f"pip install --no-deps {taters}" in text, f"deploy/Dockerfile: expected 'pip install --no-deps {taters}'"
    assert re.search(r"pip install --no-deps (-e )?\.$", text, re.M), "deploy/Dockerfile: the project is not installed"
    copied = {word.rstrip("/") for line in text.splitlines() if line.startswith("COPY ")
              for word in line.split()[1:-1]}
    for name in ("valuebias", "assets", "resources", "orchestration", "data_contracts", "pyproject.toml",
                 "workspace.yaml", "valuebias.yaml", "requirements.txt"):
        assert name in copied, f"deploy/Dockerfile: '{name}' is not copied into the image"
        assert (ROOT / name).exists(), f"deploy/Dockerfile copies '{name}', which the project does not have"


# --------------------------------------------------------------------------------------------------
# No literal secrets
# --------------------------------------------------------------------------------------------------

#: ``password: x``, ``postgresqlPassword: x``, ``AWS_SECRET_ACCESS_KEY=x``, ``--from-literal=...-password=x``.
SECRET_ASSIGNMENT = re.compile(
    r"(?<![A-Za-z0-9_.-])(?P<key>[A-Za-z0-9_.-]*(?:password|passwd|secret_access_key|access_key_id|token))"
    r"\s*[:=]\s*(?P<value>[^\s#,}]*)", re.IGNORECASE)
#: Values that are not secrets: empty, a placeholder, or a reference ({env: ...}, $VAR, <...>).
PLACEHOLDER = re.compile(r'^(|""|\'\'|\.\.\.|<[^>]*>|\$\{?[A-Za-z_][A-Za-z0-9_]*\}?|\{.*)$')
KEY_MATERIAL = re.compile(r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----")


def literal_secrets(text: str) -> list[str]:
    """The lines of ``text`` that assign a literal value to a password/key, or contain key material."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        for match in SECRET_ASSIGNMENT.finditer(line):
            if not PLACEHOLDER.match(match.group("value")):
                found.append(f"line {number}: {match.group('key')} = {match.group('value')!r}")
        if KEY_MATERIAL.search(line):
            found.append(f"line {number}: key material")
    return found


def test_the_secret_scan_can_fail():
    """A scanner that never finds anything would prove nothing."""
    assert literal_secrets("    password: hunter2\n")
    assert literal_secrets("postgresqlPassword: hunter2")
    assert literal_secrets("--from-literal=AWS_SECRET_ACCESS_KEY=abc123")
    assert literal_secrets("ENV DAGSTER_PG_PASSWORD=abc123")
    assert literal_secrets("key: AKIAABCDEFGHIJKLMNOP")
    assert not literal_secrets('password:\n  env: DAGSTER_PG_PASSWORD\npostgresqlPassword: ""\n'
                               "--from-literal=AWS_ACCESS_KEY_ID=...\npostgres_password_secret: dagster-pg\n")


def test_no_file_in_deploy_contains_a_literal_secret():
    files = sorted(p for p in DEPLOY.rglob("*") if p.is_file())
    assert {DOCKERFILE, INSTANCE_YAML, VALUES_YAML, DEPLOY_README} <= set(files)
    problems = [f"{path.relative_to(ROOT)}: {problem}" for path in files for problem in literal_secrets(path.read_text())]
    assert not problems, "literal secrets in deploy/:\n" + "\n".join(problems)
