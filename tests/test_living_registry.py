"""The living registry on a real Dagster instance: only what changed recomputes (issue 5)."""

from __future__ import annotations

import csv
import io
import os
import signal
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from tests.registry_fixtures import (AGENCY, COMMUNION, PROMPTS, build_random_reward_model, ingest_and_sync,
                                     random_models_entry, write_small_registry)
from valuebias.wordlist import english_wordlist



@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "llama-a": ("llama", build_random_reward_model(root / "llama-a", architecture="llama", seed=1)),
        "llama-b": ("llama", build_random_reward_model(root / "llama-b", architecture="llama", seed=2)),
        "gemma-a": ("gemma", build_random_reward_model(root / "gemma-a", architecture="gemma", seed=3)),
        "gemma-b": ("gemma", build_random_reward_model(root / "gemma-b", architecture="gemma", seed=4)),
    }




def status_rows(cli, config) -> dict[tuple[str, str], dict]:
    rows = csv.DictReader(io.StringIO(cli("status", "--format", "csv", "--config", str(config))))
    return {(r["asset"], r["partition"]): r for r in rows}


def scored_models(output: str) -> list[str]:
    return [line.split("[")[1].split("]")[0] for line in output.splitlines()
            if line.startswith("rm_scoring_job[") and " done in " in line]


def test_only_what_changed_recomputes(tmp_path, model_dirs, cli):
    models = {k: model_dirs[k] for k in ("llama-a", "gemma-a", "gemma-b")}
    config = write_small_registry(tmp_path, models=random_models_entry(models))
    first = cli("run", "--config", str(config))
    assert sorted(scored_models(first)) == ["gemma-a", "gemma-b", "llama-a"]
    status = status_rows(cli, config)
    assert {r["state"] for r in status.values()} == {"fresh"}
    n_sequences = len(PROMPTS) * (len(AGENCY) + len(COMMUNION))
    assert status[("rm_word_scores", "llama-a")]["sequences_scored"] == str(n_sequences)

    # Nothing changed: no scoring, no statistics.
    second = cli("run", "--config", str(config))
    assert scored_models(second) == []
    assert "rm_statistics_job skipped" in second

    # One model entry changes (dtype): exactly that partition is stale, and only it is rescored.
    config.write_text(write_small_registry(tmp_path, models=random_models_entry(
        models, dtype={"gemma-a": "float32"})).read_text())
    status = status_rows(cli, config)
    stale = {key for key, row in status.items() if row["state"] == "stale"}
    assert ("rm_word_scores", "gemma-a") in stale
    assert {k for k in stale if k[0] == "rm_word_scores"} == {("rm_word_scores", "gemma-a")}
    assert status[("rm_word_scores", "gemma-a")]["reason"] == "changed: model"
    third = cli("run", "--config", str(config))
    assert scored_models(third) == ["gemma-a"]
    # float32 is what "auto" meant on this CPU: identical scores, same data version, so the statistics
    # built from them are still fresh and do not recompute.
    assert "rm_statistics_job skipped: every table is fresh" in third

    # Adding a model computes only it; removing one drops it from the statistics but keeps its scores.
    models["llama-b"] = model_dirs["llama-b"]
    config.write_text(write_small_registry(tmp_path, models=random_models_entry(
        models, dtype={"gemma-a": "float32"})).read_text())
    fourth = cli("run", "--config", str(config))
    assert scored_models(fourth) == ["llama-b"]
    del models["gemma-b"]
    config.write_text(write_small_registry(tmp_path, models=random_models_entry(
        models, dtype={"gemma-a": "float32"})).read_text())
    fifth = cli("run", "--config", str(config))
    assert scored_models(fifth) == []
    cells = pl.read_csv(io.StringIO(cli("table", "rm_rank_cells", "--format", "csv", "--config", str(config))))
    assert set(cells["model"]) == {"llama-a", "llama-b", "gemma-a"}
    assert (tmp_path / ".valuebias" / "data" / "rm_word_scores" / "gemma-b.parquet").exists()


