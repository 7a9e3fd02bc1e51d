"""Figure-2 statistics for language models, per corpus and pair (docs/METHOD.md#43-anova-and-post-hoc-tests,
docs/METHOD.md#81-figure-2-per-pair), and the LM
report (Figure 2 tables, Table 1, Figure 3).

Figure 2 is computed per group of ``config.figure2_groups()``: each configured pair (``a__vs__b``) on the
words both of its models keep, and, with ``analysis.pool_language_models``, every language model together
(``pooled``) on the words all of them keep. A group's rows depend on its own models only, so registering
another language model or pair never changes an existing pair's numbers.

Failures show: a design that cannot be fitted (``valuebias.statistics.NotFittable``: too few models, a
missing cell, no residual) is a row of its own with no numbers and the reason in ``note``, and the asset's
WARN-level ``<table>_fitted`` check fails naming it. Bad input (``InputError``) is never caught: it fails
the run.
"""


import warnings

import dagster as dg
import polars as pl

from valuebias.assets.catalog import REPORT, TableSpec
from valuebias.assets.tables import (contract_spec, fitted_result, lm_word_logprobs_key, report_result, statistics_checks,
                                     table_key, table_result, write_table)
from valuebias.assets.versions import (FIGURE2_GROUPS, INPUT_VERSIONS, LM_WORD_LOGPROBS, Lineage, Setting, Table,
                                       current_input_versions)
from valuebias.resources.registry import Registry
from valuebias.resources.storage import Storage
from valuebias.resources.validation import ContractValidator
from valuebias.config import POOLED, RegistryConfig
from valuebias.lm_statistics import common_words, lm_anova as fit_anova, lm_posthoc as welch_posthoc
from valuebias.lm_statistics import lm_rank_cells as median_rank_cells
from valuebias.report import figure3_png, markdown_table
from valuebias.statistics import NOT_FITTED, NotFittable

RANK_CELL_SCHEMA = {"corpus": pl.Utf8, "pair": pl.Utf8, "prompt": pl.Utf8, "category": pl.Utf8, "valence": pl.Utf8,
                    "model": pl.Utf8, "median_rank": pl.Float64}
ANOVA_SCHEMA = {"corpus": pl.Utf8, "pair": pl.Utf8, "term": pl.Utf8, "sum_sq": pl.Float64, "df": pl.Float64,
                "F": pl.Float64, "p": pl.Float64, "note": pl.Utf8}
# A residual sum of squares at most this fraction of the total is rounding noise: no residual variance.
SEPARATED = 1e-12
POSTHOC_SCHEMA = {"corpus": pl.Utf8, "pair": pl.Utf8, "category": pl.Utf8, "valence": pl.Utf8, "model_a": pl.Utf8,
                  "model_b": pl.Utf8, "n_a": pl.Int64, "n_b": pl.Int64, "mean_a": pl.Float64, "mean_b": pl.Float64,
                  "t": pl.Float64, "p": pl.Float64, "p_bh": pl.Float64, "note": pl.Utf8}
ADD_A_PAIR = ("add `pairs: [[model_a, model_b]]` (two registered language models; Figure 2 and its post-hoc "
              "tests are run per pair, on the words both models keep)")


def no_groups_advice(config: RegistryConfig) -> str:
    return (f"Figure 2 compares language models per pair, and {config.path} configures no pair and no pooled "
            f"analysis: {ADD_A_PAIR}, or set `analysis.pool_language_models: true` (one ANOVA over every "
            "language model, on the words all of them keep)")


def load_word_logprobs(config: RegistryConfig, storage: Storage, models: list[str]) -> pl.DataFrame:
    """The stored word log-probs of ``models`` (language models of the registry)."""
    if not models:
        raise dg.Failure(f"no language model is registered in {config.path}")
    tables = []
    for model in models:
        key = lm_word_logprobs_key(model)
        if not storage.exists(key):
            raise dg.Failure(f"no word log-probs for model '{model}' at {storage.full_uri(key)}: "
                             f"materialize lm_word_logprobs for partition '{model}' first")
        tables.append(storage.read_parquet(key))
    return pl.concat(tables)


