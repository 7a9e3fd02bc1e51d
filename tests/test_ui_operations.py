"""The registry as people operate it from the Dagster UI, with real processes (issue 11).

``valuebias ui`` (a real ``dagster-webserver`` and a real ``dagster-daemon``) on the instance that
``valuebias run`` filled: every partitioned asset is fully materialized, the CLI's runs are listed under
their jobs, the reports show their plots, and a backfill of every missing partition, launched through the
GraphQL API as the UI's "Materialize missing" does, completes and materializes exactly those partitions.
Ctrl-C on ``valuebias ui`` stops the webserver and the daemon."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.registry_fixtures import (build_random_language_model, build_random_reward_model, language_models_entry,
                                     random_models_entry, write_small_registry)

PROJECT = Path(__file__).resolve().parents[1]
LOCATION = {"repositoryName": "__repository__", "repositoryLocationName": "valuebias"}


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = json.loads(response.read())
    assert "errors" not in payload, payload["errors"]
    return payload["data"]


def partition_stats(port: int) -> dict[str, dict]:
    data = graphql(port, "{ assetNodes { assetKey { path } partitionStats { numMaterialized numPartitions "
                         "numFailed numMaterializing } } }")
    return {"/".join(n["assetKey"]["path"]): n["partitionStats"] for n in data["assetNodes"] if n["partitionStats"]}


def wait_until(condition, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}")
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found + [grand for child in found for grand in children(child)]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="checks the stopped processes through /proc")
def test_ui_serves_runs_plots_and_backfills_with_a_real_daemon(tmp_path, cli):
    weights = tmp_path / "weights"
    rms = {"rm-a": ("llama", build_random_reward_model(weights / "rm-a", architecture="llama", seed=1)),
           "rm-b": ("gemma", build_random_reward_model(weights / "rm-b", architecture="gemma", seed=2))}
    lms = {"lm-a": ("llama", "instruction_tuned", build_random_language_model(weights / "lm-a", architecture="llama",
                                                                              seed=3)),
           "lm-b": ("gemma", "instruction_tuned", build_random_language_model(weights / "lm-b", architecture="gemma",
                                                                              seed=4))}
    config = write_small_registry(tmp_path, models=random_models_entry(rms) + language_models_entry(lms),
                                  extra="pairs:\n  - [lm-a, lm-b]\n")
    cli("run", "--config", str(config))

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("VALUEBIAS_CONFIG", "DAGSTER_HOME")}
    ui = subprocess.Popen([sys.executable, "-m", "valuebias.orchestration.cli", "ui", "--config", str(config), "--port",
                           str(port)], cwd=PROJECT, env={**env, "DAGSTER_DISABLE_TELEMETRY": "1"},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        def serving():
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                return True
            except OSError:
                return False

        wait_until(serving, 180, "the webserver of `valuebias ui`", ui)

        def daemons_healthy():
            statuses = graphql(port, "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy "
                                     "required } } } }")["instance"]["daemonHealth"]["allDaemonStatuses"]
            needed = {s["daemonType"]: s["healthy"] for s in statuses if s["required"]}
            return {"SENSOR", "SCHEDULER", "QUEUED_RUN_COORDINATOR", "BACKFILL"} <= set(needed) and all(
                needed.values())

        wait_until(daemons_healthy, 120, "a healthy dagster-daemon (sensor, scheduler, run queue, backfills)", ui)

        # After `valuebias run`: every partitioned asset is 100% materialized; no partition that cannot succeed.
        stats = partition_stats(port)
        assert {a: (s["numMaterialized"], s["numPartitions"]) for a, s in stats.items()} == {
            "rm_word_scores": (2, 2), "lm_next_token_logprobs": (2, 2), "lm_word_logprobs": (2, 2),
            "mwlr_pair": (1, 1), "rm_vocabulary_sweep": (0, 0),  # no model switches the sweep on
            "rm_value_cards": (2, 2)}

        # The CLI's runs are listed under their jobs (what the job's Runs tab and the Overview query).
        for job, expected in (("ingest_job", 1), ("rm_scoring_job", 2), ("lm_scoring_job", 2), ("mwlr_job", 1),
                              ("rm_statistics_job", 1), ("lm_statistics_job", 1)):
            data = graphql(port, """query ($params: PipelineSelector!) { pipelineOrError(params: $params) {
                ... on Pipeline { runs(limit: 20) { runId status } } } }""",
                           {"params": {**LOCATION, "pipelineName": job}})
            runs = data["pipelineOrError"]["runs"]
            assert len(runs) == expected and {r["status"] for r in runs} == {"SUCCESS"}, (job, runs)

        # The Figure-1 plot itself is in rm_report's metadata (a PNG in the markdown), not a path.
        data = graphql(port, """{ assetNodes(assetKeys: [{path: ["rm_report"]}]) { assetMaterializations(limit: 1) {
            metadataEntries { label ... on MarkdownMetadataEntry { mdStr } } } } }""")
        entries = data["assetNodes"][0]["assetMaterializations"][0]["metadataEntries"]
        report = next(e["mdStr"] for e in entries if e["label"] == "report")
        embedded = report.split("](data:image/png;base64,", 1)[1].split(")", 1)[0]
        assert base64.b64decode(embedded)[:4] == b"\x89PNG"

        # Stop the sensor (so that only the backfill runs), then register one model of each kind and a pair.
        sensor = graphql(port, """query ($s: SensorSelector!) { sensorOrError(sensorSelector: $s) {
            ... on Sensor { sensorState { id } } } }""", {"s": {**LOCATION, "sensorName": "model_partitions_sensor"}})
        sensor_id = sensor["sensorOrError"]["sensorState"]["id"]
        graphql(port, "mutation ($id: String) { stopSensor(id: $id) { __typename } }", {"id": sensor_id})
        rms["rm-c"] = ("llama", rms["rm-a"][1])
        lms["lm-c"] = ("gemma", "pretrained", lms["lm-b"][2])
        config.write_text(write_small_registry(
            tmp_path, models=random_models_entry(rms) + language_models_entry(lms),
            extra="pairs:\n  - [lm-a, lm-b]\n  - [lm-a, lm-c]\n").read_text())
        import dagster as dg

        from valuebias.orchestration.partitions import sync_model_partitions
        from valuebias.config import load_config

        with dg.DagsterInstance.get() as instance:  # the project's instance (the CLI pointed DAGSTER_HOME at it)
            assert Path(instance.root_directory) == tmp_path / ".valuebias" / "dagster"
            sync_model_partitions(instance, load_config(config))
        graphql(port, "mutation { reloadWorkspace { __typename } }")
        stats = wait_until(lambda: (s := partition_stats(port))["rm_word_scores"]["numPartitions"] == 3 and s,
                           60, "the reloaded code location")
        missing = {a: s["numPartitions"] - s["numMaterialized"] for a, s in stats.items()}
        assert missing == {"rm_word_scores": 1, "lm_next_token_logprobs": 1, "lm_word_logprobs": 1, "mwlr_pair": 1,
                           "rm_vocabulary_sweep": 0, "rm_value_cards": 1}

        # A backfill of every missing partition, as the UI's "Materialize missing" launches it.
        targets = {"rm_word_scores": "rm-c", "lm_next_token_logprobs": "lm-c", "lm_word_logprobs": "lm-c",
                   "mwlr_pair": "lm-a__vs__lm-c"}
        launched = graphql(port, """mutation ($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
            __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }""", {"p": {
            "partitionsByAssets": [{"assetKey": {"path": [asset]}, "partitions": {"range": {"start": key, "end": key}}}
                                   for asset, key in targets.items()]}})["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        query = """query ($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill {
            status assetBackfillData { assetBackfillStatuses { ... on AssetPartitionsStatusCounts {
            assetKey { path } numPartitionsTargeted numPartitionsMaterialized numPartitionsFailed } } } } } }"""

        def backfill_done():
            backfill = graphql(port, query, {"id": launched["backfillId"]})["partitionBackfillOrError"]
            return backfill if backfill["status"] in ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED",
                                                      "FAILED", "CANCELED") else None

        backfill = wait_until(backfill_done, 420, "the backfill to complete", ui)
        counts = {"/".join(s["assetKey"]["path"]): (s["numPartitionsTargeted"], s["numPartitionsMaterialized"],
                                                    s["numPartitionsFailed"])
                  for s in backfill["assetBackfillData"]["assetBackfillStatuses"]}
        assert backfill["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), backfill
        assert counts == {asset: (1, 1, 0) for asset in targets}
        stats = partition_stats(port)
        assert {a: (s["numMaterialized"], s["numPartitions"]) for a, s in stats.items()} == {
            "rm_word_scores": (3, 3), "lm_next_token_logprobs": (3, 3), "lm_word_logprobs": (3, 3),
            "mwlr_pair": (2, 2), "rm_vocabulary_sweep": (0, 0),
            "rm_value_cards": (2, 3)}  # the backfill did not target the new model's card (the sensor is stopped)
    finally:
        # Ctrl-C on `valuebias ui` stops the webserver and the daemon.
        spawned = children(ui.pid)
        os.killpg(ui.pid, signal.SIGINT) if ui.poll() is None else None
        try:
            ui.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait()
            raise AssertionError("`valuebias ui` did not stop on Ctrl-C")
        output = ui.stdout.read()
    assert "starting the Dagster webserver and daemon" in output and f"http://127.0.0.1:{port}" in output
    # no superseded command underneath (`dagster dev` warns that `dg dev` supersedes it)
    assert "superseded" not in output.lower() and "deprecat" not in output.lower(), output
    left = [pid for pid in spawned if Path(f"/proc/{pid}").exists()
            and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
    assert not left, f"processes left after Ctrl-C: {left}"
