"""Implicit rewards of language-model pairs (docs/METHOD.md#5-implicit-rewards-and-mwlr-table-1-figure-3): the
mixture-weighted log ratio per pair (one partition per ``pairs`` entry), and the Table-1 and Figure-3 tables built
from all pairs.

A pair partition ``a__vs__b`` reads two partitions (``a`` and ``b``) of ``lm_next_token_logprobs``.
Dagster has no partition mapping from one dynamic key to two keys of another dynamic partitioning, so
the dependency is declared on all model partitions (lineage in the UI) and the pair records the data
versions of exactly its two inputs in ``input_versions``: a pair is stale only when one of its own two
models changed (``valuebias status`` / ``valuebias run``, and the partition sensor, use those).
"""


import dagster as dg
import polars as pl

from valuebias.assets.catalog import PARTITIONED, TableSpec
from valuebias.assets.tables import (contract_spec, large_table_version, lm_next_token_key, mwlr_key, table_key,
                                     table_result, write_table)
from valuebias.assets.versions import (EVERY_PAIR, INPUT_VERSIONS, Partitions, Setting, Table, current_input_versions,
                                       settings_fingerprint)
from valuebias.assets.partitions import pair_partitions
from valuebias.resources.registry import Registry
from valuebias.resources.storage import Storage
from valuebias.resources.validation import ContractValidator
from valuebias.config import RegistryConfig
from valuebias.implicit_rewards import mwlr, top_bottom_tokens, word_mwlr

MWLR_COLUMNS = ["pair", "prompt", "token", "logprob_a", "logprob_b", "mwlr"]
TOKEN_COLUMNS = ["pair", "model_a", "model_b", "prompt", "framing", "side", "rank", "token", "mwlr", "logprob_a",
                 "logprob_b"]
WORD_COLUMNS = ["pair", "model_a", "model_b", "prompt", "framing", "word", "mwlr", "n_variants", "variants"]


MWLR_PAIR = TableSpec(
    "mwlr_pair", code_version="1", contract=None,  # a whole vocabulary per prompt: not read back
    inputs=(Setting(lambda config, p: {} if p in config.pair_models() else {"pair": "removed"}),
            Partitions("lm_next_token_logprobs", lambda config, p: list(config.pair_models().get(p, ())))),
    stored=PARTITIONED, partitions_def=pair_partitions, partition_outputs=lambda p: [mwlr_key(p)], listed=False)


@dg.asset(
    partitions_def=MWLR_PAIR.partitions_def,
    group_name="implicit_rewards",
    kinds={"polars", "parquet"},
    deps=MWLR_PAIR.deps(),
    code_version=MWLR_PAIR.code_version,
)
def mwlr_pair(context: dg.AssetExecutionContext, registry: Registry, storage: Storage) -> dg.MaterializeResult:
    """MWLR(t) = 0.5 (p_a + p_b)(log p_a - log p_b) for every decoded token string both models have, after
    every prompt: the two next-token tables are joined on the decoded string (several ids with the same
    string: the highest log-prob is kept). Positive = favoured by model a."""
    config = registry.load()
    pair = context.partition_key
    models = config.pair_models().get(pair)
    if models is None:
        raise dg.Failure(f"pair '{pair}' is not in {config.path} any more; its stored MWLR is kept but left out "
                         "of the tables")
    input_versions = current_input_versions(context.instance, config, "mwlr_pair", pair)
    tables = []
    for model_id in models:
        key = lm_next_token_key(model_id)
        if not storage.exists(key):
            raise dg.Failure(f"no next-token log-probs for '{model_id}' at {storage.full_uri(key)}: materialize "
                             f"lm_next_token_logprobs for partition '{model_id}' first")
        tables.append(storage.read_parquet(key).select("prompt", "token_id", "token", "logprob"))
    strings_a = tables[0]["token"].n_unique()
    strings_b = tables[1]["token"].n_unique()
    table = mwlr(*tables)
    table = table.select(pl.lit(pair).alias("pair"), *table.columns)
    uri = storage.write_parquet(mwlr_key(pair), table)
    per_prompt = table.group_by("prompt").agg(pl.col("mwlr").sum().alias("sum"))
    return table_result(table, uri, large_table_version(table), {
        "model_a": models[0], "model_b": models[1],
        "strings_a": strings_a, "strings_b": strings_b,
        "strings_joined": table.filter(pl.col("prompt") == table["prompt"][0]).height if len(table) else 0,
        "mean_mwlr_sum_per_prompt": float(per_prompt["sum"].mean()) if len(per_prompt) else 0.0,
        INPUT_VERSIONS: dg.MetadataValue.json(input_versions)})


def load_pairs(config: RegistryConfig, storage: Storage) -> list[tuple[str, tuple[str, str], pl.DataFrame]]:
    """(pair id, (model_a, model_b), stored MWLR table) for every pair currently in the registry."""
    out = []
    for pair, models in config.pair_models().items():
        key = mwlr_key(pair)
        if not storage.exists(key):
            raise dg.Failure(f"no MWLR for pair '{pair}' at {storage.full_uri(key)}: materialize mwlr_pair for "
                             f"partition '{pair}' first")
        out.append((pair, models, storage.read_parquet(key)))
    return out


