"""Psycholinguistic word lists (corpora) parsed into one long table ``word, category`` (docs/METHOD.md#2-corpora).

Formats (``format=``):

- ``csv`` long (``category_column`` given): one row per (word, category), e.g. ``dict_big2_nouns.csv``
  with ``word_column="token_decoded", category_column="Category"``.
- ``csv`` wide (no ``category_column``) and ``dicx`` (LIWC-22): a word column (``DicTerm`` by default)
  and one column per category (``category_columns``, or every other column). A cell marks membership
  when it is ``X`` (any case); an empty cell or ``NA`` means not a member; anything else is an error.
- ``dic`` (classic LIWC): a header between two ``%`` lines mapping numbers to category names
  (``1<TAB>Agency``), then one ``word<TAB>1<TAB>2`` line per word (tabs or spaces).

Rules applied after parsing, in this order:

1. the word is lowercased and stripped; an empty word is an error;
2. ``category_rule``: ``identity`` keeps the category name, ``foundation`` keeps the part before the
   first ``_`` (MFD2 ``Care_Virtue`` and ``Care_Vice`` both become ``Care``);
3. ``categories``, if given, lists the allowed category names (after the rule); any other is an error;
4. ``wildcards`` handles entries containing ``*``: ``expand`` replaces ``stem*`` by every word of
   ``wildcard_words`` starting with ``stem`` (each carrying the entry's categories), ``drop`` removes
   them, ``error`` rejects the first one. Entries without ``*`` are kept whether or not they are in
   the word list;
5. exact duplicate (word, category) pairs are removed and counted (``duplicates_removed``).

The table is sorted by category then word. Every bad input raises :class:`InputError` naming the
source, the row and the field. The row is the 1-based line of the file as an editor shows it, for every
format: the header (CSV/dicx) or the opening ``%`` (dic) counts, and so do blank lines, ``%`` lines and
the lines of a quoted CSV field that spans several; a line ends at ``\n``, ``\r\n`` or ``\r``; a UTF-8
byte-order mark is not a line.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import polars as pl

from valuebias.config import CATEGORY_RULES, CORPUS_FORMATS, WILDCARD_MODES
from valuebias.errors import InputError
from valuebias.text_input import LINE_END, csv_rows, line_of
from valuebias.wordlist import wildcard_stem

DEFAULT_WORD_COLUMN = "DicTerm"
DIC_WORD_FIELD = "word"
DIC_CATEGORY_FIELD = "category"
N_WILDCARD_EXAMPLES = 5
HEADER_LINE = 1  # the header of a CSV/dicx is its first line


@dataclass
class ParsedCorpus:
    """A parsed word list: ``table`` (columns word, category) and ``stats`` describing how it was built."""

    table: pl.DataFrame
    stats: dict = field(default_factory=dict)


@dataclass
class _Entry:
    """One input entry: a word (maybe a wildcard) and its categories, with where it came from."""

    row: int
    word: str
    word_field: str
    categories: list[tuple[str, str]]  # (category name, field it was read from)


@dataclass
class _Parsed:
    entries: list[_Entry]
    rows_read: int
    rows_without_category: int


# ---------------------------------------------------------------------------------------------------
# Main entry point


def read_corpus(data: bytes, *, source: str, format: str, word_column: str | None = None,
                category_column: str | None = None, category_columns: list[str] | None = None,
                category_rule: str = "identity", categories: list[str] | None = None,
                wildcards: str = "expand", wildcard_words: Sequence[str] | None = None) -> ParsedCorpus:
    """Parse a word list into a long ``word, category`` table (see the module doc for the rules).

    ``word_column`` defaults to ``DicTerm`` (csv and dicx). For ``csv``, giving ``category_column``
    means the long layout; otherwise the wide layout with ``category_columns`` (default: all columns
    but the word column). ``wildcard_words`` is required when ``wildcards='expand'`` and the corpus
    has wildcard entries.
    """
    _check_option(format, CORPUS_FORMATS, "format", source)
    _check_option(category_rule, CATEGORY_RULES, "category_rule", source)
    _check_option(wildcards, WILDCARD_MODES, "wildcards", source)
    if format != "csv" and category_column is not None:
        raise InputError(f"category_column is only for the long csv layout, not for format {format!r}",
                         source=source, field="category_column")
    text = _decode(data, source)
    word_field = DIC_WORD_FIELD if format == "dic" else (word_column or DEFAULT_WORD_COLUMN)

    if format == "dic":
        parsed = _parse_dic(text, source)
    elif category_column is not None:
        parsed = _parse_long_csv(text, source, word_field, category_column)
    else:
        parsed = _parse_wide_csv(text, source, word_field, category_columns)
    if parsed.rows_read == 0:
        raise InputError("empty corpus: no data rows", source=source, field=word_field)

    entries = _apply_category_rule(parsed.entries, category_rule, categories, source)
    pairs, wildcard_stats = _resolve_wildcards(entries, wildcards, wildcard_words, source)
    table = (pl.DataFrame(pairs, schema={"word": pl.Utf8, "category": pl.Utf8}, orient="row")
             .unique().sort("category", "word"))
    if table.height == 0:
        raise InputError("empty corpus: no words left after processing", source=source, field=word_field)

    stats = {
        "rows_read": parsed.rows_read,
        "rows_without_category": parsed.rows_without_category,
        "entries": len(entries),
        "pairs": table.height,
        "duplicates_removed": len(pairs) - table.height,
        **wildcard_stats,
        "categories": dict(table.group_by("category").len().sort("category").iter_rows()),
        "words": table["word"].n_unique(),
    }
    return ParsedCorpus(table=table, stats=stats)


def _check_option(value: str, allowed: tuple[str, ...], name: str, source: str) -> None:
    if value not in allowed:
        raise InputError(f"unknown {name} {value!r}; use one of {', '.join(allowed)}", source=source, field=name)


def _decode(data: bytes, source: str) -> str:
    """UTF-8 text (a byte-order mark is ignored); anything else is an error naming the line."""
    if b"\x00" in data:
        raise InputError("binary data (NUL byte), not a text word list", source=source,
                         row=line_of(data, data.index(b"\x00")), field="file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = line_of(data, err.start)
        raise InputError(f"not UTF-8 text (byte {err.start})", source=source, row=line, field="file") from err


# ---------------------------------------------------------------------------------------------------
# Parsers: each yields entries with their row numbers


def _read_csv_rows(text: str, source: str, word_column: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (file line, cells) of a CSV; blank lines are skipped but keep their number."""
    rows = csv_rows(text, source, word_column)
    if not rows or not any(cell.strip() for cell in rows[0][1]):
        raise InputError("empty corpus: no header", source=source, field=word_column)
    header = [name.strip() for name in rows[0][1]]
    body = []
    for number, cells in rows[1:]:
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            raise InputError(f"expected {len(header)} fields as in the header, got {len(cells)}",
                             source=source, row=number, field=word_column)
        body.append((number, cells))
    return header, body


