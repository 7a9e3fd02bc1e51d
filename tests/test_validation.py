"""ContractValidator: real Great Expectations validation of polars frames against data_contracts/*.yaml."""

from __future__ import annotations

import json
import math
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from valuebias.resources.validation import DEFAULT_CONTRACTS_DIR, ContractValidator, ValidationReport
from valuebias.errors import InputError

UPPER_REGEX = r"^[^A-Z\s](.*[^A-Z\s])?$"

VALID: dict[str, pl.DataFrame] = {
    "prompts": pl.DataFrame({
        "prompt": ["greatest_ever_one", "worst_world_please", "good_time_single"],
        "text": ["What, in one word, is the greatest thing ever?",
                 "What is the worst thing in the world? Please answer in one word only.",
                 "What, in a single word, is the most good thing of all time?"],
        "adjective": ["greatest", "worst", "good"],
        "superlative": ["ever", "world", "time"],
        "style": ["one", "please", "single"],
        "framing": ["positive", "negative", "positive"],
    }),
    "corpus_words": pl.DataFrame({
        "corpus": ["big2", "big2", "big2", "mfd2"],
        "word": ["love", "self-reliance", "freedom", "love"],
        "category": ["Communion", "Agency", "Agency", "Care"],
    }),
    "model_registry": pl.DataFrame({
        "model": ["grm-llama3.2-3b", "GRM_gemma2-2B", "tiny.demo"],
        "kind": ["reward_model", "reward_model", "language_model"],
        "family": ["llama", "gemma", "llama"],
        "source": ["huggingface", "published", "demo"],
        "fingerprint": ["0123456789abcdef", "f" * 64, "a1b2c3d4e5f60718"],
    }),
    "rm_word_scores": pl.DataFrame({
        "model": ["m1", "m1", "m2"],
        "corpus": ["big2", "big2", "big2"],
        "prompt": ["greatest_ever_one"] * 3,
        "word": ["love", "power", "love"],
        "score": [1.25, -3.0, 0.0],
    }),
    "rm_rank_cells": pl.DataFrame({
        "corpus": ["big2", "big2"],
        "ranks": ["raw", "frequency_controlled"],
        "model": ["m1", "m1"],
        "family": ["llama", "llama"],
        "category": ["Agency", "Communion"],
        "prompt": ["greatest_ever_one", "greatest_ever_one"],
        "framing": ["positive", "positive"],
        "median_rank": [1.0, -3.25],
    }),
    "rm_mixed_model": pl.DataFrame({
        "corpus": ["big2", "big2", "big2"],
        "ranks": ["raw", "raw", "raw"],
        "term": ["Intercept", "family[T.llama]", "Group Var"],
        "coef": [120.5, -4.25, 3.5],
        "se": [2.0, 1.5, None],
        "z": [60.25, -2.83, None],
        "p": [0.0, 0.0047, None],
        "note": [None, None, None],
    }),
    "rm_sweep_tokens": pl.DataFrame({
        "model": ["m1", "m1"], "prompt": ["best_ever_one", "best_ever_one"], "side": ["top", "bottom"],
        "rank": [1, -1], "token": ["love", "war"], "score": [2.5, -3.0],
    }),
    "rm_interaction_test": pl.DataFrame({
        "corpus": ["big2", "big2"], "ranks": ["raw", "frequency_controlled"],
        "test": ["likelihood ratio, ML fits: with vs without family:category:framing"] * 2,
        "statistic": [210.5, None], "df": [1, None], "p": [0.0, None], "n_families": [2, 1], "n_models": [4, 1],
        "note": [None, "the mixed model cannot be fitted: family has 1 level(s)"],
    }),
    "rm_value_cards": pl.DataFrame({
        "model": ["m1", "m1"], "corpus": ["big2", "big2"], "category": ["Agency", "Communion"],
        "framing": ["positive", "positive"], "prompts": [27, 27], "entries": [104, 159], "families": [80, 121],
        "reference_models": [9, 9], "deviation": [-9.5, 9.0], "deviation_fraction": [-0.036, 0.034],
        "se": [1.2, 1.1], "df": [150.5, 140.25], "ci_low": [-12.0, 6.5], "ci_high": [-7.0, 11.5],
        "p": [0.0001, 0.0002], "p_bh": [0.0002, 0.0002], "effect_size_a": [0.64, 0.36],
        "deviation_frequency_controlled": [-8.0, None], "p_frequency_controlled": [0.001, None],
        "position": [2, 9], "flag": [True, True],
        "finding": ["ranks Agency words higher than the registry under positive framing: -3.6 % of the corpus "
                    "(95 % interval -4.6 to -2.7), A = 0.64",
                    "ranks Communion words lower than the registry under positive framing: +3.4 % of the corpus "
                    "(95 % interval +2.5 to +4.4), A = 0.36"],
    }),
    "rm_rank_sums": pl.DataFrame({
        "corpus": ["big2", "big2"], "ranks": ["raw", "frequency_controlled"], "prompt": ["best_ever_one"] * 2,
        "word": ["love", "love"], "category": ["Communion", "Communion"], "family": ["love", "love"],
        "rank_sum": [1250.5, -3.25],
        "models": [10, 10],
    }),
    "rm_family_tests": pl.DataFrame({
        "corpus": ["big2", "big2"],
        "ranks": ["raw", "raw"],
        "category": ["Agency", "Communion"],
        "framing": ["positive", "negative"],
        "family_a": ["gemma", "gemma"],
        "family_b": ["llama", "llama"],
        "n_a": [108, 108],
        "n_b": [162, 162],
        "mean_a": [120.0, 99.5],
        "mean_b": [110.0, 101.0],
        "t": [2.5, None],
        "p": [0.012, 1.0],
        "p_bonferroni": [0.048, 1.0],
        "correction": ["Bonferroni over 4 panels x 1 comparison (big2, raw ranks)"] * 2,
        "note": [None, None],
    }),
    "lm_word_logprobs": pl.DataFrame({
        "model": ["lm1", "lm1", "lm2"],
        "corpus": ["big2", "big2", "big2"],
        "prompt": ["greatest_ever_one"] * 3,
        "word": ["love", "self-reliance", "love"],
        "logprob": [-3.5, -17.25, 0.0],
        "rule": ["single_token", "full_sequence", "single_token"],
    }),
    "lm_rank_cells": pl.DataFrame({
        "corpus": ["big2", "big2"],
        "pair": ["lm1__vs__lm2", "pooled"],
        "prompt": ["greatest_ever_one", "greatest_ever_one"],
        "category": ["Agency", "Communion"],
        "valence": ["positive", "positive"],
        "model": ["lm1", "lm1"],
        "median_rank": [1.0, 131.5],
    }),
    "lm_anova": pl.DataFrame({
        "corpus": ["big2", "big2"],
        "pair": ["lm1__vs__lm2", "lm1__vs__lm2"],
        "term": ["category:valence:model", "Residual"],
        "sum_sq": [12.5, 100.0],
        "df": [1.0, 208.0],
        "F": [26.0, None],
        "p": [1e-6, None],
        "note": [None, None],
    }),
    "lm_posthoc": pl.DataFrame({
        "corpus": ["big2", "big2"],
        "pair": ["a__vs__b", "a__vs__b"],
        "category": ["Agency", "Agency"],
        "valence": ["positive", "negative"],
        "model_a": ["a", "a"],
        "model_b": ["b", "b"],
        "n_a": [27, 27],
        "n_b": [27, 27],
        "mean_a": [310.0, 400.5],
        "mean_b": [420.0, 400.5],
        "t": [-5.5, None],
        "p": [1e-5, None],
        "p_bh": [4e-5, None],
        "note": [None, None],
    }),
    "mwlr_tokens": pl.DataFrame({
        "pair": ["a__vs__b", "a__vs__b"],
        "model_a": ["a", "a"],
        "model_b": ["b", "b"],
        "prompt": ["greatest_ever_one"] * 2,
        "framing": ["positive", "positive"],
        "side": ["top", "bottom"],
        "rank": pl.Series([1, -1], dtype=pl.Int32),
        "token": ["freedom", " love"],
        "mwlr": [0.0125, -0.02],
        "logprob_a": [-2.0, -6.5],
        "logprob_b": [-4.0, -1.5],
    }),
    "mwlr_words": pl.DataFrame({
        "pair": ["a__vs__b", "a__vs__b"],
        "model_a": ["a", "a"],
        "model_b": ["b", "b"],
        "prompt": ["greatest_ever_one"] * 2,
        "framing": ["positive", "positive"],
        "word": ["freedom", "love"],
        "mwlr": [0.004, -0.01],
        "n_variants": pl.Series([2, 6], dtype=pl.UInt32),
        "variants": ["'freedom', 'Freedom'", "' LOVE', ' Love', ' love', 'LOVE', 'Love', 'love'"],
    }),
}


