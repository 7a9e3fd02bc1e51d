"""A scoring partition on S3 whose server goes away mid-partition, then comes back.

Real components: a moto S3 server on loopback (stopped and restarted on the same port; moto keeps its
objects in process-wide state, so the restarted server has what was written before the outage), the
Pipes worker subprocess writing score-cache chunks to it, and a Dagster instance.

The partition must fail with a message naming the S3 URI; no partial object may be listed afterwards;
a rerun after the restart must complete and equal an uninterrupted run. The run's logs and metadata
must not contain the credentials, which only come from the environment.
"""

from __future__ import annotations

import threading
import time
import uuid

import dagster as dg

from tests.conftest import RestartableS3
from tests.registry_fixtures import AGENCY, COMMUNION, PROMPTS, random_models_entry, write_small_registry

SECRET = f"secret-{uuid.uuid4().hex}"


def _slow_model(path):
    """A random RM large enough that one prompt takes a few tenths of a second to score (the outage
    must land between two prompts' cache chunks)."""
    from valuebias.demo_models import tiny_models

    texts = [tiny_models.render_chat("llama", [{"role": "user", "content": t}, {"role": "assistant", "content": w}])
             for t in PROMPTS.values() for w in AGENCY + COMMUNION]
    tokenizer = tiny_models.train_tokenizer(texts, style="llama", vocab_size=600)
    model = tiny_models.build_tiny_model(tokenizer, architecture="llama", head="sequence_classification",
                                         hidden_size=384, num_layers=6, seed=11)
    return tiny_models.save_pretrained(model, tokenizer, path)


def _materialize(config_path, storage, instance, *, raise_on_error=True, launcher=""):
    from valuebias.assets.rm_scores import rm_word_scores
    from valuebias.orchestration.definitions import build_resources
    from valuebias.resources.scoring_launcher import ScoringLauncher

    resources = {**build_resources(config_path), "storage": storage, "scoring": ScoringLauncher(launcher=launcher)}
    return dg.materialize([rm_word_scores], partition_key="rm-a", instance=instance, resources=resources,
                          raise_on_error=raise_on_error)


def _ingest(config_path, storage, instance):
    from valuebias.assets import ingest
    from valuebias.orchestration.definitions import build_resources
    from valuebias.orchestration.partitions import sync_model_partitions
    from valuebias.config import load_config

    resources = {**build_resources(config_path), "storage": storage}
    assert dg.materialize(dg.load_assets_from_modules([ingest]), instance=instance, resources=resources).success
    sync_model_partitions(instance, load_config(config_path))


def test_s3_outage_mid_partition_fails_clearly_and_a_rerun_equals_an_uninterrupted_run(tmp_path, monkeypatch,
                                                                                         aws_credentials):
    import boto3

    from valuebias.assets.tables import rm_word_scores_key
    from valuebias.resources.storage import Storage

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)  # moto accepts any; it must never be logged
    server = RestartableS3()
    server.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)  # the worker subprocess inherits it
    bucket = f"vb-outage-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    model = _slow_model(tmp_path / "model")
    config_path = write_small_registry(tmp_path, models=random_models_entry({"rm-a": ("llama", model)}),
                                       launcher=None)  # the Pipes subprocess, as in production
    config_path.write_text(config_path.read_text().replace("batch_size: 32", "batch_size: 8"))

    def storage(prefix: str) -> Storage:
        return Storage(uri=f"s3://{bucket}/{prefix}", retries=2, retry_backoff_seconds=0.1)

    try:
        # 1. the reference: an uninterrupted run under its own prefix (the same task, run in-process)
        with dg.instance_for_test() as instance:
            _ingest(config_path, storage("clean"), instance)
            _materialize(config_path, storage("clean"), instance, launcher="in_process")
        reference = storage("clean").read_parquet(rm_word_scores_key("rm-a"))

        # 2. the outage: stop the server as soon as the worker has stored its first cache chunk
        faulty = storage("faulty")
        seen_at_stop: list[str] = []

        def stop_after_first_chunk():
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                try:
                    keys = faulty.store().list("score_cache/")
                except OSError:
                    keys = []
                if keys:
                    seen_at_stop.extend(faulty.store().list(""))
                    server.stop()
                    return
                time.sleep(0.02)

        with dg.instance_for_test() as instance:
            _ingest(config_path, faulty, instance)
            watcher = threading.Thread(target=stop_after_first_chunk, daemon=True)
            watcher.start()
            result = _materialize(config_path, faulty, instance, raise_on_error=False)
            watcher.join(timeout=5)
            assert seen_at_stop, "the server was never stopped: no cache chunk appeared"
            assert rm_word_scores_key("rm-a") not in seen_at_stop, "the partition finished before the outage"
            assert not result.success
            failure = next(e for e in result.all_events if e.is_step_failure)
            message = failure.step_failure_data.error.message
            assert f"s3://{bucket}/faulty/" in message, message
            assert "unreachable" in message, message

            # 3. the server comes back: only complete objects are listed, and no published table
            server.start()
            keys = faulty.list("")
            assert rm_word_scores_key("rm-a") not in keys
            chunks = [k for k in keys if k.startswith("score_cache/")]
            assert 1 <= len(chunks) < len(PROMPTS), keys
            for key in keys:
                if key.endswith(".parquet"):
                    faulty.read_parquet(key)  # every listed object is a complete parquet file
            assert all(".tmp" not in k and "partial" not in k for k in keys), keys

            # 4. the rerun resumes from the stored chunks and equals the uninterrupted run
            rerun = _materialize(config_path, faulty, instance)
            assert rerun.success
            event = instance.get_latest_materialization_event(dg.AssetKey("rm_word_scores"))
            metadata = event.asset_materialization.metadata
            assert metadata["sequences_reused"].value == len(chunks) * len(AGENCY + COMMUNION)
            resumed = faulty.read_parquet(rm_word_scores_key("rm-a"))
            assert resumed.select("model", "corpus", "prompt", "word").equals(
                reference.select("model", "corpus", "prompt", "word"))
            diff = (resumed["score"] - reference["score"]).abs().max()
            assert diff < 1e-5, diff
            assert faulty.list("staging/") == []

            # 5. credentials came from the environment only: nowhere in the logs or metadata of any run
            for record in instance.get_run_records():
                for entry in instance.all_logs(record.dagster_run.run_id):
                    assert SECRET not in str(entry), entry
                assert SECRET not in str(record.dagster_run.run_config)
    finally:
        server.stop()


def test_a_permanent_storage_error_fails_the_partition_at_once_naming_the_uri(tmp_path, aws_credentials, s3_server,
                                                                             monkeypatch, caplog):
    """Inputs stored in one bucket, the partition pointed at a bucket that does not exist: not retried
    (no retry is logged), and the failure names the URI."""
    import boto3

    from valuebias.resources.storage import Storage

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    config_path = write_small_registry(tmp_path, models=random_models_entry({"rm-a": ("llama", tmp_path / "unused")}))
    bucket = f"vb-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    with dg.instance_for_test() as instance:
        _ingest(config_path, Storage(uri=f"s3://{bucket}/x"), instance)
        gone = Storage(uri="s3://no-such-bucket-vb/x", retries=3, retry_backoff_seconds=0.1)
        with caplog.at_level("WARNING", logger="valuebias.storage"):
            result = _materialize(config_path, gone, instance, raise_on_error=False, launcher="in_process")
    assert not [r for r in caplog.records if r.name == "valuebias.storage"], "a permanent error was retried"
    assert not result.success
    error = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    messages = []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    assert any("s3://no-such-bucket-vb/x/" in m for m in messages), messages
