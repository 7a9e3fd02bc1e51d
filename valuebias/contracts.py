"""The data-contract language: tables checked against their contracts (``data_contracts/<table>.yaml``) with Great
Expectations 1.x, without Dagster (``valuebias.resources.validation.ContractValidator`` is the resource on top).

A contract is data (format documented in ``data_contracts/README.md``)::

    name: corpus_words
    columns:
      word: {type: string, not_null: true, regex: '^[^A-Z\\s](.*[^A-Z\\s])?$'}
    unique: [corpus, word, category]
    min_rows: 1

:func:`load_contract` parses a contract file (every mistake an ``InputError`` naming the file and key);
:func:`validate_frame` turns a contract into a GX ``ExpectationSuite``, runs it on the table (polars is
converted to pandas at the boundary: GX has no polars backend) in an ephemeral GX context and returns a :class:`ValidationReport`: one :class:`RuleResult` per rule with the 0-based row
indices and values at fault, a one-line-per-failure :meth:`~ValidationReport.summary` and JSON-friendly
:meth:`~ValidationReport.to_metadata` for Dagster.

``great_expectations`` is imported on first use only (the import costs about 6 s).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
import re
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from valuebias.errors import InputError

#: The Great Expectations release installed (read without importing it: the import takes seconds).
GX_VERSION = importlib.metadata.version("great-expectations")

DEFAULT_CONTRACTS_DIR = str(Path(__file__).resolve().parent.parent / "data_contracts")

#: How many offending rows / values a rule keeps (GX ``partial_unexpected_count``).
MAX_EXAMPLES = 20

# Contract type -> pandas dtype names GX accepts for a column of that type. String columns reach GX as
# ``object`` columns of ``str`` / None (see _to_pandas), so GX checks the type of every value.
_TYPE_LISTS: dict[str, list[str]] = {
    "string": ["str"],
    "float": ["float16", "float32", "float64", "Float32Dtype", "Float64Dtype"],
    "integer": ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                "Int8Dtype", "Int16Dtype", "Int32Dtype", "Int64Dtype",
                "UInt8Dtype", "UInt16Dtype", "UInt32Dtype", "UInt64Dtype"],
    "boolean": ["bool", "BooleanDtype"],
}
_COLUMN_KEYS = {"type", "not_null", "unique", "regex", "in_set", "min", "max", "description"}
_CONTRACT_KEYS = {"name", "description", "columns", "unique", "min_rows", "max_rows"}


# ------------------------------------------------------------------------------------------ contracts
@dataclass(frozen=True)
class ColumnRule:
    """The rules of one column of a contract."""

    name: str
    type: str | None = None
    not_null: bool = False
    unique: bool = False
    regex: str | None = None
    in_set: tuple | None = None
    min: float | None = None
    max: float | None = None
    description: str | None = None


@dataclass(frozen=True)
class Contract:
    """A parsed data contract: columns in file order, a compound key, and row-count bounds."""

    name: str
    columns: tuple[ColumnRule, ...]
    unique: tuple[str, ...] = ()
    min_rows: int | None = None
    max_rows: int | None = None
    description: str | None = None
    source: str = ""

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_contract(data: Any, source: str) -> Contract:
    """Checks a contract read from YAML; every mistake is an InputError naming ``source`` and the field."""
    if not isinstance(data, dict):
        raise InputError("a contract must be a mapping with 'name' and 'columns'", source=source)
    unknown = set(data) - _CONTRACT_KEYS
    if unknown:
        raise InputError(f"unknown contract key(s) {sorted(unknown)}; allowed: {sorted(_CONTRACT_KEYS)}",
                         source=source, field=sorted(unknown)[0])
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise InputError("'name' must be a non-empty string", source=source, field="name")
    raw_columns = data.get("columns")
    if not isinstance(raw_columns, dict) or not raw_columns:
        raise InputError("'columns' must map each column name to its rules", source=source, field="columns")
    columns = []
    for col, rules in raw_columns.items():
        where = f"columns.{col}"
        rules = {} if rules is None else rules
        if not isinstance(col, str) or not col:
            raise InputError("column names must be non-empty strings", source=source, field=where)
        if not isinstance(rules, dict):
            raise InputError("column rules must be a mapping", source=source, field=where)
        unknown = set(rules) - _COLUMN_KEYS
        if unknown:
            raise InputError(f"unknown column rule(s) {sorted(unknown)}; allowed: {sorted(_COLUMN_KEYS)}",
                             source=source, field=f"{where}.{sorted(unknown)[0]}")
        type_ = rules.get("type")
        if type_ is not None and type_ not in _TYPE_LISTS:
            raise InputError(f"unknown type {type_!r}; allowed: {', '.join(_TYPE_LISTS)}",
                             source=source, field=f"{where}.type")
        for flag in ("not_null", "unique"):
            if not isinstance(rules.get(flag, False), bool):
                raise InputError(f"'{flag}' must be true or false", source=source, field=f"{where}.{flag}")
        regex = rules.get("regex")
        if regex is not None:
            if not isinstance(regex, str):
                raise InputError("'regex' must be a string", source=source, field=f"{where}.regex")
            try:
                re.compile(regex)
            except re.error as exc:
                raise InputError(f"invalid regex {regex!r}: {exc}", source=source,
                                 field=f"{where}.regex") from None
        in_set = rules.get("in_set")
        if in_set is not None and (not isinstance(in_set, list) or not in_set):
            raise InputError("'in_set' must be a non-empty list", source=source, field=f"{where}.in_set")
        for bound in ("min", "max"):
            if rules.get(bound) is not None and not _is_number(rules[bound]):
                raise InputError(f"'{bound}' must be a number", source=source, field=f"{where}.{bound}")
        if (rules.get("min") is not None and rules.get("max") is not None
                and rules["min"] > rules["max"]):
            raise InputError("'min' is greater than 'max'", source=source, field=f"{where}.min")
        columns.append(ColumnRule(
            name=col, type=type_, not_null=rules.get("not_null", False), unique=rules.get("unique", False),
            regex=regex, in_set=tuple(in_set) if in_set is not None else None,
            min=rules.get("min"), max=rules.get("max"), description=rules.get("description")))
    unique = data.get("unique") or []
    if not isinstance(unique, list) or not all(isinstance(c, str) for c in unique):
        raise InputError("'unique' must be a list of column names (one compound key)", source=source,
                         field="unique")
    names = {c.name for c in columns}
    missing = [c for c in unique if c not in names]
    if missing:
        raise InputError(f"'unique' names column(s) {missing} that the contract does not list",
                         source=source, field="unique")
    for bound in ("min_rows", "max_rows"):
        value = data.get(bound)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise InputError(f"'{bound}' must be a non-negative integer", source=source, field=bound)
    if data.get("min_rows") is not None and data.get("max_rows") is not None \
            and data["min_rows"] > data["max_rows"]:
        raise InputError("'min_rows' is greater than 'max_rows'", source=source, field="min_rows")
    return Contract(name=name, columns=tuple(columns), unique=tuple(unique), min_rows=data.get("min_rows"),
                    max_rows=data.get("max_rows"), description=data.get("description"), source=source)


_CONTRACT_CACHE: dict[str, tuple[tuple[int, int], Contract]] = {}


def load_contract(contract: str, contracts_dir: str | Path | None = None) -> Contract:
    """Loads ``<contracts_dir>/<contract>.yaml`` (or a path to a ``.yaml`` file), cached until it changes."""
    path = contract_path(contract, contracts_dir)
    source = str(path)
    try:
        stat = path.stat()
    except OSError:
        known = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        raise InputError(f"no data contract named '{path.stem}' (known: {', '.join(known) or 'none'})",
                         source=source) from None
    stamp = (stat.st_mtime_ns, stat.st_size)
    cached = _CONTRACT_CACHE.get(source)
    if cached and cached[0] == stamp:
        return cached[1]
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML: {exc}", source=source) from None
    parsed = parse_contract(data, source)
    if parsed.name != path.stem:
        raise InputError(f"contract name '{parsed.name}' differs from its file name '{path.stem}'",
                         source=source, field="name")
    _CONTRACT_CACHE[source] = (stamp, parsed)
    return parsed


# ------------------------------------------------------------------------------------------ reports
def _jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars to Python, NaN/NA to None, tuples to lists."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (int, float)):
        try:
            value = value.item()
        except (ValueError, TypeError):
            return str(value)
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, int):
        return value
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


@dataclass
class RuleResult:
    """The outcome of one contract rule.

    ``column``: the column (``a, b`` for a compound key; None for table rules). ``unexpected_rows`` and
    ``unexpected_values``: the first 20 offending 0-based row indices and their values. ``observed``:
    what a table- or dtype-level rule saw (row count, dtype). ``error``: set when the rule could not be
    evaluated (e.g. ``min`` on a text column). ``detail``: a readable note (e.g. which columns exist)."""

    rule: str
    column: str | None
    success: bool
    unexpected_count: int = 0
    unexpected_rows: list[int] = field(default_factory=list)
    unexpected_values: list[Any] = field(default_factory=list)
    observed: Any = None
    error: str | None = None
    detail: str | None = None

    def describe_failure(self) -> str:
        if self.error:
            return f"could not be checked: {self.error}"
        if self.unexpected_count:
            noun = "row" if self.unexpected_count == 1 else "rows"
            examples = ", ".join(f"row {r} ({v!r})" for r, v in
                                 list(zip(self.unexpected_rows, self.unexpected_values))[:3])
            return f"failed on {self.unexpected_count} {noun}" + (f", e.g. {examples}" if examples else "")
        if self.detail:
            return f"failed ({self.detail})"
        if self.observed is not None:
            return f"failed (observed {self.observed})"
        return "failed"


@dataclass
class ValidationReport:
    """All rule results of one table against one contract."""

    contract: str
    success: bool
    rules: list[RuleResult]
    row_count: int = 0

    @property
    def failed(self) -> list[RuleResult]:
        return [r for r in self.rules if not r.success]

    def summary(self) -> str:
        """One line per failed rule, e.g. ``contract corpus_words: rule 'word matches regex ...' failed on
        3 rows, e.g. row 5 ('Hello')``; a single 'passed' line when nothing failed."""
        if self.success:
            return f"contract {self.contract}: all {len(self.rules)} rules passed on {self.row_count} rows"
        return "\n".join(f"contract {self.contract}: rule '{r.rule}' {r.describe_failure()}"
                         for r in self.failed)

    def to_metadata(self) -> dict[str, Any]:
        """JSON-friendly metadata for Dagster: counts, the failed rules with examples, and the summary."""
        return {
            "contract": self.contract,
            "success": self.success,
            "row_count": self.row_count,
            "rules_checked": len(self.rules),
            "rules_failed": len(self.failed),
            "failed_rules": [
                {"rule": r.rule, "column": r.column, "unexpected_count": r.unexpected_count,
                 "unexpected_rows": list(r.unexpected_rows), "unexpected_values": _jsonable(r.unexpected_values),
                 "observed": _jsonable(r.observed), "error": r.error, "detail": r.detail}
                for r in self.failed
            ],
            "summary": self.summary(),
        }

    def raise_if_failed(self, source: str | None = None) -> None:
        """Raises an InputError naming the first failed rule's row and column (for input tables)."""
        if self.success:
            return
        first = self.failed[0]
        raise InputError(f"breaks data contract '{self.contract}':\n{self.summary()}", source=source,
                         row=first.unexpected_rows[0] if first.unexpected_rows else None, field=first.column)


