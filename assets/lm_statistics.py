"""Figure-2 statistics for language models, per corpus (METHOD.md section 4), and the LM report
(Figure 2 tables, Table 1, Figure 3)."""


import warnings

import dagster as dg
import polars as pl

from assets.tables import (REPORT_KEYS, TABLE_KEYS, contract_spec, lm_word_logprobs_key, report_result,
                           table_result, write_table)
from assets.versions import CODE_VERSIONS, INPUT_VERSIONS, current_input_versions, reads
from resources.registry import Registry
from resources.storage import Storage
from resources.validation import ContractValidator
from valuebias.config import RegistryConfig
from valuebias.lm_statistics import common_words, lm_anova as fit_anova, lm_posthoc as welch_posthoc
from valuebias.lm_statistics import lm_rank_cells as median_rank_cells
from valuebias.report import figure3_png, markdown_table

RANK_CELL_SCHEMA = {"corpus": pl.Utf8, "prompt": pl.Utf8, "category": pl.Utf8, "valence": pl.Utf8,
                    "model": pl.Utf8, "median_rank": pl.Float64}
ANOVA_SCHEMA = {"corpus": pl.Utf8, "term": pl.Utf8, "sum_sq": pl.Float64, "df": pl.Float64, "F": pl.Float64,
                "p": pl.Float64}
# A residual sum of squares at most this fraction of the total is rounding noise: no residual variance.
SEPARATED = 1e-12
POSTHOC_SCHEMA = {"corpus": pl.Utf8, "pair": pl.Utf8, "category": pl.Utf8, "valence": pl.Utf8, "model_a": pl.Utf8,
                  "model_b": pl.Utf8, "n_a": pl.Int64, "n_b": pl.Int64, "mean_a": pl.Float64, "mean_b": pl.Float64,
                  "t": pl.Float64, "p": pl.Float64, "p_bh": pl.Float64}


def load_word_logprobs(config: RegistryConfig, storage: Storage) -> pl.DataFrame:
    """The stored word log-probs of every language model currently in the registry."""
    tables = []
    for model in config.language_models():
        key = lm_word_logprobs_key(model.model_id)
        if not storage.exists(key):
            raise dg.Failure(f"no word log-probs for model '{model.model_id}' at {storage.full_uri(key)}: "
                             f"materialize lm_word_logprobs for partition '{model.model_id}' first")
        tables.append(storage.read_parquet(key))
    if not tables:
        raise dg.Failure(f"no language model is registered in {config.path}")
    return pl.concat(tables)


@dg.asset(group_name="lm_statistics", kinds={"polars", "parquet"},
          deps=reads("lm_rank_cells"),
           code_version=CODE_VERSIONS["lm_rank_cells"], check_specs=[contract_spec("lm_rank_cells")])
def lm_rank_cells(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
                  validator: ContractValidator) -> dg.MaterializeResult:
    """Median rank per (corpus, prompt, category, model): within each (model, prompt), the words every
    language model kept are ranked by descending log-prob (ties averaged, 1 = best), and the median is
    taken per category. ``valence`` is the prompt's framing."""
    config = registry.load()
    versions = current_input_versions(context.instance, config, "lm_rank_cells")
    scores = load_word_logprobs(config, storage)
    words = storage.read_parquet(TABLE_KEYS["corpus_words"])
    prompts = storage.read_parquet(TABLE_KEYS["prompts"]).select("prompt", "framing")
    models = [m.model_id for m in config.language_models()]
    parts, notes = [], {}
    for corpus_id in config.corpora:
        data = scores.filter(pl.col("corpus") == corpus_id).select("model", "prompt", "word", "logprob")
        present = [m for m in models if m in set(data["model"].unique().to_list())]
        absent = [m for m in models if m not in present]
        shared = common_words(data, present) if present else []
        if not shared:
            notes[corpus_id] = "no word is kept by every language model" + (
                f" ({', '.join(absent)} kept none)" if absent else "")
            continue
        dictionary = words.filter(pl.col("corpus") == corpus_id).select("word", "category")
        cells = median_rank_cells(data, dictionary, prompts, present)
        parts.append(cells.with_columns(pl.lit(corpus_id).alias("corpus")).select(list(RANK_CELL_SCHEMA)))
        notes[corpus_id] = (f"{len(cells)} cells from {len(present)} models, {len(shared)} words every model kept"
                            + (f"; left out (kept no word): {', '.join(absent)}" if absent else ""))
    table = pl.concat(parts).cast(RANK_CELL_SCHEMA) if parts else pl.DataFrame(schema=RANK_CELL_SCHEMA)
    uri, version, check = write_table(storage, validator, "lm_rank_cells", table)
    return table_result(table, uri, version, {"cells_per_corpus": notes,
                                              INPUT_VERSIONS: dg.MetadataValue.json(versions)}, check=check)


