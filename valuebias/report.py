"""Human-readable outputs of the Figure-1 analysis (docs/METHOD.md#3-reward-model-scores-figure-1): markdown tables
and the figure."""

from __future__ import annotations

import io
import math
from collections import Counter

import polars as pl

# Order of the framing panels in the figure; any other framing follows alphabetically.
FRAMING_ORDER = ("positive", "negative")


def _format_cell(value: object, float_digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{float_digits}g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pl.DataFrame, float_digits: int = 4) -> str:
    """Render ``df`` as a GitHub-flavoured markdown table (for reports and Dagster metadata).

    Floats are written with ``float_digits`` significant digits (``:.4g`` by default, so a small
    p-value reads ``1.2e-05``), nulls as empty cells, ``|`` in text escaped. One line per row, no
    trailing newline.
    """
    header = "| " + " | ".join(_format_cell(c, float_digits) for c in df.columns) + " |"
    separator = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(_format_cell(v, float_digits) for v in row) + " |"
            for row in df.iter_rows()]
    return "\n".join([header, separator, *body])


def _framing_panels(framings: list[str]) -> list[str]:
    known = [f for f in FRAMING_ORDER if f in framings]
    return known + sorted(f for f in framings if f not in FRAMING_ORDER)


def figure1_png(cells: pl.DataFrame, *, title: str, significant: dict[tuple[str, str], list[str]] | None = None
                ) -> bytes:
    """A Figure-1-style plot of the median-rank cells (docs/METHOD.md#33-rank-cells), as PNG bytes.

    One panel per framing (positive, then negative); x = category; y = median rank with 1 = best at
    the top. For each family, a box of its per-(model, prompt) median ranks with the cells drawn over
    it as jittered points, one colour per family, and a legend. ``significant`` ({(category, framing):
    [comparison, ...]}) marks the panels whose family test is significant after Bonferroni with ``*``
    above the category (and the comparisons, when there are several families), as the paper's figure
    does. Drawn on a ``Figure`` with the Agg canvas, so it needs no display and leaves pyplot's global
    state untouched.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    required = ["family", "category", "framing", "median_rank"]
    missing = [c for c in required if c not in cells.columns]
    if missing:
        raise ValueError(f"cells lack column(s) {missing}")
    if cells.height == 0:
        raise ValueError("cells is empty: nothing to plot")

    framings = _framing_panels(cells["framing"].unique().to_list())
    categories = sorted(cells["category"].unique().to_list())
    families = sorted(cells["family"].unique().to_list())
    colours = {f: f"C{i % 10}" for i, f in enumerate(families)}
    width = 0.8 / len(families)
    rng = np.random.default_rng(0)  # jitter only; fixed so the same cells give the same image

    fig = Figure(figsize=(4.0 * len(framings) + 1.0, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(framings), sharey=True, squeeze=False)[0]
    for ax, framing in zip(axes, framings):
        for i, family in enumerate(families):
            offset = (i - (len(families) - 1) / 2) * width
            for j, category in enumerate(categories):
                values = cells.filter(
                    (pl.col("framing") == framing) & (pl.col("family") == family)
                    & (pl.col("category") == category))["median_rank"].to_numpy()
                if len(values) == 0:
                    continue
                _box_with_points(ax, values, j + offset, width, colours[family], rng, size=6, alpha=0.6)
        for j, category in enumerate(categories):  # a bracket with * over each significant pair of families
            for level, comparison in enumerate((significant or {}).get((category, framing), [])):
                a, b = comparison.split(" vs ")
                x_a, x_b = (j + (families.index(f) - (len(families) - 1) / 2) * width for f in (a, b))
                y = 1.02 + 0.07 * level
                ax.plot([x_a, x_a, x_b, x_b], [y - 0.015, y, y, y - 0.015], color="black", linewidth=0.8,
                        transform=ax.get_xaxis_transform(), clip_on=False)
                ax.annotate("*", xy=((x_a + x_b) / 2, y - 0.01), xycoords=("data", "axes fraction"),
                            ha="center", va="bottom", fontsize=12, fontweight="bold")
        ax.set_xticks(range(len(categories)), categories)
        ax.set_xlim(-0.6, len(categories) - 0.4)
        ax.set_title(f"{framing} framing", pad=6 + 22 * max(map(len, (significant or {}).values()), default=0))
        ax.set_xlabel("category")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("median rank (1 = best)")
    axes[0].invert_yaxis()  # shared y: inverting once inverts every panel
    fig.legend(handles=[Patch(facecolor=colours[f], alpha=0.6, label=f) for f in families],
               title="family", loc="outside right center")
    fig.suptitle(title + ("\n* family difference significant after Bonferroni (p < 0.05)" if significant else ""))

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def figure3_png(words: pl.DataFrame, *, title: str) -> bytes:
    """A Figure-3-style plot of word MWLRs across language-model pairs
    (docs/METHOD.md#5-implicit-rewards-and-mwlr-table-1-figure-3), as PNG bytes.

    ``words`` has ``pair, framing, word, mwlr`` (one row per pair, prompt and word, as the
    ``mwlr_words`` table). One panel per framing (positive, then negative); x = pair (labelled
    ``model_a vs model_b`` when those columns are present); for each word, a box of its per-prompt
    MWLRs with the prompts drawn over it as jittered points, one colour per word; a line at 0
    (above: favoured by model a, below: by model b). An empty table gives a figure saying so. Drawn on
    a ``Figure`` with the Agg canvas, so it needs no display and leaves pyplot's global state untouched.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    required = ["pair", "framing", "word", "mwlr"]
    missing = [c for c in required if c not in words.columns]
    if missing:
        raise ValueError(f"words lacks column(s) {missing}")
    if words.height == 0:
        fig = Figure(figsize=(6.0, 2.5), layout="constrained")
        FigureCanvasAgg(fig)
        fig.text(0.5, 0.5, "no word MWLRs to plot (no pairs, or no word in both vocabularies)", ha="center",
                 va="center")
        fig.suptitle(title)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()

    framings = _framing_panels(words["framing"].unique().to_list())
    pairs = words["pair"].unique(maintain_order=True).to_list()
    labels = pairs
    if "model_a" in words.columns and "model_b" in words.columns:
        names = dict(zip(words["pair"].to_list(), zip(words["model_a"].to_list(), words["model_b"].to_list())))
        labels = [f"{names[p][0]}\nvs\n{names[p][1]}" for p in pairs]
    vocabulary = words["word"].unique(maintain_order=True).to_list()
    colours = {w: f"C{i % 10}" for i, w in enumerate(vocabulary)}
    width = 0.8 / len(vocabulary)
    rng = np.random.default_rng(0)

    fig = Figure(figsize=(max(4.0, 1.6 * len(pairs)) * len(framings) + 1.0, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(framings), sharey=True, squeeze=False)[0]
    for ax, framing in zip(axes, framings):
        for i, word in enumerate(vocabulary):
            offset = (i - (len(vocabulary) - 1) / 2) * width
            for j, pair in enumerate(pairs):
                values = words.filter((pl.col("framing") == framing) & (pl.col("word") == word)
                                      & (pl.col("pair") == pair))["mwlr"].to_numpy()
                if len(values) == 0:
                    continue
                _box_with_points(ax, values, j + offset, width, colours[word], rng, size=8, alpha=0.7)
        ax.axhline(0.0, color="0.3", linewidth=0.8)
        ax.set_xticks(range(len(pairs)), labels, fontsize=8)
        ax.set_xlim(-0.6, len(pairs) - 0.4)
        ax.set_title(f"{framing} framing")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("MWLR (> 0: favoured by model a)")
    fig.legend(handles=[Patch(facecolor=colours[w], alpha=0.6, label=w) for w in vocabulary],
               title="word", loc="outside right center")
    fig.suptitle(title)

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _box_with_points(ax, values, x: float, width: float, colour, rng, *, size: float, alpha: float) -> None:
    """One translucent box at ``x`` with its points jittered over it (Figures 1 and 3)."""
    box = ax.boxplot(values, positions=[x], widths=width * 0.8, patch_artist=True, showfliers=False,
                     manage_ticks=False)
    for patch in box["boxes"]:
        patch.set_facecolor(colour)
        patch.set_alpha(0.35)
    for median in box["medians"]:
        median.set_color(colour)
    jitter = rng.uniform(-width * 0.3, width * 0.3, len(values))
    ax.scatter(x + jitter, values, s=size, color=colour, alpha=alpha, linewidths=0)


def png_data_uri(png: bytes) -> str:
    """A PNG as a data URI, so that a markdown image shows the plot itself in the Dagster UI, not a path."""
    import base64

    return f"data:image/png;base64,{base64.b64encode(png).decode()}"


def embed_plots(markdown: str, plots: dict[str, bytes]) -> str:
    """``markdown`` with every image linked by name (``![...](<name>)``) replaced by the plot itself."""
    for name in sorted(plots):
        markdown = markdown.replace(f"]({name})", f"]({png_data_uri(plots[name])})")
    return markdown


def value_card_png(card: pl.DataFrame, model: str, corpus_sizes: dict[str, int]) -> bytes:
    """A value card's plot, as PNG bytes: one panel per corpus; per category and framing, the model's
    deviation D from the registry as a share of the corpus (negative, at the top: ranks the category higher)
    with its 95 % interval (words and prompts), flagged cells filled and marked ``*``, the frequency-controlled
    D as a hollow square. Cells without numbers are left out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    numbers = card.filter(pl.col("deviation").is_not_null())
    corpora = sorted(numbers["corpus"].unique().to_list()) or ["(no numbers)"]
    framings = _framing_panels(card["framing"].unique().to_list())
    fig = Figure(figsize=(8.5, 2.2 + 0.55 * max(1, numbers.select("corpus", "category").unique().height)),
                 layout="constrained")
    FigureCanvasAgg(fig)
    heights = [max(1, numbers.filter(pl.col("corpus") == c)["category"].n_unique()) for c in corpora]
    axes = fig.subplots(len(corpora), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    offsets = {framing: 0.18 * (i - (len(framings) - 1) / 2) for i, framing in enumerate(framings)}
    for ax, corpus in zip(axes, corpora):
        panel = numbers.filter(pl.col("corpus") == corpus)
        categories = sorted(panel["category"].unique().to_list())
        size = corpus_sizes.get(corpus, 1)
        for i, framing in enumerate(framings):
            color = f"C{i}"
            for j, category in enumerate(categories):
                rows = panel.filter((pl.col("category") == category) & (pl.col("framing") == framing))
                if not rows.height:
                    continue
                r = rows.row(0, named=True)
                y = j + offsets[framing]
                ax.errorbar(100 * r["deviation"] / size, y, xerr=[[100 * (r["deviation"] - r["ci_low"]) / size],
                                                                   [100 * (r["ci_high"] - r["deviation"]) / size]],
                            fmt="o", color=color, mfc=color if r["flag"] else "white", capsize=3,
                            label=f"{framing} framing" if j == 0 else None)
                if r["deviation_frequency_controlled"] is not None:
                    ax.scatter(100 * r["deviation_frequency_controlled"] / size, y, marker="s", s=28,
                               facecolors="none", edgecolors=color, zorder=3,
                               label="frequency-controlled D" if (i, j) == (0, 0) else None)
                if r["flag"]:
                    ax.annotate("*", xy=(1.01, y), xycoords=("axes fraction", "data"), ha="left", va="center",
                                fontsize=13, fontweight="bold", color=color, annotation_clip=False)
        ax.axvline(0.0, color="0.4", lw=0.8)
        ax.set_yticks(range(len(categories)), categories)
        ax.set_ylim(len(categories) - 0.5, -0.5)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(corpus, loc="left")
        ax.set_xlabel("D, % of the corpus (negative = ranks the category higher than the registry)")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=3)
    fig.suptitle(f"Value card: {model}\n95 % intervals over words and prompts; filled marker and * = flagged",
                 fontsize=11)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def value_card_markdown(model, card: pl.DataFrame, *, corpus_sizes: dict[str, int], reference: dict[str, str],
                        reference_note: str | None, nearest: str | None, farthest: str | None, provenance: dict,
                        plot_name: str) -> str:
    """A value card as markdown: the method's sentence once, flags in words, the reference, neighbours, the
    table per corpus, provenance and the plot."""
    from valuebias.value_cards import CARD_SENTENCE, MIN_OTHER_MODELS, TOO_SMALL

    title = f"# Value card: {model.model_id}" + (f" ({model.display_name})" if model.display_name else "")
    families = ", ".join(f"{f} {n}" for f, n in sorted(Counter(reference.values()).items()))
    lines = [title, f"Family **{model.family}**, compared with the {len(reference)} other reward model(s) of the "
                    f"registry ({families or 'none'}). Word ranks, 1 = best; D < 0: the model ranks the category "
                    "higher than the others do (docs/METHOD.md#84-value-cards)."]
    if len(reference) < MIN_OTHER_MODELS:
        return "\n\n".join(lines + [f"**No comparison**: {TOO_SMALL}."]) + "\n"
    lines.append(CARD_SENTENCE)
    if reference_note:
        lines.append(f"**Reference**: {reference_note}.")
    flags = card.filter(pl.col("flag"))
    lines.append("## Flags (p below 0.05 after Benjamini-Hochberg over this card's raw cells)")
    if flags.height:
        lines += [f"- {r['finding']} ({r['corpus']}; D = {r['deviation']:+.1f} ranks, p = {r['p']:.3g}, "
                  f"BH p = {r['p_bh']:.3g})" for r in flags.sort("p_bh").iter_rows(named=True)]
    else:
        lines.append("No flags: no cell differs from the registry after the correction.")
    lines += ["## Nearest and farthest models by profile", f"Nearest: **{nearest}**; farthest: **{farthest}**.",
              f"![Value card of {model.model_id}]({plot_name})"]
    size = pl.col("corpus").replace_strict(corpus_sizes, return_dtype=pl.Float64)
    shown = card.select(
        "corpus", "category", "framing", "families", "deviation",
        (100 * pl.col("deviation_fraction")).alias("D % of corpus"),
        (100 * pl.col("ci_low") / size).alias("95 % low"), (100 * pl.col("ci_high") / size).alias("95 % high"),
        pl.col("effect_size_a").alias("A"), "p_bh", pl.col("deviation_frequency_controlled").alias("D freq.-controlled"),
        "position", "flag")
    lines += ["## Cells", markdown_table(shown.sort("corpus", "framing", "category"))]
    if provenance:
        lines += ["## Provenance of the scores"] + [f"- **{k}**: `{v}`" for k, v in provenance.items()]
    return "\n\n".join(lines) + "\n"


def card_html(markdown: str, plots: dict[str, bytes], *, title: str) -> str:
    """A markdown report or card as one self-contained HTML page (tables rendered, plots embedded)."""
    import html

    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(embed_plots(markdown, plots))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%}"
             "img{max-width:100%}")
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n{body}</body></html>\n")
