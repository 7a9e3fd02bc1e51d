"""Checks on the tables the science functions take: each failure is an InputError naming the table
(``source``), the row and the column at fault."""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl

from valuebias.errors import InputError


def require_columns(df: pl.DataFrame, columns: Iterable[str], source: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"missing column(s) {missing}; columns are {df.columns}", source=source,
                         field=missing[0])


def require_no_nulls(df: pl.DataFrame, columns: Iterable[str], source: str) -> None:
    """No null (and, in float columns, no NaN) in ``columns``; the first one found is named by its row
    (1-based)."""
    for column in columns:
        bad = df[column].is_null()
        if df[column].dtype.is_float():
            bad = bad | df[column].is_nan()
        if bad.any():
            raise InputError("missing value", source=source, row=int(bad.arg_true()[0]) + 1, field=column)
