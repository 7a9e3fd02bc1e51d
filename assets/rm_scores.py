"""Per-model reward-model word scores: one partition per registered model (docs/METHOD.md#31-scoring).

The scoring itself runs out of process (``valuebias.scoring_worker`` through Dagster Pipes, see
``valuebias.resources.scoring_launcher``); these assets say what to score, then validate and publish what the
worker wrote."""

import warnings

import dagster as dg

from valuebias.assets.catalog import PARTITIONED, TableSpec
from valuebias.assets.ingest import CORPUS_WORDS, PROMPTS
from valuebias.assets.partition_models import adopt_recorded_outputs, partition_model, plain, record_scoring
from valuebias.assets.tables import (content_version, promote_validated, rm_sweep_tokens_key,
                           rm_vocabulary_sweep_key, rm_word_scores_key, staging_key, stored_table_result, table_result)
from valuebias.assets.versions import MODEL_ENTRY, Lineage, Setting, Table, _hash
from valuebias.assets.partitions import reward_model_partitions, swept_reward_model_partitions
from valuebias.resources.registry import Registry
from valuebias.resources.scoring_launcher import ScoringLauncher
from valuebias.resources.storage import Storage
from valuebias.resources.validation import ContractValidator
from valuebias.invariance import AUDITED, WORDS_PER_PROMPT, audit_failures
from valuebias.report import markdown_table

#: The stored tables every scoring worker reads.
SCORING_INPUTS = {"prompts": PROMPTS.key, "corpus_words": CORPUS_WORDS.key}

#: The warn-level check of the invariance audit of each ``rm_word_scores`` partition (``valuebias.invariance``).
INVARIANCE_CHECK = "rm_word_scores_invariance"
#: What the check says of outputs adopted from a record made before the audit existed.
NOT_AUDITED_ADOPTED = ("not audited: outputs adopted from a run recorded before the invariance audit existed; "
                       "materialize the partition again to audit it (its scores come from the score cache)")


def invariance_spec() -> dg.AssetCheckSpec:
    """The check, partitioned like its asset: each model's result is its own (an unpartitioned check keeps only
    the latest partition's). Partitioned checks are a preview feature of Dagster 1.13; its warning is silenced
    here only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(INVARIANCE_CHECK, asset="rm_word_scores", blocking=False,
                                 partitions_def=reward_model_partitions, description=(
            f"A seeded sample of the partition's sequences (one prompt per adjective, up to {WORDS_PER_PROMPT} "
            "words each), scored again one at a time, gets the same scores and the same word order: max "
            "|difference|, Kendall's tau per prompt and the share of flipped word pairs within the thresholds of "
            "valuebias/invariance.py. Imported (published) scores are not audited."))


def invariance_result(metadata: dict) -> dg.AssetCheckResult:
    """``rm_word_scores_invariance`` from the ``invariance_*`` metadata the worker recorded: passes within the
    thresholds, fails at WARN past them naming each figure; passes, saying so, when nothing was audited
    (imported scores, adopted outputs)."""
    figures = {key: plain(value) for key, value in metadata.items() if key.startswith("invariance_")}
    status = figures.get("invariance_audit", NOT_AUDITED_ADOPTED)
    if status != AUDITED:
        return dg.AssetCheckResult(check_name=INVARIANCE_CHECK, passed=True, severity=dg.AssetCheckSeverity.WARN,
                                   description=status, metadata={"invariance_audit": status})
    failures = audit_failures(figures)
    summary = (f"{figures['invariance_sequences']} sequences re-scored one at a time: max |difference| "
               f"{figures['invariance_max_abs_diff']:.3g}, min Kendall's tau {figures['invariance_min_kendall_tau']:.4f}, "
               f"flipped pairs {figures['invariance_flipped_pair_share']:.3%}")
    return dg.AssetCheckResult(
        check_name=INVARIANCE_CHECK, passed=not failures, severity=dg.AssetCheckSeverity.WARN,
        description=summary if not failures else "scores depend on the batch: " + "; ".join(failures),
        metadata=figures)


RM_WORD_SCORES = TableSpec(
    "rm_word_scores", code_version="1", contract="rm_word_scores",
    # Not bumped for the read-at-the-last-real-token fix (valuebias.model_content.SCORING_CONVENTION): that would
    # rescore every model of every state on upgrade; the fix changes the scores of pad == EOS models only, and
    # their next scoring misses the old cache (`valuebias run --all` recomputes them now).
    inputs=(MODEL_ENTRY, Table("prompts"), Table("corpus_words"), Lineage("model_registry")),
    stored=PARTITIONED, partitions_def=reward_model_partitions, partition_outputs=lambda p: [rm_word_scores_key(p)])


@dg.asset(
    partitions_def=RM_WORD_SCORES.partitions_def,
    group_name="scoring",
    kinds={"pytorch", "parquet"},
    deps=RM_WORD_SCORES.deps(),
    pool="gpu",
    code_version=RM_WORD_SCORES.code_version,
    check_specs=[invariance_spec()],
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
        return dg.MaterializeResult(metadata=adopted.metadata, data_version=adopted.data_version,
                                    check_results=[invariance_result(adopted.metadata)])
    staged = staging_key(context.run_id, final)
    metadata, version = scoring.score(context, config, "rm_word_scores", model, storage.store().to_spec(),
                                      inputs=SCORING_INPUTS, outputs={"table": staged})
    table = promote_validated(storage, validator, staged, final, "rm_word_scores", f"scores of '{model.model_id}'")
    return table_result(table, storage.full_uri(final), version,
                        record_scoring(metadata, model, "rm_word_scores", input_versions),
                        more_checks=(invariance_result(metadata),))


RM_VOCABULARY_SWEEP = TableSpec(
    "rm_vocabulary_sweep", code_version="1", contract="rm_sweep_tokens",
    inputs=(MODEL_ENTRY, Setting(lambda config, p: {"sweep": _hash(config.models[p].vocabulary_sweep
                                                                  if p in config.models else None)}),
            Table("prompts"), Lineage("corpus_words"), Lineage("model_registry")),
    stored=PARTITIONED, partitions_def=swept_reward_model_partitions,
    partition_outputs=lambda p: [rm_vocabulary_sweep_key(p), rm_sweep_tokens_key(p)],
    # `valuebias table rm_sweep_tokens`: the top and bottom strings per prompt (the whole sweep is too large)
    listed_as="rm_sweep_tokens", listed_output=1)


@dg.asset(
    partitions_def=RM_VOCABULARY_SWEEP.partitions_def,
    group_name="sweep",
    kinds={"pytorch", "parquet"},
    deps=RM_VOCABULARY_SWEEP.deps(),
    pool="gpu",
    code_version=RM_VOCABULARY_SWEEP.code_version,
)
def rm_vocabulary_sweep(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
                        validator: ContractValidator, scoring: ScoringLauncher) -> dg.MaterializeResult:
    """Optional, per registry entry (``vocabulary_sweep``): every vocabulary token, decoded, scored as the
    response to each sweep prompt (docs/METHOD.md#6-vocabulary-sweep). Stores the whole sweep and, as
    ``rm_sweep_tokens``, the top and bottom ``top_n`` strings per prompt."""
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
