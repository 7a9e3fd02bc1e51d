"""Per-model reward-model word scores: one partition per registered model (METHOD.md section 3)."""



import dagster as dg

from assets.tables import (TABLE_KEYS, rm_sweep_tokens_key, rm_vocabulary_sweep_key, rm_word_scores_key, table_result,
                           write_table)
from assets.partition_models import progress_logger, registered_model
from assets.versions import INPUT_VERSIONS, current_input_versions
from orchestration.partitions import model_partitions
from resources.registry import Registry
from resources.scoring import RewardModelScorer, sweep_vocabulary
from resources.storage import Storage
from resources.validation import ContractValidator
from valuebias.report import markdown_table


@dg.asset(
    partitions_def=model_partitions,
    group_name="scoring",
    kinds={"pytorch", "parquet"},
    deps=["prompts", "corpus_words", "model_registry"],
    pool="gpu",
)
def rm_word_scores(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
                   validator: ContractValidator, scorer: RewardModelScorer) -> dg.MaterializeResult:
    """Scores of one reward model: every corpus word as the answer to every prompt, rendered with the
    model's own chat template (or imported from the authors' published files). Validated against the
    ``rm_word_scores`` contract before it is written."""
    config = registry.load()
    model_id = context.partition_key
    model = registered_model(config, model_id, "reward_model")
    input_versions = current_input_versions(context.instance, config, "rm_word_scores", model_id)
    prompts = storage.read_parquet(TABLE_KEYS["prompts"])
    words = storage.read_parquet(TABLE_KEYS["corpus_words"])
    progress = progress_logger(context, model_id, "sequences scored")

    table, metadata = scorer.score(model, config, storage, prompts, words, progress=progress)
    report = validator.validate(table, "rm_word_scores")
    if not report.success:
        raise dg.Failure(f"scores of '{model_id}' break their data contract: {report.summary()}",
                         metadata=report.to_metadata())
    uri, version = write_table(storage, rm_word_scores_key(model_id), table)
    metadata.update({"model_fingerprint": model.fingerprint, "family": model.family, "source": model.source,
                     INPUT_VERSIONS: dg.MetadataValue.json(input_versions)})
    return table_result(table, uri, version, metadata)


@dg.asset(
    partitions_def=model_partitions,
    group_name="sweep",
    kinds={"pytorch", "parquet"},
    deps=["prompts", "corpus_words", "model_registry"],
    pool="gpu",
)
def rm_vocabulary_sweep(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
                        validator: ContractValidator, scorer: RewardModelScorer) -> dg.MaterializeResult:
    """Optional, per registry entry (``vocabulary_sweep``): every vocabulary token, decoded, scored as the
    response to each sweep prompt (METHOD.md section 6). Stores the whole sweep and, as ``rm_sweep_tokens``,
    the top and bottom ``top_n`` strings per prompt."""
    from valuebias.score_partition import sweep_extremes

    config = registry.load()
    model_id = context.partition_key
    model = registered_model(config, model_id, "reward_model")
    if model.vocabulary_sweep is None:
        raise dg.Failure(f"model '{model_id}' has no vocabulary_sweep in {config.path}: switch it on there")
    input_versions = current_input_versions(context.instance, config, "rm_vocabulary_sweep", model_id)
    table, metadata = sweep_vocabulary(scorer, model, config, storage.read_parquet(TABLE_KEYS["prompts"]),
                                       storage.read_parquet(TABLE_KEYS["corpus_words"]))
    extremes = sweep_extremes(table, model.vocabulary_sweep["top_n"])
    report = validator.validate(extremes, "rm_sweep_tokens")
    if not report.success:
        raise dg.Failure(f"sweep of '{model_id}' breaks its data contract: {report.summary()}",
                         metadata=report.to_metadata())
    storage.write_parquet(rm_sweep_tokens_key(model_id), extremes)
    uri, version = write_table(storage, rm_vocabulary_sweep_key(model_id), table)
    metadata.update({"model_fingerprint": model.fingerprint, INPUT_VERSIONS: dg.MetadataValue.json(input_versions),
                     "extremes": dg.MetadataValue.md(markdown_table(extremes))})
    return table_result(table, uri, version, metadata)
