"""Tests for valuebias.published, and the whole Figure-1 analysis on the authors' released scores."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest
import scipy.stats

from valuebias.errors import InputError
from valuebias.published import read_published_scores
from valuebias.statistics import family_tests, fit_mixed_model, median_rank_cells, rank_words

PAPER_RELEASE = Path(__file__).resolve().parents[2] / "shared" / "paper_release"
POSITIVE = {"best", "greatest", "good"}
NEGATIVE = {"worst", "bad", "terrible"}


# ---------------------------------------------------------------- the reader on hand-made files

def test_reads_wide_file_into_long_rows():
    data = b"response,best_a,worst_a,ignored\n Love ,1.5,-2,x\nPOWER,3e-2,0,y\n"
    long = read_published_scores(data, source="rm.csv", prompt_ids=["worst_a", "best_a"])
    assert long.schema == pl.Schema({"prompt": pl.Utf8, "word": pl.Utf8, "score": pl.Float64})
    assert long.rows() == [
        ("worst_a", "love", -2.0), ("worst_a", "power", 0.0),
        ("best_a", "love", 1.5), ("best_a", "power", 0.03),
    ]


def test_missing_prompt_columns_are_all_listed():
    data = b"response,best_a\nlove,1\n"
    with pytest.raises(InputError) as err:
        read_published_scores(data, source="rm.csv", prompt_ids=["best_a", "worst_a", "bad_a"])
    assert err.value.source == "rm.csv"
    assert err.value.field == "worst_a"
    assert "['worst_a', 'bad_a']" in str(err.value)


def test_non_numeric_cell_names_row_and_column():
    data = b"response,best_a,worst_a\nlove,1,2\npower,3,high\n"
    with pytest.raises(InputError) as err:
        read_published_scores(data, source="rm.csv", prompt_ids=["best_a", "worst_a"])
    assert (err.value.source, err.value.row, err.value.field) == ("rm.csv", 3, "worst_a")  # the file's line 3
    assert str(err.value) == "rm.csv: row 3, field 'worst_a': not a finite number: 'high'"


def test_empty_cell_names_row_and_column():
    data = b"response,best_a,worst_a\nlove,,2\n"
    with pytest.raises(InputError) as err:
        read_published_scores(data, source="rm.csv", prompt_ids=["best_a", "worst_a"])
    assert (err.value.row, err.value.field) == (2, "best_a")
    assert "empty score" in str(err.value)


def test_rows_are_file_lines_and_unreadable_files_name_their_line():
    # a quoted word spanning two lines: the bad score is on the file's line 4
    data = b'response,best_a\n"two\nlines",1\npower,x\n'
    with pytest.raises(InputError, match=r"^rm.csv: row 4, field 'best_a': not a finite number: 'x'$"):
        read_published_scores(data, source="rm.csv", prompt_ids=["best_a"])
    with pytest.raises(InputError, match=r"^rm.csv: row 3, field 'file': not UTF-8 text \(byte 24\)$"):
        read_published_scores(b"response,best_a\nlove,1\np\xffwer,2\n", source="rm.csv", prompt_ids=["best_a"])
    with pytest.raises(InputError, match=r"^rm.csv: row 3, field 'file': not a readable CSV: a quote opened on this line is never closed$"):
        read_published_scores(b'response,best_a\nlove,1\n"power,2\nhope,3\n', source="rm.csv", prompt_ids=["best_a"])


def test_missing_response_column():
    with pytest.raises(InputError) as err:
        read_published_scores(b"word,best_a\nlove,1\n", source="rm.csv", prompt_ids=["best_a"])
    assert err.value.field == "response"
    assert str(err.value).startswith("rm.csv: field 'response': no 'response' column")


@pytest.mark.parametrize("data", [b"", b"  \n", b"response,best_a\n"])
def test_empty_file(data):
    with pytest.raises(InputError, match="empty|no data rows"):
        read_published_scores(data, source="rm.csv", prompt_ids=["best_a"])


# ---------------------------------------------------------------- the authors' released data

@pytest.fixture(scope="module")
def published():
    if not PAPER_RELEASE.is_dir():
        pytest.skip(f"the authors' release is not at {PAPER_RELEASE}; the published-data checks need it")
    import yaml

    prompt_ids = list(yaml.safe_load((PAPER_RELEASE / "config" / "prompts.yaml").read_text()))
    frames = []
    for path in sorted((PAPER_RELEASE / "rm_scores").glob("*.csv")):
        model = path.stem.removeprefix("big2_rewards_")
        long = read_published_scores(path.read_bytes(), source=str(path), prompt_ids=prompt_ids)
        frames.append(long.with_columns(pl.lit(model).alias("model")))
    scores = pl.concat(frames)
    dictionary = pl.read_csv(PAPER_RELEASE / "corpora" / "dict_big2_nouns.csv").select(
        pl.col("token_decoded").alias("word"), pl.col("Category").alias("category"))
    prompts = pl.DataFrame({
        "prompt": prompt_ids,
        "framing": ["positive" if p.split("_")[0] in POSITIVE else "negative" for p in prompt_ids],
    })
    assert {p.split("_")[0] for p in prompt_ids} == POSITIVE | NEGATIVE
    models = sorted(scores["model"].unique().to_list())
    families = pl.DataFrame({
        "model": models,
        "family": ["gemma" if "gemma" in m.lower() else "llama" for m in models],
    })
    ranked = rank_words(scores, dictionary)
    cells = median_rank_cells(ranked, prompts, families)
    return {"prompt_ids": prompt_ids, "scores": scores, "ranked": ranked, "cells": cells,
            "families": families}


def test_published_files_and_families(published):
    assert len(published["prompt_ids"]) == 54
    assert published["families"]["family"].value_counts().sort("family").rows() == [
        ("gemma", 4), ("llama", 6)]
    # 265 words in every file, 263 of them in the Big Two noun dictionary
    assert published["scores"].height == 10 * 54 * 265
    assert published["ranked"].height == 10 * 54 * 263


def test_published_ranks_match_an_independent_ranking(published):
    ranked = published["ranked"]
    model = "Ray2333_GRM-gemma2-2B-rewardmodel-ft"
    one = ranked.filter((pl.col("model") == model) & (pl.col("prompt") == "greatest_ever_one"))
    expected = scipy.stats.rankdata(-one["score"].to_numpy(), method="average")
    assert one["rank"].to_list() == expected.tolist()
    assert one["rank"].min() == 1.0 and one["rank"].max() == 263.0


def test_published_cells_and_direction_of_the_effect(published):
    cells = published["cells"]
    assert cells.height == 1080  # 10 models x 2 categories x 54 prompts

    def mean(family, category, framing):
        return cells.filter((pl.col("family") == family) & (pl.col("category") == category)
                            & (pl.col("framing") == framing))["median_rank"].mean()

    # The paper: Llama-based RMs favour Agency, Gemma-based RMs favour Communion (lower = better).
    assert mean("llama", "Agency", "positive") < mean("gemma", "Agency", "positive")
    assert mean("gemma", "Communion", "positive") < mean("llama", "Communion", "positive")


def test_published_family_tests_and_mixed_model(published):
    cells = published["cells"]
    tests = family_tests(cells, "gemma", "llama", n_resamples=10000, seed=0)
    assert tests.height == 4
    assert tests.select("n_a", "n_b").unique().rows() == [(108, 162)]  # 4 and 6 models x 27 prompts
    for row in tests.iter_rows(named=True):
        assert math.isclose(row["p_bonferroni"], min(1.0, 4 * row["p"]))

    fit = fit_mixed_model(cells)
    assert fit.n_obs == 1080 and fit.n_groups == 10
    assert fit.table.height == 9  # intercept + 7 effects of a 2 x 2 x 2 design + Group Var
    assert fit.table.filter(pl.col("term") != "Group Var")["se"].is_finite().all()


def test_blank_lines_keep_the_editor_line_numbers_of_later_rows():
    # polars reads a blank line as a row of nulls: it is skipped, and later rows keep their file line
    with pytest.raises(InputError, match=r"^rm.csv: row 4, field 'best_a': not a finite number: 'x'$"):
        read_published_scores(b"response,best_a\nlove,1\n\npower,x\n", source="rm.csv", prompt_ids=["best_a"])
    with pytest.raises(InputError, match=r"^rm.csv: row 4, field 'best_a': empty score$"):
        read_published_scores(b"response,best_a\n\nlove,1\npower,\n", source="rm.csv", prompt_ids=["best_a"])
    assert read_published_scores(b"response,best_a\nlove,1\npower,2\n\n\n", source="rm.csv",
                                 prompt_ids=["best_a"]).rows() == [("best_a", "love", 1.0), ("best_a", "power", 2.0)]


# ------------------------------------------------- coverage of the corpus by a published file (issue 28)

def _published_scores(model: int, words: list[str], prompts: list[str]) -> dict[tuple[str, str], float]:
    """Deterministic scores with ties: (prompt, word) -> score."""
    return {(p, w): float((model * 7 + i * 13 + j * 31 + (i * j) % 5) % 11)
            for j, p in enumerate(prompts) for i, w in enumerate(words)}


def _write_published(path: Path, scores: dict[tuple[str, str], float], words: list[str], prompts: list[str]) -> None:
    rows = ["response," + ",".join(prompts)] + [w + "," + ",".join(str(scores[p, w]) for p in prompts) for w in words]
    path.write_text("\n".join(rows) + "\n")


def test_a_file_missing_corpus_words_is_refused_and_partial_coverage_ranks_the_common_words(tmp_path):
    """Three published models: one file misses 34 of the 40 words, one misses 1. By default `valuebias run`
    refuses each file in one line naming it, how many words are missing and the first of them; with
    `analysis.published_coverage: partial` it ranks every model on the 6 words all three files have, and
    rm_rank_cells equals an independent ranking of those words (scipy), and says so in its metadata.
    The three are of one family: rm_family_tests is one explained row per analysis and one warning (not a
    contract failure)."""
    import subprocess
    import sys

    import dagster as dg

    from tests.registry_fixtures import AGENCY, COMMUNION, PROMPTS, write_small_registry

    prompts, words = list(PROMPTS), AGENCY + COMMUNION
    kept = {"full": words, "few": AGENCY[:3] + COMMUNION[:3], "one-short": words[:-1]}
    scores = {name: _published_scores(i, words, prompts) for i, name in enumerate(kept)}
    for name, have in kept.items():
        _write_published(tmp_path / f"{name}.csv", scores[name], have, prompts)
    models = "".join(f"  {name}:\n    kind: reward_model\n    family: {family}\n    published: {{small: {name}.csv}}\n"
                     for name, family in (("full", "llama"), ("few", "llama"), ("one-short", "llama")))
    config = write_small_registry(tmp_path, models=models, launcher=None, extra="concurrency: {gpu: 3}\n")
    project = Path(__file__).resolve().parents[1]

    def run():
        return subprocess.run([sys.executable, "-m", "valuebias.orchestration.cli", "run", "--config", str(config)],
                              cwd=project, capture_output=True, text=True, timeout=600)

    refused = run()
    output = refused.stdout + refused.stderr
    assert refused.returncode == 1 and "Traceback" not in output, output
    few = [line for line in output.splitlines() if "few.csv" in line]
    short = [line for line in output.splitlines() if "one-short.csv" in line]
    missing_few = sorted(set(words) - set(kept["few"]))
    assert len(few) == 1 and few[0].endswith(
        f"{tmp_path}/few.csv: field 'response': scores 6 of the 40 words of corpus 'small': 34 missing "
        f"({', '.join(missing_few[:5])}, ...); add rows for them, or set `analysis.published_coverage: partial` "
        "to rank every model on the words all of them have"), output
    assert len(short) == 1 and f"scores 39 of the 40 words of corpus 'small': 1 missing ({words[-1]});" in short[0]

    config.write_text(config.read_text().replace("analysis: {permutations: 2000}",
                                                 "analysis: {permutations: 2000, published_coverage: partial}"))
    accepted = run()
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    one_family = (f"the family tests need reward models of two families; {config} registers llama: register a "
                  "reward model of another family (models.<id>.family)")
    warnings = [line for line in accepted.stderr.splitlines() if "rm_family_tests" in line]
    assert warnings == [f"  warning: check rm_family_tests_fitted failed: not fitted: small/raw: {one_family}; "
                        f"small/frequency_controlled: {one_family}"], accepted.stderr
    tests = pl.read_parquet(tmp_path / ".valuebias" / "data" / "tables" / "rm_family_tests.parquet")
    assert tests.select("corpus", "ranks", "note").rows() == [("small", "raw", one_family),
                                                             ("small", "frequency_controlled", one_family)]
    assert tests.drop("corpus", "ranks", "note").null_count().row(0) == (2,) * (tests.width - 3)

    common = sorted(kept["few"])
    category = {w: "Agency" for w in AGENCY} | {w: "Communion" for w in COMMUNION}
    expected = {}
    for name in kept:
        for p in prompts:
            ranks = scipy.stats.rankdata([-scores[name][p, w] for w in common], method="average")
            for cat in ("Agency", "Communion"):
                expected[name, cat, p] = float(pl.Series([r for r, w in zip(ranks, common) if category[w] == cat])
                                               .median())
    cells = pl.read_parquet(tmp_path / ".valuebias" / "data" / "tables" / "rm_rank_cells.parquet").filter(
        pl.col("ranks") == "raw")
    got = {(m, c, p): r for m, c, p, r in cells.select("model", "category", "prompt", "median_rank").rows()}
    assert got == expected

    instance = dg.DagsterInstance.from_config(str(tmp_path / ".valuebias" / "dagster"))
    record = instance.get_latest_materialization_event(dg.AssetKey("rm_rank_cells")).asset_materialization
    assert record.metadata["published_coverage"].value == {
        "small": "partial (analysis.published_coverage): ranked on the 6 of 40 corpus words that every compared "
                 "reward model scores"}


@pytest.mark.parametrize("data", [b"s3cret-hostname\n", b"s3cret,line\nand,more\n",
                                  b"response,best_a\nlove,1,s3cret,extra\n"])
def test_an_error_about_a_published_uri_never_shows_the_file_content(data):
    # a URI may point at any file (file:///etc/hostname): the error names the file and the fix, not its lines
    with pytest.raises(InputError) as err:
        read_published_scores(data, source="file:///etc/hostname", prompt_ids=["best_a"])
    assert "s3cret" not in str(err.value) and "more" not in str(err.value)
    assert str(err.value).startswith("file:///etc/hostname: field ")
