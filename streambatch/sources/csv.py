"""CSV input: a header line and comma-separated values (``--delimiter`` for others)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from ._text import BLOCK_BYTES, TextSource
from .base import ReadOptions

__all__ = ["CsvSource"]

_DELIMITERS = {"\t": "tab", ";": "semicolon", "|": "pipe"}


class CsvSource(TextSource):
    """A CSV file; without ``--delimiter``, a header that looks separated by tabs, semicolons or
    pipes (and has no comma) is refused with a hint."""

    name = "csv"
    extensions = (".csv",)

    @classmethod
    def open(cls, path: Path, keep: tuple[str, ...] | None, opts: ReadOptions) -> TextSource:
        if opts.delimiter is None:
            _check_header(path)
        return super().open(path, keep, opts)

    def _reader(self) -> Any:
        import pyarrow.csv as pcsv

        parse = pcsv.ParseOptions(delimiter=self._opts.delimiter or ",")
        return pcsv.open_csv(str(self.path), read_options=pcsv.ReadOptions(block_size=BLOCK_BYTES),
                             parse_options=parse)


def _check_header(path: Path) -> None:
    """``InputError`` suggesting ``--delimiter`` when the first line has no comma but tabs,
    semicolons or pipes: read with commas, it would be one column."""
    try:
        with open(path, "rb") as f:
            line = f.readline(1 << 16).decode("utf-8", "replace").rstrip("\r\n")
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    found = [d for d in _DELIMITERS if d in line]
    if found and "," not in line:
        d = max(found, key=line.count)
        raise InputError(f"{path}: the header {line[:60]!r} looks {_DELIMITERS[d]}-separated but would be read as "
                         f"one column; pass --delimiter {d!r} (or --delimiter ',' if it is one column)")
