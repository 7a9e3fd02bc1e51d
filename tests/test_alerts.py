"""Failures that surface, alerts, and one run per piece of work (issue 25), on a real Dagster instance: the
sensors are evaluated as the daemon evaluates them (their cursors carried from tick to tick), the webhook
is a real HTTP server on loopback."""

from __future__ import annotations

import csv
import io
import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import dagster as dg
import polars as pl
import pytest

from valuebias.orchestration.alerts import alert_on_run_failure, registry_alerts_sensor
from valuebias.orchestration.cli import main as valuebias_main
from valuebias.orchestration.definitions import build_definitions, build_resources
from valuebias.orchestration.sensors import model_partitions_sensor
from tests.registry_fixtures import build_random_reward_model, random_models_entry, write_small_registry

HOOK_ENV = "VALUEBIAS_TEST_ALERT_WEBHOOK"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("alert-weights")
    built = {"llama-a": ("llama", build_random_reward_model(root / "llama-a", architecture="llama", seed=1)),
             "llama-b": ("llama", build_random_reward_model(root / "llama-b", architecture="llama", seed=2)),
             "gemma-a": ("gemma", build_random_reward_model(root / "gemma-a", architecture="gemma", seed=3))}
    broken = root / "broken"  # a model whose weights file is garbage: loading it fails in the scoring step
    shutil.copytree(built["llama-a"][1], broken)
    for weights_file in broken.glob("*.safetensors"):
        weights_file.write_bytes(b"not a safetensors file" * 100)
    built["broken"] = ("gemma", broken)
    return built


@pytest.fixture()
def webhook(monkeypatch):
    """A local HTTP server that records the JSON bodies POSTed to it; its URL is in ``$HOOK_ENV``."""
    bodies: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(HOOK_ENV, f"http://127.0.0.1:{server.server_port}/hook")
    yield bodies
    server.shutdown()


ALERTS = f"alerts:\n  stale_after: 1h\n  channels:\n    - {{type: file}}\n    - {{type: webhook, url_env: {HOOK_ENV}}}\n"


