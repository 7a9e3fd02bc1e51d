"""Figure-1 statistics for reward models, per corpus (docs/METHOD.md#3-reward-model-scores-figure-1), and the report."""


import dagster as dg
import polars as pl

from valuebias.assets.catalog import REPORT, TableSpec
from valuebias.assets.tables import (contract_spec, fitted_result, report_result, rm_word_scores_key, statistics_checks,
                                     table_key, table_result, write_table)
from valuebias.assets.versions import (INPUT_VERSIONS, RANKING_SETTINGS, REWARD_MODEL_FAMILIES, REWARD_MODEL_SCORES,
                                       Lineage, Setting, Table, current_input_versions, settings_fingerprint)
from valuebias.resources.registry import Registry
from valuebias.resources.storage import Storage
from valuebias.resources.validation import ContractValidator
from valuebias.config import RegistryConfig
from valuebias.report import figure1_png, markdown_table
from valuebias.statistics import (FREQUENCY_CONTROLLED, INTERACTION_TEST, NOT_FITTED, RAW, NotFittable,
                                  corpus_rankings, family_comparison_tests, fit_mixed_model, interaction_test,
                                  median_rank_cells)
from valuebias.value_cards import rank_sums

RANK_CELL_COLUMNS = ["corpus", "ranks", "model", "family", "category", "prompt", "framing", "median_rank"]
#: The columns of ``rm_family_tests`` after corpus and ranks (data_contracts/rm_family_tests.yaml).
FAMILY_TEST_SCHEMA = {"category": pl.Utf8, "framing": pl.Utf8, "family_a": pl.Utf8, "family_b": pl.Utf8,
                      "n_a": pl.Int64, "n_b": pl.Int64, "mean_a": pl.Float64, "mean_b": pl.Float64, "t": pl.Float64,
                      "p": pl.Float64, "p_bonferroni": pl.Float64, "correction": pl.Utf8, "note": pl.Utf8}


def _analyses(cells: pl.DataFrame):
    """The rank cells split by (corpus, ranks): each is one Figure-1 analysis."""
    return cells.group_by("corpus", "ranks", maintain_order=True)


def stored_reward_model_scores(config: RegistryConfig, storage: Storage, excluded=()):
    """(model id, its stored scores) for every reward model currently in the registry (removed models drop
    out), but those ``excluded`` (``failed_models: exclude``: their last scoring run failed), one at a time."""
    for model in config.reward_models():
        if model.model_id in excluded:
            continue
        key = rm_word_scores_key(model.model_id)
        if not storage.exists(key):
            raise dg.Failure(f"no scores for model '{model.model_id}' at {storage.full_uri(key)}: "
                             f"materialize rm_word_scores for partition '{model.model_id}' first")
        yield model.model_id, storage.read_parquet(key)


def common_words(config: RegistryConfig, storage: Storage, excluded=()) -> pl.DataFrame | None:
    """With ``analysis.published_coverage: partial``: per corpus, the words that every compared reward model
    (:func:`stored_reward_model_scores`) scored for every prompt (``corpus, word``), the only words ranked;
    None otherwise (every model scores every corpus word: a published file that misses one is refused)."""
    if config.analysis.published_coverage != "partial":
        return None
    prompts = storage.read_parquet(table_key("prompts")).height
    common = None
    for _, scores in stored_reward_model_scores(config, storage, excluded):
        scored = (scores.group_by("corpus", "word").agg(pl.col("prompt").n_unique().alias("prompts"))
                  .filter(pl.col("prompts") == prompts).select("corpus", "word"))
        common = scored if common is None else common.join(scored, on=["corpus", "word"], how="semi")
    return common


def coverage_metadata(config: RegistryConfig, words: pl.DataFrame, common: pl.DataFrame | None) -> dict:
    """What the tables say about partial coverage: per corpus, how many of its words are ranked."""
    if common is None:
        return {}
    ranked = {c: common.filter(pl.col("corpus") == c)["word"].n_unique() for c in config.corpora}
    total = {c: words.filter(pl.col("corpus") == c)["word"].n_unique() for c in config.corpora}
    return {"published_coverage": dg.MetadataValue.json({
        c: (f"partial (analysis.published_coverage): ranked on the {ranked[c]} of {total[c]} corpus words that "
            "every compared reward model scores") for c in config.corpora})}


