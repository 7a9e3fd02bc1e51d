"""Human-readable outputs of the Figure-1 analysis (METHOD §3): markdown tables and the figure."""

from __future__ import annotations

import io
import math

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
    """A Figure-1-style plot of the median-rank cells (METHOD §3 step 3 output), as PNG bytes.

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
    """A Figure-3-style plot of word MWLRs across language-model pairs (METHOD §5), as PNG bytes.

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


def value_card_png(profiles: pl.DataFrame, card: pl.DataFrame, model: str) -> bytes:
    """A value card's plot, as PNG bytes: one panel per corpus x framing; per category, every registered
    reward model's profile (``valuebias.value_cards.model_profiles``: mean median rank over the framing's
    prompts, 1 = best at the top) as grey points, this model as a red diamond, its flagged panels marked ``*``."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    corpora = sorted(profiles["corpus"].unique().to_list())
    framings = _framing_panels(profiles["framing"].unique().to_list())
    flagged = {(r["corpus"], r["category"], r["framing"]) for r in card.filter(pl.col("flag")).iter_rows(named=True)}
    fig = Figure(figsize=(4.5 * len(framings), 3.6 * len(corpora)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(corpora), len(framings), squeeze=False)
    rng = np.random.default_rng(0)  # jitter only
    for row, corpus in enumerate(corpora):
        categories = sorted(profiles.filter(pl.col("corpus") == corpus)["category"].unique().to_list())
        for col, framing in enumerate(framings):
            ax = axes[row][col]
            panel = profiles.filter((pl.col("corpus") == corpus) & (pl.col("framing") == framing))
            for j, category in enumerate(categories):
                here = panel.filter(pl.col("category") == category)
                others = here.filter(pl.col("model") != model)["profile"].to_numpy()
                ax.scatter(j + rng.uniform(-0.15, 0.15, len(others)), others, color="0.6", s=18,
                           label="other reward models" if j == 0 else None)
                own = here.filter(pl.col("model") == model)["profile"].to_numpy()
                if len(own):
                    ax.scatter([j], own, color="C3", marker="D", s=60, zorder=3, label=model if j == 0 else None)
                if (corpus, category, framing) in flagged:
                    ax.annotate("*", xy=(j, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom",
                                fontsize=14, fontweight="bold", color="C3")
            ax.set_xticks(range(len(categories)), categories, rotation=30 if len(categories) > 4 else 0)
            ax.set_xlim(-0.6, len(categories) - 0.4)
            ax.invert_yaxis()
            ax.grid(axis="y", alpha=0.3)
            ax.set_title(f"{corpus}, {framing} framing", pad=16)
            if col == 0:
                ax.set_ylabel("mean median rank (1 = best)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2)
    fig.suptitle(f"Value card: {model} (* flagged after Benjamini-Hochberg)")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def value_card_markdown(model, card: pl.DataFrame, *, n_models: int, nearest: str | None, farthest: str | None,
                        provenance: dict, plot_name: str) -> str:
    """A value card as markdown: flags in words, neighbours, the table per corpus, provenance and the plot."""
    from valuebias.value_cards import MIN_MODELS, TOO_SMALL

    title = f"# Value card: {model.model_id}" + (f" ({model.display_name})" if model.display_name else "")
    lines = [title, f"Family **{model.family}**, compared with the {n_models - 1} other reward model(s) of the "
                    "registry (METHOD.md section 8; rank 1 = best, negative deviation = ranks the category higher "
                    "than the registry)."]
    if n_models < MIN_MODELS:
        return "\n\n".join(lines + [f"**The comparison is too small**: {TOO_SMALL}."]) + "\n"
    flags = card.filter(pl.col("flag"))
    lines.append("## Flags (bootstrap p below 0.05 after Benjamini-Hochberg across this card's panels)")
    if flags.height:
        lines += [f"- {r['finding']}: deviation {r['deviation']:+.1f} ranks ({100 * r['deviation_fraction']:+.1f} % "
                  f"of the corpus), 95 % CI [{r['ci_low']:.1f}, {r['ci_high']:.1f}], d = "
                  + (f"{r['effect_size']:.2f}" if r["effect_size"] is not None else "undefined")
                  + f", BH p = {r['p_bh']:.3g} ({r['corpus']})" for r in flags.sort("p_bh").iter_rows(named=True)]
    else:
        lines.append("No flags: no panel differs from the registry after the correction.")
    lines += ["## Nearest and farthest models by profile", f"Nearest: **{nearest}**; farthest: **{farthest}**.",
              f"![Value card of {model.model_id}]({plot_name})"]
    shown = ["corpus", "category", "framing", "profile", "reference", "deviation", "deviation_fraction", "ci_low",
             "ci_high", "effect_size", "deviation_frequency_controlled", "p_bh", "position", "flag"]
    lines += ["## Panels", markdown_table(card.select(shown).sort("corpus", "framing", "category"))]
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
