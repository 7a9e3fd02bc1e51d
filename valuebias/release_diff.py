"""What changed between two versions of the registry (two releases, or a release and the current state).

Plain functions on polars tables (no Dagster, no storage): ``valuebias.orchestration.release`` reads the two sides and
hands them over as :class:`Side` objects.

- models: added, removed, or changed (a different content identity: ``content.digest`` of the model's scores);
- per panel of ``rm_family_tests`` (corpus, ranks, category, framing, family comparison): the change of each
  family's mean rank and of significance after the Bonferroni correction (``p_bonferroni < SIGNIFICANCE``):
  newly significant, no longer significant, or unchanged;
- value-card flags added and removed per model, with their numbers. Only these columns of ``rm_value_cards``
  are read: model, corpus, category, framing, deviation, deviation_fraction, p_bh, flag, finding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import polars as pl

SIGNIFICANCE = 0.05  # the threshold of the report (valuebias.assets.rm_statistics.SIGNIFICANCE) and of the card flags
PANEL = ["corpus", "ranks", "category", "framing", "family_a", "family_b"]
CARD_PANEL = ["model", "corpus", "category", "framing"]
CARD_COLUMNS = CARD_PANEL + ["deviation", "deviation_fraction", "p_bh", "flag", "finding"]

#: The one flat table every change is a row of (``--format csv``); columns that do not apply are null.
CHANGE_SCHEMA = {
    "section": pl.Utf8, "change": pl.Utf8, "model": pl.Utf8, "corpus": pl.Utf8, "ranks": pl.Utf8,
    "category": pl.Utf8, "framing": pl.Utf8, "family_a": pl.Utf8, "family_b": pl.Utf8,
    "mean_a_before": pl.Float64, "mean_a_after": pl.Float64, "mean_a_change": pl.Float64,
    "mean_b_before": pl.Float64, "mean_b_after": pl.Float64, "mean_b_change": pl.Float64,
    "p_bonferroni_before": pl.Float64, "p_bonferroni_after": pl.Float64,
    "deviation": pl.Float64, "deviation_fraction": pl.Float64, "p_bh": pl.Float64, "finding": pl.Utf8,
    "content_before": pl.Utf8, "content_after": pl.Utf8,
}


@dataclass
class Side:
    """One version of the registry: ``label`` (a release name, or ``current state``), the content identity
    of each model ({model id: digest}), its ``rm_family_tests`` and its value cards (None when absent)."""

    label: str
    models: dict[str, str]
    family_tests: pl.DataFrame | None
    cards: pl.DataFrame | None


def model_changes(a: Side, b: Side) -> list[dict]:
    rows = []
    for model in sorted(set(a.models) | set(b.models)):
        before, after = a.models.get(model), b.models.get(model)
        change = ("added" if before is None else "removed" if after is None else
                  "changed" if before != after else None)
        if change:
            rows.append({"section": "model", "change": change, "model": model, "content_before": before,
                         "content_after": after})
    return rows


def _panels(tests: pl.DataFrame | None) -> pl.DataFrame:
    columns = PANEL + ["mean_a", "mean_b", "p_bonferroni"]
    if tests is None or tests.is_empty():
        return pl.DataFrame(schema={c: (pl.Float64 if c in ("mean_a", "mean_b", "p_bonferroni") else pl.Utf8)
                                    for c in columns})
    return tests.filter(pl.col("category").is_not_null()).select(columns)


def _significant(p) -> bool:
    return p is not None and p == p and p < SIGNIFICANCE  # NaN is not significant


def panel_changes(a: Side, b: Side) -> list[dict]:
    """Every panel of either side, with the change of each family's mean rank and of its significance."""
    before = _panels(a.family_tests).rename({"mean_a": "mean_a_before", "mean_b": "mean_b_before",
                                             "p_bonferroni": "p_bonferroni_before"})
    after = _panels(b.family_tests).rename({"mean_a": "mean_a_after", "mean_b": "mean_b_after",
                                            "p_bonferroni": "p_bonferroni_after"})
    joined = before.join(after, on=PANEL, how="full", coalesce=True, nulls_equal=True).sort(PANEL)
    rows = []
    for row in joined.iter_rows(named=True):
        was = row["p_bonferroni_before"] is not None or row["mean_a_before"] is not None
        now = row["p_bonferroni_after"] is not None or row["mean_a_after"] is not None
        sig_before, sig_after = _significant(row["p_bonferroni_before"]), _significant(row["p_bonferroni_after"])
        if not was:
            change = "added" + (" (significant)" if sig_after else "")
        elif not now:
            change = "removed" + (" (was significant)" if sig_before else "")
        elif sig_after and not sig_before:
            change = "newly significant"
        elif sig_before and not sig_after:
            change = "no longer significant"
        else:
            change = "unchanged (significant)" if sig_after else "unchanged (not significant)"
        for side in ("a", "b"):
            first, second = row[f"mean_{side}_before"], row[f"mean_{side}_after"]
            row[f"mean_{side}_change"] = second - first if first is not None and second is not None else None
        rows.append({"section": "panel", "change": change, **row})
    return rows


