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


def figure1_png(cells: pl.DataFrame, *, title: str) -> bytes:
    """A Figure-1-style plot of the median-rank cells (METHOD §3 step 3 output), as PNG bytes.

    One panel per framing (positive, then negative); x = category; y = median rank with 1 = best at
    the top. For each family, a box of its per-(model, prompt) median ranks with the cells drawn over
    it as jittered points, one colour per family, and a legend. Drawn on a ``Figure`` with the Agg
    canvas, so it needs no display and leaves pyplot's global state untouched.
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
        ax.set_xticks(range(len(categories)), categories)
        ax.set_xlim(-0.6, len(categories) - 0.4)
        ax.set_title(f"{framing} framing")
        ax.set_xlabel("category")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("median rank (1 = best)")
    axes[0].invert_yaxis()  # shared y: inverting once inverts every panel
    fig.legend(handles=[Patch(facecolor=colours[f], alpha=0.6, label=f) for f in families],
               title="family", loc="outside right center")
    fig.suptitle(title)

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
