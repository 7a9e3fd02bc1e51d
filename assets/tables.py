"""Where each table lives in storage, and the one way tables are written (with a content version)."""


import json

import dagster as dg
import polars as pl

from valuebias.resources.storage import Storage
from valuebias.table_version import content_version, large_table_version  # noqa: F401 (re-exported)

def table_key(name: str) -> str:
    """Storage key of the unpartitioned table ``name`` (``tables/<name>.parquet``; ``TABLE_KEYS``: every one the
    product writes, from the tables' declarations, ``valuebias.assets.catalog``)."""
    from valuebias.assets import catalog

    spec = catalog.table_specs().get(name)
    if spec is None or spec.stored != catalog.TABLE:
        raise KeyError(f"{name} is not a declared unpartitioned table (valuebias.assets.catalog.TableSpec)")
    return spec.key


def __getattr__(name: str):
    """``TABLE_KEYS`` ({table: storage key}), ``REPORT_KEYS`` ({report: storage key}) and ``PARTITION_OUTPUTS``
    ({partitioned asset: the keys of one partition's outputs}), derived from the tables' declarations."""
    from valuebias.assets import catalog

    if name == "TABLE_KEYS":
        return {table: spec.key for table, spec in catalog.stored(catalog.TABLE).items()}
    if name == "REPORT_KEYS":
        return {report: spec.key for report, spec in catalog.stored(catalog.REPORT).items()}
    if name == "PARTITION_OUTPUTS":
        return {asset: spec.partition_outputs for asset, spec in catalog.stored(catalog.PARTITIONED).items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def rm_value_cards_key(model_id: str) -> str:
    """Storage key of one reward model's value card table (a partition of ``rm_value_cards``)."""
    return f"rm_value_cards/{model_id}.parquet"


def card_key(model_id: str, suffix: str) -> str:
    """Storage key of one reward model's rendered value card: ``cards/<model>.md`` or ``.png``."""
    return f"cards/{model_id}.{suffix}"


def mwlr_key(pair: str) -> str:
    """Storage key of one pair's partition of ``mwlr_pair``."""
    return f"mwlr/{pair}.parquet"


def contract_spec(table: str) -> dg.AssetCheckSpec:
    """The blocking data-contract check of a table asset: ``data_contracts/<table>.yaml``, validated with
    Great Expectations by the asset itself before the table is stored (``write_table``)."""
    return dg.AssetCheckSpec(f"{table}_contract", asset=table, blocking=True,
                             description=f"The table meets data_contracts/{table}.yaml (Great Expectations); "
                                         "checked before it replaces the stored one.")


def fitted_spec(table: str, what: str) -> dg.AssetCheckSpec:
    """The warn-level check that every statistical test of a table could be run (``<table>_fitted``)."""
    return dg.AssetCheckSpec(f"{table}_fitted", asset=table, blocking=False,
                             description=f"Every {what} could be fitted; a design that cannot be (too few models, "
                                         "a missing cell, a singular fit) fails this check, naming the test and why.")


def statistics_checks(table: str, what: str) -> list[dg.AssetCheckSpec]:
    """The checks of a statistics table: its blocking contract and its warn-level ``<table>_fitted``."""
    return [contract_spec(table), fitted_spec(table, what)]


def fitted_result(table: str, not_fitted: dict[str, str]) -> dg.AssetCheckResult:
    """``<table>_fitted``: passes when ``not_fitted`` ({test: why}) is empty, else fails at WARN naming each."""
    return dg.AssetCheckResult(
        check_name=f"{table}_fitted", passed=not not_fitted, severity=dg.AssetCheckSeverity.WARN,
        description=("every test was fitted" if not not_fitted else
                     "not fitted: " + "; ".join(f"{test}: {why}" for test, why in not_fitted.items())),
        metadata={"not_fitted": dg.MetadataValue.json(not_fitted)})


def write_table(storage: Storage, validator, table: str, df: pl.DataFrame,
                key: str | None = None) -> tuple[str, str, dg.AssetCheckResult]:
    """Validate, then publish: ``df`` is checked against its contract first; a table that breaks it fails
    the step, naming the rule and the rows, and the stored table stays as it was. A valid one is written
    atomically to its key (``table_key(table)``, or ``key`` for a partition's table). Returns (uri, content
    version, the passed check's result)."""
    version = content_version(df)
    # A table with the same content, checked against the same contract by the same Great Expectations, passed
    # before: its recorded result stands (a run with nothing new does not start Great Expectations).
    passed_key = f"validated/{table}/{validator.contract_digest(table)}-{version}.json"
    if storage.exists(passed_key):
        metadata = json.loads(storage.read_bytes(passed_key)) | {"validated": "earlier, on this same content"}
    else:
        report = validator.validate(df, table)
        if not report.success:
            raise dg.Failure(f"check {table}_contract failed: the new {table} table breaks its data contract and "
                             f"was not stored (the stored one is kept): {report.summary()}",
                             metadata=report.to_metadata())
        metadata = report.to_metadata()
        storage.write_bytes(passed_key, json.dumps(metadata).encode())
    uri = storage.write_parquet(key or table_key(table), df)
    return uri, version, dg.AssetCheckResult(check_name=f"{table}_contract", passed=True, metadata=metadata)


def table_result(df: pl.DataFrame, uri: str, version: str, metadata: dict | None = None,
                 preview_rows: int = 10, check: dg.AssetCheckResult | None = None,
                 more_checks: tuple[dg.AssetCheckResult, ...] = ()) -> dg.MaterializeResult:
    """The MaterializeResult every table asset returns: location, size, preview, data version, and the
    results of its checks (the contract ``check``, then ``more_checks`` such as ``fitted_result``)."""
    from valuebias.report import markdown_table

    meta = {
        "uri": dg.MetadataValue.path(uri),
        "dagster/row_count": len(df),
        "columns": ", ".join(df.columns),
        "preview": dg.MetadataValue.md(markdown_table(df.head(preview_rows))),
    }
    meta.update(metadata or {})
    return dg.MaterializeResult(metadata=meta, data_version=dg.DataVersion(version),
                                check_results=[c for c in (check, *more_checks) if c is not None] or None)


def stored_table_result(uri: str, version: str, rows: int, metadata: dict) -> dg.MaterializeResult:
    """The MaterializeResult of a table the worker wrote that is too large to read back here (a whole
    vocabulary per prompt): location, row count and data version as the worker reported them."""
    return dg.MaterializeResult(metadata={"uri": dg.MetadataValue.path(uri), "dagster/row_count": rows, **metadata},
                                data_version=dg.DataVersion(version))


def staging_key(run_id: str, key: str) -> str:
    """Where a run's worker writes a table before it is validated and promoted to ``key``."""
    return f"staging/{run_id}/{key}"


def promote_validated(storage: Storage, validator, staged: str, final: str, contract: str,
                      what: str) -> pl.DataFrame:
    """Validates the staged table against ``data_contracts/<contract>.yaml`` and moves it to ``final``
    (atomically: readers of ``final`` see the old table or the new one). A table that breaks its contract
    is deleted and fails the step, naming the rule and rows at fault. Returns the table."""
    table = storage.read_parquet(staged)
    report = validator.validate(table, contract)
    if not report.success:
        storage.delete(staged)
        raise dg.Failure(f"{what} break their data contract: {report.summary()}", metadata=report.to_metadata())
    storage.move(staged, final)
    return table


def report_result(storage: Storage, key: str, text: str, plots: dict[str, bytes],
                  metadata: dict) -> dg.MaterializeResult:
    """A markdown report: stored at ``key`` with its plots beside it (``reports/<name>``, linked by name as
    ``![...](<name>)``), and shown in the Dagster UI with every plot embedded in the markdown itself (a data
    URI), so the UI shows the figures, not paths. The data version covers the text and the plots' bytes."""
    import hashlib

    from valuebias.report import embed_plots

    uri = storage.write_bytes(key, text.encode())
    shown = embed_plots(text, plots)
    digest = hashlib.sha256(text.encode())
    for name in sorted(plots):
        digest.update(hashlib.sha256(plots[name]).digest())
    return dg.MaterializeResult(
        metadata={"report": dg.MetadataValue.md(shown), "uri": dg.MetadataValue.path(uri),
                  **{f"plot/{name}": dg.MetadataValue.path(storage.full_uri(f"reports/{name}")) for name in plots},
                  **metadata},
        data_version=dg.DataVersion(digest.hexdigest()[:16]))


def output_keys(asset: str, partition: str | None) -> list[str]:
    """Where an asset (partition) stores what it computed, the table whose content version is its data
    version first (its declaration's ``outputs``)."""
    from valuebias.assets import catalog

    spec = catalog.table_specs().get(asset)
    return spec.outputs(partition) if spec is not None else []


#: Tables too large to render as text for their version (a vocabulary per prompt).
LARGE_TABLES = ("lm_next_token_logprobs", "mwlr_pair")


def stored_output_problem(storage: Storage, asset: str, partition: str | None, metadata: dict,
                          data_version: str | None, *, verify: bool = False, digests=None,
                          mode: str = "cached") -> str | None:
    """What is wrong with the stored output of a recorded materialization, or None. Cheap: every output is
    present, and the main table's parquet footer is readable with the recorded row count (a deleted or
    truncated file). Then its content version must equal the recorded data version (a file altered in
    place), found as the weights' digests are (``digests``, a ``valuebias.model_content.DigestCache``): on
    local storage the version computed when the file had its present (size, mtime, inode) is trusted, and a
    file whose stat changed is read and hashed again (``mode`` ``stat``: never read, only what is known);
    with ``verify`` (or on an object store with ``verify``) every table is read and hashed."""
    keys = output_keys(asset, partition)
    for key in keys:
        if not storage.exists(key):
            return f"stored output missing: {storage.full_uri(key)}"
    if not keys or not keys[0].endswith(".parquet"):
        return None
    main = keys[0]
    rows = storage.parquet_rows(main)
    if rows is None:
        return f"stored output unreadable (truncated or overwritten?): {storage.full_uri(main)}"
    recorded = metadata.get("dagster/row_count")
    if recorded is not None and rows != int(recorded):
        return f"stored output has {rows} rows, {recorded} were recorded: {storage.full_uri(main)}"
    if data_version is None:
        return None
    version_of = large_table_version if asset in LARGE_TABLES else content_version
    local = storage.local_path(main)
    try:
        if local is not None and digests is not None:
            if mode == "stat":
                current = digests.lookup(local)  # None: changed since last hashed; a later run or status hashes it
            else:
                current = digests.digest(local, verify=verify, hasher=lambda path: version_of(pl.read_parquet(path)))
        elif verify:
            current = version_of(storage.read_parquet(main))
        else:
            current = None
    except (OSError, pl.exceptions.PolarsError) as exc:
        return f"stored output unreadable ({type(exc).__name__}): {storage.full_uri(main)}"
    if current is not None and current != data_version:
        return f"stored output altered since it was recorded: {storage.full_uri(main)}"
    return None
