"""Figure 2 per pair (docs/METHOD.md#81-figure-2-per-pair) and failures that show, at the level of the Dagster assets:
the
real lm_rank_cells / lm_anova / lm_posthoc functions on a real (ephemeral) Dagster instance, real ingest of a
small registry, and small seeded word log-prob tables written where lm_word_logprobs stores them."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from valuebias.assets.ingest import corpus_words, prompts
from valuebias.assets.lm_statistics import lm_anova, lm_posthoc, lm_rank_cells, lm_report
from valuebias.assets.tables import TABLE_KEYS, lm_word_logprobs_key
from valuebias.resources.registry import Registry
from valuebias.resources.storage import Storage
from valuebias.resources.validation import ContractValidator
from tests.registry_fixtures import AGENCY, COMMUNION, PROMPTS
from valuebias.errors import InputError

FIRST = "lm1__vs__lm2"
THIRD = "lm3__vs__lm2"
FIGURE2 = [lm_rank_cells, lm_anova, lm_posthoc]


def write_registry(root: Path, name: str, storage: Path, models: tuple[str, ...],
                   pairs: list[tuple[str, str]], pool: bool = False) -> Path:
    """A registry of demonstration LMs (never built here: their word log-probs are written directly)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "prompts.csv").write_text("prompt,text\n" + "".join(f'{p},"{t}"\n' for p, t in PROMPTS.items()))
    (root / "words.csv").write_text("word,category\n" + "".join(f"{w},Agency\n" for w in AGENCY)
                                    + "".join(f"{w},Communion\n" for w in COMMUNION))
    entries = "".join(f"  {m}:\n    kind: language_model\n    variant: instruction_tuned\n    family: llama\n"
                      f"    demo: {{architecture: llama, preferred_category: Agency}}\n" for m in models)
    text = ("prompts: {uri: prompts.csv}\n"
            "corpora:\n  small: {uri: words.csv, format: csv, word_column: word, category_column: category,"
            " categories: [Agency, Communion]}\n"
            f"state_dir: {root / 'state'}\nstorage: {storage}\n"
            f"analysis: {{pool_language_models: {'true' if pool else 'false'}}}\n"
            f"models:\n{entries}"
            + (("pairs:\n" + "".join(f"  - [{a}, {b}]\n" for a, b in pairs)) if pairs else ""))
    path = root / name
    path.write_text(text)
    return path


def word_logprobs(model: str, seed: int, words: list[str]) -> pl.DataFrame:
    """Seeded log-probs of ``words`` after every prompt, as lm_word_logprobs stores them."""
    rng = np.random.default_rng(seed)
    rows = [{"model": model, "corpus": "small", "prompt": p, "word": w, "logprob": float(-rng.gamma(2.0, 2.0)),
             "rule": "single_token"} for p in PROMPTS for w in words]
    return pl.DataFrame(rows)


# lm1 and lm2 keep every word; lm3 kept only the Agency words (a tokenizer that splits the others). Under the
# old pooled rule the words every LM keeps would shrink to Agency's, changing lm1 vs lm2.
WORDS = {"lm1": (1, AGENCY + COMMUNION), "lm2": (2, AGENCY + COMMUNION), "lm3": (3, AGENCY)}


def resources(config: Path, storage: Path) -> dict:
    return {"registry": Registry(config_path=str(config)), "storage": Storage(uri=str(storage)),
            "validator": ContractValidator()}


@pytest.fixture()
def data(tmp_path):
    """Ingested prompts and words, and the stored word log-probs of lm1, lm2, lm3; returns the storage folder."""
    storage = tmp_path / "data"
    config = write_registry(tmp_path, "ingest.yaml", storage, tuple(WORDS), [("lm1", "lm2")])
    assert dg.materialize([prompts, corpus_words], resources=resources(config, storage)).success
    store = Storage(uri=str(storage))
    for model, (seed, words) in WORDS.items():
        store.write_parquet(lm_word_logprobs_key(model), word_logprobs(model, seed, words))
    return storage


def run(config: Path, storage: Path, assets=FIGURE2, **kwargs):
    with dg.instance_for_test() as instance:
        return dg.materialize(assets, instance=instance, resources=resources(config, storage), **kwargs)