@dg.asset(group_name="lm_statistics", kinds={"statsmodels", "parquet"}, deps=reads("lm_anova"),
           code_version=CODE_VERSIONS["lm_anova"], check_specs=[contract_spec("lm_anova")])
def lm_anova(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
             validator: ContractValidator) -> dg.MaterializeResult:
    """Type-II three-way ANOVA per corpus: median_rank ~ category * valence * model (F, df, p per term)."""
    versions = current_input_versions(context.instance, registry.load(), "lm_anova")
    cells = storage.read_parquet(TABLE_KEYS["lm_rank_cells"])
    parts, notes = [], {}
    for (corpus_id,), corpus_cells in cells.group_by("corpus", maintain_order=True):
        try:
            fit = fit_anova(corpus_cells)
        except ValueError as exc:  # degenerate design (one model, a missing cell): say so, keep the others
            notes[corpus_id] = f"not fitted: {exc}"
            continue
        residual = float(fit.filter(pl.col("term") == "Residual")["sum_sq"][0])
        if residual <= SEPARATED * float(fit["sum_sq"].sum()):
            # No residual variance (e.g. demo LMs whose category medians are the same for every prompt):
            # F would be a ratio of rounding noise, so F and p are left empty and the note says why.
            fit = fit.with_columns(pl.lit(None, dtype=pl.Float64).alias("F"), pl.lit(None, dtype=pl.Float64).alias("p"))
            notes[corpus_id] = (f"fitted, but the residual sum of squares is 0 ({residual:.3g}): the cells are "
                                "perfectly separated by the factors, so F and p are undefined and left empty; "
                                "sum_sq shows which terms carry the variance")
        elif fit.filter(pl.col("term") != "Residual")["F"].null_count():
            notes[corpus_id] = "fitted; some terms have no F (zero degrees of freedom or no residual variance)"
        else:
            notes[corpus_id] = "fitted"
        parts.append(fit.with_columns(pl.lit(corpus_id).alias("corpus")).select(list(ANOVA_SCHEMA)))
    table = pl.concat(parts) if parts else pl.DataFrame(schema=ANOVA_SCHEMA)
    uri, version, check = write_table(storage, validator, "lm_anova", table)
    return table_result(table, uri, version, {"fit": notes or {"all": "no rank cells"},
                                              INPUT_VERSIONS: dg.MetadataValue.json(versions)}, preview_rows=40,
                   check=check)


@dg.asset(group_name="lm_statistics", kinds={"scipy", "parquet"}, deps=reads("lm_posthoc"),
           code_version=CODE_VERSIONS["lm_posthoc"], check_specs=[contract_spec("lm_posthoc")])