def _require_columns(header: list[str], wanted: Iterable[str], source: str) -> None:
    """Each wanted column must be in the header (reported as row 1: the header is the file's first line)."""
    for name in wanted:
        if name not in header:
            raise InputError(f"missing column {name!r}; the file has columns {header}", source=source,
                             row=HEADER_LINE, field=name)


def _word(cells: list[str], index: int, *, source: str, row: int, field_name: str) -> str:
    """The normalised word: lowercased and stripped; empty is an error."""
    word = cells[index].strip().lower()
    if not word:
        raise InputError("empty word", source=source, row=row, field=field_name)
    return word


def _parse_long_csv(text: str, source: str, word_column: str, category_column: str) -> _Parsed:
    """Long layout: one (word, category) per row."""
    header, body = _read_csv_rows(text, source, word_column)
    _require_columns(header, [word_column, category_column], source)
    i_word, i_category = header.index(word_column), header.index(category_column)
    entries = []
    for row, cells in body:
        word = _word(cells, i_word, source=source, row=row, field_name=word_column)
        category = cells[i_category].strip()
        if not category:
            raise InputError("empty category", source=source, row=row, field=category_column)
        entries.append(_Entry(row, word, word_column, [(category, category_column)]))
    return _Parsed(entries, rows_read=len(body), rows_without_category=0)