def load_reward_model_scores(config: RegistryConfig, storage: Storage, excluded=()) -> pl.DataFrame:
    """The stored scores of every reward model of :func:`stored_reward_model_scores`, in one table."""
    return pl.concat([table for _, table in stored_reward_model_scores(config, storage, excluded)])


# 2: a `ranks` column (raw, frequency_controlled), k families, comparisons with the correction named
RM_RANK_CELLS = TableSpec("rm_rank_cells", code_version="2", contract="rm_rank_cells", inputs=(
    Table("prompts"), Table("corpus_words"), REWARD_MODEL_SCORES, REWARD_MODEL_FAMILIES, RANKING_SETTINGS,
    Lineage("model_registry")))


@dg.asset(group_name="statistics", kinds={"polars", "parquet"}, deps=RM_RANK_CELLS.deps(),
          code_version=RM_RANK_CELLS.code_version, check_specs=[contract_spec("rm_rank_cells")])
def rm_rank_cells(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
                  validator: ContractValidator) -> dg.MaterializeResult:
    """Median rank per (corpus, ranks, model, category, prompt): words ranked by descending score within
    each (model, prompt), ties averaged, 1 = best (steps 1-3): ``raw`` ranks (the paper's) and, with
    ``analysis.frequency_control``, ``frequency_controlled`` ones (residualised on word frequency)."""
    config = registry.load()
    from valuebias.assets.attempts import excluded_failed_models

    versions = current_input_versions(context.instance, config, "rm_rank_cells")
    excluded = excluded_failed_models(context.instance, config)
    scores = load_reward_model_scores(config, storage, excluded)
    words = storage.read_parquet(table_key("corpus_words"))
    common = common_words(config, storage, excluded)
    if common is not None:  # analysis.published_coverage: partial: rank only the words every model has
        scores = scores.join(common, on=["corpus", "word"], how="semi")
    prompts = storage.read_parquet(table_key("prompts")).select("prompt", "framing")
    families = pl.DataFrame({"model": [m.model_id for m in config.reward_models()],
                             "family": [m.family for m in config.reward_models()]})
    parts, per_corpus = [], {}
    for corpus_id in config.corpora:
        corpus_scores = scores.filter(pl.col("corpus") == corpus_id).select("model", "prompt", "word", "score")
        if corpus_scores.is_empty():
            per_corpus[corpus_id] = "no model has scores for this corpus"
            continue
        dictionary = words.filter(pl.col("corpus") == corpus_id).select("word", "category")
        ranked = corpus_rankings(corpus_scores, dictionary, config.analysis.category_overlap,
                                 config.analysis.frequency_control)
        for ranks, table in ranked.items():
            cells = median_rank_cells(table, prompts, families)
            parts.append(cells.with_columns(pl.lit(corpus_id).alias("corpus"), pl.lit(ranks).alias("ranks"))
                         .select(RANK_CELL_COLUMNS))
        per_corpus[corpus_id] = (f"{len(cells)} cells from {cells['model'].n_unique()} models per ranking "
                                 f"({', '.join(ranked)})")
    if not parts:
        raise dg.Failure("no corpus has scores from any reward model")
    table = pl.concat(parts)
    uri, version, check = write_table(storage, validator, "rm_rank_cells", table)
    return table_result(table, uri, version, {"cells_per_corpus": per_corpus,
                                              **coverage_metadata(config, words, common),
                                              "excluded_models": dg.MetadataValue.json(excluded),
                                              INPUT_VERSIONS: dg.MetadataValue.json(versions)}, check=check)