# ------------------------------------------------------------------------------------------ GX boundary
def _to_pandas(df: Any):
    """A pandas frame with a 0-based RangeIndex that GX can check: text as ``object`` columns of str/None
    (pandas 3's ``str`` dtype is not matched by GX's type expectations), integers with nulls as nullable
    ``Int64``, floats as float64 (null -> NaN)."""
    import pandas as pd

    if isinstance(df, pd.DataFrame):
        df = pl.from_pandas(df.reset_index(drop=True))
    if not isinstance(df, pl.DataFrame):
        raise TypeError(f"validate needs a polars or pandas DataFrame, got {type(df).__name__}")
    columns: dict[str, Any] = {}
    for name, series in zip(df.columns, df.get_columns()):
        dtype = series.dtype
        has_nulls = series.null_count() > 0
        if dtype in (pl.String, pl.Categorical) or isinstance(dtype, (pl.Enum, pl.Categorical)):
            columns[name] = pd.Series(series.cast(pl.String).to_list(), dtype=object)
        elif dtype.is_integer():
            if has_nulls:
                columns[name] = pd.array(series.to_list(), dtype=str(dtype))  # "Int64", "UInt8", ...
            else:
                columns[name] = series.to_numpy()
        elif dtype.is_float():
            columns[name] = series.cast(pl.Float64).to_numpy()
        elif dtype == pl.Boolean:
            columns[name] = pd.array(series.to_list(), dtype="boolean") if has_nulls else series.to_numpy()
        elif dtype == pl.Null:
            columns[name] = pd.Series([None] * len(series), dtype=object)
        else:
            columns[name] = pd.Series(series.to_list(), dtype=object)
    return pd.DataFrame(columns, index=pd.RangeIndex(df.height)) if columns else \
        pd.DataFrame(index=pd.RangeIndex(df.height))


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, str) and value == "" else str(value)


