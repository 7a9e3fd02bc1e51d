"""One error type for bad input, always naming where the problem is."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: names the source (file, URI or config entry), the row and the field at fault.

    ``str(err)`` reads like ``corpora/big2.csv: row 17, field 'Category': unknown category 'Agncy'``.
    """

    def __init__(self, message: str, *, source: str | None = None, row: int | str | None = None,
                 field: str | None = None):
        self.message = message
        self.source = source
        self.row = row
        self.field = field
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        location = ", ".join(where)
        prefix = self.source or ""
        if prefix and location:
            prefix = f"{prefix}: {location}"
        elif location:
            prefix = location
        return f"{prefix}: {self.message}" if prefix else self.message
