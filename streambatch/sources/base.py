"""The interface of an input format: a :class:`Source` knows its columns and row count before any
data is read and yields ``pieces(max_rows)``: dicts of numpy arrays (``ragged.Ragged`` rows for
a list, bytes or string column, row-aligned with the arrays), at most ``max_rows`` rows each, in
row order.  A source with ``random_access`` reads any row range without reading what
comes before it, and its ranges may be read from several threads at once.

A format is one subclass (one module of this package) listed in ``sources.SOURCES``: its name
(``--from``), its file extensions, which folders it claims, ``open`` and the reads.  Every
problem is an ``InputError`` naming the file and the column (or row) and what is wrong.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np

from ..schema import Column
from ._mapped import Nulls

__all__ = ["Source", "SourceSpec", "ReadOptions", "trim", "piece_nbytes"]


@dataclass(frozen=True)
class SourceSpec:
    """What opens a source, in plain values (``sources.open_source(**vars(spec))``): a
    conversion's parts may open their source again in another process."""

    path: str
    fmt: str
    columns: tuple[str, ...] | None = None
    fill: dict[str, Any] = field(default_factory=dict)
    drop_nulls: bool = False
    delimiter: str | None = None
    ragged: tuple[str, ...] | None = None
    """The variable-length list columns read as ragged rows, as the first open found them (a
    later open then need not look at their lengths again)."""
    index: Any = None
    """Where the first open found the rows (``Source.index``: a JSON Lines file's chunks), so
    that a later open need not read the input again; ``None`` for most formats."""


@dataclass
class ReadOptions:
    """How to read an input beyond its columns: its nulls, a CSV's delimiter, which
    variable-length list columns are ragged (``None``: those whose rows vary in length), and
    an earlier open's ``index`` of the input (``SourceSpec.index``)."""

    nulls: Nulls = field(default_factory=Nulls)
    delimiter: str | None = None
    ragged: tuple[str, ...] | None = None
    index: Any = None