def tick(sensor, instance, config, cursor=None):
    """One evaluation of ``sensor`` as the daemon makes it; returns (result, the cursor it leaves)."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=build_resources(config),
                                      repository_def=build_definitions(config).get_repository_def())
    result = sensor.evaluate_tick(context)
    return result, result.cursor


def partitions_tick(instance, config, cursor=None, seen: list | None = None) -> tuple[list[dg.RunRequest], str]:
    """One tick of ``model_partitions_sensor``: (its run requests, its skip reason); the cursor it leaves is
    appended to ``seen``."""
    context = dg.build_sensor_context(instance=instance, resources=build_resources(config), cursor=cursor,
                                      repository_def=build_definitions(config).get_repository_def())
    result = model_partitions_sensor(context)
    if seen is not None:
        seen.append(context.cursor)
    if result.dynamic_partitions_requests:
        for request in result.dynamic_partitions_requests:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result.run_requests or [], result.skip_reason.skip_message if result.skip_reason else ""


def alert_lines(tmp_path) -> list[dict]:
    path = tmp_path / ".valuebias" / "alerts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def status_rows(config) -> dict[tuple[str, str], dict]:
    out = io.StringIO()
    from contextlib import redirect_stdout

    with redirect_stdout(out):
        assert valuebias_main(["status", "--format", "csv", "--config", str(config)]) == 0
    return {(r["asset"], r["partition"]): r for r in csv.DictReader(io.StringIO(out.getvalue()))}


def test_a_failed_model_is_failed_in_status_holds_the_statistics_and_alerts_once(tmp_path, monkeypatch, weights,
                                                                                  webhook):
    models = {k: weights[k] for k in ("llama-a", "llama-b", "gemma-a")}
    config = write_small_registry(tmp_path, models=random_models_entry(models), extra=ALERTS)
    monkeypatch.setenv("DAGSTER_HOME", "")
    assert valuebias_main(["run", "--config", str(config)]) == 0
    instance = dg.DagsterInstance.get()
    _, failure_cursor = tick(alert_on_run_failure, instance, config)  # the daemon's first tick sets the cursor

    models["broken"] = weights["broken"]
    config.write_text(write_small_registry(tmp_path, models=random_models_entry(models), extra=ALERTS).read_text())
    assert valuebias_main(["run", "--config", str(config)]) == 1

    # `valuebias status`: the partition is failed, with the run's first error on one line; the statistics
    # that read it are stale (it changed their inputs) and wait.
    rows = status_rows(config)
    broken = rows[("rm_word_scores", "broken")]
    assert broken["state"] == "failed", broken
    failed_run = instance.get_run_by_id(broken["last_run"])
    assert failed_run.status == dg.DagsterRunStatus.FAILURE and failed_run.tags["dagster/partition"] == "broken"
    assert broken["reason"].startswith(f"run {failed_run.run_id[:8]} (rm_scoring_job) failed: rm_word_scores: ")
    assert "\n" not in broken["reason"]
    assert rows[("rm_rank_cells", "")]["state"] == "stale"
    assert {r["state"] for k, r in rows.items() if k[1] != "broken" and k[0] != "rm_rank_cells"
            and k[0] not in ("rm_mixed_model", "rm_interaction_test", "rm_family_tests", "rm_report", "rm_rank_sums",
                             "rm_value_cards")} == {"fresh"}

    # The sensor requests nothing (the model failed with these very inputs; the statistics wait) and says why.
    requests, skipped = partitions_tick(instance, config)
    assert not requests
    assert skipped.startswith("nothing ready; failed: rm_word_scores[broken] (run ")
    assert "rm_rank_cells waits for rm_word_scores[broken]" in skipped

    # The run-failure sensor: exactly one alert, in the file and at the webhook (a body Slack accepts).
    result, cursor = tick(alert_on_run_failure, instance, config, failure_cursor)
    [line] = alert_lines(tmp_path)
    assert (line["kind"], line["job"], line["partition"], line["run_id"]) == (
        "run_failed", "rm_scoring_job", "broken", failed_run.run_id)
    assert broken["reason"].endswith(line["reason"])
    [body] = webhook
    assert body["text"] == f"ValueBias: rm_scoring_job[broken] failed: {line['reason']}"
    assert body["blocks"][0]["type"] == "section" and "partition: broken" in body["blocks"][0]["text"]["text"]

    # Later ticks, and a daemon restart that lost the cursor (the same events evaluated again), send nothing.
    tick(alert_on_run_failure, instance, config, cursor)
    tick(alert_on_run_failure, instance, config, failure_cursor)
    assert len(alert_lines(tmp_path)) == 1 and len(webhook) == 1

    # `failed_models: exclude`: the statistics go on without the failed model, and name it.
    config.write_text(config.read_text() + "failed_models: exclude\n")
    requests, _ = partitions_tick(instance, config)
    assert {(r.job_name, r.partition_key) for r in requests} == {("rm_statistics_job", None)}
    from valuebias.orchestration.launch import JobRuns

    with JobRuns(instance) as runs:  # as the daemon launches the request
        assert runs.execute("rm_statistics_job", partition=None, assets=[
            k.to_user_string() for k in requests[0].asset_selection], tags=requests[0].tags).success
    from valuebias.assets.versions import latest_record

    meta = latest_record(instance, "rm_rank_cells").asset_materialization.metadata
    assert meta["excluded_models"].value == ["broken"]
    from valuebias.assets.tables import TABLE_KEYS
    from valuebias.resources.storage import Storage
    from valuebias.config import load_config

    cells = Storage(uri=load_config(config).storage_uri).read_parquet(TABLE_KEYS["rm_rank_cells"])
    assert sorted(cells["model"].unique()) == ["gemma-a", "llama-a", "llama-b"]
    rows = status_rows(config)
    assert rows[("rm_rank_cells", "")]["state"] == "fresh" and rows[("rm_word_scores", "broken")]["state"] == "failed"

    # A fixed entry (other weights) changes the partition's inputs: the sensor requests it again (and the
    # registry table, whose row for the model changed).
    models["broken"] = weights["gemma-a"]
    config.write_text(write_small_registry(tmp_path, models=random_models_entry(models), extra=ALERTS).read_text())
    requests, _ = partitions_tick(instance, config)
    assert {(r.job_name, r.partition_key) for r in requests} == {("rm_scoring_job", "broken"), ("ingest_job", None)}


def test_a_webhook_that_fails_is_retried_logged_and_sent_once_later(tmp_path, monkeypatch, weights, webhook):
    """No URL in the environment: the delivery fails (logged, the tick does not fail) and waits in the outbox;
    the next alerts tick, with the URL set, sends it once."""
    from valuebias.orchestration.alerts import Alert, deliver, retry_outbox
    from valuebias.config import load_config

    config_path = write_small_registry(tmp_path, models=random_models_entry({"llama-a": weights["llama-a"]}),
                                       extra=ALERTS)
    config = load_config(config_path)
    url = __import__("os").environ[HOOK_ENV]
    monkeypatch.delenv(HOOK_ENV)
    warnings: list[str] = []

    class Log:
        def warning(self, message):
            warnings.append(message)

    with dg.instance_for_test() as instance:
        alert = Alert("run_failed", "run_failed:test-run", "ValueBias: x failed: boom", {"job": "x"})
        assert deliver(instance, config, alert, Log(), pause=0) == 1  # the file channel only
        assert len(warnings) == 3 and all(f"environment variable {HOOK_ENV}" in w for w in warnings)
        monkeypatch.setenv(HOOK_ENV, url)
        retry_outbox(instance, config, Log())
        retry_outbox(instance, config, Log())
        assert [b["text"] for b in webhook] == ["ValueBias: x failed: boom"]
        assert [line["key"] for line in alert_lines(tmp_path)] == ["run_failed:test-run"]


def test_card_flag_changes_and_stale_partitions_alert_once(tmp_path, monkeypatch, weights, webhook):
    from valuebias.assets.tables import rm_value_cards_key
    from valuebias.assets.versions import latest_record
    from valuebias.resources.storage import Storage
    from valuebias.config import load_config

    # four reward models: a card has numbers from 3 other models on
    models = {"llama-a": weights["llama-a"], "llama-b": weights["llama-b"], "gemma-a": weights["gemma-a"],
              "gemma-c": weights["gemma-a"]}
    alerts = ALERTS.replace("stale_after: 1h", "stale_after: 2s")
    config = write_small_registry(tmp_path, models=random_models_entry(models), extra=alerts)
    monkeypatch.setenv("DAGSTER_HOME", "")
    assert valuebias_main(["run", "--config", str(config)]) == 0
    instance = dg.DagsterInstance.get()
    _, cursor = tick(registry_alerts_sensor, instance, config)  # the first cards seen are the baseline
    assert alert_lines(tmp_path) == []

    # A new card of llama-b whose flags differ from the last one: its first panel's flag is flipped.
    storage = Storage(uri=load_config(config).storage_uri)
    card = storage.read_parquet(rm_value_cards_key("llama-b"))
    changed = card.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(~pl.col("flag")).otherwise(pl.col("flag"))
                                .alias("flag"))
    storage.write_parquet(rm_value_cards_key("llama-b"), changed)
    # recorded as the card's materialization, with what the last one recorded (its inputs): fresh, not stale
    last = latest_record(instance, "rm_value_cards", "llama-b").asset_materialization
    instance.report_runless_asset_event(dg.AssetMaterialization(
        "rm_value_cards", partition="llama-b", metadata=dict(last.metadata), tags=dict(last.tags or {})))
    result, cursor = tick(registry_alerts_sensor, instance, config, cursor)
    [line] = alert_lines(tmp_path)
    first = card.row(0, named=True)
    panel = f"{first['corpus']}/{first['category']}/{first['framing']}"
    numbers = {panel: {"deviation": first["deviation"], "p_bh": first["p_bh"], "finding": first["finding"]}}
    shown = f"{panel} (deviation {first['deviation']:+.3g}, BH p {first['p_bh']:.3g})"
    now_flagged = not first["flag"]
    assert (line["kind"], line["model"]) == ("card_flags_changed", "llama-b")
    assert line["panels"] == {"flagged": numbers if now_flagged else {}, "unflagged": {} if now_flagged else numbers}
    assert (line["flagged"], line["unflagged"]) == ((shown, "none") if now_flagged else ("none", shown))
    assert [b["text"] for b in webhook] == [
        f"ValueBias: value card of llama-b: flags changed ({'+1 -0' if now_flagged else '+0 -1'})"]
    tick(registry_alerts_sensor, instance, config, cursor)
    tick(registry_alerts_sensor, instance, config, "0")  # a restart that lost the cursor: nothing again
    assert len(alert_lines(tmp_path)) == 1 and len(webhook) == 1

    # A model added to the config and not yet run: missing, first seen now; alerted once it is older than 2 s.
    models["gemma-b"] = weights["gemma-a"]
    config.write_text(write_small_registry(tmp_path, models=random_models_entry(models), extra=alerts).read_text())
    partitions_tick(instance, config)  # adds the partition
    tick(registry_alerts_sensor, instance, config, cursor)
    assert len(alert_lines(tmp_path)) == 1
    time.sleep(2.5)
    result, _ = tick(registry_alerts_sensor, instance, config, cursor)
    stale = [line for line in alert_lines(tmp_path) if line["kind"] == "stale"]
    assert {(s["asset"], s["partition"], s["state"]) for s in stale} >= {("rm_word_scores", "gemma-b", "missing")}
    # only what the new model made not fresh: its partitions, the statistics, and every value card (each compares
    # its model with the new one)
    assert all(s["partition"] in ("gemma-b", None) or s["asset"] == "rm_value_cards" for s in stale)
    tick(registry_alerts_sensor, instance, config, cursor)
    assert len([line for line in alert_lines(tmp_path) if line["kind"] == "stale"]) == len(stale)
    assert len(webhook) == 1 + len(stale)


def test_work_a_queued_run_covers_is_not_started_again(tmp_path, monkeypatch, weights):
    """A run queued for a partition (as the daemon's queue holds it) covers that work: a sensor tick and
    `valuebias run` start no second run for it, and `status` says which run covers it."""
    from valuebias.orchestration.launch import JobRuns

    models = {k: weights[k] for k in ("llama-a", "llama-b", "gemma-a")}
    config = write_small_registry(tmp_path, models=random_models_entry(models))
    monkeypatch.setenv("DAGSTER_HOME", "")
    assert valuebias_main(["run", "--config", str(config)]) == 0
    instance = dg.DagsterInstance.get()
    models["gemma-b"] = weights["gemma-a"]
    config.write_text(write_small_registry(tmp_path, models=random_models_entry(models)).read_text())
    partitions_tick(instance, config)  # adds the partition

    with JobRuns(instance) as runs:  # the first request: a run created (planned), not yet started
        queued = runs._create_run("rm_scoring_job", partition="gemma-b", assets=["rm_word_scores"], verbose=False)
    row = status_rows(config)[("rm_word_scores", "gemma-b")]
    assert row["state"] == "running" and row["last_run"] == queued.run_id
    assert row["reason"] == f"run {queued.run_id[:8]} (rm_scoring_job) is not_started"

    # The second request, from the sensor and from the CLI: no run for the covered partition.
    requests, _ = partitions_tick(instance, config)
    # (the registry table is re-ingested: the config's model list changed)
    assert [(r.job_name, r.partition_key) for r in requests] == [("ingest_job", None)]
    assert valuebias_main(["run", "--config", str(config)]) == 0

    def runs_of(partition):
        return instance.get_runs(filters=dg.RunsFilter(job_name="rm_scoring_job",
                                                       tags={"dagster/partition": partition}))

    assert [r.run_id for r in runs_of("gemma-b")] == [queued.run_id]
    assert len(runs_of("llama-a")) == 1


def test_the_sensor_reingests_an_edited_config_or_input_file(tmp_path, monkeypatch, weights):
    """No CLI: the sensor sees the edit by stat on its next tick and requests the ingest of what changed."""
    models = {k: weights[k] for k in ("llama-a", "llama-b", "gemma-a")}
    config = write_small_registry(tmp_path, models=random_models_entry(models))
    monkeypatch.setenv("DAGSTER_HOME", "")
    assert valuebias_main(["run", "--config", str(config)]) == 0
    instance = dg.DagsterInstance.get()
    cursors: list = []
    assert partitions_tick(instance, config, None, cursors)[0] == []
    assert partitions_tick(instance, config, cursors[-1], cursors)[0] == []

    with (tmp_path / "words.csv").open("a") as f:
        f.write("freedom,Agency\n")
    requests, _ = partitions_tick(instance, config, cursors[-1], cursors)
    assert [(r.job_name, [k.to_user_string() for k in r.asset_selection]) for r in requests] == [
        ("ingest_job", ["corpus_words"])]

    # a model's entry edited in the config: the registry table is re-ingested, the model rescored
    config.write_text(write_small_registry(tmp_path, models=random_models_entry(
        models, dtype={"gemma-a": "float32"})).read_text())
    (tmp_path / "words.csv").write_text((tmp_path / "words.csv").read_text().replace("freedom,Agency\n", ""))
    requests, _ = partitions_tick(instance, config, cursors[-1], cursors)
    assert {(r.job_name, r.partition_key, tuple(k.to_user_string() for k in r.asset_selection))
            for r in requests} == {("ingest_job", None, ("model_registry",)),
                                   ("rm_scoring_job", "gemma-a", ("rm_word_scores",))}


def _daemon(config, home):
    import os
    import subprocess
    import sys
    from pathlib import Path

    project = Path(__file__).resolve().parents[1]
    env = {**os.environ, "DAGSTER_HOME": str(home), "VALUEBIAS_CONFIG": str(config), "DAGSTER_DISABLE_TELEMETRY": "1"}
    return subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w",
                             str(project / "workspace.yaml")], cwd=project, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc):
    import os
    import signal
    import subprocess

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _ticks(instance, name: str) -> list:
    state = next((s for s in instance.all_instigator_state() if s.name == name), None)
    return instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=50) if state else []


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_with_the_real_daemon_a_model_that_fails_gives_one_alert_and_a_restart_sends_nothing_twice(
        tmp_path, monkeypatch, weights, webhook):
    """`dagster-daemon run` on the project's instance: a model added to the config is scored by the
    sensor's run, which fails; the run-failure sensor sends one alert (file and webhook), the partition reads
    `failed` in `status`, and after a daemon restart no alert is sent again."""
    models = {k: weights[k] for k in ("llama-a", "llama-b", "gemma-a")}
    config = write_small_registry(tmp_path, models=random_models_entry(models), extra=ALERTS)
    monkeypatch.setenv("DAGSTER_HOME", "")
    assert valuebias_main(["run", "--config", str(config)]) == 0
    instance = dg.DagsterInstance.get()
    home = instance.root_directory
    daemon = _daemon(config, home)
    try:
        _wait(lambda: _ticks(instance, "alert_on_run_failure"), 300, "the first run-failure sensor tick")
        models["broken"] = weights["broken"]
        config.write_text(write_small_registry(tmp_path, models=random_models_entry(models),
                                               extra=ALERTS).read_text())
        started = time.monotonic()
        [line] = _wait(lambda: alert_lines(tmp_path), 600, "the run_failed alert")
        print(f"run_failed alert {time.monotonic() - started:.0f} s after the config edit")
        run = instance.get_run_by_id(line["run_id"])
        assert run.status == dg.DagsterRunStatus.FAILURE and run.tags.get("dagster/sensor_name") == \
            "model_partitions_sensor"
        assert (line["job"], line["partition"]) == ("rm_scoring_job", "broken")
        assert [b["text"] for b in webhook] == [line["summary"]]
        _stop(daemon)
        restarted = time.time()
        daemon = _daemon(config, home)
        _wait(lambda: len([t for t in _ticks(instance, "alert_on_run_failure") if t.timestamp > restarted]) >= 2,
              300, "two run-failure sensor ticks after the restart")
        _wait(lambda: len([t for t in _ticks(instance, "model_partitions_sensor") if t.timestamp > restarted]) >= 1,
              300, "a model_partitions_sensor tick after the restart")
        assert len(alert_lines(tmp_path)) == 1 and len(webhook) == 1
        failed_runs = instance.get_runs(filters=dg.RunsFilter(job_name="rm_scoring_job",
                                                              tags={"dagster/partition": "broken"}))
        assert len(failed_runs) == 1  # the sensor did not request it again with the same inputs
    finally:
        _stop(daemon)
    assert status_rows(config)[("rm_word_scores", "broken")]["state"] == "failed"
