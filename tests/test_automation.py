"""The sensor and the refresh schedules, evaluated the way the Dagster daemon does, on a real instance."""

from __future__ import annotations

import dagster as dg
import pytest

from valuebias.orchestration.cli import main as valuebias_main
from valuebias.orchestration.definitions import build_definitions, build_resources
from valuebias.orchestration.partitions import sync_model_partitions
from valuebias.orchestration.sensors import model_partitions_sensor
from tests.registry_fixtures import (build_random_language_model, build_random_reward_model, language_models_entry,
                                     random_models_entry, write_small_registry)
from valuebias.config import load_config


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("automation-weights")
    return {
        "rm-llama": build_random_reward_model(root / "rm-llama", architecture="llama", seed=1),
        "rm-gemma": build_random_reward_model(root / "rm-gemma", architecture="gemma", seed=2),
        "rm-llama-2": build_random_reward_model(root / "rm-llama-2", architecture="llama", seed=5),
        "rm-gemma-2": build_random_reward_model(root / "rm-gemma-2", architecture="gemma", seed=6),
        "lm-llama": build_random_language_model(root / "lm-llama", architecture="llama", seed=3),
        "lm-gemma": build_random_language_model(root / "lm-gemma", architecture="gemma", seed=4),
    }


def sensor_tick(instance, config):
    return model_partitions_sensor(dg.build_sensor_context(
        instance=instance, resources=build_resources(config),
        repository_def=build_definitions(config).get_repository_def()))


def requested(requests) -> set[tuple[str, str | None, tuple[str, ...]]]:
    return {(r.job_name, r.partition_key, tuple(k.to_user_string() for k in r.asset_selection)) for r in requests}


def test_unchanged_reingest_requests_nothing_and_changed_words_request_the_scores(tmp_path, monkeypatch, weights):
    # two models of one family: with one model per family the mixed model cannot be fitted and the run fails
    models = {"llama-a": ("llama", weights["rm-llama"]), "llama-b": ("llama", weights["rm-llama-2"]),
              "gemma-a": ("gemma", weights["rm-gemma"])}
    config = write_small_registry(tmp_path, models=random_models_entry(models))
    monkeypatch.setenv("DAGSTER_HOME", "")
    assert valuebias_main(["run", "--config", str(config)]) == 0
    instance = dg.DagsterInstance.get()  # the project's instance the CLI used
    ingest = build_definitions(config).resolve_job_def("ingest_job")

    # Re-ingesting unchanged files: same data versions, nothing requested.
    assert ingest.execute_in_process(instance=instance).success
    tick = sensor_tick(instance, config)
    assert not tick.run_requests and not tick.dynamic_partitions_requests

    # One more word: corpus_words gets a new data version and both score partitions are requested (the
    # statistics wait for them).
    with (tmp_path / "words.csv").open("a") as f:
        f.write("freedom,Agency\n")
    assert ingest.execute_in_process(instance=instance).success
    assert requested(sensor_tick(instance, config).run_requests) == {
        ("rm_scoring_job", "llama-a", ("rm_word_scores",)), ("rm_scoring_job", "llama-b", ("rm_word_scores",)),
        ("rm_scoring_job", "gemma-a", ("rm_word_scores",))}


def test_a_refresh_tick_requests_exactly_the_missing_and_stale_partitions_of_every_kind(tmp_path, monkeypatch,
                                                                                         weights):
    """A mixed registry run to completion, then changed so that each kind has a known number of missing and
    stale partitions: the schedules, evaluated as the daemon evaluates them, request exactly those."""
    rms = {"rm-a": ("llama", weights["rm-llama"]), "rm-b": ("gemma", weights["rm-gemma"]),
           "rm-d": ("gemma", weights["rm-gemma-2"])}  # two of a family: the mixed model can be fitted
    lms = {"lm-a": ("llama", "instruction_tuned", weights["lm-llama"]),
           "lm-b": ("gemma", "instruction_tuned", weights["lm-gemma"]),
           "lm-c": ("gemma", "pretrained", weights["lm-gemma"])}
    pairs = "pairs:\n  - [lm-a, lm-b]\n"
    config = write_small_registry(tmp_path, models=random_models_entry(rms) + language_models_entry(lms),
                                  extra=pairs)
    monkeypatch.setenv("DAGSTER_HOME", "")
    assert valuebias_main(["run", "--config", str(config)]) == 0
    instance = dg.DagsterInstance.get()
    tick = sensor_tick(instance, config)
    assert not tick.run_requests and not tick.dynamic_partitions_requests  # complete

    # 2 reward-model partitions (1 new, 1 changed entry), 1 sweep (switched on), 1 language model (changed
    # entry: its next-token table first, its word log-probs once that is done), 1 new pair of fresh models.
    rms["rm-c"] = ("llama", weights["rm-llama"])
    text = random_models_entry(rms, dtype={"rm-a": "float32"}).replace(
        "  rm-b:\n    kind: reward_model\n",
        "  rm-b:\n    kind: reward_model\n    vocabulary_sweep: {prompts: [best_ever_one], top_n: 3}\n")
    config.write_text(write_small_registry(
        tmp_path, models=text + language_models_entry(lms, dtype={"lm-b": "float32"}),
        extra=pairs + "  - [lm-a, lm-c]\n").read_text())
    loaded = load_config(config)
    sync_model_partitions(instance, loaded)
    defs = build_definitions(config)
    context = dg.build_schedule_context(instance=instance, repository_def=defs.get_repository_def(),
                                        resources=build_resources(config))
    requests = []
    for schedule in defs.schedules:
        if schedule.name == "release_schedule":  # on demand only (stopped by default): a release, not a refresh
            continue
        data = schedule.evaluate_tick(context)
        requests += data.run_requests or []
    assert requested(requests) == {
        ("ingest_job", None, ("model_registry",)),  # the table of registered models changed too
        ("rm_scoring_job", "rm-a", ("rm_word_scores",)),
        ("rm_scoring_job", "rm-c", ("rm_word_scores",)),
        ("rm_sweep_job", "rm-b", ("rm_vocabulary_sweep",)),
        ("lm_scoring_job", "lm-b", ("lm_next_token_logprobs",)),
        ("mwlr_job", "lm-a__vs__lm-c", ("mwlr_pair",)),
    }
    assert {r.tags["dagster/schedule_name"] for r in requests} == {
        "ingest_job_refresh", "rm_scoring_job_refresh", "rm_sweep_job_refresh", "lm_scoring_job_refresh",
        "mwlr_job_refresh"}