def _bounds_rule(column: str, low: Any, high: Any) -> str:
    if low is not None and high is not None:
        return f"{column} between {_fmt(low)} and {_fmt(high)}"
    return f"{column} >= {_fmt(low)}" if low is not None else f"{column} <= {_fmt(high)}"


def _expectations(gx, contract: Contract, present: set[str]) -> list:
    """The GX expectations of ``contract`` for a frame with columns ``present``; each carries its readable
    rule name and column in ``meta``. Column rules of a missing column are left out (its existence
    rule fails instead)."""
    E = gx.expectations
    out = []

    def add(expectation_cls, rule: str, where: str | None, **kwargs):
        out.append(expectation_cls(**kwargs, meta={"rule": rule, "column": where, "order": len(out)}))

    for col in contract.columns:
        c = col.name
        add(E.ExpectColumnToExist, f"column {c} exists", c, column=c)
        if c not in present:
            continue
        if col.type:
            add(E.ExpectColumnValuesToBeInTypeList, f"{c} is of type {col.type}", c, column=c,
                type_list=_TYPE_LISTS[col.type])
        if col.not_null:
            add(E.ExpectColumnValuesToNotBeNull, f"{c} is not null", c, column=c)
        if col.unique:
            add(E.ExpectColumnValuesToBeUnique, f"{c} is unique", c, column=c)
        if col.regex is not None:
            add(E.ExpectColumnValuesToMatchRegex, f"{c} matches regex {col.regex}", c, column=c, regex=col.regex)
        if col.in_set is not None:
            add(E.ExpectColumnValuesToBeInSet, f"{c} is in set [{', '.join(map(str, col.in_set))}]", c,
                column=c, value_set=list(col.in_set))
        if col.min is not None or col.max is not None:
            add(E.ExpectColumnValuesToBeBetween, _bounds_rule(c, col.min, col.max), c, column=c,
                min_value=col.min, max_value=col.max)
    key = list(contract.unique)
    already_unique = len(key) == 1 and any(c.name == key[0] and c.unique for c in contract.columns)
    if key and all(c in present for c in key) and not already_unique:
        if len(key) == 1:
            add(E.ExpectColumnValuesToBeUnique, f"{key[0]} is unique", key[0], column=key[0])
        else:
            add(E.ExpectCompoundColumnsToBeUnique, f"({', '.join(key)}) is unique", ", ".join(key),
                column_list=key)
    if contract.min_rows is not None or contract.max_rows is not None:
        low, high = contract.min_rows, contract.max_rows
        add(E.ExpectTableRowCountToBeBetween, _bounds_rule("row count", low, high), None,
            min_value=low, max_value=high)
    return out