def read_per_pair(storage: Storage, table: str = "lm_rank_cells") -> pl.DataFrame:
    """A stored Figure-2 table; one written before Figure 2 was per pair (no ``pair`` column) is refused."""
    found = storage.read_parquet(table_key(table))
    if "pair" not in found.columns:
        raise dg.Failure(f"the stored {table} has no 'pair' column (it was computed before Figure 2 was run per "
                         f"pair): materialize {table} first")
    return found


def group_cells(cells: pl.DataFrame, corpus_id: str, group: str) -> pl.DataFrame:
    """The rank cells of one corpus and Figure-2 group; :class:`NotFittable` when there are none."""
    found = cells.filter((pl.col("corpus") == corpus_id) & (pl.col("pair") == group))
    if found.is_empty():
        raise NotFittable("lm_rank_cells has no cells for it (its cells_per_pair metadata says why)")
    return found


def explained_rows(schema: dict, not_fitted: dict[str, str], **fixed) -> pl.DataFrame:
    """One row per analysis ("<corpus>/<pair>") that could not be fitted: its corpus and pair, ``fixed``
    values, no numbers, and the reason in ``note``."""
    rows = [{"corpus": name.split("/", 1)[0], "pair": name.split("/", 1)[1], **fixed, "note": why}
            for name, why in not_fitted.items()]
    return pl.DataFrame(rows, schema=schema)


# lm_rank_cells 2, lm_anova 2, lm_posthoc 2: Figure 2 per pair (a ``pair`` column; the pooled group is optional)
LM_RANK_CELLS = TableSpec("lm_rank_cells", code_version="2", contract="lm_rank_cells", inputs=(
    Table("prompts"), Table("corpus_words"), LM_WORD_LOGPROBS, FIGURE2_GROUPS,
    Setting(lambda config, _: {"category_overlap": config.analysis.category_overlap}), Lineage("model_registry")))


@dg.asset(group_name="lm_statistics", kinds={"polars", "parquet"}, deps=LM_RANK_CELLS.deps(),
          code_version=LM_RANK_CELLS.code_version, check_specs=[contract_spec("lm_rank_cells")])
def lm_rank_cells(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
                  validator: ContractValidator) -> dg.MaterializeResult:
    """Median rank per (corpus, pair, prompt, category, model), one Figure-2 group at a time: for each pair
    (and ``pooled`` when ``analysis.pool_language_models`` is on), within each (model, prompt) the words
    every model of that group kept are ranked by descending log-prob (ties averaged, 1 = best;
    ``analysis.category_overlap``), and the median is taken per category. ``valence`` is the prompt's framing."""
    config = registry.load()
    groups = config.figure2_groups()
    if not groups:
        raise dg.Failure(no_groups_advice(config))
    versions = current_input_versions(context.instance, config, "lm_rank_cells")
    scores = load_word_logprobs(config, storage, list(dict.fromkeys(m for ms in groups.values() for m in ms)))
    words = storage.read_parquet(table_key("corpus_words"))
    prompts = storage.read_parquet(table_key("prompts")).select("prompt", "framing")
    parts, notes = [], {}
    for corpus_id in config.corpora:
        data = scores.filter(pl.col("corpus") == corpus_id).select("model", "prompt", "word", "logprob")
        dictionary = words.filter(pl.col("corpus") == corpus_id).select("word", "category")
        scored = set(data["model"].unique().to_list())
        for group, models in groups.items():
            name = f"{corpus_id}/{group}"
            absent = [m for m in models if m not in scored]
            shared = [] if absent or not models else common_words(data, models)
            if not shared:
                notes[name] = ("no language model is registered" if not models else
                               "no word is kept by every model of the group"
                               + (f" ({', '.join(absent)} kept none)" if absent else ""))
                continue
            cells = median_rank_cells(data, dictionary, prompts, models,
                                      category_overlap=config.analysis.category_overlap)
            if cells.is_empty():
                notes[name] = f"none of the {len(shared)} words every model kept is in the dictionary"
                continue
            parts.append(cells.with_columns(pl.lit(corpus_id).alias("corpus"), pl.lit(group).alias("pair"))
                         .select(list(RANK_CELL_SCHEMA)))
            notes[name] = f"{len(cells)} cells from {len(models)} models, {len(shared)} words every model kept"
    if not parts:
        raise dg.Failure("no rank cells for any corpus and pair, so the stored lm_rank_cells is kept: "
                         + "; ".join(f"{k}: {v}" for k, v in notes.items()))
    table = pl.concat(parts).cast(RANK_CELL_SCHEMA)
    uri, version, check = write_table(storage, validator, "lm_rank_cells", table)
    return table_result(table, uri, version, {"cells_per_pair": notes,
                                              "category_overlap": config.analysis.category_overlap,
                                              INPUT_VERSIONS: dg.MetadataValue.json(versions)}, check=check)


