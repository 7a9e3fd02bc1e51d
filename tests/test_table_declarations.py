"""One declaration per table (``valuebias.assets.catalog``): what is derived from the declarations keeps today's
values, a declaration that lacks a part is named, and the recipe "add a table" of ARCHITECTURE.md holds: a new
asset module and its contract, and nothing else, give a table that ``valuebias run`` materializes and validates
and ``valuebias table`` prints."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from declared_inputs import declared_inputs  # noqa: E402
from registry_fixtures import AGENCY, COMMUNION, PROMPTS, write_small_registry  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"


def test_code_versions_and_inputs_are_those_of_before(tmp_path):
    """Every code version, every input version an asset records and every upstream partition it waits for, for
    every kind of model and partition: as the code before the declarations moved beside the assets made them
    (a change here makes every stored partition of that asset stale)."""
    assert declared_inputs(tmp_path) == json.loads((DATA / "declared_inputs.json").read_text())


def _declared():
    from valuebias.assets import catalog
    from valuebias.orchestration.definitions import build_definitions
    from valuebias.resources.validation import DEFAULT_CONTRACTS_DIR

    assets = {key.to_user_string(): asset for asset in build_definitions().assets for key in asset.keys}
    return dict(catalog.table_specs()), assets, Path(DEFAULT_CONTRACTS_DIR)


def test_every_declared_table_has_every_part():
    from valuebias.assets import catalog

    specs, assets, contracts = _declared()
    assert catalog.declaration_problems(specs, assets, contracts) == []
    assert set(specs) == set(assets) and len(specs) == 22
    # derived, not listed: the tables `valuebias table` prints are those the declarations say
    from valuebias.orchestration.cli import table_names

    assert table_names() == sorted(spec.listed_name for spec in specs.values() if spec.listed)
    assert "rm_sweep_tokens" in table_names() and "rm_vocabulary_sweep" not in table_names()


def test_valuebias_table_names_the_tables_for_an_unknown_name(capsys):
    from valuebias.orchestration.cli import main, table_names

    assert main(["table", "rm_family_test"]) == 2
    assert capsys.readouterr().err == (f"valuebias: error: no table named 'rm_family_test'; the tables: "
                                       f"{', '.join(table_names())}\n")


def test_a_declaration_that_lacks_a_part_is_named(tmp_path):
    from valuebias.assets import catalog

    specs, assets, contracts = _declared()
    planted = tmp_path / "data_contracts"
    shutil.copytree(contracts, planted)
    (planted / "orphan.yaml").write_text("name: orphan\ncolumns: {a: {type: string}}\n")
    (planted / "lm_anova.yaml").write_text((contracts / "lm_anova.yaml").read_text().replace(
        "name: lm_anova", "name: lm_posthoc"))
    specs["rm_rank_cells"] = dataclasses.replace(specs["rm_rank_cells"], contract="rm_rank_cellz")
    specs["rm_mixed_model"] = dataclasses.replace(specs["rm_mixed_model"], code_version="")
    specs["rm_family_tests"] = dataclasses.replace(specs["rm_family_tests"], inputs=())
    specs["mwlr_words"] = dataclasses.replace(specs["mwlr_words"], contract=None)
    specs["lm_posthoc"] = dataclasses.replace(specs["lm_posthoc"], code_version="3")
    specs["rm_report"] = dataclasses.replace(specs["rm_report"], inputs=specs["rm_report"].inputs[:-1])
    specs["rm_rank_sums"] = dataclasses.replace(specs["rm_rank_sums"], partitions_def=specs["rm_word_scores"].partitions_def)
    del specs["lm_report"]
    specs["nobody_writes_this"] = dataclasses.replace(specs["prompts"], name="nobody_writes_this")
    assert sorted(catalog.declaration_problems(specs, assets, planted)) == sorted([
        f"table rm_rank_cells: contract file {planted / 'rm_rank_cellz.yaml'} missing",
        "table rm_rank_sums: stored as table, so it has no partitions_def and no partition_outputs",
        "table rm_rank_sums: the asset's partitions are not its declaration's",
        "table rm_mixed_model: no code version",
        "table rm_mixed_model: the asset's code_version is '2', its declaration's ''",
        "table rm_family_tests: no inputs declared",
        "table rm_family_tests: the asset's deps are not its declared inputs",
        "table rm_report: the asset's deps are not its declared inputs",
        f"table lm_anova: {planted / 'lm_anova.yaml'} does not declare name: lm_anova",
        "table lm_posthoc: the asset's code_version is '2', its declaration's '3'",
        "table mwlr_words: printed by `valuebias table` but has no contract",
        "table nobody_writes_this: declared, but no asset materializes it",
        "asset lm_report: no TableSpec declares it",
        f"contract {planted / 'mwlr_words.yaml'}: no declared table is validated against it",
        f"contract {planted / 'orphan.yaml'}: no declared table is validated against it",
        f"contract {planted / 'rm_rank_cells.yaml'}: no declared table is validated against it",
    ])


# ------------------------------------------------------------------------------------ the recipe "add a table"
RECIPE_ASSET = '''"""A throwaway table of tests/test_table_declarations.py (the recipe "add a table" of ARCHITECTURE.md): per
corpus, ranking and reward model, how many rank cells it has and their mean median rank."""

import dagster as dg
import polars as pl

from valuebias.assets.catalog import TableSpec
from valuebias.assets.tables import contract_spec, table_key, table_result, write_table
from valuebias.assets.versions import INPUT_VERSIONS, Table, current_input_versions
from valuebias.resources.registry import Registry
from valuebias.resources.storage import Storage
from valuebias.resources.validation import ContractValidator

RECIPE_CELL_COUNTS = TableSpec("recipe_cell_counts", code_version="1", contract="recipe_cell_counts",
                               inputs=(Table("rm_rank_cells"),))


def cell_counts(cells: pl.DataFrame) -> pl.DataFrame:
    return (cells.group_by("corpus", "ranks", "model")
            .agg(pl.len().alias("cells"), pl.col("median_rank").mean().alias("mean_median_rank"))
            .sort("corpus", "ranks", "model"))


@dg.asset(group_name="statistics", kinds={"polars", "parquet"}, deps=RECIPE_CELL_COUNTS.deps(),
          code_version=RECIPE_CELL_COUNTS.code_version, check_specs=[contract_spec("recipe_cell_counts")])
def recipe_cell_counts(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
                       validator: ContractValidator) -> dg.MaterializeResult:
    versions = current_input_versions(context.instance, registry.load(), "recipe_cell_counts")
    table = cell_counts(storage.read_parquet(table_key("rm_rank_cells")))
    uri, version, check = write_table(storage, validator, "recipe_cell_counts", table)
    return table_result(table, uri, version, {INPUT_VERSIONS: dg.MetadataValue.json(versions)}, check=check)
'''
RECIPE_CONTRACT = """name: recipe_cell_counts
description: A throwaway table of tests/test_table_declarations.py.
columns:
  corpus: {type: string, not_null: true}
  ranks: {type: string, not_null: true, in_set: [raw, frequency_controlled]}
  model: {type: string, not_null: true}
  cells: {type: integer, not_null: true, min: 1}
  mean_median_rank: {type: float, not_null: true, min: 1}
