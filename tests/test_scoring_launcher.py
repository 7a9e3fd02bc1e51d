"""Scoring out of process: the worker through Dagster Pipes (a real subprocess), and the Kubernetes pod spec.

- A materialization with the default launcher runs ``python -m valuebias.scoring_worker`` as a Pipes
  subprocess: the worker's logs reach the run's log, its metadata and data version reach the
  materialization, and the process that ran the Dagster step never imports torch or transformers.
- The in-process launcher gives the same table and data version (it runs the same task function).
- A failing worker fails the partition with the worker's own error.
- The pod a ``kubernetes`` launcher would create, rendered by dagster-k8s's ``build_pod_body``: GPU
  limits, node selector, tolerations, secrets by reference only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest

from tests.registry_fixtures import (build_random_reward_model, ingest_and_sync, random_models_entry,
                                     write_small_registry)

PROJECT = Path(__file__).resolve().parent.parent

KUBERNETES_BLOCK = """
scoring:
  batch_size: 16
  launcher: kubernetes
  kubernetes:
    image: registry.example.org/valuebias:0.1.0
    namespace: valuebias
    gpus: 1
    memory: 80Gi
    cpu: "8"
    node_selector: {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}
    tolerations:
      - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
    service_account: valuebias-scoring
    secret_env: [valuebias-s3-credentials]
"""


def _registry(tmp_path: Path, *, path: str | None = None) -> Path:
    """One tiny random RM (or a model path), scored with the product's default launcher."""
    model = path or build_random_reward_model(tmp_path / "rm", architecture="llama", seed=3)
    return write_small_registry(tmp_path, models=random_models_entry({"rm-a": ("llama", model)}), launcher=None)


# A fresh interpreter: ingest, then one scoring partition through the Pipes subprocess; it reports what
# it saw, including whether this (the step's) process ever imported torch or transformers.
RUN_ONE_PARTITION = textwrap.dedent("""
    import json, sys
    import dagster as dg
    from valuebias.orchestration.definitions import build_definitions, build_resources
    from valuebias.orchestration.partitions import sync_model_partitions
    from valuebias.config import load_config
    from valuebias.assets.rm_scores import rm_word_scores

    config_path = sys.argv[1]
    with dg.instance_for_test() as instance:
        defs = build_definitions(config_path)
        assert defs.resolve_job_def("ingest_job").execute_in_process(instance=instance).success
        sync_model_partitions(instance, load_config(config_path))
        result = dg.materialize([rm_word_scores], partition_key="rm-a", instance=instance,
                                resources=build_resources(config_path), raise_on_error=False)
        logs = [e.user_message for e in instance.all_logs(result.run_id)]
        event = instance.get_latest_materialization_event(dg.AssetKey("rm_word_scores"))
        meta = {k: v.value for k, v in event.asset_materialization.metadata.items()} if event else {}
        version = event.dagster_event.event_specific_data.materialization.tags.get("dagster/data_version") if event else None
    print(json.dumps({"success": result.success, "torch": "torch" in sys.modules,
                      "transformers": "transformers" in sys.modules, "logs": logs, "version": version,
                      "launcher": meta.get("launcher"), "sequences_scored": meta.get("sequences_scored"),
                      "rows": meta.get("dagster/row_count"), "invariance": meta.get("invariance_audit"),
                      "invariance_sequences": meta.get("invariance_sequences"),
                      "checks": {e.check_name: e.passed for e in result.get_asset_check_evaluations()}}))
""")


