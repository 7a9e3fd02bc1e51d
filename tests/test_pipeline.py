"""Dagster materializations on a temporary instance: ingest, contract checks, one model partition."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from valuebias.assets.tables import TABLE_KEYS, rm_word_scores_key
from valuebias.orchestration.definitions import build_definitions, build_resources
from valuebias.orchestration.partitions import REWARD_MODELS
from valuebias.orchestration.partitions import sync_model_partitions
from valuebias.resources.storage import Storage
from tests.registry_fixtures import (AGENCY, COMMUNION, PROMPTS, build_random_reward_model, random_models_entry,
                                     write_small_registry)
from valuebias.config import load_config


@pytest.fixture()
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def test_ingest_then_one_partition(tmp_path, instance):
    models = {"demo-gemma-1": ("gemma", build_random_reward_model(tmp_path / "g1", architecture="gemma", seed=1)),
              "demo-llama-1": ("llama", build_random_reward_model(tmp_path / "l1", architecture="llama", seed=2))}
    config_path = write_small_registry(tmp_path, models=random_models_entry(models))
    config = load_config(config_path)
    defs = build_definitions(config_path)
    result = defs.resolve_job_def("ingest_job").execute_in_process(instance=instance)
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"prompts_contract": True, "corpus_words_contract": True, "model_registry_contract": True}

    added, removed = sync_model_partitions(instance, config)
    assert sorted(added) == sorted(config.models) and removed == []
    assert sorted(instance.get_dynamic_partitions(REWARD_MODELS)) == sorted(config.models)

    # Dagster-University idiom: materialize one asset for one partition with explicit resources.
    from valuebias.assets.rm_scores import rm_word_scores

    result = dg.materialize([rm_word_scores], partition_key="demo-gemma-1", instance=instance,
                            resources=build_resources(config_path))
    assert result.success
    storage = Storage(uri=config.storage_uri)
    scores = storage.read_parquet(rm_word_scores_key("demo-gemma-1"))
    assert scores.columns == ["model", "corpus", "prompt", "word", "score"]
    assert len(scores) == len(PROMPTS) * (len(AGENCY) + len(COMMUNION))
    assert set(scores["model"]) == {"demo-gemma-1"}
    assert not storage.exists(rm_word_scores_key("demo-llama-1"))  # other partitions untouched

    key = dg.AssetKey("rm_word_scores")
    assert instance.get_materialized_partitions(key) == {"demo-gemma-1"}
    event = instance.get_latest_materialization_event(key)
    materialization = event.asset_materialization
    assert materialization.partition == "demo-gemma-1"
    assert materialization.metadata["dagster/row_count"].value == len(scores)
    assert materialization.metadata["sequences_scored"].value == len(scores)
    # the invariance audit (valuebias.invariance): its figures recorded, its warn-level check passed
    assert materialization.metadata["invariance_audit"].value == "audited"
    assert materialization.metadata["invariance_sequences"].value == len(scores)  # 6 adjectives, all 40 words
    assert materialization.metadata["invariance_max_abs_diff"].value <= 1e-5
    assert materialization.metadata["invariance_min_kendall_tau"].value == pytest.approx(1.0)
    assert {e.check_name: (e.passed, e.severity, e.partition) for e in result.get_asset_check_evaluations()} == {
        "rm_word_scores_invariance": (True, dg.AssetCheckSeverity.WARN, "demo-gemma-1")}
    version = event.dagster_event.event_specific_data.materialization.tags["dagster/data_version"]
    from valuebias.assets.tables import content_version

    assert version == content_version(scores)


def test_a_bad_word_list_fails_before_anything_is_written(tmp_path, instance):
    config_path = write_small_registry(tmp_path)
    words = (tmp_path / "words.csv").read_text().replace("power,Agency", "power,Agncy")
    (tmp_path / "words.csv").write_text(words)
    result = build_definitions(config_path).resolve_job_def("ingest_job").execute_in_process(
        instance=instance, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure and e.step_key == "corpus_words")
    error = failure.step_failure_data.error
    while error.cause is not None:
        error = error.cause
    assert "words.csv" in error.message and "row 5" in error.message and "'category'" in error.message
    assert "Agncy" in error.message
    storage = Storage(uri=load_config(config_path).storage_uri)
    assert not storage.exists(TABLE_KEYS["corpus_words"])


def test_a_table_that_breaks_its_contract_never_replaces_the_stored_one(tmp_path, instance):
    """Validate, then publish: a prompt table that breaks its contract (here a stricter copy of it, which
    refuses an id the parser lets through) fails its step with the rule and the value named; the stored
    prompt table is the good one from before, and downstream never ran."""
    import shutil

    from valuebias.resources.validation import ContractValidator
    from valuebias.assets import ingest
    from valuebias.assets.rm_statistics import rm_rank_cells

    config_path = write_small_registry(tmp_path)
    selection = ["prompts", "corpus_words", "model_registry", "rm_rank_cells"]
    assets = [*dg.load_assets_from_modules([ingest]), rm_rank_cells]
    assert dg.materialize(assets, instance=instance, resources=build_resources(config_path),
                          selection=selection[:3]).success
    storage = Storage(uri=load_config(config_path).storage_uri)
    good = storage.read_parquet(TABLE_KEYS["prompts"])

    contracts = tmp_path / "contracts"
    shutil.copytree(Path(__file__).resolve().parents[1] / "data_contracts", contracts)
    strict = (contracts / "prompts.yaml").read_text().replace("'^[a-z]+_[a-z]+_[a-z]+$'", "'^[a-z]+_[a-z]+_one$'")
    (contracts / "prompts.yaml").write_text(strict)
    resources = {**build_resources(config_path), "validator": ContractValidator(contracts_dir=str(contracts))}
    result = dg.materialize(assets, instance=instance, resources=resources, raise_on_error=False,
                            selection=selection)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure and e.step_key == "prompts")
    message = failure.step_failure_data.error.message
    assert "check prompts_contract failed" in message and "was not stored (the stored one is kept)" in message
    assert "greatest_world_single" in message
    assert storage.read_parquet(TABLE_KEYS["prompts"]).equals(good)
    evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert evaluations == {"corpus_words_contract": True, "model_registry_contract": True}
    started = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    assert "prompts" in started and "rm_rank_cells" not in started  # blocked, never ran