LM_ANOVA = TableSpec("lm_anova", code_version="2", contract="lm_anova", inputs=(Table("lm_rank_cells"), FIGURE2_GROUPS))


@dg.asset(group_name="lm_statistics", kinds={"statsmodels", "parquet"}, deps=LM_ANOVA.deps(),
          code_version=LM_ANOVA.code_version,
          check_specs=statistics_checks("lm_anova", "ANOVA (one per corpus and pair)"))
def lm_anova(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
             validator: ContractValidator) -> dg.MaterializeResult:
    """Type-II three-way ANOVA per corpus and Figure-2 group: median_rank ~ category * valence * model, the
    model factor holding that group's models (F, df, p per term). A design that cannot be fitted fails the
    ``lm_anova_fitted`` check (WARN), naming it and why."""
    config = registry.load()
    versions = current_input_versions(context.instance, config, "lm_anova")
    groups = config.figure2_groups()
    if not groups:
        raise dg.Failure(no_groups_advice(config))
    cells = read_per_pair(storage)
    parts, notes, not_fitted = [], {}, {}
    for corpus_id in config.corpora:
        for group in groups:
            name = f"{corpus_id}/{group}"
            try:
                fit = fit_anova(group_cells(cells, corpus_id, group))
            except NotFittable as exc:  # a degenerate design: say so, keep the others
                not_fitted[name] = str(exc)
                notes[name] = f"not fitted: {exc}"
                continue
            residual = float(fit.filter(pl.col("term") == "Residual")["sum_sq"][0])
            if residual <= SEPARATED * float(fit["sum_sq"].sum()):
                # No residual variance (e.g. demo LMs whose category medians are the same for every prompt):
                # F would be a ratio of rounding noise, so F and p are left empty and the note says why.
                fit = fit.with_columns(pl.lit(None, dtype=pl.Float64).alias("F"),
                                       pl.lit(None, dtype=pl.Float64).alias("p"))
                notes[name] = (f"fitted, but the residual sum of squares is 0 ({residual:.3g}): the cells are "
                               "perfectly separated by the factors, so F and p are undefined and left empty; "
                               "sum_sq shows which terms carry the variance")
            elif fit.filter(pl.col("term") != "Residual")["F"].null_count():
                notes[name] = "fitted; some terms have no F (zero degrees of freedom or no residual variance)"
            else:
                notes[name] = "fitted"
            parts.append(fit.with_columns(pl.lit(corpus_id).alias("corpus"), pl.lit(group).alias("pair"),
                                          pl.lit(None, dtype=pl.Utf8).alias("note")).select(list(ANOVA_SCHEMA)))
    table = pl.concat([*parts, explained_rows(ANOVA_SCHEMA, not_fitted, term=NOT_FITTED)])
    uri, version, check = write_table(storage, validator, "lm_anova", table)
    return table_result(table, uri, version, {"fit": notes, INPUT_VERSIONS: dg.MetadataValue.json(versions)},
                        preview_rows=40, check=check, more_checks=(fitted_result("lm_anova", not_fitted),))