def lm_posthoc(context: dg.AssetExecutionContext, registry: Registry, storage: Storage,
               validator: ContractValidator) -> dg.MaterializeResult:
    """Per corpus and configured pair, Welch's t-test of the two models' median-rank cells in every
    category x valence panel, Benjamini-Hochberg adjusted over the pair's panels (``p_bh``)."""
    config = registry.load()
    versions = current_input_versions(context.instance, config, "lm_posthoc")
    cells = storage.read_parquet(TABLE_KEYS["lm_rank_cells"])
    parts, notes = [], {}
    for (corpus_id,), corpus_cells in cells.group_by("corpus", maintain_order=True):
        for pair, (model_a, model_b) in config.pair_models().items():
            try:
                with warnings.catch_warnings():  # constant cells: scipy warns; the note below says so instead
                    warnings.simplefilter("ignore", RuntimeWarning)
                    tests = welch_posthoc(corpus_cells, model_a, model_b)
            except ValueError as exc:
                notes[f"{corpus_id}/{pair}"] = f"not tested: {exc}"
                continue
            constant = int(tests["t"].is_nan().sum())
            separated = int(tests["t"].is_infinite().sum())
            notes[f"{corpus_id}/{pair}"] = (
                f"{len(tests)} panels"
                + (f"; {constant} panel(s) where both models' cells are one constant have no t or p (left empty)"
                   if constant else "")
                + (f"; {separated} panel(s) where each model's cells are constant but differ have an infinite t "
                   "(perfect separation, p = 0)" if separated else ""))
            parts.append(tests.with_columns(pl.lit(corpus_id).alias("corpus"), pl.lit(pair).alias("pair"),
                                            pl.col("t").fill_nan(None), pl.col("p").fill_nan(None))
                         .select(list(POSTHOC_SCHEMA)))
    if not config.pairs:
        notes["all"] = "no pairs configured: the post-hoc tests compare the models of each pair"
    table = pl.concat(parts).cast(POSTHOC_SCHEMA) if parts else pl.DataFrame(schema=POSTHOC_SCHEMA)
    uri, version, check = write_table(storage, validator, "lm_posthoc", table)
    return table_result(table, uri, version, {"tests": notes or {"all": "no rank cells"},
                                              INPUT_VERSIONS: dg.MetadataValue.json(versions)}, preview_rows=40,
                   check=check)


@dg.asset(group_name="lm_statistics", kinds={"matplotlib", "markdown"},
          deps=reads("lm_report"),
           code_version=CODE_VERSIONS["lm_report"])
def lm_report(context: dg.AssetExecutionContext, registry: Registry, storage: Storage) -> dg.MaterializeResult:
    """The language-model report: Figure-2 tables per corpus, Table 1 (top and bottom MWLR strings) for
    the first positive prompt of each pair, and a Figure-3-style PNG of the word MWLRs
    (``reports/figure3.png``)."""
    config = registry.load()
    versions = current_input_versions(context.instance, config, "lm_report")
    cells = storage.read_parquet(TABLE_KEYS["lm_rank_cells"])
    anova = storage.read_parquet(TABLE_KEYS["lm_anova"])
    posthoc = storage.read_parquet(TABLE_KEYS["lm_posthoc"])
    tokens = storage.read_parquet(TABLE_KEYS["mwlr_tokens"])
    words = storage.read_parquet(TABLE_KEYS["mwlr_words"])
    sections = ["# ValueBias report: language models (Figure 2, Table 1, Figure 3)"]
    for (corpus_id,), corpus_cells in cells.group_by("corpus", maintain_order=True):
        summary = (corpus_cells.group_by("model", "category", "valence")
                   .agg(pl.col("median_rank").mean().alias("mean_median_rank"), pl.len().alias("cells"))
                   .sort("category", "valence", "model"))
        sections += [f"## {corpus_id}", "### Mean median rank per model (1 = best)", markdown_table(summary),
                     "### lm_anova", markdown_table(anova.filter(pl.col("corpus") == corpus_id).drop("corpus")),
                     "### lm_posthoc", markdown_table(posthoc.filter(pl.col("corpus") == corpus_id).drop("corpus"))]
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
    return report_result(storage, REPORT_KEYS["lm_report"], "\n\n".join(sections) + "\n", plots,
                         {INPUT_VERSIONS: dg.MetadataValue.json(versions)})
