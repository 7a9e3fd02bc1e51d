"""Where scoring partitions run: a Dagster resource that launches ``valuebias.scoring_worker`` through
Dagster Pipes.

- ``subprocess`` (the default): a ``PipesSubprocessClient`` runs the worker on this machine, so neither
  the code location nor the webserver nor the run's step process imports torch or transformers.
- ``kubernetes``: a ``PipesK8sClient`` (dagster-k8s) runs the same worker command in a pod built from the
  registry's ``scoring.kubernetes`` block (:func:`scoring_pod_spec`): image, ``nvidia.com/gpu`` count,
  memory, node selector, tolerations, and environment from Kubernetes Secrets by reference.
- ``in_process``: the worker's :func:`~valuebias.scoring_worker.run_task` inside the step itself (for
  debugging and for tests that are about something else than the process boundary).

Each way returns what the worker reported: its metadata and the data version of the table it wrote. The
worker's logs go to the run's log. Credentials never travel in the task: the subprocess inherits this
process's environment and a pod gets its Secrets by reference.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg

from valuebias.scoring_worker import ERROR_FILE_ENV, WORKER_MODULE
from valuebias.config import SCORING_LAUNCHERS, KubernetesScoringConfig, ModelConfig, RegistryConfig

CONTAINER_NAME = "valuebias-scoring"


def model_entry(model: ModelConfig) -> dict[str, Any]:
    """The registry entry of a model as the worker receives it."""
    return model.to_entry()


def scoring_pod_spec(k8s: KubernetesScoringConfig) -> dict[str, Any]:
    """The Kubernetes PodSpec of one scoring partition (camelCase, as in a manifest). GPUs and memory
    are both requested and limited; secrets are referenced by name (``envFrom.secretRef``), never copied."""
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if k8s.gpus:
        limits["nvidia.com/gpu"] = requests["nvidia.com/gpu"] = str(k8s.gpus)
    if k8s.memory:
        limits["memory"] = requests["memory"] = k8s.memory
    if k8s.cpu:
        requests["cpu"] = k8s.cpu
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": k8s.image,
        "imagePullPolicy": k8s.image_pull_policy,
        "command": ["python", "-m", WORKER_MODULE],
        "resources": {"limits": limits, "requests": requests},
        "env": [{"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"}],
        "envFrom": [{"secretRef": {"name": name}} for name in k8s.secret_env],
    }
    spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if k8s.node_selector:
        spec["nodeSelector"] = dict(k8s.node_selector)
    if k8s.tolerations:
        spec["tolerations"] = [t.model_dump(exclude_none=True) for t in k8s.tolerations]
    if k8s.service_account:
        spec["serviceAccountName"] = k8s.service_account
    return spec


def scoring_pod_meta(task: str, partition: str) -> dict[str, Any]:
    """Labels that say which asset and partition a pod scores (label values: 63 safe characters)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", partition)[:63].strip("-_.") or "none"
    return {"labels": {"app.kubernetes.io/name": "valuebias-scoring", "valuebias/asset": task,
                       "valuebias/partition": safe}}


