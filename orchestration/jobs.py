"""Jobs: what ``valuebias run``, the sensor and the schedule execute."""

import dagster as dg

from valuebias.orchestration.partitions import (language_model_partitions, pair_partitions, reward_model_partitions,
                                      swept_reward_model_partitions)

ingest_job = dg.define_asset_job(
    "ingest_job", selection=dg.AssetSelection.groups("ingest"),
    description="Reads prompts, corpora and the model registry, and checks them against their contracts.")
rm_scoring_job = dg.define_asset_job(
    "rm_scoring_job", selection=dg.AssetSelection.assets("rm_word_scores"),
    partitions_def=reward_model_partitions,
    description="Scores one registered reward model (one partition per model).")
rm_sweep_job = dg.define_asset_job(
    "rm_sweep_job", selection=dg.AssetSelection.assets("rm_vocabulary_sweep"),
    partitions_def=swept_reward_model_partitions,
    description="The full-vocabulary sweep of one reward model whose entry switches it on.")
rm_statistics_job = dg.define_asset_job(
    "rm_statistics_job", selection=dg.AssetSelection.groups("statistics", "report"),
    description="Figure-1 statistics and report from the stored scores of every registered reward model.")
value_cards_job = dg.define_asset_job(
    "value_cards_job", selection=dg.AssetSelection.assets("rm_value_cards"), partitions_def=reward_model_partitions,
    description="The value card of one reward model against the rest of the registry (one partition per model).")
lm_scoring_job = dg.define_asset_job(
    "lm_scoring_job", selection=dg.AssetSelection.groups("lm_scoring"),
    partitions_def=language_model_partitions,
    description="Next-token and word log-probs of one registered language model (one partition per model).")
mwlr_job = dg.define_asset_job(
    "mwlr_job", selection=dg.AssetSelection.assets("mwlr_pair"), partitions_def=pair_partitions,
    description="The MWLR of one language-model pair (one partition per pair).")
lm_statistics_job = dg.define_asset_job(
    "lm_statistics_job", selection=dg.AssetSelection.groups("lm_statistics"),
    description="Figure-2 statistics, Table 1, Figure 3 and the report from every language model and pair.")

#: On demand only (the UI, `valuebias release`, or `release_schedule` once switched on): not in ALL_JOBS, so
#: `valuebias run`, the sensor and the refresh schedules never plan it.
release_job = dg.define_asset_job(
    "release_job", selection=dg.AssetSelection.assets("registry_release"),
    description="Writes an immutable, verifiable release of the registry (refused while anything is not fresh).")
#: A weekly release, STOPPED by default: switch it on in the UI (Automation) to release every Monday at 03:00.
release_schedule = dg.ScheduleDefinition(name="release_schedule", job=release_job, cron_schedule="0 3 * * 1",
                                         default_status=dg.DefaultScheduleStatus.STOPPED,
                                         description="A release every Monday at 03:00 (off unless switched on).")

ALL_JOBS = [ingest_job, rm_scoring_job, rm_sweep_job, rm_statistics_job, value_cards_job, lm_scoring_job, mwlr_job,
            lm_statistics_job]
