"""Per-language-model log-probabilities: one partition per registered language model (METHOD.md section 4)."""



import dagster as dg

from assets.tables import (TABLE_KEYS, large_table_version, lm_next_token_key, lm_word_logprobs_key, table_result,
                           write_table)
from assets.partition_models import progress_logger, registered_model
from assets.versions import INPUT_VERSIONS, current_input_versions
from orchestration.partitions import model_partitions
from resources.lm_scoring import LanguageModelScorer
from resources.registry import Registry
from resources.storage import Storage
from resources.validation import ContractValidator


@dg.asset(
    partitions_def=model_partitions,
    group_name="lm_scoring",
    kinds={"pytorch", "parquet"},
    deps=["prompts", "corpus_words", "model_registry"],
    pool="gpu",
)
def lm_next_token_logprobs(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
                           lm_scorer: LanguageModelScorer) -> dg.MaterializeResult:
    """Next-token log-softmax over the whole vocabulary at the last position of every prompt, one forward
    pass per prompt: instruction-tuned models see their chat template with the generation prompt,
    pretrained models the raw prompt text. Stored as (model, prompt, token_id Int32, token as decoded,
    logprob Float32)."""
    config = registry.load()
    model_id = context.partition_key
    model = registered_model(config, model_id, "language_model")
    input_versions = current_input_versions(context.instance, config, "lm_next_token_logprobs", model_id)
    prompts = storage.read_parquet(TABLE_KEYS["prompts"])
    words = storage.read_parquet(TABLE_KEYS["corpus_words"])
    progress = progress_logger(context, model_id, "prompts")

    try:
        table, metadata = lm_scorer.next_token_logprobs(model, config, prompts, words, progress=progress)
    except ValueError as exc:
        raise dg.Failure(str(exc)) from exc
    uri = storage.write_parquet(lm_next_token_key(model_id), table)
    metadata.update({"model_fingerprint": model.fingerprint, "family": model.family, "source": model.source,
                     INPUT_VERSIONS: dg.MetadataValue.json(input_versions)})
    return table_result(table, uri, large_table_version(table), metadata)


@dg.asset(
    partitions_def=model_partitions,
    group_name="lm_scoring",
    kinds={"pytorch", "parquet"},
    deps=["lm_next_token_logprobs", "corpus_words", "prompts"],
    pool="gpu",
)
def lm_word_logprobs(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
                     validator: ContractValidator, lm_scorer: LanguageModelScorer) -> dg.MaterializeResult:
    """Log-prob of every corpus word after every prompt. The paper's rule (``single_token``): words equal
    to one decoded vocabulary token (lowercase, no leading space); with ``implicit_rewards.word_rule:
    full_sequence`` the other words get their whole token sequence's log-prob. The metadata counts the
    words each rule kept, per corpus."""
    config = registry.load()
    model_id = context.partition_key
    model = registered_model(config, model_id, "language_model")
    input_versions = current_input_versions(context.instance, config, "lm_word_logprobs", model_id)
    key = lm_next_token_key(model_id)
    if not storage.exists(key):
        raise dg.Failure(f"no next-token log-probs for '{model_id}' at {storage.full_uri(key)}: materialize "
                         f"lm_next_token_logprobs for partition '{model_id}' first")
    next_token = storage.read_parquet(key)
    prompts = storage.read_parquet(TABLE_KEYS["prompts"])
    words = storage.read_parquet(TABLE_KEYS["corpus_words"])
    table, metadata = lm_scorer.word_logprobs(model, config, next_token, prompts, words)
    report = validator.validate(table, "lm_word_logprobs")
    if not report.success:
        raise dg.Failure(f"word log-probs of '{model_id}' break their data contract: {report.summary()}",
                         metadata=report.to_metadata())
    uri, version = write_table(storage, lm_word_logprobs_key(model_id), table)
    metadata["words_kept"] = dg.MetadataValue.json(metadata["words_kept"])
    metadata.update({"model_fingerprint": model.fingerprint, INPUT_VERSIONS: dg.MetadataValue.json(input_versions)})
    return table_result(table, uri, version, metadata)
