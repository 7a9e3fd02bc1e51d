"""The Dagster resource that validates tables against their data contracts: a thin wrapper of the contract language,
``valuebias.contracts`` (contracts, Great Expectations, reports), whose names it re-exports."""

from __future__ import annotations

import dagster as dg
import polars as pl

from valuebias.contracts import (DEFAULT_CONTRACTS_DIR, GX_VERSION, ColumnRule, Contract, RuleResult,  # noqa: F401
                                 ValidationReport, contract_digest, load_contract, parse_contract, validate_frame)


class ContractValidator(dg.ConfigurableResource):
    """Validates tables against the data contracts in ``contracts_dir`` with Great Expectations.

    ``validate(df, "corpus_words")`` checks ``df`` against ``<contracts_dir>/corpus_words.yaml`` and
    returns a :class:`ValidationReport` (it does not raise on failure; see
    :meth:`ValidationReport.raise_if_failed`). An unknown or malformed contract is an InputError."""

    contracts_dir: str = DEFAULT_CONTRACTS_DIR

    def contract(self, name: str) -> Contract:
        """The parsed contract ``name``."""
        return load_contract(name, self.contracts_dir)

    def validate(self, df: pl.DataFrame, contract: str) -> ValidationReport:
        return validate_frame(df, self.contract(contract))

    def contract_digest(self, contract: str) -> str:
        """SHA-256 of the contract file and the Great Expectations release that checks it (``valuebias.contracts.
        contract_digest``)."""
        return contract_digest(contract, self.contracts_dir)
