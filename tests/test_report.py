"""Tests for valuebias.report: markdown tables and the Figure-1 PNG."""

from __future__ import annotations

import struct

import polars as pl

from valuebias.report import figure1_png, markdown_table


def test_markdown_table_exact():
    df = pl.DataFrame({"term": ["a|b", "c"], "coef": [1.23456, 0.0000123456], "n": [3, None]})
    assert markdown_table(df) == (
        "| term | coef | n |\n"
        "| --- | --- | --- |\n"
        "| a\\|b | 1.235 | 3 |\n"
        "| c | 1.235e-05 |  |"
    )


def test_markdown_table_digits():
    df = pl.DataFrame({"p": [0.000012345, 0.5]})
    assert markdown_table(df, float_digits=2) == "| p |\n| --- |\n| 1.2e-05 |\n| 0.5 |"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _cells(framings):
    rows = []
    for framing in framings:
        for family, base in (("gemma", 100.0), ("llama", 120.0)):
            for m in range(2):
                for category, shift in (("Agency", 0.0), ("Communion", 30.0)):
                    for p in range(3):
                        rows.append((f"{family}{m}", family, category, f"{framing}{p}", framing,
                                     base + shift + m + p))
    return pl.DataFrame(rows, schema=["model", "family", "category", "prompt", "framing",
                                      "median_rank"], orient="row")


def test_figure1_png_one_panel_per_framing():
    two = figure1_png(_cells(["negative", "positive"]), title="Big Two")
    one = figure1_png(_cells(["positive"]), title="Big Two, positive only")
    # 4 in of width per panel plus 1 in for the legend, at 100 dpi
    assert _png_size(two) == (900, 450)
    assert _png_size(one) == (500, 450)


def test_figure1_png_marks_significant_panels_with_a_bracket_per_comparison():
    """A marked panel draws a bracket and a star where that panel's families are, and nothing when none is."""
    cells = _cells(["negative", "positive"])
    plain = figure1_png(cells, title="Big Two")
    assert figure1_png(cells, title="Big Two", significant={}) == plain
    communion = figure1_png(cells, title="Big Two", significant={("Communion", "positive"): ["gemma vs llama"]})
    agency = figure1_png(cells, title="Big Two", significant={("Agency", "positive"): ["gemma vs llama"]})
    assert len({plain, communion, agency}) == 3 and _png_size(communion) == _png_size(plain)