@pytest.fixture(scope="module")
def validator() -> ContractValidator:
    return ContractValidator()


def failed(report: ValidationReport) -> dict[str, object]:
    return {r.rule: r for r in report.rules if not r.success}


# ------------------------------------------------------------------------------------------ valid data
def test_every_contract_has_a_valid_example():
    contracts = {p.stem for p in Path(DEFAULT_CONTRACTS_DIR).glob("*.yaml")}
    assert contracts == set(VALID)


@pytest.mark.parametrize("name", sorted(VALID))
def test_every_contract_accepts_a_valid_frame(validator, name):
    report = validator.validate(VALID[name], name)
    assert report.success, report.summary()
    assert report.contract == name
    assert report.row_count == VALID[name].height
    contract = validator.contract(name)
    assert contract.column_names == VALID[name].columns
    # at least an existence and a type rule per column, all evaluated without error
    assert len(report.rules) >= 2 * len(contract.columns)
    assert all(r.success and r.error is None and r.unexpected_count == 0 for r in report.rules)
    assert report.summary().startswith(f"contract {name}: all ")
    assert report.to_metadata()["rules_failed"] == 0


def test_extra_columns_are_allowed(validator):
    frame = VALID["corpus_words"].with_columns(pl.lit(1).alias("frequency"))
    assert validator.validate(frame, "corpus_words").success