def test_default_launcher_scores_in_a_pipes_subprocess(tmp_path):
    config = _registry(tmp_path)
    proc = subprocess.run([sys.executable, "-c", RUN_ONE_PARTITION, str(config)], cwd=PROJECT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["success"]
    assert seen["launcher"] == "subprocess"
    assert seen["sequences_scored"] == seen["rows"] == 6 * 40
    # the worker's own log lines, sent through Pipes, are in the run's log
    assert any("rm-a: 240/240 sequences scored" in m for m in seen["logs"]), seen["logs"]
    assert any("wrote 240 rows to" in m for m in seen["logs"])
    # the step ran in this interpreter, the model in the worker
    assert seen["torch"] is False and seen["transformers"] is False
    # the worker's invariance audit reached the materialization and its check, through Pipes
    assert seen["invariance"] == "audited" and seen["invariance_sequences"] == 6 * 40
    assert seen["checks"] == {"rm_word_scores_invariance": True}

    # the in-process launcher runs the same task: same table, same data version
    from valuebias.orchestration.definitions import build_resources
    from valuebias.orchestration.partitions import sync_model_partitions
    from valuebias.assets.rm_scores import rm_word_scores
    from valuebias.assets.tables import rm_word_scores_key
    from valuebias.resources.scoring_launcher import ScoringLauncher
    from valuebias.resources.storage import Storage
    from valuebias.config import load_config

    loaded = load_config(config)
    before = Storage(uri=loaded.storage_uri).read_parquet(rm_word_scores_key("rm-a"))
    resources = build_resources(config)
    resources["scoring"] = ScoringLauncher(launcher="in_process")
    with dg.instance_for_test() as instance:
        sync_model_partitions(instance, loaded)
        result = dg.materialize([rm_word_scores], partition_key="rm-a", instance=instance, resources=resources)
        event = instance.get_latest_materialization_event(dg.AssetKey("rm_word_scores"))
    assert result.success
    assert event.asset_materialization.metadata["launcher"].value == "in_process"
    # every score reused from the cache: the model is loaded for the audit all the same
    assert event.asset_materialization.metadata["sequences_reused"].value == 6 * 40
    assert event.asset_materialization.metadata["invariance_audit"].value == "audited"
    assert {e.check_name: e.passed for e in result.get_asset_check_evaluations()} == {"rm_word_scores_invariance": True}
    assert event.dagster_event.event_specific_data.materialization.tags["dagster/data_version"] == seen["version"]
    after = Storage(uri=loaded.storage_uri).read_parquet(rm_word_scores_key("rm-a"))
    assert after.equals(before)
    # nothing staged is left behind
    assert Storage(uri=loaded.storage_uri).list("staging/") == []


def test_a_failing_worker_fails_the_partition_with_its_error(tmp_path):
    missing = tmp_path / "no-such-model"
    config = _registry(tmp_path, path=str(missing))
    from valuebias.assets.rm_scores import rm_word_scores
    from valuebias.orchestration.definitions import build_resources

    with dg.instance_for_test() as instance:
        ingest_and_sync(config, instance)
        result = dg.materialize([rm_word_scores], partition_key="rm-a", instance=instance,
                                resources=build_resources(config), raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.message
    assert "failed in the worker process" in message
    assert str(missing) in message  # the worker's InputError names the model path


def _gpu_registry(tmp_path):
    """A registry on S3 whose one model scores in a Kubernetes pod."""
    from valuebias.config import load_config

    config = write_small_registry(tmp_path, launcher=None, models="  big-rm:\n    kind: reward_model\n    family: llama\n"
                                                   "    huggingface: {path: org/big-rm}\n")
    text = config.read_text().replace("scoring: {batch_size: 32}\n", KUBERNETES_BLOCK.lstrip("\n"))
    config.write_text("storage: s3://valuebias-data/registry\n" + text)
    return load_config(config)


def test_the_kubernetes_pod_of_a_gpu_partition(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-that-must-not-leak")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-must-not-leak")
    config = _gpu_registry(tmp_path)
    from valuebias.resources.scoring_launcher import ScoringLauncher, render_scoring_pod
    from valuebias.resources.storage import Storage

    launcher = ScoringLauncher()
    spec = launcher.task_spec(config, "rm_word_scores", config.models["big-rm"],
                              Storage(uri=config.storage_uri).store().to_spec(),
                              inputs={"prompts": "tables/prompts.parquet"}, outputs={"table": "staging/x.parquet"})
    pod = render_scoring_pod(config, "rm_word_scores", "big-rm", run_id="0123abcd-run", extras=spec)
    print(json.dumps(pod, indent=2))  # shown with `pytest -s`: the manifest quoted in the docs

    assert pod["kind"] == "Pod" and pod["metadata"]["labels"]["valuebias/partition"] == "big-rm"
    podspec = pod["spec"]
    assert podspec["restartPolicy"] == "Never"
    assert podspec["serviceAccountName"] == "valuebias-scoring"
    assert podspec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert podspec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    (container,) = podspec["containers"]
    assert container["image"] == "registry.example.org/valuebias:0.1.0"
    assert container["command"] == ["python", "-m", "valuebias.scoring_worker"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1", "memory": "80Gi"}
    assert container["resources"]["requests"] == {"nvidia.com/gpu": "1", "memory": "80Gi", "cpu": "8"}
    assert container["envFrom"] == [{"secretRef": {"name": "valuebias-s3-credentials"}}]
    # the Pipes context carries the task (decodable), and no credential travels in the pod at all
    from dagster_pipes import decode_param

    env = {e["name"]: e.get("value") for e in container["env"]}
    carried = decode_param(env["DAGSTER_PIPES_CONTEXT"])["extras"]
    assert carried["task"] == "rm_word_scores" and carried["model"]["settings"]["path"] == "org/big-rm"
    assert carried["storage"]["uri"] == "s3://valuebias-data/registry"
    text = json.dumps(pod) + json.dumps(carried)
    assert "s3cr3t-value-that-must-not-leak" not in text and "AKIA-must-not-leak" not in text


def test_kubernetes_config_errors_name_the_key(tmp_path):
    from valuebias.config import load_config
    from valuebias.errors import InputError

    config = write_small_registry(tmp_path, launcher=None)
    config.write_text(config.read_text().replace("scoring: {batch_size: 32}", "scoring: {launcher: kubernetes}"))
    with pytest.raises(InputError, match=r"scoring\.kubernetes.*required when scoring.launcher is kubernetes"):
        load_config(config)
    config.write_text(config.read_text().replace("scoring: {launcher: kubernetes}",
                                                 "scoring: {launcher: kubernetes, kubernetes: {image: x, gpu: 1}}"))
    with pytest.raises(InputError, match=r"scoring\.kubernetes\.gpu.*unknown key 'gpu'"):
        load_config(config)
    config.write_text(config.read_text().replace("kubernetes, kubernetes: {image: x, gpu: 1}}",
                                                 "pods}"))
    with pytest.raises(InputError, match=r"scoring\.launcher.*'pods' is not one of"):
        load_config(config)


def test_kubernetes_launcher_refuses_local_storage(tmp_path):
    from valuebias.resources.scoring_launcher import ScoringLauncher
    from valuebias.config import load_config

    config = write_small_registry(tmp_path, launcher=None)
    config.write_text(config.read_text().replace("scoring: {batch_size: 32}", KUBERNETES_BLOCK.strip("\n")))
    loaded = load_config(config)
    launcher = ScoringLauncher()
    spec = launcher.task_spec(loaded, "rm_word_scores", next(iter(loaded.models.values())),
                              {"uri": loaded.storage_uri}, inputs={}, outputs={})
    context = dg.build_asset_context(partition_key="demo-llama-1")
    with pytest.raises(dg.Failure, match="scoring pods cannot see"):
        launcher.run(context, loaded, spec)


def test_valuebias_pod_prints_the_manifest(tmp_path, cli):
    import yaml

    config = _gpu_registry(tmp_path)
    pod = yaml.safe_load(cli("pod", "big-rm", "--config", str(config.path)))
    (container,) = pod["spec"]["containers"]
    assert pod["metadata"]["labels"]["valuebias/asset"] == "rm_word_scores"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["command"] == ["python", "-m", "valuebias.scoring_worker"]