class ScoringLauncher(dg.ConfigurableResource):
    """Runs one scoring partition through the worker (see the module docstring).

    ``launcher``: ``subprocess``, ``kubernetes`` or ``in_process``; empty means the registry's
    ``scoring.launcher``. ``batch_size`` of 0 means the registry's ``scoring.batch_size``. ``device``
    forces a torch device (``cpu``, ``cuda:0``); empty means automatic (CUDA in bf16 when available)."""

    launcher: str = ""
    batch_size: int = 0
    device: str = ""

    def task_spec(self, config: RegistryConfig, task: str, model: ModelConfig, storage_spec: dict,
                  inputs: dict[str, str], outputs: dict[str, str]) -> dict[str, Any]:
        """The JSON task the worker receives as Pipes extras (no credentials in it)."""
        return {"task": task, "model": model_entry(model), "storage": storage_spec, "inputs": inputs,
                "outputs": outputs, "demo_dir": str(Path(config.state_dir) / "demo_models"),
                "base_dir": str(config.base_dir), "batch_size": self.batch_size or config.scoring_batch_size,
                "threads": config.scoring_threads, "device": self.device or None,
                "word_rule": config.implicit_rewards.word_rule,
                "published_coverage": config.analysis.published_coverage,
                "digest_cache": str(config.digest_cache_path),
                "dequantised_dir": str(Path(config.state_dir) / "dequantised")}

    def score(self, context: dg.AssetExecutionContext, config: RegistryConfig, task: str, model: ModelConfig,
              storage_spec: dict, inputs: dict[str, str], outputs: dict[str, str]) -> tuple[dict[str, Any], str]:
        """:meth:`task_spec` then :meth:`run`: what a scoring asset calls. One process computes a partition at
        a time: a second run of it (another ``valuebias run``, a run launched from the UI) waits, saying for
        whom, then finds the first one's scores in the score cache."""
        from valuebias.locks import partition_lock

        with partition_lock(config.state_dir, task, context.partition_key, context.log.info):
            return self.run(context, config, self.task_spec(config, task, model, storage_spec, inputs, outputs))

    def identify(self, context: dg.AssetExecutionContext, config: RegistryConfig, model: ModelConfig,
                 storage_spec: dict) -> dict[str, Any]:
        """The content identity of ``model`` as the worker computes it where the weights are (no scoring)."""
        metadata, _ = self.score(context, config, "identify", model, storage_spec, inputs={}, outputs={})
        content = metadata["content"]
        return content.value if isinstance(content, dg.MetadataValue) else content

    def run(self, context: dg.AssetExecutionContext, config: RegistryConfig, spec: dict[str, Any]
            ) -> tuple[dict[str, Any], str]:
        """Runs the task ``spec``; returns (metadata, data version) as reported by the worker. A failed
        worker is a ``dg.Failure`` that names the worker's error."""
        mode = self.launcher or config.scoring_launcher
        if mode not in SCORING_LAUNCHERS:
            raise dg.Failure(f"unknown scoring launcher '{mode}' (expected one of: {', '.join(SCORING_LAUNCHERS)})")
        context.log.info(f"scoring '{context.partition_key}' ({spec['task']}) with the {mode} launcher")
        if mode == "in_process":
            from valuebias.scoring_worker import run_task

            metadata, version = run_task(spec, context.log.info)
            return {**metadata, "launcher": mode}, version
        if mode == "kubernetes":
            invocation = self._run_in_pod(context, config, spec)
        else:
            invocation = self._run_in_subprocess(context, spec)
        result = invocation.get_materialize_result()
        if result.data_version is None:
            raise dg.Failure(f"the scoring worker for '{context.partition_key}' reported no data version")
        return {**dict(result.metadata or {}), "launcher": mode}, result.data_version.value

    def _run_in_subprocess(self, context: dg.AssetExecutionContext, spec: dict[str, Any]):
        with tempfile.TemporaryDirectory(prefix="valuebias-worker-") as folder:
            error_file = Path(folder) / "error.txt"
            try:
                return dg.PipesSubprocessClient().run(
                    context=context, extras=spec, command=[sys.executable, "-m", WORKER_MODULE],
                    env={ERROR_FILE_ENV: str(error_file)})
            except Exception as exc:  # Pipes raises a non-public error type when the process exits non-zero
                reason = error_file.read_text() if error_file.exists() else f"{type(exc).__name__}: {exc}"
                raise dg.Failure(f"scoring '{context.partition_key}' ({spec['task']}) failed in the worker "
                                 f"process: {reason}") from None

    def _run_in_pod(self, context: dg.AssetExecutionContext, config: RegistryConfig, spec: dict[str, Any]):
        from dagster_k8s import PipesK8sClient

        if "://" not in spec["storage"]["uri"] or spec["storage"]["uri"].startswith("file://"):
            raise dg.Failure(f"scoring.launcher is kubernetes but storage is the local path "
                             f"{spec['storage']['uri']}, which scoring pods cannot see: set `storage:` in "
                             f"{config.path} to an object store (s3://bucket/prefix)")
        k8s = config.kubernetes
        return PipesK8sClient().run(context=context, extras=spec, namespace=k8s.namespace,
                                    base_pod_meta=scoring_pod_meta(spec["task"], context.partition_key),
                                    base_pod_spec=scoring_pod_spec(k8s))


def render_scoring_pod(config: RegistryConfig, task: str, partition: str, *, run_id: str = "00000000-0000-0000-0000-000000000000",
                       extras: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Pod manifest ``PipesK8sClient`` would create for one partition, rendered offline by dagster-k8s's
    own ``build_pod_body`` (which checks every field against the Kubernetes API model). ``extras``, when
    given, is encoded into the Pipes context variable exactly as a run does; at run time Pipes also adds
    its messages variable."""
    import kubernetes
    from dagster_k8s.pipes import build_pod_body, get_pod_name
    from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, encode_param

    if config.kubernetes is None:
        raise dg.Failure(f"{config.path} has no scoring.kubernetes block")
    env = {DAGSTER_PIPES_CONTEXT_ENV_VAR: encode_param({"extras": extras})} if extras is not None else {}
    pod = build_pod_body(pod_name=get_pod_name(run_id, task), image=None, command=None, env_vars=env,
                         base_pod_meta=scoring_pod_meta(task, partition),
                         base_pod_spec=scoring_pod_spec(config.kubernetes))
    manifest = kubernetes.client.ApiClient().sanitize_for_serialization(pod)
    return {"apiVersion": "v1", "kind": "Pod", **manifest}