def model_rankings(config: RegistryConfig, model_id: str, scores: pl.DataFrame, words: pl.DataFrame,
                   common: pl.DataFrame | None = None):
    """One reward model's word ranks per corpus and ranking, as the rank cells and the rank sums use them:
    tables of ``corpus, ranks, prompt, word, category, rank`` (raw and, with ``analysis.frequency_control``,
    frequency-controlled; ``valuebias.statistics.corpus_rankings``); only the ``common`` words
    (:func:`common_words`) when given."""
    if common is not None:
        scores = scores.join(common, on=["corpus", "word"], how="semi")
    for corpus_id in config.corpora:
        corpus_scores = scores.filter(pl.col("corpus") == corpus_id)
        if corpus_scores.is_empty():
            continue
        dictionary = words.filter(pl.col("corpus") == corpus_id).select("word", "category")
        ranked = corpus_rankings(corpus_scores.select(pl.lit(model_id).alias("model"), "prompt", "word", "score"),
                                 dictionary, config.analysis.category_overlap, config.analysis.frequency_control)
        for ranks, table in ranked.items():
            yield table.select(pl.lit(corpus_id).alias("corpus"), pl.lit(ranks).alias("ranks"), "prompt", "word",
                               "category", "rank")


RM_RANK_SUMS = TableSpec("rm_rank_sums", code_version="1", contract="rm_rank_sums", inputs=(
    Table("corpus_words"), REWARD_MODEL_SCORES, RANKING_SETTINGS, Lineage("model_registry")))


@dg.asset(group_name="statistics", kinds={"polars", "parquet"}, deps=RM_RANK_SUMS.deps(),
          code_version=RM_RANK_SUMS.code_version, check_specs=[contract_spec("rm_rank_sums")])
def rm_rank_sums(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
                 validator: ContractValidator) -> dg.MaterializeResult:
    """The registry's rank sums: per (corpus, ranks, prompt, word, category), the sum of the ranks every
    registered reward model gives the entry and how many models ranked it. A value card reads the other
    models' mean rank from it as (sum - own rank) / (models - 1), without reading their tables."""
    from valuebias.assets.attempts import excluded_failed_models

    config = registry.load()
    versions = current_input_versions(context.instance, config, "rm_rank_sums")
    words = storage.read_parquet(table_key("corpus_words"))
    excluded = excluded_failed_models(context.instance, config)
    common = common_words(config, storage, excluded)

    table = rank_sums(ranked for model_id, scores in stored_reward_model_scores(config, storage, excluded)
                      for ranked in model_rankings(config, model_id, scores, words, common))
    uri, version, check = write_table(storage, validator, "rm_rank_sums", table)
    return table_result(table, uri, version, {"models": len(config.reward_models()) - len(excluded),
                                              **coverage_metadata(config, words, common),
                                              "excluded_models": dg.MetadataValue.json(excluded),
                                              INPUT_VERSIONS: dg.MetadataValue.json(versions)}, check=check)


def _fit_each(cells: pl.DataFrame, fit, explained) -> tuple[pl.DataFrame, dict[str, str], dict[str, str]]:
    """For each (corpus, ranks) analysis, ``fit(cells)`` -> (table, note). A design that cannot be fitted
    (:class:`NotFittable`) becomes the rows ``explained(cells, why)``, named and explained in the table (its
    ``note`` column; null on fitted rows); any other error (bad input) fails the step. Returns (the table,
    corpus and ranks first; {analysis: note}; {analysis: why not fitted})."""
    parts, notes, not_fitted = [], {}, {}
    for (corpus_id, ranks), analysis_cells in _analyses(cells):
        name = f"{corpus_id}/{ranks}"
        try:
            table, notes[name] = fit(analysis_cells)
            if "note" not in table.columns:
                table = table.with_columns(pl.lit(None, dtype=pl.Utf8).alias("note"))
        except NotFittable as why:
            notes[name] = not_fitted[name] = str(why)
            table = explained(analysis_cells, str(why))
        parts.append(table.with_columns(pl.lit(corpus_id).alias("corpus"), pl.lit(ranks).alias("ranks")))
    columns = ["corpus", "ranks", *(c for c in parts[0].columns if c not in ("corpus", "ranks"))]
    return pl.concat([p.select(columns) for p in parts], how="vertical_relaxed"), notes, not_fitted


