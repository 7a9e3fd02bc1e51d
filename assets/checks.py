"""Blocking data-contract checks: each stored table is validated with Great Expectations against its
contract in ``data_contracts/``. A failing check stops everything downstream in the same run (a bad word
list stops scoring) and its metadata names the rule, the rows and the values at fault."""


import dagster as dg

from assets.tables import TABLE_KEYS
from resources.storage import Storage
from resources.validation import ContractValidator


def contract_check(table: str) -> dg.AssetChecksDefinition:
    """A blocking check that validates the stored table ``table`` against ``data_contracts/<table>.yaml``."""

    @dg.asset_check(asset=table, name=f"{table}_contract", blocking=True,
                    description=f"The stored table meets data_contracts/{table}.yaml (Great Expectations).")
    def _check(storage: Storage, validator: ContractValidator) -> dg.AssetCheckResult:
        report = validator.validate(storage.read_parquet(TABLE_KEYS[table]), table)
        return dg.AssetCheckResult(passed=report.success, metadata=report.to_metadata(),
                                   description=None if report.success else report.summary())

    return _check


contract_checks = [contract_check(name) for name in TABLE_KEYS]
