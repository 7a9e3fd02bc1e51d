"""One declaration per table: each asset module declares, beside its asset, a :class:`TableSpec` (name, code version,
inputs, data contract, where it is stored, whether ``valuebias table`` prints it); everything else is derived here.

    RM_RANK_CELLS = TableSpec("rm_rank_cells", code_version="2", contract="rm_rank_cells",
                              inputs=(Table("prompts"), Table("corpus_words"), ...))

    @dg.asset(deps=RM_RANK_CELLS.deps(), code_version=RM_RANK_CELLS.code_version, ...)
    def rm_rank_cells(...): ...

The asset modules are every module of the ``valuebias.assets`` package (:func:`asset_modules`: found, not listed),
so a new module with a declared table and its asset is part of the product. Derived from the declarations:
``CODE_VERSIONS`` and ``INPUTS`` (``valuebias.assets.versions``), ``TABLE_KEYS``, ``REPORT_KEYS`` and
``PARTITION_OUTPUTS`` (``valuebias.assets.tables``), the names ``valuebias table`` prints (:func:`listed_tables`), and
the Definitions' assets (:func:`asset_modules`). :func:`declaration_problems` names what a declaration lacks (a
contract file, a code version, its inputs, an asset without a declaration); a test runs it on the product.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

import dagster as dg

#: How a declared asset stores what it computes.
TABLE, REPORT, PARTITIONED, ELSEWHERE = "table", "report", "partitioned", "elsewhere"


@dataclass(frozen=True)
class Unversioned:
    """Declared inputs of an asset that records no input versions, and why (``ingest``: it re-reads its files on
    every run; ``registry_release``: on demand only, never planned)."""

    why: str


#: The ingest assets: they read the files the config names, again on every run (no recorded inputs).
READS_INPUT_FILES = Unversioned("reads the files the registry config names, again on every run")


@dataclass(frozen=True)
class TableSpec:
    """The one declaration of an asset's table.

    - ``name``: the asset and its table (``tables/<name>.parquet`` when ``stored`` is ``table``);
    - ``code_version``: bump it when a change to the code changes what the asset writes (every partition of it
      then recomputes); also the asset's Dagster ``code_version``;
    - ``inputs``: what it reads (``valuebias.assets.versions``: ``Table``, ``SamePartition``, ``Partitions``,
      ``Setting``, ``Lineage``), from which its Dagster ``deps``, its staleness and its run order come; or
      :class:`Unversioned`;
    - ``contract``: the ``data_contracts/<contract>.yaml`` its table is validated against before it is stored, or
      None for an output that is not validated (a report, a table too large to read back);
    - ``stored``: ``table`` (``tables/<name>.parquet``), ``report`` (``reports/<name>.md``), ``partitioned``
      (``partition_outputs(partition)``: the keys of one partition's outputs, the main table first) or
      ``elsewhere`` (the release);
    - ``partitions_def``: the partition set of a partitioned asset (``valuebias.assets.partitions``);
    - ``listed``: ``valuebias table NAME`` prints it (a partitioned table: every registered partition's, one after
      the other), under ``listed_as`` (default ``name``), from output number ``listed_output`` of a partition.
    """

    name: str
    code_version: str
    inputs: tuple | Unversioned
    contract: str | None
    stored: str = TABLE
    partitions_def: dg.PartitionsDefinition | None = None
    partition_outputs: Callable[[str], list[str]] | None = None
    listed: bool = True
    listed_as: str | None = None
    listed_output: int = 0

    def deps(self) -> list[dg.AssetDep]:
        """The asset's Dagster ``deps``, from ``inputs``."""
        if isinstance(self.inputs, Unversioned):
            return []
        return [dep for spec in self.inputs if (dep := spec.dep()) is not None]

    @property
    def key(self) -> str | None:
        """The storage key of an unpartitioned table or report."""
        return {TABLE: f"tables/{self.name}.parquet", REPORT: f"reports/{self.name}.md"}.get(self.stored)

    def outputs(self, partition: str | None) -> list[str]:
        """Where the asset (partition) stores what it computes, the table whose content version is its data
        version first."""
        if self.stored == PARTITIONED:
            return self.partition_outputs(partition)
        return [self.key] if self.key else []

    @property
    def listed_name(self) -> str | None:
        return (self.listed_as or self.name) if self.listed else None


def asset_modules() -> list[ModuleType]:
    """Every module of the ``valuebias.assets`` package, imported, in name order."""
    import valuebias.assets as package

    return [importlib.import_module(f"{package.__name__}.{info.name}")
            for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda info: info.name)]


