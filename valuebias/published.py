"""Read the reward-model scores released by the paper's authors (docs/METHOD.md#31-scoring).

The authors publish one CSV per reward model (``paper_release/rm_scores/*.csv``) in a wide layout:
a column ``response`` holding the word, then one column per prompt id holding the RM's scalar score
for that (prompt, word) pair. The analysis (``valuebias.statistics``) wants long rows instead.
"""

from __future__ import annotations

import io

import polars as pl

from valuebias.errors import InputError
from valuebias.invariance import NOT_AUDITED_IMPORTED
from valuebias.model_content import published_identity
from valuebias.object_store import read_input_uri
from valuebias.text_input import csv_rows, line_of

WORD_COLUMN = "response"


def read_published_scores(data: bytes, *, source: str, prompt_ids: list[str]) -> pl.DataFrame:
    """Turn one of the authors' wide score files into long rows ``prompt, word, score``.

    ``data`` is the raw CSV; ``source`` names it in error messages; only the columns named in
    ``prompt_ids`` are kept (in that order), other columns are ignored. ``word`` is lowercased and
    stripped of surrounding whitespace (docs/METHOD.md#32-ranks, step 1); ``score`` is Float64. The model is not part
    of the file: the caller adds a ``model`` column.

    Raises :class:`InputError` for a file that is not UTF-8 or not a readable CSV (naming the line), an empty
    file or a file without data rows, a missing ``response`` column, missing prompt columns (all listed;
    ``field`` is the first), an empty word, and an empty, non-numeric or non-finite score (naming the file
    line as an editor shows it, the header being line 1, and the prompt column). A requested column that
    appears twice in the header is an error.
    """
    if not data.strip():
        raise InputError("the file is empty", source=source)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"not UTF-8 text (byte {err.start})", source=source, row=line_of(data, err.start),
                         field="file") from None
    # the file line where each data row starts (a quoted field may span lines); a malformed CSV (an
    # unterminated quote, a field over the csv module's limit) is an InputError naming its line
    rows = csv_rows(text, source, "file")
    # polars reads a blank line (or one of empty cells only) as a row of nulls: those rows are dropped below,
    # and the line numbers here skip them too, so row i of the table is the file's line lines[i]
    lines = [start for start, cells in rows[1:] if any(cell != "" for cell in cells)]
    try:
        wide = pl.read_csv(io.StringIO(text), infer_schema=False)
    except pl.exceptions.PolarsError as err:
        last_line, last = rows[-1]
        if any("\n" in cell or "\r" in cell for cell in last):  # the rest of the file became one quoted field
            raise InputError("not a readable CSV: a quote opened on this line is never closed", source=source,
                             row=last_line, field="file") from None
        # polars' message quotes the file; an error never shows what a URI points at (it may be any file)
        raise InputError(f"not a readable CSV ({type(err).__name__}): the authors' format is a header `response,"
                         "<prompt id>,...` and one row per word", source=source, field="file") from None

    wide = wide.filter(~pl.all_horizontal(pl.all().is_null()))
    if WORD_COLUMN not in wide.columns:
        raise InputError(  # the header is not shown: a URI may point at any file, and errors never show content
            f"no '{WORD_COLUMN}' column in the header (line 1, {len(wide.columns)} column(s)); the authors' format is a "
            f"header `{WORD_COLUMN},<prompt id>,...` and one row per word", source=source, field=WORD_COLUMN)
    missing = [p for p in prompt_ids if p not in wide.columns]
    if missing:
        raise InputError(f"missing score columns for {len(missing)} prompt id(s): {missing}",
                         source=source, field=missing[0])
    duplicated = [p for p in (WORD_COLUMN, *prompt_ids) if f"{p}_duplicated_0" in wide.columns]
    if duplicated:
        raise InputError(f"column(s) {duplicated} appear more than once in the header",
                         source=source, field=duplicated[0])
    if wide.height == 0:
        raise InputError("the file has a header but no data rows", source=source)

    words = wide[WORD_COLUMN].str.strip_chars().str.to_lowercase()
    empty = words.is_null() | (words == "")
    if empty.any():
        raise InputError("empty word", source=source, row=_line(lines, int(empty.arg_true()[0])),
                         field=WORD_COLUMN)

    columns = {"word": words}
    for prompt in prompt_ids:
        raw = wide[prompt].str.strip_chars()
        parsed = raw.cast(pl.Float64, strict=False)
        bad = (parsed.is_null() | ~parsed.is_finite()).fill_null(True)
        if bad.any():
            index = int(bad.arg_true()[0])
            text = raw[index]
            problem = "empty score" if text is None or text == "" else f"not a finite number: {text!r}"
            raise InputError(problem, source=source, row=_line(lines, index), field=prompt)
        columns[prompt] = parsed

    return (
        pl.DataFrame(columns)
        .unpivot(index="word", on=list(prompt_ids), variable_name="prompt", value_name="score")
        .select(pl.col("prompt").cast(pl.Utf8), pl.col("word").cast(pl.Utf8),
                pl.col("score").cast(pl.Float64))
    )