LM_POSTHOC = TableSpec("lm_posthoc", code_version="2", contract="lm_posthoc", inputs=(
    Table("lm_rank_cells"), Setting(lambda config, _: {"pairs": ", ".join(config.pair_models()) or "none"})))


@dg.asset(group_name="lm_statistics", kinds={"scipy", "parquet"}, deps=LM_POSTHOC.deps(),
          code_version=LM_POSTHOC.code_version,
          check_specs=statistics_checks("lm_posthoc", "set of post-hoc tests (one per corpus and pair)"))
def lm_posthoc(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
               validator: ContractValidator) -> dg.MaterializeResult:
    """Per corpus and configured pair, Welch's t-test of the two models' median-rank cells (that pair's
    cells only) in every category x valence panel, Benjamini-Hochberg adjusted over the pair's panels
    (``p_bh``). The pooled group has no post-hoc tests. A pair that cannot be tested fails the
    ``lm_posthoc_fitted`` check (WARN), naming it and why."""
    config = registry.load()
    versions = current_input_versions(context.instance, config, "lm_posthoc")
    if not config.pairs:
        raise dg.Failure(f"no post-hoc test to run: they compare the two models of a pair, and {config.path} "
                         f"configures no pair (the pooled analysis, analysis.pool_language_models, has the ANOVA "
                         f"only): {ADD_A_PAIR}")
    cells = read_per_pair(storage)
    parts, notes, not_fitted = [], {}, {}
    for corpus_id in config.corpora:
        for pair, (model_a, model_b) in config.pair_models().items():
            name = f"{corpus_id}/{pair}"
            try:
                with warnings.catch_warnings():  # constant cells: scipy warns; the note below says so instead
                    warnings.simplefilter("ignore", RuntimeWarning)
                    tests = welch_posthoc(group_cells(cells, corpus_id, pair), model_a, model_b)
            except NotFittable as exc:
                not_fitted[name] = str(exc)
                notes[name] = f"not tested: {exc}"
                continue
            constant = int(tests["t"].is_nan().sum())
            separated = int(tests["t"].is_infinite().sum())
            notes[name] = (
                f"{len(tests)} panels"
                + (f"; {constant} panel(s) where both models' cells are one constant have no t or p (left empty)"
                   if constant else "")
                + (f"; {separated} panel(s) where each model's cells are constant but differ have an infinite t "
                   "(perfect separation, p = 0)" if separated else ""))
            parts.append(tests.with_columns(pl.lit(corpus_id).alias("corpus"), pl.lit(pair).alias("pair"),
                                            pl.col("t").fill_nan(None), pl.col("p").fill_nan(None),
                                            pl.lit(None, dtype=pl.Utf8).alias("note"))
                         .select(list(POSTHOC_SCHEMA)))
    untested = explained_rows(POSTHOC_SCHEMA, not_fitted).with_columns(
        pl.col("pair").replace_strict({p: a for p, (a, _) in config.pair_models().items()}).alias("model_a"),
        pl.col("pair").replace_strict({p: b for p, (_, b) in config.pair_models().items()}).alias("model_b"))
    table = pl.concat([*parts, untested])
    uri, version, check = write_table(storage, validator, "lm_posthoc", table)
    return table_result(table, uri, version, {"tests": notes, INPUT_VERSIONS: dg.MetadataValue.json(versions)},
                        preview_rows=40, check=check, more_checks=(fitted_result("lm_posthoc", not_fitted),))


# 2: plots embedded (the UI shows them); 3: a Figure-2 section per corpus and pair
LM_REPORT = TableSpec("lm_report", code_version="3", contract=None, stored=REPORT, listed=False, inputs=tuple(
    Table(name) for name in ("lm_rank_cells", "lm_anova", "lm_posthoc", "mwlr_tokens", "mwlr_words")))


