"""The shape of the code location: each job's assets and partition set, the sensors and the schedules.
A refactor that drops an asset from a job, or gives an asset a partition set that can only fail, fails here."""

from __future__ import annotations

import dagster as dg

from valuebias.orchestration.definitions import build_definitions
from valuebias.orchestration.plan import RegistryGraph


def test_jobs_partitions_sensors_and_schedules():
    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    jobs = {}
    for job in defs.jobs:
        keys = sorted(k.to_user_string() for k in job.selection.resolve(graph))
        jobs[job.name] = (keys, job.partitions_def.name if job.partitions_def else None)
    assert jobs == {
        "ingest_job": (["corpus_words", "model_registry", "prompts"], None),
        "rm_scoring_job": (["rm_word_scores"], "reward_models"),
        "rm_sweep_job": (["rm_vocabulary_sweep"], "swept_reward_models"),
        "rm_statistics_job": (["rm_family_tests", "rm_interaction_test", "rm_mixed_model", "rm_rank_cells",
                               "rm_rank_sums", "rm_report"],
                              None),
        "value_cards_job": (["rm_value_cards"], "reward_models"),
        "lm_scoring_job": (["lm_next_token_logprobs", "lm_word_logprobs"], "language_models"),
        "mwlr_job": (["mwlr_pair"], "pairs"),
        "lm_statistics_job": (["lm_anova", "lm_posthoc", "lm_rank_cells", "lm_report", "mwlr_tokens", "mwlr_words"],
                              None),
        "release_job": (["registry_release"], None),
    }
    # every asset is materialized by exactly one job, and every asset has a code version
    registry = RegistryGraph(graph)
    assert sorted(registry.job_of) == sorted(registry.order)
    assert "registry_release" not in registry.order  # on demand only: never planned
    from valuebias.assets.versions import CODE_VERSIONS

    assert {k.to_user_string(): graph.get(k).code_version for k in graph.get_all_asset_keys()} == CODE_VERSIONS
    assert [s.name for s in defs.sensors] == ["model_partitions_sensor", "alert_on_run_failure",
                                              "registry_alerts_sensor"]
    assert {s.default_status for s in defs.sensors} == {dg.DefaultSensorStatus.RUNNING}
    assert sorted(s.name for s in defs.schedules) == sorted(
        [f"{job}_refresh" for job in jobs if job != "release_job"] + ["release_schedule"])
    release = next(s for s in defs.schedules if s.name == "release_schedule")
    assert release.default_status == dg.DefaultScheduleStatus.STOPPED  # a release runs only when asked for
    assert {s.default_status for s in defs.schedules if s.name != "release_schedule"} == {
        dg.DefaultScheduleStatus.RUNNING}
