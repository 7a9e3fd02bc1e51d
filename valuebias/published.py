"""Read the reward-model scores released by the paper's authors (METHOD §3).

The authors publish one CSV per reward model (``paper_release/rm_scores/*.csv``) in a wide layout:
a column ``response`` holding the word, then one column per prompt id holding the RM's scalar score
for that (prompt, word) pair. The analysis (``valuebias.statistics``) wants long rows instead.
"""

from __future__ import annotations

import io

import polars as pl

from valuebias.errors import InputError

WORD_COLUMN = "response"


def read_published_scores(data: bytes, *, source: str, prompt_ids: list[str]) -> pl.DataFrame:
    """Turn one of the authors' wide score files into long rows ``prompt, word, score``.

    ``data`` is the raw CSV; ``source`` names it in error messages; only the columns named in
    ``prompt_ids`` are kept (in that order), other columns are ignored. ``word`` is lowercased and
    stripped of surrounding whitespace (METHOD §3 step 1); ``score`` is Float64. The model is not part
    of the file: the caller adds a ``model`` column.

    Raises :class:`InputError` for an empty file or a file without data rows, a missing ``response``
    column, missing prompt columns (all listed; ``field`` is the first), an empty word, and an empty,
    non-numeric or non-finite score (naming the 1-based data row, i.e. row 1 is the line after the
    header, and the prompt column). A requested column that appears twice in the header is an error.
    """
    if not data.strip():
        raise InputError("the file is empty", source=source)
    try:
        wide = pl.read_csv(io.BytesIO(data), infer_schema=False)
    except (pl.exceptions.PolarsError, UnicodeDecodeError) as err:
        raise InputError(f"not a readable CSV file: {err}", source=source) from err

    if WORD_COLUMN not in wide.columns:
        raise InputError(
            f"no '{WORD_COLUMN}' column (the word column of the authors' format); "
            f"columns are {wide.columns[:5]}{'...' if len(wide.columns) > 5 else ''}",
            source=source, field=WORD_COLUMN)
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
        raise InputError("empty word", source=source, row=int(empty.arg_true()[0]) + 1, field=WORD_COLUMN)

    columns = {"word": words}
    for prompt in prompt_ids:
        raw = wide[prompt].str.strip_chars()
        parsed = raw.cast(pl.Float64, strict=False)
        bad = (parsed.is_null() | ~parsed.is_finite()).fill_null(True)
        if bad.any():
            index = int(bad.arg_true()[0])
            text = raw[index]
            problem = "empty score" if text is None or text == "" else f"not a finite number: {text!r}"
            raise InputError(problem, source=source, row=index + 1, field=prompt)
        columns[prompt] = parsed

    return (
        pl.DataFrame(columns)
        .unpivot(index="word", on=list(prompt_ids), variable_name="prompt", value_name="score")
        .select(pl.col("prompt").cast(pl.Utf8), pl.col("word").cast(pl.Utf8),
                pl.col("score").cast(pl.Float64))
    )
