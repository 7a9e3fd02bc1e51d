"""The automation condition on the computed assets, evaluated the way the Dagster daemon does."""

from __future__ import annotations

import dagster as dg

from orchestration.cli import main as valuebias_main
from orchestration.definitions import build_definitions
from tests.registry_fixtures import build_random_reward_model, random_models_entry, write_small_registry


def test_unchanged_reingest_requests_nothing_and_changed_words_request_the_scores(tmp_path, monkeypatch):
    models = {"llama-a": ("llama", build_random_reward_model(tmp_path / "l", architecture="llama", seed=1)),
              "gemma-a": ("gemma", build_random_reward_model(tmp_path / "g", architecture="gemma", seed=2))}
    config = write_small_registry(tmp_path, models=random_models_entry(models))
    monkeypatch.setenv("DAGSTER_HOME", "")
    assert valuebias_main(["run", "--config", str(config)]) == 0
    instance = dg.DagsterInstance.get()  # the project's instance the CLI used
    defs = build_definitions(config)
    scores = dg.AssetSelection.assets("rm_word_scores")

    first = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=scores)
    ingest = defs.resolve_job_def("ingest_job")

    # Re-ingesting unchanged files: same data versions, nothing requested.
    assert ingest.execute_in_process(instance=instance).success
    again = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=scores,
                                              cursor=first.cursor)
    assert again.total_requested == 0

    # One more word: corpus_words gets a new data version and both score partitions are requested.
    with (tmp_path / "words.csv").open("a") as f:
        f.write("freedom,Agency\n")
    assert ingest.execute_in_process(instance=instance).success
    changed = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=scores,
                                                cursor=again.cursor)
    assert set(changed.get_requested_partitions(dg.AssetKey("rm_word_scores"))) == {"llama-a", "gemma-a"}
