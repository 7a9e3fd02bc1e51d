"""Where each table lives in storage, and the one way tables are written (with a content version)."""


import hashlib

import dagster as dg
import polars as pl

from resources.storage import Storage

#: Storage key of every unpartitioned table the product writes (``valuebias table NAME`` reads these).
TABLE_KEYS = {
    "prompts": "tables/prompts.parquet",
    "corpus_words": "tables/corpus_words.parquet",
    "model_registry": "tables/model_registry.parquet",
    "rm_rank_cells": "tables/rm_rank_cells.parquet",
    "rm_mixed_model": "tables/rm_mixed_model.parquet",
    "rm_family_tests": "tables/rm_family_tests.parquet",
    "lm_rank_cells": "tables/lm_rank_cells.parquet",
    "lm_anova": "tables/lm_anova.parquet",
    "lm_posthoc": "tables/lm_posthoc.parquet",
    "mwlr_tokens": "tables/mwlr_tokens.parquet",
    "mwlr_words": "tables/mwlr_words.parquet",
}


def rm_vocabulary_sweep_key(model_id: str) -> str:
    """Storage key of one model's full-vocabulary sweep (every token's score per sweep prompt)."""
    return f"rm_vocabulary_sweep/{model_id}.parquet"


def rm_sweep_tokens_key(model_id: str) -> str:
    """Storage key of one model's top and bottom sweep tokens per prompt."""
    return f"rm_sweep_tokens/{model_id}.parquet"


def rm_word_scores_key(model_id: str) -> str:
    """Storage key of one model's partition of ``rm_word_scores``."""
    return f"rm_word_scores/{model_id}.parquet"


def lm_next_token_key(model_id: str) -> str:
    """Storage key of one language model's partition of ``lm_next_token_logprobs``."""
    return f"lm_next_token_logprobs/{model_id}.parquet"


def lm_word_logprobs_key(model_id: str) -> str:
    """Storage key of one language model's partition of ``lm_word_logprobs``."""
    return f"lm_word_logprobs/{model_id}.parquet"


def mwlr_key(pair: str) -> str:
    """Storage key of one pair's partition of ``mwlr_pair``."""
    return f"mwlr/{pair}.parquet"


def content_version(df: pl.DataFrame) -> str:
    """A content hash of a table: equal tables (same rows in the same order) give equal versions."""
    digest = hashlib.sha256()
    digest.update(",".join(f"{n}:{t}" for n, t in df.schema.items()).encode())
    digest.update(df.write_csv().encode())
    return digest.hexdigest()[:16]


def large_table_version(df: pl.DataFrame) -> str:
    """A content hash of a large table (a vocabulary per prompt) without rendering it as text: numeric
    columns by their bytes, text columns by polars' fixed-seed value hashes (stable for one polars
    version; an upgrade may change it once, which only makes the dependants recompute)."""
    digest = hashlib.sha256()
    digest.update(",".join(f"{n}:{t}" for n, t in df.schema.items()).encode())
    digest.update(str(len(df)).encode())
    for name, dtype in df.schema.items():
        column = df[name]
        digest.update(column.is_null().to_numpy().tobytes())
        if dtype.is_numeric():
            digest.update(column.fill_null(0).to_numpy().tobytes())
        else:
            digest.update(column.cast(pl.Utf8).hash(seed=0).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def write_table(storage: Storage, key: str, df: pl.DataFrame) -> tuple[str, str]:
    """Writes ``df`` atomically to ``key``; returns (uri, content version)."""
    uri = storage.write_parquet(key, df)
    return uri, content_version(df)


def table_result(df: pl.DataFrame, uri: str, version: str, metadata: dict | None = None,
                 preview_rows: int = 10) -> dg.MaterializeResult:
    """The MaterializeResult every table asset returns: location, size, preview and data version."""
    from valuebias.report import markdown_table

    meta = {
        "uri": dg.MetadataValue.path(uri),
        "dagster/row_count": len(df),
        "columns": ", ".join(df.columns),
        "preview": dg.MetadataValue.md(markdown_table(df.head(preview_rows))),
    }
    meta.update(metadata or {})
    return dg.MaterializeResult(metadata=meta, data_version=dg.DataVersion(version))
