"""The living registry on a real Dagster instance: only what changed recomputes (issue 5)."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from tests.registry_fixtures import (AGENCY, COMMUNION, PROMPTS, build_random_reward_model, random_models_entry,
                                     write_small_registry)
from valuebias.wordlist import english_wordlist

PROJECT = Path(__file__).resolve().parents[1]


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
    assert "rm_statistics_job skipped: every statistics table is fresh" in third

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


def test_a_killed_partition_resumes_and_equals_an_uninterrupted_run(tmp_path, model_dirs):
    """Kill `python -m valuebias.score_partition` after its first finished chunk; rerun; compare."""
    words = english_wordlist(5000)[:1500]
    corpus = pl.DataFrame({"corpus": "big", "word": words, "category": ["A", "B"] * 750})
    prompts = pl.DataFrame({"prompt": list(PROMPTS), "text": list(PROMPTS.values())})
    corpus.write_parquet(tmp_path / "words.parquet")
    prompts.write_parquet(tmp_path / "prompts.parquet")
    model_path = model_dirs["llama-a"][1]

    def spec(name: str, cache: str) -> Path:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({
            "model_id": "llama-a", "source": "huggingface", "settings": {"path": str(model_path)},
            "prompts": str(tmp_path / "prompts.parquet"), "corpus_words": str(tmp_path / "words.parquet"),
            "demo_dir": str(tmp_path / "demo"), "batch_size": 8, "cache_dir": str(tmp_path / cache),
            "output": str(tmp_path / f"{name}.parquet")}))
        return path

    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "valuebias.score_partition"]
    proc = subprocess.Popen([*command, str(spec("killed", "cache"))], cwd=PROJECT, env=env)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "cache").glob("*/*.parquet")) and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the partition finished before it could be killed"
    chunks_before = list((tmp_path / "cache").glob("*/*.parquet"))
    assert 1 <= len(chunks_before) < len(PROMPTS)
    assert not (tmp_path / "killed.parquet").exists()  # no result was written

    subprocess.run([*command, str(spec("killed", "cache"))], cwd=PROJECT, env=env, check=True)
    resumed_meta = json.loads((tmp_path / "killed.json").read_text())
    assert resumed_meta["sequences_reused"] == len(chunks_before) * len(words)
    assert resumed_meta["sequences_scored"] == (len(PROMPTS) - len(chunks_before)) * len(words)

    subprocess.run([*command, str(spec("clean", "clean-cache"))], cwd=PROJECT, env=env, check=True)
    resumed = pl.read_parquet(tmp_path / "killed.parquet")
    clean = pl.read_parquet(tmp_path / "clean.parquet")
    assert resumed.equals(clean)