def tables(storage: Path) -> dict[str, pl.DataFrame]:
    store = Storage(uri=str(storage))
    return {name: store.read_parquet(TABLE_KEYS[name]) for name in ("lm_rank_cells", "lm_anova", "lm_posthoc")}


def checks(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def step_errors(result) -> dict[str, str]:
    """{step: 'ErrorClass: message'} of the innermost error of each failed step."""
    found = {}
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error.cause is not None:
            error = error.cause
        message = error.message.strip()  # "package.module.Class: text"
        head, _, text = message.partition(": ")
        found[event.step_key] = f"{error.cls_name}: {text if head.endswith(error.cls_name) else message}"
    return found


def test_a_third_lm_and_pair_leave_an_existing_pairs_rows_identical(tmp_path, data):
    first = write_registry(tmp_path, "first.yaml", data, ("lm1", "lm2"), [("lm1", "lm2")])
    result = run(first, data)
    assert result.success
    assert {name: e.passed for name, e in checks(result).items()} == {
        "lm_rank_cells_contract": True, "lm_anova_contract": True, "lm_anova_fitted": True,
        "lm_posthoc_contract": True, "lm_posthoc_fitted": True}
    before = tables(data)
    assert set(before["lm_rank_cells"]["pair"]) == {FIRST}
    assert before["lm_rank_cells"].height == len(PROMPTS) * 2 * 2  # prompts x categories x models
    assert set(before["lm_rank_cells"]["model"]) == {"lm1", "lm2"}
    assert "category:valence:model" in set(before["lm_anova"]["term"])
    assert before["lm_posthoc"].height == 4 and set(before["lm_posthoc"]["pair"]) == {FIRST}

    # A third LM, a second pair with it, and the pooled analysis (all three LMs on the words all keep).
    grown = write_registry(tmp_path, "grown.yaml", data, ("lm1", "lm2", "lm3"), [("lm1", "lm2"), ("lm3", "lm2")],
                           pool=True)
    result = run(grown, data)
    assert result.success  # designs that cannot be fitted do not fail the run ...
    after = tables(data)
    for name, table in after.items():
        assert set(table["pair"]) >= {FIRST}, name
        assert table.filter(pl.col("pair") == FIRST).equals(before[name].filter(pl.col("pair") == FIRST)), name
    cells = after["lm_rank_cells"]
    assert set(cells["pair"]) == {FIRST, THIRD, "pooled"}
    assert set(cells.filter(pl.col("pair") == "pooled")["model"]) == {"lm1", "lm2", "lm3"}
    assert set(cells.filter(pl.col("pair") == THIRD)["category"]) == {"Agency"}  # the words both keep
    # The old rule (every LM pooled) really would have changed lm1 vs lm2: Agency's ranks among Agency only.
    pooled_lm1 = cells.filter((pl.col("pair") == "pooled") & (pl.col("model") == "lm1"))
    first_lm1 = cells.filter((pl.col("pair") == FIRST) & (pl.col("model") == "lm1") & (pl.col("category") == "Agency"))
    assert not pooled_lm1.drop("pair").equals(first_lm1.drop("pair"))

    # ... they show: a failed WARN check names each ANOVA that could not be fitted, and why.
    evaluations = checks(result)
    fitted = evaluations["lm_anova_fitted"]
    assert not fitted.passed and fitted.severity == dg.AssetCheckSeverity.WARN
    assert set(fitted.metadata["not_fitted"].value) == {"small/lm3__vs__lm2", "small/pooled"}
    assert "small/lm3__vs__lm2: the ANOVA" in fitted.description and "category has 1 level" in fitted.description
    fitted_rows = after["lm_anova"].filter(pl.col("note").is_null())
    assert set(fitted_rows["pair"]) == {FIRST}
    explained = after["lm_anova"].filter(pl.col("note").is_not_null())  # a named, explained row each
    assert sorted(explained["pair"]) == sorted([THIRD, "pooled"]) and set(explained["term"]) == {"not fitted"}
    assert explained["sum_sq"].null_count() == 2 and all("category has 1 level" in n for n in explained["note"])
    assert evaluations["lm_posthoc_fitted"].passed  # lm3 vs lm2 has its two Agency panels
    assert set(after["lm_posthoc"]["pair"]) == {FIRST, THIRD}
    assert all(evaluations[f"{t}_contract"].passed for t in ("lm_rank_cells", "lm_anova", "lm_posthoc"))

    # The report has a Figure-2 section per corpus and pair, saying which ANOVA was not fitted and why to look.
    store = Storage(uri=str(data))
    store.write_parquet(TABLE_KEYS["mwlr_tokens"], pl.DataFrame(schema={
        "pair": pl.Utf8, "model_a": pl.Utf8, "model_b": pl.Utf8, "prompt": pl.Utf8, "rank": pl.Int32,
        "token": pl.Utf8, "mwlr": pl.Float64, "logprob_a": pl.Float64, "logprob_b": pl.Float64}))
    store.write_parquet(TABLE_KEYS["mwlr_words"], pl.DataFrame(schema={
        "pair": pl.Utf8, "framing": pl.Utf8, "word": pl.Utf8, "mwlr": pl.Float64}))
    assert run(grown, data, [lm_report]).success
    report = store.read_bytes("reports/lm_report.md").decode()
    sections = [line for line in report.splitlines() if line.startswith("## small: ")]
    assert sections == ["## small: lm1__vs__lm2 (lm1, lm2)", "## small: lm3__vs__lm2 (lm2, lm3)",
                        "## small: pooled (lm1, lm2, lm3)"]
    third = report.split("## small: lm3__vs__lm2")[1].split("## small: pooled")[0]
    assert "| not fitted |" in third and "category has 1 level" in third and "| Agency | negative |" in third
    assert "_No post-hoc tests for the pooled group" in report.split("## small: pooled")[1]

    # Registering lm3 without putting it in a pair (no pooling) leaves even the whole tables as they were.
    only_registered = write_registry(tmp_path, "registered.yaml", data, ("lm1", "lm2", "lm3"), [("lm1", "lm2")])
    assert run(only_registered, data).success
    for name, table in tables(data).items():
        assert table.equals(before[name]), name


def test_an_input_error_fails_the_run_instead_of_being_skipped(tmp_path, data):
    config = write_registry(tmp_path, "first.yaml", data, ("lm1", "lm2"), [("lm1", "lm2")])
    assert run(config, data).success
    store = Storage(uri=str(data))
    good = store.read_parquet(TABLE_KEYS["lm_rank_cells"])
    # A stored rank-cell table with a missing valence (written around its contract): bad input, not a design
    # that cannot be fitted. lm_anova used to catch ValueError and turn this into a green, empty fit.
    store.write_parquet(TABLE_KEYS["lm_rank_cells"], good.with_columns(
        pl.when(pl.col("prompt") == "best_ever_one").then(None).otherwise(pl.col("valence")).alias("valence")))
    for asset in (lm_anova, lm_posthoc):
        with pytest.raises(InputError, match="valence.*missing value"):
            run(config, data, [asset])
        result = run(config, data, [asset], raise_on_error=False)
        assert not result.success
        error = step_errors(result)[asset.key.to_user_string()]
        assert error == "InputError: cells: row 2, field 'valence': missing value"


def test_no_pair_and_no_pooling_fails_naming_the_keys(tmp_path, data):
    config = write_registry(tmp_path, "none.yaml", data, ("lm1", "lm2"), [])
    result = run(config, data, [lm_rank_cells], raise_on_error=False)
    assert not result.success
    error = step_errors(result)["lm_rank_cells"]
    assert error.startswith("Failure: ")
    assert "pairs: [[model_a, model_b]]" in error and "analysis.pool_language_models: true" in error
    assert str(config) in error


def test_when_no_test_can_run_the_table_explains_it_and_the_check_fails(tmp_path, data):
    # Only lm3 vs lm2, whose shared words are all Agency words: no ANOVA can be fitted. The run succeeds, the
    # table is not empty: one explained row, and the warn-level check fails naming the analysis and why.
    third_only = write_registry(tmp_path, "third.yaml", data, ("lm2", "lm3"), [("lm3", "lm2")])
    result = run(third_only, data, [lm_rank_cells, lm_anova])
    assert result.success
    table = Storage(uri=str(data)).read_parquet(TABLE_KEYS["lm_anova"])
    assert table.select("pair", "term").rows() == [(THIRD, "not fitted")]
    assert "category has 1 level" in table["note"][0]
    fitted = checks(result)["lm_anova_fitted"]
    assert not fitted.passed and "small/lm3__vs__lm2" in fitted.description