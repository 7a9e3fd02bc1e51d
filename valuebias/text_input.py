"""Reading CSV text that a user hands ValueBias: every error names the file, the line and the field."""

from __future__ import annotations

import csv
import io
import re

from valuebias.errors import InputError

#: Line ends as the csv module counts them (``\n``, ``\r\n``, ``\r``), so every error names the line an
#: editor shows; ``str.splitlines`` would also break at ``\f``, ``\x1c``-``\x1e``, ``\x85``, ``\u2028``...
LINE_END = re.compile(r"\r\n|\r|\n")
_LINE_END_BYTES = re.compile(rb"\r\n|\r|\n")


def line_of(data: bytes, offset: int) -> int:
    """The 1-based file line holding byte ``offset`` of ``data`` (line ends as :data:`LINE_END`)."""
    return len(_LINE_END_BYTES.split(data[:offset]))


def csv_rows(text: str, source: str, field: str) -> list[tuple[int, list[str]]]:
    """(file line where the row starts, cells) for every row of a CSV text, so that errors name the line a
    person sees in an editor (a quoted field may span lines; blank lines count). A malformed file (a field
    over the csv module's limit, an unterminated quote, a NUL) is an ``InputError`` naming ``source``, the
    file line where reading stopped and ``field``."""
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = []
    try:
        start = 1
        for row in reader:
            rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as err:
        reason = str(err)
        if "field larger than field limit" in reason:
            reason = f"a field longer than {csv.field_size_limit()} characters (is this really a CSV word list?)"
        raise InputError(f"not a readable CSV: {reason}", source=source, row=max(reader.line_num, 1),
                         field=field) from None
    return rows