def test_adding_words_scores_only_the_new_words(tmp_path, model_dirs, cli):
    models = {k: model_dirs[k] for k in ("llama-a", "gemma-a")}
    config = write_small_registry(tmp_path, models=random_models_entry(models))
    cli("run", "--config", str(config))
    new_words = ["freedom", "wisdom", "justice", "honour", "joy"]
    with (tmp_path / "words.csv").open("a") as f:
        f.write("".join(f"{w},Communion\n" for w in new_words))
    status = status_rows(cli, config)
    assert status[("rm_word_scores", "llama-a")]["state"] == "stale"
    assert status[("rm_word_scores", "llama-a")]["reason"] == "changed: corpus_words"
    out = cli("run", "--config", str(config))
    assert sorted(scored_models(out)) == ["gemma-a", "llama-a"]
    status = status_rows(cli, config)
    old = len(PROMPTS) * (len(AGENCY) + len(COMMUNION))
    for model in models:
        row = status[("rm_word_scores", model)]
        assert row["sequences_scored"] == str(5 * len(PROMPTS))
        assert row["sequences_reused"] == str(old)


def _worker_processes() -> list[int]:
    """Process ids of this process's scoring workers (children running scoring_worker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"valuebias.scoring_worker" in cmdline:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker process through /proc (Linux)")
def test_a_killed_worker_fails_the_partition_and_the_rerun_resumes_to_the_same_table(tmp_path, model_dirs):
    """SIGKILL the Pipes worker subprocess after its first finished cache chunk: the partition fails
    clearly, nothing is published, and the rerun reuses the finished chunks and equals an uninterrupted run."""
    import dagster as dg

    from valuebias.assets.rm_scores import rm_word_scores
    from valuebias.assets.tables import rm_word_scores_key
    from valuebias.orchestration.definitions import build_resources
    from valuebias.resources.scoring_launcher import ScoringLauncher
    from valuebias.resources.storage import Storage
    from valuebias.config import load_config

    words = english_wordlist(5000)[:1500]
    config_path = write_small_registry(tmp_path, models=random_models_entry({"llama-a": model_dirs["llama-a"]}),
                                       launcher=None)  # the Pipes worker subprocess
    (tmp_path / "words.csv").write_text("word,category\n" + "".join(
        f"{w},{'Agency' if i % 2 else 'Communion'}\n" for i, w in enumerate(words)))
    config_path.write_text(config_path.read_text().replace("batch_size: 32", "batch_size: 8"))
    config = load_config(config_path)
    storage = Storage(uri=config.storage_uri)
    resources = build_resources(config_path)

    with dg.instance_for_test() as instance:
        ingest_and_sync(config_path, instance)
        killed: list[int] = []

        def kill_after_first_chunk():
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and not killed:
                workers = _worker_processes()
                if workers and storage.list("score_cache/llama-a/"):
                    for pid in workers:
                        os.kill(pid, signal.SIGKILL)
                    killed.extend(workers)
                time.sleep(0.02)

        watcher = threading.Thread(target=kill_after_first_chunk, daemon=True)
        watcher.start()
        failed = dg.materialize([rm_word_scores], partition_key="llama-a", instance=instance, resources=resources,
                                raise_on_error=False)
        watcher.join(timeout=5)
        assert killed, "no worker was killed: it never stored a chunk, or finished first"
        assert not failed.success
        message = next(e for e in failed.all_events if e.is_step_failure).step_failure_data.error.message
        assert "failed in the worker process" in message and "-9" in message, message
        chunks = storage.list("score_cache/llama-a/")
        assert 1 <= len(chunks) < len(PROMPTS), chunks
        assert not storage.exists(rm_word_scores_key("llama-a"))  # nothing published

        assert dg.materialize([rm_word_scores], partition_key="llama-a", instance=instance,
                              resources=resources).success
        meta = instance.get_latest_materialization_event(dg.AssetKey("rm_word_scores")).asset_materialization.metadata
        assert meta["sequences_reused"].value == len(chunks) * len(words)
        assert meta["sequences_scored"].value == (len(PROMPTS) - len(chunks)) * len(words)
        resumed = storage.read_parquet(rm_word_scores_key("llama-a"))

    # the uninterrupted run: same config, its own storage, no cache, in process
    clean_config = tmp_path / "clean.yaml"
    clean_config.write_text(config_path.read_text() + f"storage: {tmp_path / 'clean-data'}\n")
    clean_resources = {**build_resources(clean_config), "scoring": ScoringLauncher(launcher="in_process")}
    with dg.instance_for_test() as instance:
        ingest_and_sync(clean_config, instance)
        assert dg.materialize([rm_word_scores], partition_key="llama-a", instance=instance,
                              resources=clean_resources).success
    clean = Storage(uri=load_config(clean_config).storage_uri).read_parquet(rm_word_scores_key("llama-a"))
    assert resumed.select("model", "corpus", "prompt", "word").equals(clean.select("model", "corpus", "prompt", "word"))
    assert (resumed["score"] - clean["score"]).abs().max() < 1e-5