def test_pandas_frames_are_accepted(validator):
    frame = VALID["rm_word_scores"].to_pandas()  # pandas 3: 'str' dtype columns
    assert validator.validate(frame, "rm_word_scores").success
    bad = frame.copy()
    bad.loc[1, "word"] = None
    report = validator.validate(bad, "rm_word_scores")
    assert failed(report)["word is not null"].unexpected_rows == [1]


# ------------------------------------------------------------------------------------------ each rule kind
def test_regex_rule_names_rows_and_values(validator):
    frame = VALID["corpus_words"].with_columns(
        pl.Series("word", ["love", "power", "Hello", " freedom"]))
    report = validator.validate(frame, "corpus_words")
    assert not report.success
    rule = failed(report)[f"word matches regex {UPPER_REGEX}"]
    assert rule.column == "word"
    assert rule.unexpected_count == 2
    assert rule.unexpected_rows == [2, 3]
    assert rule.unexpected_values == ["Hello", " freedom"]
    assert list(failed(report)) == [f"word matches regex {UPPER_REGEX}"]
    assert report.summary() == (
        f"contract corpus_words: rule 'word matches regex {UPPER_REGEX}' failed on 2 rows, "
        "e.g. row 2 ('Hello'), row 3 (' freedom')")


def test_not_null_rule_counts_null_and_nan(validator):
    frame = VALID["rm_word_scores"].with_columns(pl.Series("score", [1.0, None, float("nan")]))
    rule = failed(validator.validate(frame, "rm_word_scores"))["score is not null"]
    assert rule.unexpected_rows == [1, 2]
    assert rule.unexpected_values == [None, None]
    frame = VALID["rm_word_scores"].with_columns(pl.Series("corpus", ["big2", None, "big2"]))
    report = validator.validate(frame, "rm_word_scores")
    assert list(failed(report)) == ["corpus is not null"]
    assert failed(report)["corpus is not null"].unexpected_rows == [1]


def test_type_rules(validator):
    # text where a float is expected: every offending value is named
    frame = VALID["rm_word_scores"].with_columns(pl.Series("score", ["1.0", "high", "2"]))
    rule = failed(validator.validate(frame, "rm_word_scores"))["score is of type float"]
    assert rule.unexpected_rows == [0, 1, 2]
    assert rule.unexpected_values == ["1.0", "high", "2"]
    # integers where a float is expected: the column's dtype is at fault
    frame = VALID["rm_word_scores"].with_columns(pl.Series("score", [1, 2, 3]))
    report = validator.validate(frame, "rm_word_scores")
    assert list(failed(report)) == ["score is of type float"]
    assert "column dtype is int64" in report.summary()
    # numbers where text is expected
    frame = VALID["rm_word_scores"].with_columns(pl.Series("model", [1, 2, 3]))
    assert "model is of type string" in failed(validator.validate(frame, "rm_word_scores"))
    # a float count fails the integer rule; integers with nulls still pass it (and fail not_null)
    frame = VALID["rm_family_tests"].with_columns(pl.Series("n_a", [108.0, 108.0]))
    assert "n_a is of type integer" in failed(validator.validate(frame, "rm_family_tests"))
    frame = VALID["rm_interaction_test"].with_columns(pl.Series("n_models", [None, 1], dtype=pl.Int64))
    assert list(failed(validator.validate(frame, "rm_interaction_test"))) == ["n_models is not null"]


