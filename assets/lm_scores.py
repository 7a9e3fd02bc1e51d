"""Per-language-model log-probabilities: one partition per registered language model
(docs/METHOD.md#41-next-token-distribution).

Like the reward-model scores, the work runs out of process (``valuebias.scoring_worker`` through Dagster
Pipes); these assets say what to compute, then validate and publish what the worker wrote."""

import dagster as dg

from valuebias.assets.catalog import PARTITIONED, TableSpec
from valuebias.assets.partition_models import adopt_recorded_outputs, partition_model, plain, record_scoring
from valuebias.assets.rm_scores import SCORING_INPUTS
from valuebias.assets.tables import (content_version, large_table_version, lm_next_token_key, lm_word_logprobs_key,
                           promote_validated, staging_key, stored_table_result, table_result)
from valuebias.assets.versions import MODEL_ENTRY, TRAINING_WORDS, Lineage, SamePartition, Setting, Table
from valuebias.assets.partitions import language_model_partitions
from valuebias.resources.registry import Registry
from valuebias.resources.scoring_launcher import ScoringLauncher
from valuebias.resources.storage import Storage
from valuebias.resources.validation import ContractValidator


LM_NEXT_TOKEN_LOGPROBS = TableSpec(
    "lm_next_token_logprobs", code_version="2", contract=None,  # a whole vocabulary per prompt: not read back
    inputs=(MODEL_ENTRY, Table("prompts"), TRAINING_WORDS, Lineage("model_registry")),
    stored=PARTITIONED, partitions_def=language_model_partitions, partition_outputs=lambda p: [lm_next_token_key(p)],
    listed=False)


@dg.asset(
    partitions_def=LM_NEXT_TOKEN_LOGPROBS.partitions_def,
    group_name="lm_scoring",
    kinds={"pytorch", "parquet"},
    deps=LM_NEXT_TOKEN_LOGPROBS.deps(),
    pool="gpu",
    code_version=LM_NEXT_TOKEN_LOGPROBS.code_version,
)
def lm_next_token_logprobs(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
                           scoring: ScoringLauncher) -> dg.MaterializeResult:
    """Next-token log-softmax over the whole vocabulary at the last position of every prompt, one forward
    pass per prompt: instruction-tuned models see their chat template with the generation prompt,
    pretrained models the raw prompt text. Stored as (model, prompt, token_id Int32, token as decoded,
    logprob Float32). The worker writes it in place (it is large; no contract reads it back here)."""
    config, model, input_versions = partition_model(context, registry, "lm_next_token_logprobs", "language_model")
    key = lm_next_token_key(model.model_id)
    adopted = adopt_recorded_outputs(context, "lm_next_token_logprobs", model, input_versions, storage=storage,
                                     scoring=scoring, config=config, outputs=[key], version_of=large_table_version)
    if adopted is not None:
        return adopted
    metadata, version = scoring.score(context, config, "lm_next_token_logprobs", model, storage.store().to_spec(),
                                      inputs=SCORING_INPUTS, outputs={"table": key})
    metadata = record_scoring(metadata, model, "lm_next_token_logprobs", input_versions)
    return stored_table_result(storage.full_uri(key), version, plain(metadata["rows"]), metadata)


LM_WORD_LOGPROBS = TableSpec(
    "lm_word_logprobs", code_version="1", contract="lm_word_logprobs",
    inputs=(MODEL_ENTRY, SamePartition("lm_next_token_logprobs"), Table("corpus_words"),
            Setting(lambda config, _: {"word_rule": config.implicit_rewards.word_rule}), Lineage("prompts")),
    stored=PARTITIONED, partitions_def=language_model_partitions, partition_outputs=lambda p: [lm_word_logprobs_key(p)])


@dg.asset(
    partitions_def=LM_WORD_LOGPROBS.partitions_def,
    group_name="lm_scoring",
    kinds={"pytorch", "parquet"},
    deps=LM_WORD_LOGPROBS.deps(),
    pool="gpu",
    code_version=LM_WORD_LOGPROBS.code_version,
)
def lm_word_logprobs(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
                     validator: ContractValidator, scoring: ScoringLauncher) -> dg.MaterializeResult:
    """Log-prob of every corpus word after every prompt. The paper's rule (``single_token``): words equal
    to one decoded vocabulary token (lowercase, no leading space); with ``implicit_rewards.word_rule:
    full_sequence`` the other words get their whole token sequence's log-prob. The metadata counts the
    words each rule kept, per corpus."""
    config, model, input_versions = partition_model(context, registry, "lm_word_logprobs", "language_model")
    next_token = lm_next_token_key(model.model_id)
    if not storage.exists(next_token):
        raise dg.Failure(f"no next-token log-probs for '{model.model_id}' at {storage.full_uri(next_token)}: "
                         f"materialize lm_next_token_logprobs for partition '{model.model_id}' first")
    final = lm_word_logprobs_key(model.model_id)
    adopted = adopt_recorded_outputs(context, "lm_word_logprobs", model, input_versions, storage=storage,
                                     scoring=scoring, config=config, outputs=[final], version_of=content_version)
    if adopted is not None:
        return adopted
    staged = staging_key(context.run_id, final)
    metadata, version = scoring.score(context, config, "lm_word_logprobs", model, storage.store().to_spec(),
                                      inputs={**SCORING_INPUTS, "next_token": next_token}, outputs={"table": staged})
    table = promote_validated(storage, validator, staged, final, "lm_word_logprobs",
                              f"word log-probs of '{model.model_id}'")
    return table_result(table, storage.full_uri(final), version,
                        record_scoring(metadata, model, "lm_word_logprobs", input_versions))
