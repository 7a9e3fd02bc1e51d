"""Ingest: prompts, corpora and the model registry, read from their URIs, normalised and stored.

Parsing errors (missing file, wrong format, unknown category, duplicate prompt id, ...) raise an
``InputError`` naming the file, row and field before anything is written. The stored tables are then
checked against their data contracts before they are stored (``valuebias.assets.tables.write_table``: validate, then
publish; the result is each asset's blocking ``<table>_contract`` check).
"""


import dagster as dg
import polars as pl

from valuebias.assets.catalog import READS_INPUT_FILES, TableSpec
from valuebias.assets.tables import contract_spec, content_version, table_result, write_table
from valuebias.resources.registry import Registry
from valuebias.resources.storage import Storage, read_input_uri
from valuebias.resources.validation import ContractValidator
from valuebias.config import RegistryConfig
from valuebias.corpora import read_corpus
from valuebias.prompts import read_prompts
from valuebias.wordlist import english_wordlist, wordlist_description


def build_prompts(config: RegistryConfig) -> pl.DataFrame:
    return read_prompts(read_input_uri(config.prompts_uri, base_dir=config.base_dir), source=config.prompts_uri)


def build_corpus_words(config: RegistryConfig) -> tuple[pl.DataFrame, dict, dict | None]:
    """(table, stats per corpus, word-list description or None) for every configured corpus."""
    wordlist = None
    tables, per_corpus = [], {}
    for corpus in config.corpora.values():
        data = read_input_uri(corpus.uri, base_dir=config.base_dir)
        if corpus.wildcards == "expand" and wordlist is None and b"*" in data:
            wordlist = english_wordlist(config.wordlist_size)
        parsed = read_corpus(
            data, source=corpus.uri, format=corpus.format, word_column=corpus.word_column,
            category_column=corpus.category_column,
            category_columns=list(corpus.category_columns) if corpus.category_columns else None,
            category_rule=corpus.category_rule,
            categories=list(corpus.categories) if corpus.categories else None,
            wildcards=corpus.wildcards, wildcard_words=wordlist,
        )
        tables.append(parsed.table.select(pl.lit(corpus.corpus_id).alias("corpus"), "word", "category"))
        per_corpus[corpus.corpus_id] = {"uri": corpus.uri, **parsed.stats}
    description = wordlist_description(config.wordlist_size) if wordlist is not None else None
    return pl.concat(tables), per_corpus, description


def build_model_registry(config: RegistryConfig) -> pl.DataFrame:
    return pl.DataFrame(
        [{"model": m.model_id, "kind": m.kind, "family": m.family, "source": m.source,
          "fingerprint": m.fingerprint} for m in config.models.values()],
        schema={"model": pl.Utf8, "kind": pl.Utf8, "family": pl.Utf8, "source": pl.Utf8, "fingerprint": pl.Utf8},
    )


def ingest_versions(config: RegistryConfig) -> dict[str, str]:
    """The data versions the ingest assets would have if they ran now (reads the input files)."""
    return {"prompts": content_version(build_prompts(config)),
            "corpus_words": content_version(build_corpus_words(config)[0]),
            "model_registry": content_version(build_model_registry(config))}


PROMPTS = TableSpec("prompts", code_version="1", inputs=READS_INPUT_FILES, contract="prompts")


@dg.asset(group_name="ingest", kinds={"polars", "parquet"}, code_version=PROMPTS.code_version,
          check_specs=[contract_spec("prompts")])
def prompts(registry: Registry, storage: Storage, validator: ContractValidator) -> dg.MaterializeResult:
    """The prompt table (prompt id, text, adjective, superlative, style, framing), docs/METHOD.md#1-prompts."""
    config = registry.load()
    table = build_prompts(config)
    uri, version, check = write_table(storage, validator, "prompts", table)
    framing = table.group_by("framing").len().sort("framing")
    return table_result(table, uri, version, {
        "source": config.prompts_uri,
        "prompts_by_framing": {row["framing"]: row["len"] for row in framing.to_dicts()},
    }, check=check)


CORPUS_WORDS = TableSpec("corpus_words", code_version="1", inputs=READS_INPUT_FILES, contract="corpus_words")


@dg.asset(group_name="ingest", kinds={"polars", "parquet"}, code_version=CORPUS_WORDS.code_version,
          check_specs=[contract_spec("corpus_words")])
def corpus_words(registry: Registry, storage: Storage, validator: ContractValidator) -> dg.MaterializeResult:
    """Every corpus as (corpus, word, category) rows: lowercased, trimmed, duplicates removed,
    ``*`` wildcards expanded against one fixed English word list (docs/METHOD.md#2-corpora)."""
    table, per_corpus, description = build_corpus_words(registry.load())
    uri, version, check = write_table(storage, validator, "corpus_words", table)
    metadata = {f"corpus/{cid}": dg.MetadataValue.json(_jsonable(stats)) for cid, stats in per_corpus.items()}
    metadata["words_per_corpus"] = {cid: int(s.get("words", 0)) for cid, s in per_corpus.items()}
    if description is not None:
        metadata["wildcard_wordlist"] = dg.MetadataValue.json(description)
    return table_result(table, uri, version, metadata, check=check)


MODEL_REGISTRY = TableSpec("model_registry", code_version="1", inputs=READS_INPUT_FILES, contract="model_registry")


@dg.asset(group_name="ingest", kinds={"polars", "parquet"}, code_version=MODEL_REGISTRY.code_version,
          check_specs=[contract_spec("model_registry")])
def model_registry(registry: Registry, storage: Storage, validator: ContractValidator) -> dg.MaterializeResult:
    """The registered models: id, kind, family, source and a fingerprint of the whole entry.
    The partitions of the scoring assets are these model ids."""
    config = registry.load()
    table = build_model_registry(config)
    uri, version, check = write_table(storage, validator, "model_registry", table)
    return table_result(table, uri, version, {"config": str(config.path)}, preview_rows=50, check=check)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
