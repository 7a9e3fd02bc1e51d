"""``valuebias lm-page`` (the page docs/real_models.md is made by) on a tiny demo registry: every number the
page shows is the stored table's, and the provenance is what the scoring runs recorded."""

from __future__ import annotations

import io
import re

import polars as pl
import pytest

from tests.test_lm_pipeline import lm_registry
from valuebias.lm_page import CAVEATS, POSTHOC_COLUMNS, pair_plot_name

PAIR = ("lm-llama-it", "lm-gemma-it")


def rows_after(page: str, heading: str) -> list[list[str]]:
    """The body cells of the first markdown table after ``heading``."""
    lines = page[page.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    body = []
    for line in lines[start + 2:]:
        if not line.startswith("| "):
            break
        body.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return body


def number(cell: str) -> float | None:
    return None if cell == "" else float(cell)


def test_the_page_shows_the_stored_tables(tmp_path, cli):
    config = lm_registry(tmp_path, tmp_path / "state", [PAIR], models=PAIR)
    cli("run", "--config", str(config))
    out = tmp_path / "docs" / "page.md"
    said = cli("lm-page", "--config", str(config), "--out", str(out), "--prompt", "best_ever_one")
    assert said.strip() == f"valuebias: wrote {out} and 2 plots in {tmp_path / 'docs' / 'page'}"
    page = out.read_text()
    pair = "__vs__".join(PAIR)
    table = lambda name: pl.read_csv(io.StringIO(cli("table", name, "--format", "csv", "--config", str(config))))

    posthoc = table("lm_posthoc").filter(pl.col("pair") == pair)
    assert set(posthoc["corpus"]) == {"small"}
    shown = rows_after(page, "### Figure 2 post-hoc tests, small")
    assert len(shown) == posthoc.height > 0
    for cells, stored in zip(shown, posthoc.select(POSTHOC_COLUMNS).iter_rows()):
        assert cells[:2] == [stored[0], stored[1]]
        for cell, value in zip(cells[2:], stored[2:]):
            if value is None or value != value:
                assert cell in ("", "nan")
            elif abs(value) == float("inf"):
                assert number(cell) == value
            else:
                assert number(cell) == pytest.approx(value, rel=6e-4, abs=1e-12), (cells, stored)

    tokens = table("mwlr_tokens").filter((pl.col("pair") == pair) & (pl.col("prompt") == "best_ever_one"))
    shown = rows_after(page, "### Table 1: MWLR after `best_ever_one`")
    top = tokens.filter(pl.col("side") == "top").sort("rank")
    bottom = tokens.filter(pl.col("side") == "bottom").sort("rank", descending=True)
    assert len(shown) == top.height == bottom.height == 5
    for cells, t, b in zip(shown, top.iter_rows(named=True), bottom.iter_rows(named=True)):
        assert [int(cells[0]), cells[1], int(cells[3]), cells[4]] == [t["rank"], f'`"{t["token"]}"`', b["rank"],
                                                                     f'`"{b["token"]}"`']
        assert number(cells[2]) == pytest.approx(t["mwlr"], rel=6e-4) and number(cells[5]) == pytest.approx(b["mwlr"], rel=6e-4)

    # provenance: the content identity and template hash each model's scoring run recorded
    registry = {row[0]: row for row in rows_after(page, "## Models")}
    assert set(registry) == set(PAIR)
    for model in PAIR:
        assert registry[model][3] == "instruction_tuned" and re.fullmatch(r"`[0-9a-f]{16,64}`", registry[model][6])
    for caveat in CAVEATS:
        assert caveat in page
    assert (tmp_path / "docs" / "page" / pair_plot_name(pair)).read_bytes().startswith(b"\x89PNG")
    assert f"![Figure 2 for {pair}](page/{pair_plot_name(pair)})" in page