def _flags(cards: pl.DataFrame | None) -> pl.DataFrame:
    if cards is None or cards.is_empty():
        return pl.DataFrame(schema={c: pl.Utf8 for c in CARD_PANEL})
    return cards.select(CARD_COLUMNS).filter(pl.col("flag"))


def card_flag_changes(a: Side, b: Side) -> list[dict]:
    """Value-card flags present on one side only, per model, with the numbers of the side that has them."""
    before, after = _flags(a.cards), _flags(b.cards)
    rows = []
    for change, present, other in (("flag removed", before, after), ("flag added", after, before)):
        if present.is_empty():
            continue
        only = present.join(other.select(CARD_PANEL), on=CARD_PANEL, how="anti") if not other.is_empty() else present
        for row in only.sort(CARD_PANEL).iter_rows(named=True):
            rows.append({"section": "card_flag", "change": change,
                         **{c: row[c] for c in CARD_COLUMNS if c != "flag"}})
    return sorted(rows, key=lambda r: (r["model"], r["change"], r["corpus"], r["category"], r["framing"]))


def diff_table(a: Side, b: Side) -> pl.DataFrame:
    """Every change from ``a`` to ``b`` as one flat table (:data:`CHANGE_SCHEMA`)."""
    rows = model_changes(a, b) + panel_changes(a, b) + card_flag_changes(a, b)
    return pl.DataFrame([{c: r.get(c) for c in CHANGE_SCHEMA} for r in rows], schema=CHANGE_SCHEMA)


def diff_json(a: Side, b: Side) -> str:
    table = diff_table(a, b)
    sections = {name: [{k: v for k, v in row.items() if v is not None and k != "section"}
                       for row in table.filter(pl.col("section") == name).iter_rows(named=True)]
                for name in ("model", "panel", "card_flag")}
    return json.dumps({"from": a.label, "to": b.label, "models": sections["model"], "panels": sections["panel"],
                       "card_flags": sections["card_flag"]}, indent=2, default=str) + "\n"


def _number(value, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and (abs(value) >= 1e-3 or value == 0):
        return f"{value:.{digits}f}"
    return f"{value:.2e}" if isinstance(value, float) else str(value)


def _signed(value) -> str:
    return "" if value is None else f"{value:+.3f}"


def diff_markdown(a: Side, b: Side) -> str:
    """The diff as markdown: models, panels whose significance flipped (then every panel's mean ranks), and the
    value-card flags added and removed per model."""
    from valuebias.report import markdown_table

    table = diff_table(a, b)
    lines = [f"# ValueBias diff: {a.label} -> {b.label}", ""]
    models = table.filter(pl.col("section") == "model")
    lines += ["## Models", ""]
    if models.is_empty():
        lines += ["No model added, removed or changed.", ""]
    else:
        lines += [f"- {r['model']}: {r['change']}" + (f" (content {r['content_before']} -> {r['content_after']})"
                                                        if r["change"] == "changed" else "")
                  for r in models.iter_rows(named=True)] + [""]
    panels = table.filter(pl.col("section") == "panel")
    flipped = panels.filter(pl.col("change").is_in(["newly significant", "no longer significant"]))
    lines += ["## Significance after correction", ""]
    if flipped.is_empty():
        lines += ["No panel became or stopped being significant "
                  f"(Bonferroni-corrected p < {SIGNIFICANCE}).", ""]
    else:
        lines += [f"- {r['corpus']} ({r['ranks']}) {r['category']} x {r['framing']}, {r['family_a']} vs "
                  f"{r['family_b']}: {r['change']} (p_bonferroni {_number(r['p_bonferroni_before'])} -> "
                  f"{_number(r['p_bonferroni_after'])})" for r in flipped.iter_rows(named=True)] + [""]
    if not panels.is_empty():
        shown = panels.select("corpus", "ranks", "category", "framing", "family_a", "family_b", "change",
                              "mean_a_before", "mean_a_after", "mean_a_change", "mean_b_before", "mean_b_after",
                              "mean_b_change", "p_bonferroni_before", "p_bonferroni_after")
        lines += ["## Mean rank per family and panel (rm_family_tests)", "", markdown_table(shown), ""]
    flags = table.filter(pl.col("section") == "card_flag")
    lines += ["## Value-card flags", ""]
    if flags.is_empty():
        lines += ["No value-card flag added or removed.", ""]
    else:
        for model in flags["model"].unique(maintain_order=True).to_list():
            lines += [f"### {model}", ""]
            for r in flags.filter(pl.col("model") == model).iter_rows(named=True):
                lines.append(f"- {r['change']}: {r['corpus']} {r['category']} x {r['framing']}: {r['finding']} "
                             f"(deviation {_number(r['deviation'], 2)}, fraction {_number(r['deviation_fraction'])}, "
                             f"p_bh {_number(r['p_bh'])})")
            lines.append("")
    return "\n".join(lines)
