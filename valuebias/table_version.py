"""Content versions of tables: equal tables give equal versions (Dagster ``DataVersion``s are these).

Plain polars and hashlib, so that the scoring worker computes the version of what it wrote without
importing Dagster."""

import hashlib

import polars as pl


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