def test_in_set_rule(validator):
    frame = VALID["prompts"].with_columns(pl.Series("framing", ["positive", "neutral", "Positive"]))
    rule = failed(validator.validate(frame, "prompts"))["framing is in set [positive, negative]"]
    assert rule.unexpected_rows == [1, 2]
    assert rule.unexpected_values == ["neutral", "Positive"]
    frame = VALID["model_registry"].with_columns(pl.Series("kind", ["reward_model", "rm", "language_model"]))
    assert failed(validator.validate(frame, "model_registry"))[
        "kind is in set [reward_model, language_model]"].unexpected_rows == [1]


def test_min_max_rules(validator):
    frame = VALID["rm_family_tests"].with_columns(pl.Series("p", [1.5, 0.2]),
                                                  pl.Series("p_bonferroni", [1.0, -0.1]),
                                                  pl.Series("n_b", [0, 162]))
    report = validator.validate(frame, "rm_family_tests")
    rules = failed(report)
    assert set(rules) == {"p between 0 and 1", "p_bonferroni between 0 and 1", "n_b >= 1"}
    assert rules["p between 0 and 1"].unexpected_rows == [0]
    assert rules["p between 0 and 1"].unexpected_values == [1.5]
    assert rules["p_bonferroni between 0 and 1"].unexpected_rows == [1]
    assert rules["n_b >= 1"].unexpected_values == [0]
    frame = VALID["rm_interaction_test"].with_columns(pl.Series("statistic", [-0.5, 2.0]))
    assert failed(validator.validate(frame, "rm_interaction_test"))["statistic >= 0"].unexpected_rows == [0]
    # nullable p in the mixed model: nulls pass, out-of-range values fail
    frame = VALID["rm_mixed_model"].with_columns(pl.Series("p", [None, 2.0, None]))
    assert failed(validator.validate(frame, "rm_mixed_model"))["p between 0 and 1"].unexpected_rows == [1]


def test_single_column_unique_rule(validator):
    frame = VALID["prompts"].with_columns(
        pl.Series("prompt", ["greatest_ever_one", "worst_world_please", "greatest_ever_one"]))
    rule = failed(validator.validate(frame, "prompts"))["prompt is unique"]
    assert rule.unexpected_rows == [0, 2]
    assert rule.unexpected_values == ["greatest_ever_one", "greatest_ever_one"]


def test_duplicate_compound_key_is_reported(validator):
    frame = pl.concat([VALID["corpus_words"], VALID["corpus_words"][1:2]])
    report = validator.validate(frame, "corpus_words")
    rule = failed(report)["(corpus, word, category) is unique"]
    assert rule.column == "corpus, word, category"
    assert rule.unexpected_count == 2
    assert rule.unexpected_rows == [1, 4]
    assert rule.unexpected_values == [{"corpus": "big2", "word": "self-reliance", "category": "Agency"}] * 2
    # the same word in another category is not a duplicate
    other = pl.DataFrame({"corpus": ["big2"], "word": ["love"], "category": ["Agency"]})
    assert validator.validate(pl.concat([VALID["corpus_words"], other]), "corpus_words").success


def test_row_count_rule(validator):
    report = validator.validate(VALID["corpus_words"].clear(), "corpus_words")
    rule = failed(report)["row count >= 1"]
    assert rule.observed == 0
    assert report.summary() == "contract corpus_words: rule 'row count >= 1' failed (observed 0)"


def test_missing_column_fails_clearly(validator):
    report = validator.validate(VALID["corpus_words"].drop("category"), "corpus_words")
    assert not report.success
    assert list(failed(report)) == ["column category exists"]
    assert report.summary() == ("contract corpus_words: rule 'column category exists' failed "
                                "(column missing; the table has: corpus, word)")
    # rules that need the column are not attempted (no GX exceptions in the report)
    assert all(r.error is None for r in report.rules)
    assert not any(r.column and "category" in r.column and "exists" not in r.rule for r in report.rules)


