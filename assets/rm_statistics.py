"""Figure-1 statistics for reward models, per corpus (METHOD.md section 3, steps 1-5), and the report."""


import dagster as dg
import polars as pl

from assets.tables import (REPORT_KEYS, TABLE_KEYS, contract_spec, report_result, rm_word_scores_key, table_result,
                           write_table)
from assets.versions import CODE_VERSIONS, INPUT_VERSIONS, current_input_versions, reads
from resources.registry import Registry
from resources.storage import Storage
from resources.validation import ContractValidator
from valuebias.config import RegistryConfig
from valuebias.report import figure1_png, markdown_table
from valuebias.statistics import (default_family_pair, family_tests, fit_mixed_model, median_rank_cells,
                                  rank_words)

RANK_CELL_COLUMNS = ["corpus", "model", "family", "category", "prompt", "framing", "median_rank"]


def family_pair(config: RegistryConfig, cells: pl.DataFrame) -> tuple[str, str]:
    """The two families compared: ``analysis.families`` or, by default, the two present (alphabetical)."""
    if config.analysis.families:
        return config.analysis.families
    return default_family_pair(cells["family"].unique().sort().to_list())


def load_reward_model_scores(config: RegistryConfig, storage: Storage) -> pl.DataFrame:
    """The stored scores of every reward model currently in the registry (removed models drop out)."""
    tables = []
    for model in config.reward_models():
        key = rm_word_scores_key(model.model_id)
        if not storage.exists(key):
            raise dg.Failure(f"no scores for model '{model.model_id}' at {storage.full_uri(key)}: "
                             f"materialize rm_word_scores for partition '{model.model_id}' first")
        tables.append(storage.read_parquet(key))
    return pl.concat(tables)


@dg.asset(group_name="statistics", kinds={"polars", "parquet"},
          deps=reads("rm_rank_cells"),
           code_version=CODE_VERSIONS["rm_rank_cells"], check_specs=[contract_spec("rm_rank_cells")])
def rm_rank_cells(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
                  validator: ContractValidator) -> dg.MaterializeResult:
    """Median rank per (corpus, model, category, prompt): words ranked by descending score within each
    (model, prompt), ties averaged, 1 = best (steps 1-3)."""
    config = registry.load()
    versions = current_input_versions(context.instance, config, "rm_rank_cells")
    scores = load_reward_model_scores(config, storage)
    words = storage.read_parquet(TABLE_KEYS["corpus_words"])
    prompts = storage.read_parquet(TABLE_KEYS["prompts"]).select("prompt", "framing")
    families = pl.DataFrame({"model": [m.model_id for m in config.reward_models()],
                             "family": [m.family for m in config.reward_models()]})
    parts, per_corpus = [], {}
    for corpus_id in config.corpora:
        corpus_scores = scores.filter(pl.col("corpus") == corpus_id).select("model", "prompt", "word", "score")
        if corpus_scores.is_empty():
            per_corpus[corpus_id] = "no model has scores for this corpus"
            continue
        dictionary = words.filter(pl.col("corpus") == corpus_id).select("word", "category")
        ranked = rank_words(corpus_scores, dictionary)
        cells = median_rank_cells(ranked, prompts, families)
        parts.append(cells.with_columns(pl.lit(corpus_id).alias("corpus")).select(RANK_CELL_COLUMNS))
        per_corpus[corpus_id] = f"{len(cells)} cells from {cells['model'].n_unique()} models"
    if not parts:
        raise dg.Failure("no corpus has scores from any reward model")
    table = pl.concat(parts)
    uri, version, check = write_table(storage, validator, "rm_rank_cells", table)
    return table_result(table, uri, version, {"cells_per_corpus": per_corpus,
                                              INPUT_VERSIONS: dg.MetadataValue.json(versions)}, check=check)


@dg.asset(group_name="statistics", kinds={"statsmodels", "parquet"}, deps=reads("rm_mixed_model"),
           code_version=CODE_VERSIONS["rm_mixed_model"], check_specs=[contract_spec("rm_mixed_model")])