@dg.asset(group_name="lm_statistics", kinds={"matplotlib", "markdown"}, deps=LM_REPORT.deps(),
          code_version=LM_REPORT.code_version)
def lm_report(context: dg.AssetExecutionContext, registry: Registry, storage: Storage) -> dg.MaterializeResult:
    """The language-model report: Figure-2 tables per corpus and pair (and the pooled group when
    ``analysis.pool_language_models`` is on), Table 1 (top and bottom MWLR strings) for the first positive
    prompt of each pair, and a Figure-3-style PNG of the word MWLRs (``reports/figure3.png``)."""
    config = registry.load()
    versions = current_input_versions(context.instance, config, "lm_report")
    cells = read_per_pair(storage)
    anova = read_per_pair(storage, "lm_anova")
    posthoc = read_per_pair(storage, "lm_posthoc")
    tokens = storage.read_parquet(table_key("mwlr_tokens"))
    words = storage.read_parquet(table_key("mwlr_words"))
    sections = ["# ValueBias report: language models (Figure 2, Table 1, Figure 3)",
                "Figure 2 is computed per pair of language models, on the words both models of the pair keep"
                + (", and once over every language model together (`pooled`), on the words all of them keep."
                   if POOLED in set(cells["pair"].to_list()) else ".")]

    def rows_of(table: pl.DataFrame, corpus_id: str, pair: str) -> pl.DataFrame:
        return table.filter((pl.col("corpus") == corpus_id) & (pl.col("pair") == pair)).drop("corpus", "pair")

    for (corpus_id, pair), pair_cells in cells.group_by("corpus", "pair", maintain_order=True):
        models = pair_cells["model"].unique(maintain_order=True).to_list()
        summary = (pair_cells.group_by("model", "category", "valence")
                   .agg(pl.col("median_rank").mean().alias("mean_median_rank"), pl.len().alias("cells"))
                   .sort("category", "valence", "model"))
        fit, tests = rows_of(anova, corpus_id, pair), rows_of(posthoc, corpus_id, pair)
        sections += [f"## {corpus_id}: {pair} ({', '.join(models)})",
                     "### Mean median rank per model (1 = best)", markdown_table(summary),
                     "### lm_anova (a design that cannot be fitted is a `not fitted` row, the reason in `note`)",
                     markdown_table(fit),
                     "### lm_posthoc", markdown_table(tests) if pair != POOLED else
                     "_No post-hoc tests for the pooled group: they compare the two models of a pair._"]
    plots = {"figure3.png": figure3_png(words, title="MWLR of " + ", ".join(config.implicit_rewards.words)
                                        + " per pair")}
    storage.write_bytes("reports/figure3.png", plots["figure3.png"])
    sections += ["## Implicit rewards (MWLR)", "![Figure 3: MWLR of the chosen words per pair](figure3.png)"]
    for pair in tokens["pair"].unique(maintain_order=True).to_list():
        rows = tokens.filter(pl.col("pair") == pair)
        prompt = rows["prompt"][0]
        sections += [f"### Table 1: {pair}, prompt `{prompt}` (rank > 0: favoured by {rows['model_a'][0]}, "
                     f"< 0: by {rows['model_b'][0]})",
                     markdown_table(rows.filter(pl.col("prompt") == prompt)
                                    .select("rank", "token", "mwlr", "logprob_a", "logprob_b"))]
    if words.height:
        means = (words.group_by("pair", "framing", "word").agg(pl.col("mwlr").mean().alias("mean_mwlr"),
                                                               pl.len().alias("prompts"))
                 .sort("pair", "word", "framing"))
        sections += ["### Mean word MWLR per pair and framing", markdown_table(means)]
    return report_result(storage, LM_REPORT.key, "\n\n".join(sections) + "\n", plots,
                         {INPUT_VERSIONS: dg.MetadataValue.json(versions)})
