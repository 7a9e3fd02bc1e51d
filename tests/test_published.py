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