class Source(ABC):
    """A readable input: its path, format, columns, row count and reads in pieces.

    Subclasses set ``name`` (the ``--from`` format), ``extensions``, and implement :meth:`open`
    and :meth:`_read`; those with random access also :meth:`_read_range` and ``random_access``.
    """

    name: ClassVar[str] = ""
    extensions: ClassVar[tuple[str, ...]] = ()
    detect_rank: ClassVar[int] = 1
    """Folder detection asks formats in this order (a Zarr store's marker files come first)."""

    def __init__(self, path: Path, columns: tuple[Column, ...], rows: int, block_rows: int = 1,
                 nulls: Nulls | None = None) -> None:
        self.path, self.format, self.columns, self.rows = path, self.name, columns, rows
        self.block_rows = block_rows
        """The most rows a range may have to read for one row (a Parquet row group, a dataset's
        unit): ranges that share such a block each read it."""
        self.nulls = nulls if nulls is not None else Nulls()
        """The null options and, after a pass over ``pieces``, the values filled and rows dropped."""
        self.spec: SourceSpec | None = None  # set by open_source
        self.index: Any = None
        """What a later open may take instead of reading the input again (``SourceSpec.index``)."""

    @property
    def nbytes(self) -> int:
        """The decoded bytes of every row: exact for fixed-shape columns; for ragged ones (values
        plus int64 offsets, as ``piece_nbytes`` counts them) what :meth:`_ragged_nbytes` gives."""
        fixed = sum(c.row_nbytes for c in self.columns if not c.ragged) * self.rows
        ragged = tuple(c.name for c in self.columns if c.ragged)
        return fixed + (self._ragged_nbytes(ragged) if ragged else 0)

    def _ragged_nbytes(self, names: tuple[str, ...]) -> int:
        """The decoded bytes of the ragged columns ``names`` (values and int64 offsets): by
        default an estimate, their values in the first rows (up to 4096; all of them, exactly,
        in a smaller input) scaled to ``rows``; a source that knows its sizes (ImageFolder: the
        file sizes) gives them exactly."""
        values, seen = self.ragged_sample(names)
        return -(-sum(values.values()) * self.rows // max(1, seen)) + 8 * (self.rows + 1) * len(names)

    def ragged_sample(self, names: tuple[str, ...]) -> tuple[dict[str, int], int]:
        """The bytes of the values of each ragged column ``names`` in the first rows (up to 4096),
        and how many rows that was; the null counts of a conversion's pass are left as they were."""
        nulls, first = self.nulls, min(self.rows, 4096)
        counts = (dict(nulls.filled), nulls.dropped)  # a pass's counts: not this look's
        values, seen = dict.fromkeys(names, 0), 0
        try:
            for piece in self.pieces(first, names, 0, first):
                for name in names:
                    values[name] += int(piece[name].nbytes) - 8 * piece[name].offsets.size
                seen += len(piece[names[0]])
        finally:
            nulls.filled, nulls.dropped = counts
        return values, seen

    @property
    def random_access(self) -> bool:
        """Whether ``pieces(start=...)`` skips to its rows and is safe to call from several threads."""
        return False

    @property
    def in_order(self) -> str:
        """Why the source is read in order (without ``random_access``), for errors."""
        return f"a {self.format} input is read in order"

    @classmethod
    @abstractmethod
    def open(cls, path: Path, keep: tuple[str, ...] | None, opts: ReadOptions) -> Source:
        """The source at ``path`` with the columns ``keep`` (all when ``None``, in the input's
        order; only these are checked).  Raises ``InputError``."""

    @classmethod
    def claims_folder(cls, path: Path, kinds: set[str]) -> bool:
        """Whether folder ``path``, holding files of the formats ``kinds`` (by extension), is
        an input of this format."""
        return False

    def pieces(self, max_rows: int, names: tuple[str, ...] | None = None, start: int = 0,
               stop: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Yield rows ``start`` to ``stop`` (all by default) in order, ``max_rows`` at most per
        piece, for columns ``names``.  Without ``random_access`` a range reads past the rows
        before it.  Raises ``InputError`` (``DataError`` for a damaged streambatch dataset)."""
        names = names or tuple(c.name for c in self.columns)
        max_rows = max(1, max_rows)
        stop = self.rows if stop is None else min(stop, self.rows)
        if start <= 0 and stop == self.rows:
            yield from self._read(max_rows, names)
        elif self.random_access:
            yield from self._read_range(max_rows, names, start, stop)
        else:
            yield from trim(self._read(max_rows, names), names[0], 0, start, stop)

    @abstractmethod
    def _read(self, max_rows: int, names: tuple[str, ...]) -> Iterator[dict[str, np.ndarray]]:
        """Every row in order, in pieces of at most ``max_rows``."""

    def _read_range(self, max_rows: int, names: tuple[str, ...], start: int,
                    stop: int) -> Iterator[dict[str, np.ndarray]]:
        """Rows ``start`` to ``stop``, read without the rows before them (``random_access`` only)."""
        raise NotImplementedError(f"{type(self).__name__} has no random access")

    def close(self) -> None:
        """Release open files (a later read opens them again); idempotent."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, rows={self.rows}, columns={[c.name for c in self.columns]})"


def piece_nbytes(piece: dict[str, Any]) -> int:
    """The decoded bytes of a piece: its arrays', and its ``Ragged`` columns' values and offsets."""
    return sum(int(v.nbytes) for v in piece.values())


def trim(pieces: Iterator[Any], first: str, row: int, start: int, stop: int) -> Iterator[Any]:
    """The rows ``start`` to ``stop`` of ``pieces``, whose first row is ``row``: a piece is a dict
    of arrays or ``(row, dict)`` for pieces that say where they start."""
    for p in pieces:
        if isinstance(p, tuple):
            row, p = p
        n = len(p[first])
        lo, hi = max(0, start - row), min(n, stop - row)
        if hi > lo:
            yield p if (lo, hi) == (0, n) else {k: v[lo:hi] for k, v in p.items()}
        row += n
        if row >= stop:
            return
