"""MWLR and implicit-reward helpers (docs/METHOD.md#5-implicit-rewards-and-mwlr-table-1-figure-3), checked against
hand values and scipy."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy import special, stats

from valuebias.errors import InputError
from valuebias.implicit_rewards import (best_logprob_per_string, mwlr, top_bottom_tokens, word_mwlr,
                                        word_variants)


def _table(prompt: str, tokens: list[str], logprobs, dtype=pl.Float32) -> pl.DataFrame:
    return pl.DataFrame(
        {"prompt": [prompt] * len(tokens), "token_id": list(range(len(tokens))), "token": tokens,
         "logprob": [float(x) for x in logprobs]},
        schema={"prompt": pl.Utf8, "token_id": pl.Int32, "token": pl.Utf8, "logprob": dtype},
    )


def _random_logprobs(rng, n: int) -> np.ndarray:
    return special.log_softmax(rng.normal(scale=2.0, size=n))


def test_best_logprob_per_string_keeps_the_highest_duplicate():
    table = pl.concat([
        _table("p1", ["love", "love", " love", "\ufffd", "\ufffd", "\ufffd"],
               [math.log(0.1), math.log(0.3), math.log(0.2), math.log(0.05), math.log(0.15), math.log(0.01)]),
        _table("p2", ["love"], [math.log(0.5)]),
    ])
    table = table.with_columns(pl.Series("token_id", [10, 11, 12, 13, 14, 15, 10], dtype=pl.Int32))
    best = best_logprob_per_string(table)
    got = {(r["prompt"], r["token"]): (r["logprob"], r["token_id"]) for r in best.iter_rows(named=True)}
    assert set(got) == {("p1", "love"), ("p1", " love"), ("p1", "\ufffd"), ("p2", "love")}
    assert got[("p1", "love")][0] == pytest.approx(math.log(0.3), abs=1e-6)
    assert got[("p1", "love")][1] == 11
    assert got[("p1", "\ufffd")][0] == pytest.approx(math.log(0.15), abs=1e-6)
    assert got[("p1", "\ufffd")][1] == 14
    assert got[("p2", "love")][0] == pytest.approx(math.log(0.5), abs=1e-6)
    assert best["logprob"].dtype == pl.Float64


def test_best_logprob_drops_null_tokens():
    table = _table("p", ["a", "b"], [-1.0, -2.0]).with_columns(
        pl.when(pl.col("token") == "b").then(None).otherwise(pl.col("token")).alias("token"))
    assert best_logprob_per_string(table)["token"].to_list() == ["a"]


def test_mwlr_hand_values_and_duplicate_rule():
    # Model a: "freedom" 0.5, "love" 0.25 (and a duplicate "love" id at 0.0625); model b: 0.25 / 0.5.
    a = _table("p", ["freedom", "love", "love", "only_a"],
               [math.log(0.5), math.log(0.0625), math.log(0.25), math.log(0.1875)])
    b = _table("p", ["freedom", "love", "only_b"], [math.log(0.25), math.log(0.5), math.log(0.25)])
    table = mwlr(a, b)
    assert table.columns == ["prompt", "token", "logprob_a", "logprob_b", "mwlr"]
    assert table["token"].to_list() == ["freedom", "love"]  # sorted by mwlr descending, join drops the rest
    # 0.5 * (0.5 + 0.25) * (ln 0.5 - ln 0.25) = 0.375 * ln 2
    assert table["mwlr"].to_list() == pytest.approx([0.375 * math.log(2), -0.375 * math.log(2)], abs=1e-6)
    assert table.schema["mwlr"] == pl.Float64


def test_mwlr_is_antisymmetric_and_zero_for_identical_inputs():
    rng = np.random.default_rng(1)
    vocab_a = [f"t{i}" for i in range(50)] + ["x", "x"]
    vocab_b = [f"t{i}" for i in range(10, 60)]
    a = pl.concat([_table(p, vocab_a, _random_logprobs(rng, len(vocab_a))) for p in ("p1", "p2")])
    b = pl.concat([_table(p, vocab_b, _random_logprobs(rng, len(vocab_b))) for p in ("p1", "p2")])
    ab = mwlr(a, b).sort("prompt", "token")
    ba = mwlr(b, a).sort("prompt", "token")
    assert ab.height == 2 * 40
    assert ab["token"].to_list() == ba["token"].to_list()
    np.testing.assert_allclose(ab["mwlr"].to_numpy(), -ba["mwlr"].to_numpy(), atol=1e-12)
    assert np.abs(ab["mwlr"].to_numpy()).max() > 1e-3  # not trivially zero
    same = mwlr(a, a)
    assert same.height == 2 * 51  # "x" counted once
    assert np.all(same["mwlr"].to_numpy() == 0.0)


def test_mwlr_sum_over_shared_vocabulary_is_half_the_kl_difference():
    rng = np.random.default_rng(7)
    vocab = [f"tok{i}" for i in range(300)]
    lp_a = _random_logprobs(rng, len(vocab))
    lp_b = _random_logprobs(rng, len(vocab))
    # Same vocabulary, shuffled row order in b: the join is on the string, not the position.
    order = rng.permutation(len(vocab))
    a = _table("p", vocab, lp_a, dtype=pl.Float64)
    b = pl.DataFrame({"prompt": ["p"] * len(vocab), "token": [vocab[i] for i in order],
                      "logprob": lp_b[order]})
    total = mwlr(a, b)["mwlr"].sum()
    p_a, p_b = np.exp(lp_a), np.exp(lp_b)
    expected = 0.5 * (stats.entropy(p_a, p_b) - stats.entropy(p_b, p_a))
    assert abs(expected) > 1e-3
    assert total == pytest.approx(expected, abs=1e-9)


def test_top_bottom_tokens_ranks_and_sides():
    table = pl.DataFrame({
        "prompt": ["p"] * 5 + ["q"] * 2,
        "token": ["a", "b", "c", "d", "e", "x", "y"],
        "mwlr": [0.3, -0.2, 0.1, -0.5, 0.0, 1.0, -1.0],
    })
    got = top_bottom_tokens(table, n=2)
    assert got.columns == ["prompt", "side", "rank", "token", "mwlr"]
    p = got.filter(pl.col("prompt") == "p")
    assert list(zip(p["side"], p["rank"], p["token"])) == [
        ("top", 1, "a"), ("top", 2, "c"), ("bottom", -2, "b"), ("bottom", -1, "d")]
    q = got.filter(pl.col("prompt") == "q")  # fewer than 2n strings: both appear on both sides
    assert list(zip(q["side"], q["rank"], q["token"])) == [
        ("top", 1, "x"), ("top", 2, "y"), ("bottom", -2, "x"), ("bottom", -1, "y")]
    with pytest.raises(ValueError):
        top_bottom_tokens(table, n=0)


def test_word_variants():
    assert word_variants(" Love ") == ["love", "Love", "LOVE", " love", " Love", " LOVE"]
    assert word_variants("a") == ["a", "A", " a", " A"]


def test_word_mwlr_averages_present_variants():
    table = pl.DataFrame({
        "prompt": ["p"] * 7 + ["q"],
        "token": ["love", " love", "Love", "LOVE", "lovely", "freedom", " Freedom", "love"],
        "mwlr": [0.4, 0.2, -0.3, 0.1, 9.0, 0.05, 0.15, -0.7],
    })
    got = word_mwlr(table, ["Love", "freedom", "power"])
    rows = {(r["prompt"], r["word"]): r for r in got.iter_rows(named=True)}
    assert set(rows) == {("p", "love"), ("p", "freedom"), ("q", "love")}  # "power" has no variant
    assert rows[("p", "love")]["mwlr"] == pytest.approx((0.4 + 0.2 - 0.3 + 0.1) / 4)
    assert rows[("p", "love")]["variants"] == sorted(["love", " love", "Love", "LOVE"])
    assert rows[("p", "love")]["n_variants"] == 4
    assert rows[("p", "freedom")]["mwlr"] == pytest.approx((0.05 + 0.15) / 2)
    assert rows[("q", "love")]["mwlr"] == pytest.approx(-0.7)


def test_missing_columns_are_named():
    with pytest.raises(InputError, match="logprob"):
        mwlr(pl.DataFrame({"prompt": ["p"], "token": ["a"]}), _table("p", ["a"], [0.0]))
    with pytest.raises(InputError, match="mwlr"):
        word_mwlr(pl.DataFrame({"prompt": ["p"], "token": ["a"]}), ["a"])
