"""Per-model reward-model word scores: one partition per registered model (METHOD.md section 3)."""



import dagster as dg

from assets.tables import TABLE_KEYS, rm_word_scores_key, table_result, write_table
from assets.partition_models import progress_logger, registered_model
from assets.versions import INPUT_VERSIONS, current_input_versions
from orchestration.partitions import model_partitions
from resources.registry import Registry
from resources.scoring import RewardModelScorer
from resources.storage import Storage
from resources.validation import ContractValidator


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
