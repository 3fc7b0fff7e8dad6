"""The base of the text inputs (CSV, JSON Lines): parsed by pyarrow in blocks, in order; a
counting pass at open finds the row count (text does not know its length).  An uncompressed
JSON Lines file is read by chunks instead (``jsonl``)."""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError
from ._batches import BatchSource
from .base import ReadOptions

__all__ = ["TextSource"]

BLOCK_BYTES = 8 << 20
"""Bytes of text pyarrow parses at a time."""


class TextSource(BatchSource):
    """A text file read by a pyarrow streaming reader (:meth:`_reader`)."""

    def __init__(self, path: Path, opts: ReadOptions) -> None:
        super().__init__(path)
        self._opts = opts

    @abstractmethod
    def _reader(self) -> Any:
        """A new pyarrow streaming reader over the file (it has a ``schema`` and yields batches)."""

    @classmethod
    def open(cls, path: Path, keep: tuple[str, ...] | None, opts: ReadOptions) -> TextSource:
        out = cls(path, opts)
        try:
            r = out._reader()
            schema = r.schema
            rows = sum(b.num_rows for b in r)  # a counting pass: text formats do not know their length
        except Exception as e:  # pyarrow raises ArrowInvalid with the line number
            if isinstance(e, InputError):
                raise
            raise InputError(f"{path}: cannot parse {cls.name.upper()}: {str(e).splitlines()[0]}") from None
        out._setup(schema, rows, keep, opts)
        return out

    def _batches(self, max_rows: int, names: tuple[str, ...]) -> Iterator[Any]:
        for b in self._reader():
            yield b.select(list(names))

    def _first_batch(self, names: tuple[str, ...]) -> Any:
        return next(iter(self._reader()), None)