def _line(lines: list[int], index: int) -> int:
    """The file line of data row ``index`` (0-based), as the csv module counted it."""
    return lines[index] if index < len(lines) else index + 2


#: How many missing words an error about a published file's coverage names.
MISSING_WORDS_SHOWN = 5


def import_published_scores(model_id: str, files: dict[str, str], base_dir: str, prompts: pl.DataFrame,
                            corpus_words: pl.DataFrame, coverage: str = "complete") -> tuple[pl.DataFrame, dict]:
    """Reads the authors' wide score files (``response`` + one column per prompt id), one per corpus
    (``files``: {corpus id: uri}), keeping the words of that corpus. Metadata counts what matched.

    Every file must score every word of its corpus for every prompt (a row has a score per prompt column):
    a file that misses words is an ``InputError`` naming the file, how many of the corpus words are missing
    and the first few, unless ``coverage`` is ``partial`` (``analysis.published_coverage``)."""
    prompt_ids = prompts["prompt"].to_list()
    tables, metadata, contents = [], {}, {}
    for corpus_id, uri in files.items():
        contents[uri] = read_input_uri(uri, base_dir=base_dir)
        scores = read_published_scores(contents[uri], source=uri,
                                       prompt_ids=prompt_ids).unique(maintain_order=True)  # exact duplicates
        clash = scores.filter(pl.struct("prompt", "word").is_duplicated())
        if not clash.is_empty():
            raise InputError(f"word '{clash['word'][0]}' has two different scores (after lowercasing and "
                             "trimming); keep one row per word", source=uri, field="response")
        words = corpus_words.filter(pl.col("corpus") == corpus_id).select("word").unique()
        kept = scores.join(words, on="word", how="inner")
        metadata[f"{corpus_id}/file"] = uri
        metadata[f"{corpus_id}/words_in_file"] = scores["word"].n_unique()
        metadata[f"{corpus_id}/words_matched"] = kept["word"].n_unique()
        metadata[f"{corpus_id}/corpus_words_without_score"] = len(words) - kept["word"].n_unique()
        missing = sorted(set(words["word"].to_list()) - set(kept["word"].to_list()))
        if missing and coverage != "partial":
            shown = ", ".join(missing[:MISSING_WORDS_SHOWN]) + (", ..." if len(missing) > MISSING_WORDS_SHOWN else "")
            raise InputError(f"scores {len(words) - len(missing)} of the {len(words)} words of corpus '{corpus_id}': "
                             f"{len(missing)} missing ({shown}); add rows for them, or set "
                             "`analysis.published_coverage: partial` to rank every model on the words all of them "
                             "have", source=uri, field="response")
        tables.append(kept.select(pl.lit(model_id).alias("model"), pl.lit(corpus_id).alias("corpus"),
                                  "prompt", "word", "score"))
    table = pl.concat(tables).sort("corpus", "prompt", "word")
    metadata["sequences_scored"] = 0
    metadata["rows_imported"] = len(table)
    metadata["invariance_audit"] = NOT_AUDITED_IMPORTED
    metadata["content"] = published_identity(files, contents.__getitem__).to_metadata()
    return table, metadata
