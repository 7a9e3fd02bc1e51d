"""Value cards: one partition per reward model, what it favours against the rest of the registry
(docs/METHOD.md#84-value-cards; the science is ``valuebias.value_cards``, the rendering ``valuebias.report``)."""

import dagster as dg
import polars as pl

from valuebias.assets.partition_models import plain
from valuebias.assets.rm_statistics import common_words, model_rankings
from valuebias.assets.catalog import PARTITIONED, TableSpec
from valuebias.assets.tables import (card_key, contract_spec, rm_value_cards_key, rm_word_scores_key, table_key,
                                     table_result, write_table)
from valuebias.assets.versions import (INPUT_VERSIONS, RANKING_SETTINGS, REWARD_MODEL_FAMILIES, SamePartition, Setting,
                                       Table, current_input_versions, latest_record)
from valuebias.assets.partitions import reward_model_partitions
from valuebias.resources.registry import Registry
from valuebias.resources.storage import Storage
from valuebias.resources.validation import ContractValidator
from valuebias.report import embed_plots, value_card_markdown, value_card_png
from valuebias.value_cards import (MIN_OTHER_MODELS, model_profiles, neighbours, panel_positions, reference_note,
                                   value_card)


def corpus_sizes(words: pl.DataFrame) -> dict[str, int]:
    """The number of ranked entries of each corpus (a word in k categories is k entries, as it is ranked)."""
    return dict(words.group_by("corpus").len().iter_rows())


def scoring_provenance(instance: dg.DagsterInstance, model_id: str) -> dict:
    """Everything the registry recorded for the model's scores (the ``provenance`` of its latest
    ``rm_word_scores`` materialization), or {} when there is none."""
    record = latest_record(instance, "rm_word_scores", model_id)
    if record is None:
        return {}
    metadata = record.asset_materialization.metadata
    return plain(metadata.get("provenance")) or {}


RM_VALUE_CARDS = TableSpec(
    "rm_value_cards", code_version="2", contract="rm_value_cards",  # 2: deviation from the leave-one-out mean of
    # word ranks, crossed words x prompts interval.
    # A card compares its model with every other one: any reward model's new scores move every card (through the
    # rank sums); the others' families only change the card's wording about its reference.
    inputs=(Setting(lambda config, p: {} if p in config.models else {"model": "removed"}),
            Table("rm_rank_sums"), Table("rm_rank_cells"), Table("corpus_words"), Table("prompts"),
            SamePartition("rm_word_scores"), REWARD_MODEL_FAMILIES, RANKING_SETTINGS),
    stored=PARTITIONED, partitions_def=reward_model_partitions,
    partition_outputs=lambda p: [rm_value_cards_key(p), card_key(p, "md"), card_key(p, "png")])


@dg.asset(partitions_def=RM_VALUE_CARDS.partitions_def, group_name="value_cards", kinds={"polars", "markdown"},
          deps=RM_VALUE_CARDS.deps(), code_version=RM_VALUE_CARDS.code_version,
          check_specs=[contract_spec("rm_value_cards")])
def rm_value_cards(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
                   validator: ContractValidator) -> dg.MaterializeResult:
    """The value card of one reward model: per corpus x category x framing, how its word ranks deviate from
    the other reward models' (D, in ranks and as a share of the corpus, with an interval and p that allow for
    both the prompts and the words, effect size A, the frequency-controlled D, the flag after
    Benjamini-Hochberg), its nearest and farthest models, and the provenance of its scores. The card is shown
    here (markdown with its plot) and stored as ``cards/<model>.md`` and ``.png``."""
    from valuebias.assets.attempts import excluded_failed_models

    config = registry.load()
    model_id = context.partition_key
    model = config.models.get(model_id)
    if model is None or model.kind != "reward_model":
        raise dg.Failure(f"'{model_id}' is not a reward model of {config.path}")
    versions = current_input_versions(context.instance, config, "rm_value_cards", model_id)
    words = storage.read_parquet(table_key("corpus_words"))
    sizes = corpus_sizes(words)
    common = common_words(config, storage, excluded_failed_models(context.instance, config))
    own_ranks = pl.concat(list(model_rankings(config, model_id, storage.read_parquet(rm_word_scores_key(model_id)),
                                              words, common)))
    framings = storage.read_parquet(table_key("prompts")).select("prompt", "framing")
    profiles = model_profiles(storage.read_parquet(table_key("rm_rank_cells")))
    left_out = {model_id, *excluded_failed_models(context.instance, config)}  # failed_models: exclude
    reference = {m.model_id: m.family for m in config.reward_models() if m.model_id not in left_out}
    card = value_card(own_ranks, storage.read_parquet(table_key("rm_rank_sums")), framings, model_id, sizes,
                      reference, positions=panel_positions(profiles))
    nearest, farthest = neighbours(profiles, model_id, sizes) if len(reference) >= MIN_OTHER_MODELS else (None, None)
    note = reference_note(reference)
    plot = value_card_png(card, model_id, sizes)
    markdown = value_card_markdown(model, card, corpus_sizes=sizes, reference=reference, reference_note=note,
                                   nearest=nearest, farthest=farthest, plot_name=f"{model_id}.png",
                                   provenance=scoring_provenance(context.instance, model_id))
    # the rendered card first, the table (what the materialization records) last: a failed write leaves the
    # stored table as recorded
    storage.write_bytes(card_key(model_id, "png"), plot)
    storage.write_bytes(card_key(model_id, "md"), markdown.encode())
    uri, version, check = write_table(storage, validator, "rm_value_cards", card, rm_value_cards_key(model_id))
    shown = embed_plots(markdown, {f"{model_id}.png": plot})
    flags = card.filter(pl.col("flag"))["finding"].to_list()
    return table_result(card, uri, version, {
        "card": dg.MetadataValue.md(shown), "flags": len(flags),
        "strongest_flags": "; ".join(flags[:3]) or "none", "reference": note or f"{len(reference)} other models",
        "nearest_model": nearest or "n/a", "farthest_model": farthest or "n/a",
        "card_uri": dg.MetadataValue.path(storage.full_uri(card_key(model_id, "md"))),
        INPUT_VERSIONS: dg.MetadataValue.json(versions)}, preview_rows=20, check=check)