def rm_mixed_model(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
                   validator: ContractValidator) -> dg.MaterializeResult:
    """Linear mixed model per corpus, REML: median_rank ~ family * category * framing + (1 | model) (step 4)."""
    versions = current_input_versions(context.instance, registry.load(), "rm_mixed_model")
    cells = storage.read_parquet(TABLE_KEYS["rm_rank_cells"])
    parts, notes = [], {}
    for (corpus_id,), corpus_cells in cells.group_by("corpus", maintain_order=True):
        try:
            fit = fit_mixed_model(corpus_cells)
        except ValueError as exc:  # degenerate design (e.g. one family): say so, keep the other corpora
            notes[corpus_id] = f"not fitted: {exc}"
            continue
        table, warnings = fit
        parts.append(table.with_columns(pl.lit(corpus_id).alias("corpus"))
                     .select("corpus", "term", "coef", "se", "z", "p"))
        notes[corpus_id] = "; ".join(warnings) if warnings else "converged"
    table = pl.concat(parts) if parts else pl.DataFrame(
        schema={"corpus": pl.Utf8, "term": pl.Utf8, "coef": pl.Float64, "se": pl.Float64, "z": pl.Float64,
                "p": pl.Float64})
    uri, version, check = write_table(storage, validator, "rm_mixed_model", table)
    return table_result(table, uri, version, {"fit": notes, INPUT_VERSIONS: dg.MetadataValue.json(versions)},
                        preview_rows=40, check=check)


@dg.asset(group_name="statistics", kinds={"scipy", "parquet"}, deps=reads("rm_family_tests"),
           code_version=CODE_VERSIONS["rm_family_tests"], check_specs=[contract_spec("rm_family_tests")])
def rm_family_tests(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
                    validator: ContractValidator) -> dg.MaterializeResult:
    """Per panel (category x framing): permutation Welch t-test of the median ranks, family A vs B,
    Bonferroni-corrected over the panels of the corpus (step 5)."""
    config = registry.load()
    versions = current_input_versions(context.instance, config, "rm_family_tests")
    cells = storage.read_parquet(TABLE_KEYS["rm_rank_cells"])
    family_a, family_b = family_pair(config, cells)
    parts = []
    for (corpus_id,), corpus_cells in cells.group_by("corpus", maintain_order=True):
        tests = family_tests(corpus_cells, family_a, family_b, n_resamples=config.analysis.permutations,
                             seed=config.analysis.seed)
        parts.append(tests.with_columns(pl.lit(corpus_id).alias("corpus")).select("corpus", *tests.columns))
    table = pl.concat(parts)
    uri, version, check = write_table(storage, validator, "rm_family_tests", table)
    return table_result(table, uri, version, {
        "families": f"{family_a} vs {family_b}", "permutations": config.analysis.permutations,
        "seed": config.analysis.seed, INPUT_VERSIONS: dg.MetadataValue.json(versions)}, preview_rows=40, check=check)


@dg.asset(group_name="report", kinds={"matplotlib", "markdown"},
          deps=reads("rm_report"), code_version=CODE_VERSIONS["rm_report"])
def rm_report(context: dg.AssetExecutionContext, registry: Registry, storage: Storage) -> dg.MaterializeResult:
    """The Figure-1 report: markdown tables per corpus and a Figure-1-style PNG per corpus."""
    versions = current_input_versions(context.instance, registry.load(), "rm_report")
    cells = storage.read_parquet(TABLE_KEYS["rm_rank_cells"])
    mixed = storage.read_parquet(TABLE_KEYS["rm_mixed_model"])
    tests = storage.read_parquet(TABLE_KEYS["rm_family_tests"])
    sections, plots = ["# ValueBias report: reward models (Figure 1)"], {}
    for (corpus_id,), corpus_cells in cells.group_by("corpus", maintain_order=True):
        name = f"figure1_{corpus_id}.png"
        plots[name] = figure1_png(corpus_cells, title=f"{corpus_id}: median rank")
        storage.write_bytes(f"reports/{name}", plots[name])
        summary = (corpus_cells.group_by("family", "category", "framing")
                   .agg(pl.col("median_rank").mean().alias("mean_median_rank"), pl.len().alias("cells"))
                   .sort("category", "framing", "family"))
        sections += [
            f"## {corpus_id}",
            f"![Figure 1, {corpus_id}]({name})",
            "### Mean median rank per family (1 = best)", markdown_table(summary),
            "### rm_family_tests", markdown_table(tests.filter(pl.col("corpus") == corpus_id).drop("corpus")),
            "### rm_mixed_model", markdown_table(mixed.filter(pl.col("corpus") == corpus_id).drop("corpus")),
        ]
    return report_result(storage, REPORT_KEYS["rm_report"], "\n\n".join(sections) + "\n", plots,
                         {INPUT_VERSIONS: dg.MetadataValue.json(versions)})