def _is_member(cell: str, *, source: str, row: int, column: str) -> bool:
    """Wide-layout cell: ``X`` (any case) is a member; empty or ``NA`` is not; anything else is an error."""
    value = cell.strip().upper()
    if value == "X":
        return True
    if value in ("", "NA"):
        return False
    raise InputError(f"cell {cell!r} is neither 'X' (member) nor empty/'NA' (not a member)",
                     source=source, row=row, field=column)


def _parse_wide_csv(text: str, source: str, word_column: str, category_columns: list[str] | None) -> _Parsed:
    """Wide layout (csv, LIWC-22 dicx): one column per category, ``X`` marks membership."""
    header, body = _read_csv_rows(text, source, word_column)
    _require_columns(header, [word_column], source)
    if category_columns is None:
        category_columns = [name for name in header if name != word_column]
    _require_columns(header, category_columns, source)
    if not category_columns:
        raise InputError(f"no category columns besides the word column; the file has columns {header}",
                         source=source, row=HEADER_LINE, field=word_column)
    i_word = header.index(word_column)
    indices = [(name, header.index(name)) for name in category_columns]
    entries, without = [], 0
    for row, cells in body:
        word = _word(cells, i_word, source=source, row=row, field_name=word_column)
        marked = [(name, name) for name, i in indices if _is_member(cells[i], source=source, row=row, column=name)]
        if marked:
            entries.append(_Entry(row, word, word_column, marked))
        else:
            without += 1
    return _Parsed(entries, rows_read=len(body), rows_without_category=without)


def _parse_dic(text: str, source: str) -> _Parsed:
    """Classic LIWC .dic: ``%``, ``number name`` lines, ``%``, then ``word n1 n2 ...`` lines.

    Body lines are split on tabs when they contain one (so a word may hold spaces), else on spaces.
    """
    lines = LINE_END.split(text)  # not str.splitlines: a line is what the csv module and an editor count
    names, body_start = _parse_dic_header(lines, source)
    entries, rows_read, without = [], 0, 0
    for number, line in enumerate(lines[body_start:], start=body_start + 1):
        if not line.strip():
            continue
        rows_read += 1
        parts = [p.strip() for p in line.split("\t")] if "\t" in line else line.split()
        word = parts[0].lower()
        if not word:
            raise InputError("empty word", source=source, row=number, field=DIC_WORD_FIELD)
        codes = [p for p in parts[1:] if p]
        if not codes:
            without += 1
            continue
        categories = []
        for code in codes:
            if not code.isdigit() or int(code) not in names:
                raise InputError(f"word {word!r} has category number {code!r}, which the header does not define "
                                 f"(defined: {', '.join(map(str, names))})", source=source, row=number,
                                 field=DIC_CATEGORY_FIELD)
            categories.append((names[int(code)], DIC_CATEGORY_FIELD))
        entries.append(_Entry(number, word, DIC_WORD_FIELD, categories))
    return _Parsed(entries, rows_read=rows_read, rows_without_category=without)