unique: [corpus, ranks, model]
min_rows: 1
"""


@pytest.fixture
def recipe_project(tmp_path):
    """A copy of the project's code (its package folders and contracts, laid out as pyproject.toml's package-dir
    installs them) with the throwaway asset module and its contract where real ones live: ``assets/`` and
    ``data_contracts/``. A copy, so that tests running at the same time (pytest-xdist) never see the table."""
    project = tmp_path / "project"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("valuebias", "assets", "resources", "orchestration", "data_contracts"):
        shutil.copytree(ROOT / folder, project / folder, ignore=ignore)
    for name in ("workspace.yaml", "pyproject.toml"):
        shutil.copy(ROOT / name, project / name)
    for folder in ("assets", "resources", "orchestration"):  # valuebias.assets is ./assets, as installed
        (project / "valuebias" / folder).symlink_to(Path("..") / folder)
    (project / "assets" / "recipe_cell_counts.py").write_text(RECIPE_ASSET)
    (project / "data_contracts" / "recipe_cell_counts.yaml").write_text(RECIPE_CONTRACT)
    return project


def _cli(project: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    """``valuebias ARGS --config CONFIG`` as a user runs it, with the code of ``project``."""
    return subprocess.run([sys.executable, "-m", "valuebias.orchestration.cli", *args, "--config", str(config)],
                          cwd=project, capture_output=True, text=True, timeout=900)


def _ok(project: Path, config: Path, *args: str) -> str:
    proc = _cli(project, config, *args)
    assert proc.returncode == 0, f"valuebias {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_a_table_added_by_the_recipe_is_materialized_validated_and_listed(tmp_path, recipe_project):
    root = tmp_path / "registry"
    root.mkdir()
    entries = ""
    for seed, (model, family) in enumerate({"llama-1": "llama", "llama-2": "llama", "gemma-1": "gemma"}.items()):
        lines = ["response," + ",".join(PROMPTS)]
        lines += [f"{word}," + ",".join(str((seed * 7 + i * 3 + j) % 11) for j in range(len(PROMPTS)))
                  for i, word in enumerate(AGENCY + COMMUNION)]  # every corpus word (a file may not miss one)
        (root / f"{model}.csv").write_text("\n".join(lines) + "\n")
        entries += f"  {model}:\n    kind: reward_model\n    family: {family}\n    published: {{small: {model}.csv}}\n"
    config = write_small_registry(root, models=entries)

    _ok(recipe_project, config, "run")
    printed = _rows(_ok(recipe_project, config, "table", "recipe_cell_counts", "--format", "csv"))
    cells = _rows(_ok(recipe_project, config, "table", "rm_rank_cells", "--format", "csv"))
    expected = {}
    for cell in cells:
        expected.setdefault((cell["corpus"], cell["ranks"], cell["model"]), []).append(float(cell["median_rank"]))
    assert [(r["corpus"], r["ranks"], r["model"], int(r["cells"]), float(r["mean_median_rank"])) for r in printed] == [
        (*key, len(ranks), pytest.approx(sum(ranks) / len(ranks), rel=1e-12)) for key, ranks in sorted(expected.items())]
    # 3 models x (raw, frequency-controlled) ranks, each with 2 categories x 6 prompts
    assert len(printed) == 6 and all(int(r["cells"]) == 2 * len(PROMPTS) for r in printed)

    status = {(r["asset"], r["partition"]): r for r in _rows(_ok(recipe_project, config, "status", "--format", "csv"))}
    assert status[("recipe_cell_counts", "")]["state"] == "fresh"
    [passed] = (root / ".valuebias" / "data" / "validated" / "recipe_cell_counts").iterdir()
    recorded = json.loads(passed.read_text())
    assert (recorded["contract"], recorded["success"], recorded["rules_failed"]) == ("recipe_cell_counts", True, 0)

    # validated by its contract: a contract the table breaks fails the run, naming the rule, and keeps the stored
    # table; the new code version in the declaration is what makes the table stale (nothing else is)
    module = recipe_project / "assets" / "recipe_cell_counts.py"
    module.write_text(RECIPE_ASSET.replace('code_version="1"', 'code_version="2"'))
    contract = recipe_project / "data_contracts" / "recipe_cell_counts.yaml"
    contract.write_text(RECIPE_CONTRACT.replace("cells: {type: integer, not_null: true, min: 1}",
                                                f"cells: {{type: integer, not_null: true, min: {2 * len(PROMPTS) + 1}}}"))
    stale = [r for r in _rows(_ok(recipe_project, config, "status", "--format", "csv")) if r["state"] != "fresh"]
    assert [(r["asset"], r["reason"]) for r in stale] == [("recipe_cell_counts", "changed: code")]
    failed = _cli(recipe_project, config, "run")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr + failed.stdout
    assert "check recipe_cell_counts_contract failed" in failed.stdout + failed.stderr
    assert "rule 'cells" in failed.stdout + failed.stderr
    assert _rows(_ok(recipe_project, config, "table", "recipe_cell_counts", "--format", "csv")) == printed