@functools.cache
def table_specs() -> dict[str, TableSpec]:
    """{name: declaration} of every asset, collected from the asset modules (a module's own declarations, in the
    order it declares them)."""
    found: dict[str, TableSpec] = {}
    for module in asset_modules():
        for value in vars(module).values():
            if isinstance(value, TableSpec):
                if value.name in found and found[value.name] is not value:
                    raise ValueError(f"table {value.name} is declared twice (again in {module.__name__})")
                found[value.name] = value
    return found


@functools.cache
def code_versions() -> dict[str, str]:
    return {name: spec.code_version for name, spec in table_specs().items()}


@functools.cache
def inputs() -> dict[str, tuple]:
    return {name: spec.inputs for name, spec in table_specs().items() if not isinstance(spec.inputs, Unversioned)}


def stored(kind: str) -> dict[str, TableSpec]:
    return {name: spec for name, spec in table_specs().items() if spec.stored == kind}


@functools.cache
def listed_tables() -> dict[str, TableSpec]:
    """{name ``valuebias table`` prints: declaration}, in name order."""
    return dict(sorted((spec.listed_name, spec) for spec in table_specs().values() if spec.listed_name))


# ----------------------------------------------------------------------------------- what a declaration lacks
def declaration_problems(specs: dict[str, TableSpec], assets: dict[str, dg.AssetsDefinition],
                         contracts_dir: str | Path) -> list[str]:
    """Everything a declared table lacks, one line each: a contract file (and a contract whose ``name`` is
    another), a code version, inputs, a partition set or its outputs, a declaration for an asset, an asset for
    a declaration, or an asset whose code version, deps or partitions are not its declaration's. Also a contract
    file no declaration names. ``assets``: {name: the AssetsDefinition materializing it}."""
    import yaml

    problems = []
    contracts_dir = Path(contracts_dir)
    named = set()
    for name, spec in specs.items():
        where = f"table {name}"
        if not isinstance(spec.code_version, str) or not spec.code_version:
            problems.append(f"{where}: no code version")
        if isinstance(spec.inputs, Unversioned):
            if not spec.inputs.why:
                problems.append(f"{where}: unversioned inputs without a reason")
        elif not isinstance(spec.inputs, tuple) or not spec.inputs:
            problems.append(f"{where}: no inputs declared")
        if spec.contract is not None:
            named.add(spec.contract)
            path = contracts_dir / f"{spec.contract}.yaml"
            if not path.exists():
                problems.append(f"{where}: contract file {path} missing")
            elif (yaml.safe_load(path.read_text()) or {}).get("name") != spec.contract:
                problems.append(f"{where}: {path} does not declare name: {spec.contract}")
        elif spec.listed:
            problems.append(f"{where}: printed by `valuebias table` but has no contract")
        if spec.stored not in (TABLE, REPORT, PARTITIONED, ELSEWHERE):
            problems.append(f"{where}: stored as {spec.stored!r}, not one of table, report, partitioned, elsewhere")
        partitioned = spec.stored == PARTITIONED
        if partitioned != (spec.partitions_def is not None) or partitioned != (spec.partition_outputs is not None):
            problems.append(f"{where}: stored as {spec.stored}, so it has " + (
                "a partitions_def and partition_outputs" if partitioned else "no partitions_def and no partition_outputs"))
        asset = assets.get(name)
        if asset is None:
            problems.append(f"{where}: declared, but no asset materializes it")
            continue
        key = dg.AssetKey(name)
        if asset.code_versions_by_key.get(key) != spec.code_version:
            problems.append(f"{where}: the asset's code_version is {asset.code_versions_by_key.get(key)!r}, "
                            f"its declaration's {spec.code_version!r}")
        if {d.asset_key for d in spec.deps()} != set(asset.asset_deps.get(key, ())):
            problems.append(f"{where}: the asset's deps are not its declared inputs")
        if asset.partitions_def != spec.partitions_def:
            problems.append(f"{where}: the asset's partitions are not its declaration's")
    for name in assets:
        if name not in specs:
            problems.append(f"asset {name}: no TableSpec declares it")
    for path in sorted(contracts_dir.glob("*.yaml")):
        if path.stem not in named:
            problems.append(f"contract {path}: no declared table is validated against it")
    return problems