def _publish_fits(storage: Storage, validator: ContractValidator, table_name: str,
                  fits: tuple[pl.DataFrame, dict[str, str], dict[str, str]], metadata: dict) -> dg.MaterializeResult:
    """Store the table (validate, then publish) with its warn-level ``<table>_fitted`` check, which fails
    naming every analysis that could not be fitted and why."""
    table, notes, not_fitted = fits
    uri, version, check = write_table(storage, validator, table_name, table)
    return table_result(table, uri, version, {"fit": notes, **metadata}, preview_rows=40, check=check,
                        more_checks=(fitted_result(table_name, not_fitted),))


RM_MIXED_MODEL = TableSpec("rm_mixed_model", code_version="2", contract="rm_mixed_model",
                           inputs=(Table("rm_rank_cells"),))


@dg.asset(group_name="statistics", kinds={"statsmodels", "parquet"}, deps=RM_MIXED_MODEL.deps(),
          code_version=RM_MIXED_MODEL.code_version,
          check_specs=statistics_checks("rm_mixed_model", "mixed model"))
def rm_mixed_model(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
                   validator: ContractValidator) -> dg.MaterializeResult:
    """Linear mixed model per corpus and ranks, REML: median_rank ~ family * category * framing + (1 | model)
    (step 4), with any number of families; Wald z p-values. A design that cannot be fitted is one row,
    term ``not fitted``, with the reason in ``note``."""
    versions = current_input_versions(context.instance, registry.load(), "rm_mixed_model")

    def fit(cells: pl.DataFrame):
        result = fit_mixed_model(cells)
        return result.table, "; ".join(result.warnings) if result.warnings else "converged"

    def explained(cells: pl.DataFrame, why: str) -> pl.DataFrame:
        return pl.DataFrame({"term": [NOT_FITTED], "coef": [None], "se": [None], "z": [None], "p": [None],
                             "note": [why]}, schema_overrides={c: pl.Float64 for c in ("coef", "se", "z", "p")})

    return _publish_fits(storage, validator, "rm_mixed_model",
                         _fit_each(storage.read_parquet(table_key("rm_rank_cells")), fit, explained),
                         {"p_values": "Wald z", INPUT_VERSIONS: dg.MetadataValue.json(versions)})


RM_INTERACTION_TEST = TableSpec("rm_interaction_test", code_version="1", contract="rm_interaction_test",
                                inputs=(Table("rm_rank_cells"),))


@dg.asset(group_name="statistics", kinds={"statsmodels", "parquet"}, deps=RM_INTERACTION_TEST.deps(),
          code_version=RM_INTERACTION_TEST.code_version,
          check_specs=statistics_checks("rm_interaction_test", "likelihood-ratio test"))
def rm_interaction_test(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
                        validator: ContractValidator) -> dg.MaterializeResult:
    """Does the family x category x framing interaction exist (any number of families)? A likelihood-ratio
    test of the mixed model with and without the three-way term, both fitted by ML
    (docs/METHOD.md#82-interaction-test)."""
    versions = current_input_versions(context.instance, registry.load(), "rm_interaction_test")

    def fit(cells: pl.DataFrame):
        result = interaction_test(cells)
        return pl.DataFrame([result]), f"chi2({result['df']}) = {result['statistic']:.4g}, p = {result['p']:.3g}"

    def explained(cells: pl.DataFrame, why: str) -> pl.DataFrame:
        return pl.DataFrame({"test": [INTERACTION_TEST], "statistic": [None], "df": [None], "p": [None],
                             "n_families": [cells["family"].n_unique()], "n_models": [cells["model"].n_unique()],
                             "note": [why]},
                            schema_overrides={"statistic": pl.Float64, "df": pl.Int64, "p": pl.Float64})

    return _publish_fits(storage, validator, "rm_interaction_test",
                         _fit_each(storage.read_parquet(table_key("rm_rank_cells")), fit, explained),
                         {INPUT_VERSIONS: dg.MetadataValue.json(versions)})


RM_FAMILY_TESTS = TableSpec("rm_family_tests", code_version="2", contract="rm_family_tests", inputs=(
    Table("rm_rank_cells"), Setting(lambda config, _: {"analysis": settings_fingerprint(
        config, "analysis", "families", "comparisons", "permutations", "seed")})))