def _exception_message(info: Any) -> str | None:
    """The message of an exception GX caught while evaluating a rule (None if there was none)."""
    if not isinstance(info, dict):
        return None
    if "raised_exception" in info:
        return (info.get("exception_message") or "error") if info.get("raised_exception") else None
    for nested in info.values():
        message = _exception_message(nested)
        if message:
            return message
    return None


_GX_LOCK = threading.RLock()
_GX_STATE: dict[str, Any] = {}


def _gx_batch_definition():
    """(gx module, batch definition of a whole-dataframe pandas asset) in one ephemeral context, made once
    per process."""
    if "batch_definition" not in _GX_STATE:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        asset = context.data_sources.add_pandas("valuebias").add_dataframe_asset("table")
        _GX_STATE.update(gx=gx, context=context,
                         batch_definition=asset.add_batch_definition_whole_dataframe("whole_table"))
    return _GX_STATE["gx"], _GX_STATE["batch_definition"]


def validate_frame(df: Any, contract: Contract) -> ValidationReport:
    """Validates ``df`` (polars or pandas) against a parsed contract with Great Expectations."""
    pdf = _to_pandas(df)
    with _GX_LOCK:
        gx, batch_definition = _gx_batch_definition()
        suite = gx.ExpectationSuite(name=f"contract_{contract.name}")
        expectations = _expectations(gx, contract, set(pdf.columns))
        for expectation in expectations:
            suite.add_expectation(expectation)
        batch = batch_definition.get_batch(batch_parameters={"dataframe": pdf})
        with warnings.catch_warnings():
            # pandas warns when a regex has groups (GX calls str.contains); contract regexes may have them
            warnings.filterwarnings("ignore", message="This pattern is interpreted as a regular expression",
                                    category=UserWarning)
            result = batch.validate(suite, result_format={"result_format": "SUMMARY",
                                                          "partial_unexpected_count": MAX_EXAMPLES,
                                                          "return_unexpected_index_query": False})
    rules = []
    positions = []
    for r in result.results:
        meta = r.expectation_config.meta or {}
        details = dict(r.result or {})
        error = _exception_message(r.exception_info)
        observed = details.get("observed_value")
        kind = r.expectation_config.type
        detail = None
        if kind == "expect_column_to_exist" and not r.success:
            detail = f"column missing; the table has: {', '.join(map(str, pdf.columns)) or 'no columns'}"
        elif kind == "expect_column_values_to_be_in_type_list" and observed is not None:
            detail = f"column dtype is {observed}"
        rows = [int(i) if not isinstance(i, dict) else _jsonable(i)
                for i in details.get("partial_unexpected_index_list") or []][:MAX_EXAMPLES]
        values = list(details.get("partial_unexpected_list") or [])[:MAX_EXAMPLES]
        rules.append(RuleResult(
            rule=meta.get("rule", r.expectation_config.type), column=meta.get("column"),
            success=bool(r.success) and error is None, unexpected_count=int(details.get("unexpected_count") or 0),
            unexpected_rows=rows, unexpected_values=[_jsonable(v) for v in values],
            observed=_jsonable(observed), error=error, detail=detail))
        positions.append(meta.get("order", len(expectations)))
    rules = [rule for _, rule in sorted(zip(positions, rules), key=lambda pair: pair[0])]
    return ValidationReport(contract=contract.name, success=all(r.success for r in rules), rules=rules,
                            row_count=len(pdf))


def contract_path(contract: str, contracts_dir: str | Path | None = None) -> Path:
    """The file of contract ``contract``: ``<contracts_dir>/<contract>.yaml``, or ``contract`` itself when it is a path
    to a ``.yaml`` file."""
    if contract.endswith((".yaml", ".yml")):
        return Path(contract)
    return Path(contracts_dir or DEFAULT_CONTRACTS_DIR) / f"{contract}.yaml"


def contract_digest(contract: str, contracts_dir: str | Path | None = None) -> str:
    """SHA-256 of the contract file and the Great Expectations release that checks it: a table validated
    under the same digest with the same content needs no second validation."""
    load_contract(contract, contracts_dir)  # an unknown or malformed contract fails here, as in validation
    data = contract_path(contract, contracts_dir).read_bytes()
    return hashlib.sha256(data + f"\0great-expectations=={GX_VERSION}".encode()).hexdigest()[:16]