def _with_pair(table: pl.DataFrame, pair: str, models: tuple[str, str], framing: pl.DataFrame) -> pl.DataFrame:
    return (table.join(framing, on="prompt", how="left")
            .with_columns(pl.lit(pair).alias("pair"), pl.lit(models[0]).alias("model_a"),
                          pl.lit(models[1]).alias("model_b")))


MWLR_TOKENS = TableSpec("mwlr_tokens", code_version="1", contract="mwlr_tokens", inputs=(
    EVERY_PAIR, Table("prompts"),
    Setting(lambda config, _: {"implicit_rewards": settings_fingerprint(config, "implicit_rewards", "top_n")})))


@dg.asset(group_name="lm_statistics", kinds={"polars", "parquet"}, deps=MWLR_TOKENS.deps(),
          code_version=MWLR_TOKENS.code_version, check_specs=[contract_spec("mwlr_tokens")])
def mwlr_tokens(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
                validator: ContractValidator) -> dg.MaterializeResult:
    """Table 1 for every pair and prompt: the ``implicit_rewards.top_n`` token strings with the highest
    MWLR (rank 1..N, favoured by model a) and the lowest (rank -1..-N, favoured by model b). Rows are
    ordered by pair, positive prompts first, prompt, then from most favoured by a to most favoured by b."""
    config = registry.load()
    versions = current_input_versions(context.instance, config, "mwlr_tokens")
    framing = storage.read_parquet(table_key("prompts")).select("prompt", "framing")
    n = config.implicit_rewards.top_n
    parts = [_with_pair(top_bottom_tokens(table, n), pair, models, framing)
             for pair, models, table in load_pairs(config, storage)]
    schema = {"pair": pl.Utf8, "model_a": pl.Utf8, "model_b": pl.Utf8, "prompt": pl.Utf8, "framing": pl.Utf8,
              "side": pl.Utf8, "rank": pl.Int32, "token": pl.Utf8, "mwlr": pl.Float64, "logprob_a": pl.Float64,
              "logprob_b": pl.Float64}
    if parts:
        table = (pl.concat([p.select(TOKEN_COLUMNS) for p in parts])
                 .with_columns(pl.col("rank").cast(pl.Int32))
                 .sort(pl.col("pair"), pl.col("framing") != "positive", pl.col("prompt"), pl.col("side") == "bottom",
                       pl.col("rank"), maintain_order=True))
    else:
        table = pl.DataFrame(schema=schema)
    uri, version, check = write_table(storage, validator, "mwlr_tokens", table)
    note = f"top and bottom {n} strings per pair and prompt" if parts else "no pairs configured"
    return table_result(table, uri, version, {"top_n": n, "pairs": len(parts), "note": note,
                                              INPUT_VERSIONS: dg.MetadataValue.json(versions)},
                        preview_rows=2 * n, check=check)


MWLR_WORDS = TableSpec("mwlr_words", code_version="1", contract="mwlr_words", inputs=(
    EVERY_PAIR, Table("prompts"),
    Setting(lambda config, _: {"implicit_rewards": settings_fingerprint(config, "implicit_rewards", "words")})))


@dg.asset(group_name="lm_statistics", kinds={"polars", "parquet"}, deps=MWLR_WORDS.deps(),
          code_version=MWLR_WORDS.code_version, check_specs=[contract_spec("mwlr_words")])
def mwlr_words(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
               validator: ContractValidator) -> dg.MaterializeResult:
    """Figure 3's data: per pair and prompt, the MWLR of each ``implicit_rewards.words`` word, averaged over
    its case and leading-space variants present in both vocabularies (``freedom``, ``Freedom``,
    ``FREEDOM``, `` freedom``, ...). A word none of whose variants both models have gets no row."""
    config = registry.load()
    versions = current_input_versions(context.instance, config, "mwlr_words")
    framing = storage.read_parquet(table_key("prompts")).select("prompt", "framing")
    words = list(config.implicit_rewards.words)
    parts, missing = [], {}
    for pair, models, table in load_pairs(config, storage):
        scored = word_mwlr(table, words).with_columns(  # quoted, so leading spaces show: 'love', ' love'
            pl.col("variants").list.eval(pl.lit("'") + pl.element() + pl.lit("'")).list.join(", "))
        parts.append(_with_pair(scored, pair, models, framing).select(WORD_COLUMNS))
        absent = sorted(set(words) - set(scored["word"].to_list()))
        if absent:
            missing[pair] = absent
    schema = {"pair": pl.Utf8, "model_a": pl.Utf8, "model_b": pl.Utf8, "prompt": pl.Utf8, "framing": pl.Utf8,
              "word": pl.Utf8, "mwlr": pl.Float64, "n_variants": pl.UInt32, "variants": pl.Utf8}
    table = pl.concat(parts).sort("pair", "word", "prompt") if parts else pl.DataFrame(schema=schema)
    uri, version, check = write_table(storage, validator, "mwlr_words", table)
    note = "no pairs configured" if not parts else (
        "words with no variant in both vocabularies: " + "; ".join(f"{p}: {', '.join(w)}" for p, w in missing.items())
        if missing else "every word found in every pair")
    return table_result(table, uri, version, {"words": ", ".join(words), "note": note,
                                              INPUT_VERSIONS: dg.MetadataValue.json(versions)}, preview_rows=20,
                   check=check)