def test_rule_on_wrong_kind_of_column_is_an_error_not_a_pass(validator):
    frame = VALID["rm_interaction_test"].with_columns(pl.Series("statistic", ["1", "2"]))
    rules = failed(validator.validate(frame, "rm_interaction_test"))
    assert "statistic is of type float" in rules
    assert rules["statistic >= 0"].error  # GX could not compare text with 0


def test_examples_are_capped_at_twenty(validator):
    frame = pl.DataFrame({"corpus": ["c"] * 25, "word": [f"W{i}" for i in range(25)], "category": ["x"] * 25})
    rule = failed(validator.validate(frame, "corpus_words"))[f"word matches regex {UPPER_REGEX}"]
    assert rule.unexpected_count == 25
    assert rule.unexpected_rows == list(range(20))
    assert rule.unexpected_values == [f"W{i}" for i in range(20)]


# ------------------------------------------------------------------------------------------ reports
def test_metadata_is_json_friendly_and_accepted_by_dagster(validator):
    frame = VALID["rm_word_scores"].with_columns(pl.Series("score", [float("nan"), 1.0, 2.0]),
                                                 pl.Series("word", ["love", "love", "love"]))
    report = validator.validate(frame, "rm_word_scores")
    meta = report.to_metadata()
    json.dumps(meta, allow_nan=False)
    assert meta["contract"] == "rm_word_scores"
    assert meta["success"] is False
    assert meta["row_count"] == 3
    assert meta["rules_failed"] == 2
    by_rule = {r["rule"]: r for r in meta["failed_rules"]}
    assert by_rule["score is not null"]["unexpected_rows"] == [0]
    assert by_rule["score is not null"]["unexpected_values"] == [None]
    assert by_rule["(model, corpus, prompt, word) is unique"]["unexpected_rows"] == [0, 1]
    assert meta["summary"] == report.summary()
    assert len(report.summary().splitlines()) == 2
    result = dg.AssetCheckResult(passed=report.success, metadata=meta)
    assert result.metadata["rules_failed"].value == 2


def test_raise_if_failed_names_row_and_field(validator):
    frame = VALID["corpus_words"].with_columns(pl.Series("word", ["love", "power", "Hello", "x"]))
    report = validator.validate(frame, "corpus_words")
    with pytest.raises(InputError) as err:
        report.raise_if_failed(source="corpora/big2.csv")
    assert err.value.row == 2 and err.value.field == "word"
    assert str(err.value).startswith("corpora/big2.csv: row 2, field 'word': breaks data contract")
    validator.validate(VALID["corpus_words"], "corpus_words").raise_if_failed()


def test_validator_as_a_dagster_resource_in_an_asset_check():
    @dg.asset
    def corpus_words() -> pl.DataFrame:
        return VALID["corpus_words"]

    @dg.asset_check(asset=corpus_words)
    def corpus_words_contract(validator: ContractValidator) -> dg.AssetCheckResult:
        frame = VALID["corpus_words"].with_columns(pl.Series("word", ["love", "X", "a", "b"]))
        report = validator.validate(frame, "corpus_words")
        return dg.AssetCheckResult(passed=report.success, metadata=report.to_metadata(),
                                   description=report.summary())

    result = dg.materialize([corpus_words, corpus_words_contract],
                            resources={"validator": ContractValidator()}, raise_on_error=False)
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 1
    assert evaluations[0].passed is False
    assert evaluations[0].metadata["rules_failed"].value == 1


# ------------------------------------------------------------------------------------------ contract files
def test_unknown_contract(validator):
    with pytest.raises(InputError, match="no data contract named 'nope'") as err:
        validator.validate(VALID["prompts"], "nope")
    assert "corpus_words" in str(err.value)


def write_contract(directory: Path, name: str, text: str) -> ContractValidator:
    (directory / f"{name}.yaml").write_text(text)
    return ContractValidator(contracts_dir=str(directory))


