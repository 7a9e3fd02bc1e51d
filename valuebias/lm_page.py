"""The results page of a registry's language-model pairs (``valuebias lm-page``; docs/real_models.md for
configs/real_lms.yaml), written from the stored tables, never by hand.

Per pair: the models and their provenance (weights-file SHA-256, chat-template SHA-256, as recorded by the
runs that scored them), the headline of the Figure-2 post-hoc tests, the post-hoc table per corpus, a
Figure-2-style plot of the median ranks, and Table 1 (the top and bottom MWLR strings after one prompt).
Then the Figure-3 word MWLRs of every pair, and what the comparisons can and cannot say.

Plain functions on polars tables: :func:`lm_results_page` returns the markdown and the PNGs it links.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import polars as pl

from valuebias.report import markdown_table

#: Post-hoc cells at or below this Benjamini-Hochberg p are named in a pair's headline.
SIGNIFICANT = 0.05
POSTHOC_COLUMNS = ["category", "valence", "n_a", "n_b", "mean_a", "mean_b", "t", "p", "p_bh"]


@dataclass(frozen=True)
class ModelFacts:
    """What the page says about one language model: from the registry and the run that scored it."""

    model_id: str
    display_name: str
    family: str
    variant: str
    weights: dict[str, str]           # file -> SHA-256 (the content identity's parts)
    chat_template_sha256: str         # or "none (raw prompt text)"
    vocabulary_size: int | None = None
    tokens_without_string: int | None = None


def shown_token(token: str) -> str:
    """A token string as JSON (quotes, escapes: leading spaces and newlines stay visible) in a code span,
    ``|`` escaped for the table."""
    text = json.dumps(token, ensure_ascii=False).replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def pair_plot_name(pair: str) -> str:
    return f"figure2_{pair}.png"


def figure2_png(cells: pl.DataFrame, models: tuple[str, str], *, title: str) -> bytes:
    """A Figure-2-style plot of one pair's rank cells (``lm_rank_cells`` rows: corpus, category, valence,
    model, median_rank) of ``models`` (a, b): one panel per corpus, x = category x valence, a dot per model at
    the mean over prompts of its median rank (1 = best, at the top) with a bar of +-1 SD. PNG bytes (Agg canvas)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    corpora = cells["corpus"].unique(maintain_order=True).to_list()
    figure = Figure(figsize=(6 + 1.2 * len(corpora) * 2, 4.2))
    FigureCanvasAgg(figure)
    for index, corpus in enumerate(corpora, start=1):
        axes = figure.add_subplot(1, len(corpora), index)
        rows = cells.filter(pl.col("corpus") == corpus)
        summary = (rows.group_by("category", "valence", "model")
                   .agg(pl.col("median_rank").mean().alias("mean"), pl.col("median_rank").std().alias("sd"))
                   .sort("category", "valence"))
        groups = summary.select("category", "valence").unique(maintain_order=True).rows()
        for offset, model in zip((-0.15, 0.15), models):
            mine = {(r["category"], r["valence"]): r for r in summary.filter(pl.col("model") == model).iter_rows(named=True)}
            xs = [i + offset for i, g in enumerate(groups) if g in mine]
            ys = [mine[g]["mean"] for g in groups if g in mine]
            errors = [mine[g]["sd"] or 0.0 for g in groups if g in mine]
            axes.errorbar(xs, ys, yerr=errors, fmt="o", capsize=3, label=model)
        axes.set_xticks(range(len(groups)), [f"{c}\n{v[:3]}" for c, v in groups], fontsize=7)
        axes.invert_yaxis()
        axes.set_title(corpus)
        axes.set_ylabel("median rank (1 = best)")
        axes.legend(fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def headline(posthoc: pl.DataFrame, model_a: str, model_b: str) -> str:
    """One sentence per corpus: the post-hoc cells with BH p <= SIGNIFICANT, each saying which model ranks
    the category's words higher (a lower mean median rank), or that none is."""
    sentences = []
    for (corpus,), rows in posthoc.group_by("corpus", maintain_order=True):
        fitted = rows.filter(pl.col("p_bh").is_not_null())
        hits = fitted.filter(pl.col("p_bh") <= SIGNIFICANT).sort("p_bh")
        if fitted.height == 0:
            sentences.append(f"{corpus}: no post-hoc test could be fitted ({rows['note'].drop_nulls().head(1).to_list()}).")
            continue
        if hits.height == 0:
            sentences.append(f"{corpus}: none of the {fitted.height} category x valence cells differs at BH p <= "
                             f"{SIGNIFICANT}.")
            continue
        parts = []
        for r in hits.iter_rows(named=True):
            higher = model_a if r["mean_a"] < r["mean_b"] else model_b
            parts.append(f"{r['category']} / {r['valence']}: {higher} ranks them higher (mean median rank "
                         f"{r['mean_a']:.4g} vs {r['mean_b']:.4g}, BH p = {r['p_bh']:.2g})")
        sentences.append(f"{corpus}: {hits.height} of {fitted.height} cells differ at BH p <= {SIGNIFICANT}: "
                         + "; ".join(parts) + ".")
    return " ".join(sentences)


CAVEATS = [
    "The models differ in size, training data and training recipe, not only in family: a difference "
    "between two of them cannot be attributed to the base model's pretraining alone.",
    "These are not the paper's models (Llama-3 and Gemma-2 instruction-tuned models of 2B-9B parameters): "
    "they are small, quantised (GGUF, de-quantised to float32 here) models that ran offline on a CPU; the "
    "paper's conclusions are neither confirmed nor refuted by them.",
    "A pair of an instruction-tuned model with its chat template against the same weights on the raw text "
    "compares prompting, not pretraining; a `raw` (variant `pretrained`) model that is instruction-tuned is "
    "not a base model.",
    "Only words that are one token in both models of a pair are ranked (the paper's single-token rule), so "
    "each pair is compared on its own word set; Figure-2 numbers of different pairs are not on one scale.",
    "Token strings are joined across tokenizers under the rule `decoded_alone_text_only`: special tokens and "
    "ids that are part of a character have no string and are left out of MWLR.",
]


def lm_results_page(*, title: str, config_name: str, pairs: list[tuple[str, str]], facts: dict[str, ModelFacts],
                    rank_cells: pl.DataFrame, posthoc: pl.DataFrame, anova: pl.DataFrame,
                    mwlr_tokens: pl.DataFrame, figure3: bytes | None, table1_prompt: str,
                    image_dir: str) -> tuple[str, dict[str, bytes]]:
    """(markdown, {file name in ``image_dir``: PNG bytes})."""
    plots: dict[str, bytes] = {}
    lines = [f"# {title}", "",
             f"Written by `valuebias lm-page --config {config_name}` from the stored tables of the last "
             "`valuebias run` of that config; do not edit by hand (the next run of the command overwrites it).",
             "", "## What these comparisons can and cannot say", ""]
    lines += [f"- {c}" for c in CAVEATS]
    lines += ["", "## Models", "",
              "| model | name | family | variant | weights file | SHA-256 | chat template SHA-256 | output ids | "
              "ids without a string |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model_id in dict.fromkeys(m for pair in pairs for m in pair):
        f = facts[model_id]
        for name, sha in sorted(f.weights.items()):
            lines.append(f"| {f.model_id} | {f.display_name} | {f.family} | {f.variant} | {name} | `{sha}` | "
                         f"`{f.chat_template_sha256}` | {f.vocabulary_size or ''} | {f.tokens_without_string or ''} |")
    for model_a, model_b in pairs:
        pair = f"{model_a}__vs__{model_b}"
        tests = posthoc.filter(pl.col("pair") == pair)
        fit = anova.filter(pl.col("pair") == pair)
        cells = rank_cells.filter(pl.col("pair") == pair)
        lines += ["", f"## {model_a} vs {model_b}", "",
                  f"{facts[model_a].display_name} vs {facts[model_b].display_name}.", "",
                  f"**Headline.** {headline(tests, model_a, model_b)}", ""]
        if cells.height:
            plots[pair_plot_name(pair)] = figure2_png(cells, (model_a, model_b), title=f"{model_a} vs {model_b}: median ranks per category "
                                                                  "and valence (mean over prompts +- SD)")
            lines += [f"![Figure 2 for {pair}]({image_dir}/{pair_plot_name(pair)})", ""]
        for (corpus,), rows in tests.group_by("corpus", maintain_order=True):
            lines += [f"### Figure 2 post-hoc tests, {corpus} (a = {model_a}, b = {model_b}; mean median rank, "
                      "1 = best; Welch t, BH-corrected p)", "", markdown_table(rows.select(POSTHOC_COLUMNS)), ""]
            corpus_fit = fit.filter(pl.col("corpus") == corpus)
            if corpus_fit.height:
                lines += [f"ANOVA `rank ~ category * valence * model`, {corpus}:", "",
                          markdown_table(corpus_fit.select("term", "sum_sq", "df", "F", "p", "note")), ""]
        table1 = mwlr_tokens.filter((pl.col("pair") == pair) & (pl.col("prompt") == table1_prompt))
        if table1.height:
            top = table1.filter(pl.col("side") == "top").sort("rank")
            bottom = table1.filter(pl.col("side") == "bottom").sort("rank", descending=True)  # -1 first
            lines += [f"### Table 1: MWLR after `{table1_prompt}` (top: favoured by {model_a}; bottom: by {model_b})", "",
                      "| rank | top string | MWLR | rank | bottom string | MWLR |", "| --- | --- | --- | --- | --- | --- |"]
            for t, b in zip(top.iter_rows(named=True), bottom.iter_rows(named=True)):
                lines.append(f"| {t['rank']} | {shown_token(t['token'])} | {t['mwlr']:.4g} | {b['rank']} | "
                             f"{shown_token(b['token'])} | {b['mwlr']:.4g} |")
    if figure3 is not None:
        plots["figure3.png"] = figure3
        lines += ["", "## Figure 3: word MWLRs per pair", "", f"![Figure 3]({image_dir}/figure3.png)"]
    return "\n".join(lines) + "\n", plots
