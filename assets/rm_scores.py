"""Per-model reward-model word scores: one partition per registered model (METHOD.md section 3).

The scoring itself runs out of process (``resources.scoring_worker`` through Dagster Pipes, see
``resources.scoring_launcher``); these assets say what to score, then validate and publish what the
worker wrote."""

import dagster as dg

from assets.partition_models import adopt_recorded_outputs, partition_model, plain, record_scoring
from assets.tables import (TABLE_KEYS, content_version, promote_validated, rm_sweep_tokens_key,
                           rm_vocabulary_sweep_key, rm_word_scores_key, staging_key, stored_table_result, table_result)
from assets.versions import CODE_VERSIONS, reads
from orchestration.partitions import reward_model_partitions, swept_reward_model_partitions
from resources.registry import Registry
from resources.scoring_launcher import ScoringLauncher
from resources.storage import Storage
from resources.validation import ContractValidator
from valuebias.report import markdown_table

#: The stored tables every scoring worker reads.
SCORING_INPUTS = {"prompts": TABLE_KEYS["prompts"], "corpus_words": TABLE_KEYS["corpus_words"]}


@dg.asset(
    partitions_def=reward_model_partitions,
    group_name="scoring",
    kinds={"pytorch", "parquet"},
    deps=reads("rm_word_scores"),
    pool="gpu",
    code_version=CODE_VERSIONS["rm_word_scores"],
)
def rm_word_scores(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
                   validator: ContractValidator, scoring: ScoringLauncher) -> dg.MaterializeResult:
    """Scores of one reward model: every corpus word as the answer to every prompt, rendered with the
    model's own chat template (or imported from the authors' published files). Validated against the
    ``rm_word_scores`` contract before it is published."""
    config, model, input_versions = partition_model(context, registry, "rm_word_scores", "reward_model")
    final = rm_word_scores_key(model.model_id)
    adopted = adopt_recorded_outputs(context, "rm_word_scores", model, input_versions, storage=storage,
                                     scoring=scoring, config=config, outputs=[final], version_of=content_version)
    if adopted is not None:
        return adopted
    staged = staging_key(context.run_id, final)
    metadata, version = scoring.score(context, config, "rm_word_scores", model, storage.store().to_spec(),
                                      inputs=SCORING_INPUTS, outputs={"table": staged})
    table = promote_validated(storage, validator, staged, final, "rm_word_scores", f"scores of '{model.model_id}'")
    return table_result(table, storage.full_uri(final), version,
                        record_scoring(metadata, model, "rm_word_scores", input_versions))


@dg.asset(
    partitions_def=swept_reward_model_partitions,
    group_name="sweep",
    kinds={"pytorch", "parquet"},
    deps=reads("rm_vocabulary_sweep"),
    pool="gpu",
    code_version=CODE_VERSIONS["rm_vocabulary_sweep"],
)
def rm_vocabulary_sweep(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
                        validator: ContractValidator, scoring: ScoringLauncher) -> dg.MaterializeResult:
    """Optional, per registry entry (``vocabulary_sweep``): every vocabulary token, decoded, scored as the
    response to each sweep prompt (METHOD.md section 6). Stores the whole sweep and, as ``rm_sweep_tokens``,
    the top and bottom ``top_n`` strings per prompt."""
    config, model, input_versions = partition_model(context, registry, "rm_vocabulary_sweep", "reward_model")
    if model.vocabulary_sweep is None:
        raise dg.Failure(f"model '{model.model_id}' has no vocabulary_sweep in {config.path}: add "
                         f"`vocabulary_sweep: {{prompts: [best_ever_one], top_n: 20}}` to models.{model.model_id} "
                         "there to switch it on")
    final, final_extremes = rm_vocabulary_sweep_key(model.model_id), rm_sweep_tokens_key(model.model_id)
    adopted = adopt_recorded_outputs(context, "rm_vocabulary_sweep", model, input_versions, storage=storage,
                                     scoring=scoring, config=config, outputs=[final, final_extremes],
                                     version_of=content_version)
    if adopted is not None:
        return adopted
    staged, staged_extremes = staging_key(context.run_id, final), staging_key(context.run_id, final_extremes)
    metadata, version = scoring.score(context, config, "rm_vocabulary_sweep", model, storage.store().to_spec(),
                                      inputs=SCORING_INPUTS, outputs={"table": staged, "extremes": staged_extremes})
    extremes = promote_validated(storage, validator, staged_extremes, final_extremes, "rm_sweep_tokens",
                                 f"sweep extremes of '{model.model_id}'")
    uri = storage.move(staged, final)
    metadata = record_scoring(metadata, model, "rm_vocabulary_sweep", input_versions)
    metadata["extremes"] = dg.MetadataValue.md(markdown_table(extremes))
    return stored_table_result(uri, version, plain(metadata["rows"]), metadata)
