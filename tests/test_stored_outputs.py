"""Stored outputs are checked against what was recorded (issue 12): a deleted, truncated or altered table
is stale (named) and recomputed; a damaged score-cache chunk is discarded and only its sequences rescored."""

from __future__ import annotations

import csv
import io
import json
import shutil

import polars as pl
import pytest

from valuebias.table_version import content_version

from tests.registry_fixtures import (AGENCY, COMMUNION, PROMPTS, build_random_reward_model, random_models_entry,
                                     write_small_registry)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    return {"llama-a": ("llama", build_random_reward_model(root / "llama-a", architecture="llama", seed=1)),
            "gemma-a": ("gemma", build_random_reward_model(root / "gemma-a", architecture="gemma", seed=2))}


def status(cli, config, *extra) -> dict[tuple[str, str], dict]:
    rows = csv.DictReader(io.StringIO(cli("status", "--format", "csv", "--config", str(config), *extra)))
    return {(r["asset"], r["partition"]): r for r in rows}


def not_fresh(rows) -> dict[tuple[str, str], str]:
    return {key: row["reason"] for key, row in rows.items() if row["state"] != "fresh"}


def ran(output: str) -> list[str]:
    return [line.split(" (")[0] for line in output.splitlines() if " done in " in line and "ingest_job" not in line]


def test_deleted_truncated_and_altered_outputs_are_found_and_recomputed(tmp_path, models, cli):
    config = write_small_registry(tmp_path, models=random_models_entry(models))
    cli("run", "--config", str(config))
    data = tmp_path / ".valuebias" / "data"
    scores = data / "rm_word_scores" / "llama-a.parquet"
    tests_table = data / "tables" / "rm_family_tests.parquet"
    original_scores, original_tests = pl.read_parquet(scores), pl.read_parquet(tests_table)

    # deleted: stale, naming the file; the run recomputes it from the score cache, nothing else changes
    scores.unlink()
    assert not_fresh(status(cli, config)) == {("rm_word_scores", "llama-a"): f"stored output missing: {scores}"}
    out = cli("run", "--config", str(config))
    assert ran(out) == ["rm_scoring_job[llama-a]"]
    assert pl.read_parquet(scores).equals(original_scores)
    assert status(cli, config)[("rm_word_scores", "llama-a")]["sequences_reused"] == str(
        len(PROMPTS) * (len(AGENCY) + len(COMMUNION)))

    # truncated
    tests_table.write_bytes(tests_table.read_bytes()[:200])
    assert not_fresh(status(cli, config)) == {
        ("rm_family_tests", ""): f"stored output unreadable (truncated or overwritten?): {tests_table}"}
    assert ran(cli("run", "--config", str(config))) == ["rm_statistics_job[rm_family_tests]"]
    assert pl.read_parquet(tests_table).equals(original_tests)

    # altered in place by another program but still a valid table of the same shape: its stat changed, so
    # every status and run hashes it again (as model files) and finds it; the run says why it recomputes
    pl.read_parquet(scores).with_columns(pl.col("score") * 2).write_parquet(scores)
    altered = {("rm_word_scores", "llama-a"): f"stored output altered since it was recorded: {scores}"}
    assert not_fresh(status(cli, config)) == altered
    assert not_fresh(status(cli, config, "--verify")) == altered
    out = cli("run", "--config", str(config))
    assert ran(out) == ["rm_scoring_job[llama-a]"]
    assert f"rm_scoring_job[llama-a] (stale: stored output altered since it was recorded: {scores}) ..." in out
    assert pl.read_parquet(scores).equals(original_scores)
    assert pl.read_parquet(tests_table).equals(original_tests)  # the statistics never saw the altered scores
    # an unchanged stat is trusted: the recorded version is not computed again (the cache says it was)
    digests = json.loads((tmp_path / ".valuebias" / "output_digests.json").read_text())
    assert digests[str(scores)]["sha256"] == content_version(original_scores)
    assert not_fresh(status(cli, config)) == {}

    # readable, one row short of what was recorded
    original_scores.head(len(original_scores) - 1).write_parquet(scores)
    assert not_fresh(status(cli, config)) == {("rm_word_scores", "llama-a"): (
        f"stored output has {len(original_scores) - 1} rows, {len(original_scores)} were recorded: {scores}")}
    assert ran(cli("run", "--config", str(config))) == ["rm_scoring_job[llama-a]"]
    assert pl.read_parquet(scores).equals(original_scores)

    # everything stored is gone (a new, empty bucket): every partition is stale, none fresh
    shutil.rmtree(data)
    rows = status(cli, config)
    assert {row["state"] for key, row in rows.items() if key[0] not in ("prompts", "corpus_words",
                                                                          "model_registry")} == {"stale"}
    cli("run", "--config", str(config))
    assert not_fresh(status(cli, config)) == {}
    assert pl.read_parquet(scores).equals(original_scores)


def test_a_damaged_cache_chunk_is_discarded_and_only_its_sequences_rescored(tmp_path, models, cli):
    config = write_small_registry(tmp_path, models=random_models_entry({"llama-a": models["llama-a"],
                                                                        "gemma-a": models["gemma-a"]}))
    cli("run", "--config", str(config))
    data = tmp_path / ".valuebias" / "data"
    original = pl.read_parquet(data / "rm_word_scores" / "llama-a.parquet")
    chunks = sorted((data / "score_cache" / "llama-a").rglob("*.parquet"))
    assert len(chunks) == len(PROMPTS)
    chunks[0].write_bytes(b"not a parquet file")  # damaged
    altered = pl.read_parquet(chunks[1]).with_columns(pl.col("score") + 1.0)
    altered.write_parquet(chunks[1])  # readable, but not what was written
    (data / "rm_word_scores" / "llama-a.parquet").unlink()
    out = cli("run", "--verbose", "--config", str(config))
    assert ran(out) == ["rm_scoring_job[llama-a]"]
    rows = status(cli, config)
    words = len(AGENCY) + len(COMMUNION)
    assert rows[("rm_word_scores", "llama-a")]["sequences_scored"] == str(2 * words)
    assert pl.read_parquet(data / "rm_word_scores" / "llama-a.parquet").equals(original)
    # the two chunks were discarded and written again, with the content their names promise
    for chunk in chunks[:2]:
        assert content_version(pl.read_parquet(chunk)) == chunk.stem.rsplit("-", 1)[1]

    # a run killed between staging and publishing leaves staging/<run id>/: the next run removes it
    leftover = data / "staging" / "0b3f6c2e-dead-4bad-8000-000000000000" / "rm_word_scores" / "llama-a.parquet"
    leftover.parent.mkdir(parents=True)
    original.write_parquet(leftover)
    out = cli("run", "--config", str(config))
    assert "valuebias: removed 1 staged file(s) left by runs that did not finish publishing" in out
    assert not leftover.exists()