@dg.asset(group_name="statistics", kinds={"scipy", "parquet"}, deps=RM_FAMILY_TESTS.deps(),
          code_version=RM_FAMILY_TESTS.code_version,
          check_specs=statistics_checks("rm_family_tests", "family comparison"))
def rm_family_tests(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
                    validator: ContractValidator) -> dg.MaterializeResult:
    """Per panel (category x framing) and family comparison: permutation Welch t-test of the median ranks,
    Bonferroni-corrected over every panel x comparison of the corpus and ranks (step 5). A comparison that
    cannot be tested is one row with its families, no panel and no numbers, the reason in ``note``."""
    config = registry.load()
    versions = current_input_versions(context.instance, config, "rm_family_tests")
    comparisons = config.family_comparisons()
    left_out: dict[str, str] = {}

    def explained_rows(untested: dict[tuple[str | None, str | None], str]) -> pl.DataFrame:
        # every column of the contract, null but the families and the note (a one-family registry's table is
        # these rows only)
        return pl.DataFrame([{"family_a": a, "family_b": b, "note": why} for (a, b), why in untested.items()],
                            schema={**FAMILY_TEST_SCHEMA, "family_a": pl.Utf8, "family_b": pl.Utf8, "note": pl.Utf8}
                            ).select(list(FAMILY_TEST_SCHEMA))

    def fit(cells: pl.DataFrame):
        if not comparisons:
            raise NotFittable(f"the family tests need reward models of two families; {config.path} registers "
                              f"{', '.join(config.compared_families()) or 'none'}: register a reward model of "
                              "another family (models.<id>.family)")
        corpus_id, ranks = cells["corpus"][0], cells["ranks"][0]
        tests, not_tested = family_comparison_tests(
            cells, comparisons, n_resamples=config.analysis.permutations, seed=config.analysis.seed,
            label=f"{corpus_id}, {ranks} ranks")
        if tests.is_empty():
            raise NotFittable("; ".join(f"{c}: {why}" for c, why in not_tested.items()))
        left_out.update({f"{corpus_id}/{ranks}/{c}": why for c, why in not_tested.items()})
        untested = {tuple(c.split(" vs ")): why for c, why in not_tested.items()}
        tests = pl.concat([tests.with_columns(pl.lit(None, dtype=pl.Utf8).alias("note")),
                           explained_rows(untested)], how="diagonal_relaxed")
        return tests, f"{tests.height} rows" + (f", {len(not_tested)} comparison(s) not tested" if not_tested else "")

    def explained(cells: pl.DataFrame, why: str) -> pl.DataFrame:
        return explained_rows({pair: why for pair in comparisons} or {(None, None): why})

    table, notes, not_fitted = _fit_each(storage.read_parquet(table_key("rm_rank_cells")), fit, explained)
    return _publish_fits(storage, validator, "rm_family_tests",
                         (table, notes, {**not_fitted, **left_out}), {
                             "comparisons": ", ".join(f"{a} vs {b}" for a, b in comparisons) or "none",
                             "permutations": config.analysis.permutations, "seed": config.analysis.seed,
                             INPUT_VERSIONS: dg.MetadataValue.json(versions)})


SIGNIFICANCE = 0.05


def significant_panels(tests: pl.DataFrame) -> dict[tuple[str, str], list[str]]:
    """{(category, framing): ["a vs b", ...]} for the tests significant after Bonferroni."""
    marked: dict[tuple[str, str], list[str]] = {}
    for row in tests.filter(pl.col("p_bonferroni") < SIGNIFICANCE).iter_rows(named=True):
        marked.setdefault((row["category"], row["framing"]), []).append(f"{row['family_a']} vs {row['family_b']}")
    return marked