def _parse_dic_header(lines: list[str], source: str) -> tuple[dict[int, str], int]:
    """Category numbers -> names from the ``%`` header, and the index of the first body line."""
    start = next((i for i, line in enumerate(lines) if line.strip()), None)
    if start is None or lines[start].strip() != "%":
        raise InputError("not a LIWC .dic file: the first line must be '%' opening the category header",
                         source=source, row=(start or 0) + 1, field="header")
    names: dict[int, str] = {}
    for i in range(start + 1, len(lines)):
        line = lines[i].strip()
        if line == "%":
            return names, i + 1
        if not line:
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise InputError(f"header line {line!r} is not 'number<TAB>category name'", source=source,
                             row=i + 1, field="header")
        code = int(parts[0])
        if code in names:
            raise InputError(f"category number {code} defined twice", source=source, row=i + 1, field="header")
        names[code] = parts[1].strip()
    raise InputError("the category header opened by '%' is never closed by a second '%' line",
                     source=source, row=start + 1, field="header")


# ---------------------------------------------------------------------------------------------------
# Rules applied to the parsed entries


def _apply_category_rule(entries: list[_Entry], rule: str, allowed: list[str] | None,
                         source: str) -> list[_Entry]:
    """Rename categories by the rule (identity, or foundation = part before the first ``_``) and check them."""
    allowed_set = set(allowed) if allowed is not None else None
    for entry in entries:
        renamed = []
        for name, column in entry.categories:
            name = name.split("_", 1)[0] if rule == "foundation" else name
            if allowed_set is not None and name not in allowed_set:
                raise InputError(f"unknown category {name!r}; allowed: {', '.join(allowed)}", source=source,
                                 row=entry.row, field=column)
            renamed.append((name, column))
        entry.categories = renamed
    return entries


class _PrefixIndex:
    """Sorted copy of a word list for fast prefix look-ups (same result set as ``expand_wildcard``)."""

    def __init__(self, words: Sequence[str]):
        self.words = sorted(set(words))

    def starting_with(self, stem: str) -> list[str]:
        start = bisect.bisect_left(self.words, stem)
        end = start
        while end < len(self.words) and self.words[end].startswith(stem):
            end += 1
        return self.words[start:end]


def _resolve_wildcards(entries: list[_Entry], mode: str, wildcard_words: Sequence[str] | None,
                       source: str) -> tuple[list[tuple[str, str]], dict]:
    """(word, category) pairs with ``*`` entries expanded, dropped or rejected, and the wildcard stats."""
    pairs: list[tuple[str, str]] = []
    n_wildcards, no_match, examples = 0, 0, []
    expanded_words: set[str] = set()
    index = None
    for entry in entries:
        if "*" not in entry.word:
            pairs.extend((entry.word, name) for name, _ in entry.categories)
            continue
        n_wildcards += 1
        if mode == "drop":
            continue
        if mode == "error":
            raise InputError(f"wildcard entry {entry.word!r} not allowed (wildcards='error')", source=source,
                             row=entry.row, field=entry.word_field)
        if wildcard_words is None:
            raise InputError(f"wildcard entry {entry.word!r} needs a word list to expand against: pass "
                             "wildcard_words, or wildcards='drop'", source=source, row=entry.row,
                             field=entry.word_field)
        try:
            stem = wildcard_stem(entry.word)
        except ValueError as err:
            raise InputError(str(err), source=source, row=entry.row, field=entry.word_field) from err
        index = index or _PrefixIndex(wildcard_words)
        matches = index.starting_with(stem)
        if not matches:
            no_match += 1
        if len(examples) < N_WILDCARD_EXAMPLES:
            examples.append(f"{entry.word} -> {len(matches)} words")
        expanded_words.update(matches)
        pairs.extend((word, name) for word in matches for name, _ in entry.categories)
    stats = {
        "wildcard_mode": mode,
        "wildcard_entries": n_wildcards,
        "wildcards_dropped": n_wildcards if mode == "drop" else 0,
        "wildcards_without_match": no_match,
        "words_from_wildcards": len(expanded_words),
        "wildcard_examples": examples,
    }
    return pairs, stats