@pytest.mark.parametrize("text, field", [
    ("name: t\ncolumns:\n  a: {type: text}\n", "columns.a.type"),
    ("name: t\ncolumns:\n  a: {regex: '(unclosed'}\n", "columns.a.regex"),
    ("name: t\ncolumns:\n  a: {not_nul: true}\n", "columns.a.not_nul"),
    ("name: t\ncolumns:\n  a: {min: 2, max: 1}\n", "columns.a.min"),
    ("name: t\ncolumns:\n  a: {in_set: positive}\n", "columns.a.in_set"),
    ("name: t\ncolumns:\n  a: {type: string}\nunique: [a, b]\n", "unique"),
    ("name: t\ncolumns:\n  a: {type: string}\nmin_rows: -1\n", "min_rows"),
    ("name: other\ncolumns:\n  a: {type: string}\n", "name"),
    ("name: t\ncolumn:\n  a: {type: string}\n", "column"),
])
def test_malformed_contracts_are_input_errors(tmp_path, text, field):
    checker = write_contract(tmp_path, "t", text)
    with pytest.raises(InputError) as err:
        checker.validate(pl.DataFrame({"a": ["x"]}), "t")
    assert err.value.field == field
    assert err.value.source == str(tmp_path / "t.yaml")


def test_custom_contract_with_boolean_and_max_rows(tmp_path):
    checker = write_contract(tmp_path, "flags", (
        "name: flags\ncolumns:\n  ok: {type: boolean, not_null: true}\n  w: {type: float, max: 1.5}\n"
        "unique: [w]\nmax_rows: 2\n"))
    assert checker.validate(pl.DataFrame({"ok": [True, False], "w": [0.5, None]}), "flags").success
    report = checker.validate(pl.DataFrame({"ok": [True, None, False], "w": [0.5, 2.0, 0.5]}), "flags")
    assert set(failed(report)) == {"ok is not null", "w <= 1.5", "w is unique", "row count <= 2"}
    assert failed(report)["w is unique"].unexpected_rows == [0, 2]
    assert failed(report)["row count <= 2"].observed == 3
    # an edited contract is re-read
    (tmp_path / "flags.yaml").write_text("name: flags\ncolumns:\n  ok: {type: boolean}\n  extra_column: {}\n")
    assert list(failed(checker.validate(pl.DataFrame({"ok": [True]}), "flags"))) == ["column extra_column exists"]


def test_validator_does_not_import_gx_until_used():
    import subprocess
    import sys

    code = ("import sys; import valuebias.resources.validation as v; "
            "assert 'great_expectations' not in sys.modules; v.ContractValidator(); "
            "assert 'great_expectations' not in sys.modules")
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)


def test_nan_free_values_in_reports(validator):
    frame = VALID["rm_rank_cells"].with_columns(pl.Series("median_rank", [float("nan"), 0.0]))
    rules = failed(validator.validate(frame, "rm_rank_cells"))
    assert rules["median_rank is not null"].unexpected_values == [None]
    assert not any(isinstance(v, float) and math.isnan(v)
                   for r in rules.values() for v in r.unexpected_values)


def test_a_table_validated_before_is_not_validated_again_until_its_content_or_contract_changes(tmp_path):
    """write_table runs Great Expectations once per (contract, content): the same table again reuses the passed
    result; other content, or an edited contract, is validated anew (and a bad table still fails)."""
    import shutil

    from valuebias.assets.tables import write_table
    from valuebias.resources.storage import Storage

    contracts = tmp_path / "contracts"
    shutil.copytree(DEFAULT_CONTRACTS_DIR, contracts)
    storage, validator = Storage(uri=str(tmp_path / "data")), ContractValidator(contracts_dir=str(contracts))
    prompts = pl.DataFrame({"prompt": ["best_ever_one"], "text": ["What is the best thing ever?"],
                            "adjective": ["best"], "superlative": ["ever"], "style": ["one"],
                            "framing": ["positive"]})
    first = write_table(storage, validator, "prompts", prompts)[2]
    again = write_table(storage, validator, "prompts", prompts)[2]
    assert first.passed and again.passed and "validated" not in first.metadata
    assert again.metadata["validated"].value == "earlier, on this same content"
    changed = write_table(storage, validator, "prompts", prompts.with_columns(pl.lit("ok?").alias("text")))[2]
    assert "validated" not in changed.metadata
    (contracts / "prompts.yaml").write_text((contracts / "prompts.yaml").read_text() + "\n# edited\n")
    assert "validated" not in write_table(storage, validator, "prompts", prompts)[2].metadata
    with pytest.raises(dg.Failure, match="prompts_contract failed"):
        write_table(storage, validator, "prompts", prompts.with_columns(pl.lit("sideways").alias("framing")))