def frequency_verdicts(tests: pl.DataFrame) -> pl.DataFrame:
    """Each family difference on raw ranks beside the same test on frequency-controlled ranks, with the
    verdict: a difference significant on raw ranks that vanishes under the control is a frequency effect."""
    key = ["category", "framing", "family_a", "family_b"]
    raw = tests.filter(pl.col("ranks") == RAW).select(*key, pl.col("t").alias("t_raw"),
                                                      pl.col("p_bonferroni").alias("p_bonferroni_raw"))
    controlled = tests.filter(pl.col("ranks") == FREQUENCY_CONTROLLED).select(
        *key, pl.col("t").alias("t_controlled"), pl.col("p_bonferroni").alias("p_bonferroni_controlled"))
    significant_raw = pl.col("p_bonferroni_raw") < SIGNIFICANCE
    significant_controlled = pl.col("p_bonferroni_controlled") < SIGNIFICANCE
    return raw.join(controlled, on=key, how="inner").with_columns(
        pl.when(significant_raw & significant_controlled).then(pl.lit("survives the frequency control"))
        .when(significant_raw).then(pl.lit("frequency effect: vanishes under the control"))
        .when(significant_controlled).then(pl.lit("significant only under the control"))
        .otherwise(pl.lit("not significant")).alias("verdict")).sort(key)


# 2: plots embedded (the UI shows them); 3: significant panels marked, interaction test
RM_REPORT = TableSpec("rm_report", code_version="3", contract=None, stored=REPORT, listed=False, inputs=(
    Table("rm_rank_cells"), Table("rm_mixed_model"), Table("rm_interaction_test"), Table("rm_family_tests")))


@dg.asset(group_name="report", kinds={"matplotlib", "markdown"}, deps=RM_REPORT.deps(),
          code_version=RM_REPORT.code_version)
def rm_report(context: dg.AssetExecutionContext, registry: Registry, storage: Storage) -> dg.MaterializeResult:
    """The Figure-1 report: per corpus, a Figure-1-style PNG (significant panels marked), the family tests,
    the interaction test, the frequency control's verdicts and the mixed model."""
    versions = current_input_versions(context.instance, registry.load(), "rm_report")
    cells = storage.read_parquet(table_key("rm_rank_cells"))
    mixed = storage.read_parquet(table_key("rm_mixed_model"))
    interaction = storage.read_parquet(table_key("rm_interaction_test"))
    tests = storage.read_parquet(table_key("rm_family_tests"))
    sections, plots = ["# ValueBias report: reward models (Figure 1)"], {}
    for (corpus_id,), corpus_cells in cells.filter(pl.col("ranks") == RAW).group_by("corpus", maintain_order=True):
        in_corpus = pl.col("corpus") == corpus_id
        corpus_tests = tests.filter(in_corpus)
        name = f"figure1_{corpus_id}.png"
        plots[name] = figure1_png(corpus_cells, title=f"{corpus_id}: median rank",
                                  significant=significant_panels(corpus_tests.filter(pl.col("ranks") == RAW)))
        storage.write_bytes(f"reports/{name}", plots[name])
        summary = (corpus_cells.group_by("family", "category", "framing")
                   .agg(pl.col("median_rank").mean().alias("mean_median_rank"), pl.len().alias("cells"))
                   .sort("category", "framing", "family"))
        sections += [
            f"## {corpus_id}",
            f"![Figure 1, {corpus_id}]({name})",
            "### Mean median rank per family (1 = best)", markdown_table(summary),
            "### rm_family_tests (raw ranks)",
            markdown_table(corpus_tests.filter(pl.col("ranks") == RAW).drop("corpus", "ranks")),
            "### rm_interaction_test", markdown_table(interaction.filter(in_corpus).drop("corpus")),
        ]
        verdicts = frequency_verdicts(corpus_tests)
        if verdicts.height:
            sections += ["### Word frequency: does each family difference survive the control?",
                         markdown_table(verdicts)]
        sections += ["### rm_mixed_model (raw ranks)",
                     markdown_table(mixed.filter(in_corpus & (pl.col("ranks") == RAW)).drop("corpus", "ranks"))]
    return report_result(storage, RM_REPORT.key, "\n\n".join(sections) + "\n", plots,
                         {INPUT_VERSIONS: dg.MetadataValue.json(versions)})
