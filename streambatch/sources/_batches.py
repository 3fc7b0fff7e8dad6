"""The base of the Arrow-based inputs (Parquet, Arrow IPC / Feather, CSV, JSON Lines): sources
over Arrow record batches, which may hold nulls (filled or dropped, ``_mapped.Nulls``) and
dictionaries (categorical codes, ``_mapped.Categories``), decoded to numpy piece by piece."""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import numpy as np

from ..errors import InputError
from ..schema import Column
from ._arrow_numpy import arrow_column, arrow_to_numpy, infer_list_shapes
from ._arrow_ragged import as_ragged_list, varying_lists
from ._columns import check_names, select
from ._mapped import Categories, null_rows
from .base import ReadOptions, Source, trim

__all__ = ["BatchSource", "numbered"]


class BatchSource(Source):
    """A source over Arrow record batches (or dicts of arrays already decoded).

    A subclass reads its batches (:meth:`_batches`), and, where it can start at any row
    (``ranged``), :meth:`_batches_from`; its ``open`` calls :meth:`_setup` with the schema.  It
    has random access when ranged, unless nulls are filled or dropped (the rows of a range then
    depend on the rows before it).
    """

    ranged: ClassVar[bool] = False

    def __init__(self, path: Path) -> None:
        super().__init__(path, (), 0)
        self._by_name: dict[str, Column] = {}  # the columns, once set up
        self._cats: dict[str, Categories] = {}
        self._drop: tuple[str, ...] = ()

    @abstractmethod
    def _batches(self, max_rows: int, names: tuple[str, ...]) -> Iterator[Any]:
        """Every batch in order, with the columns ``names``."""

    def _batches_from(self, max_rows: int, names: tuple[str, ...], start: int) -> Iterator[tuple[int, Any]]:
        """``(first row, batch)`` from the batch holding row ``start`` on (``ranged`` sources)."""
        raise NotImplementedError

    def _first_batch(self, names: tuple[str, ...]) -> Any:
        """A batch of the first rows (up to about a thousand) with at least the columns ``names``,
        whose list columns give their row shape (``None``: no rows)."""
        return None

    @property
    def random_access(self) -> bool:
        return self.ranged and not self.nulls.active

    def _setup(self, schema: Any, rows: int, keep: tuple[str, ...] | None, opts: ReadOptions,
               given: dict[str, Column] | None = None, block_rows: int = 1) -> None:
        """Columns and rows from the Arrow ``schema`` (``keep``: those to read); a pass over the
        input where categories, dropped rows or whether a list column's rows vary in length must
        be known first.  ``given`` holds columns the schema cannot describe (Hive partition keys).
        A variable-length list column (Arrow ``list`` / ``large_list``, a JSON array) whose rows
        (null rows aside) all have one length is a fixed-shape column, as before ragged columns
        existed; otherwise a ragged ``list`` column (``opts.ragged``, when given, says which)."""
        where = str(self.path)
        nulls = opts.nulls
        chosen = select(list(schema.names), keep, where)
        fields = [f for f in schema if keep is None or f.name in chosen]
        check_names([f.name for f in fields], where)
        if rows == 0:  # before the types: an empty CSV or JSON file has only null-typed columns
            raise InputError(f"{where}: input is empty (0 rows)")
        cols = [(given or {}).get(f.name) or arrow_column(f, where) for f in fields]
        first = None
        if any(s < 0 for c in cols for s in c.shape):
            first = self._first_batch(tuple(c.name for c in cols if any(s < 0 for s in c.shape)))
        # variable-length lists: ragged unless every row has one length (the first rows, then a pass)
        lists, seen = [c.name for c in cols if c.shape and c.shape[0] < 0], {}
        if opts.ragged is not None:  # decided by an earlier open (SourceSpec.ragged)
            ragged, undecided = _given_ragged(opts.ragged, lists, where), []
        else:
            ragged = varying_lists(first, lists, seen)
            undecided = [n for n in lists if n not in ragged]
        cats = {c.name: Categories(c, where) for c in cols
                if c.meta and c.meta["type"] == "category" and c.name not in (given or {})}
        drop = nulls.drop_names(c.name for c in cols)
        if cats or drop or undecided:
            scanned = [c for c in cols if c.name in cats or c.name in drop or c.name in undecided]
            nulls.dropped, varying = _scan(self._batches, cats, drop, undecided, seen,
                                           sum(_row_guess(c) for c in scanned))
            ragged |= varying
            cols = [cats[c.name].column() if c.name in cats else c for c in cols]
            if nulls.dropped == rows:
                raise InputError(f"{where}: every one of the {rows} rows has a null; --drop-nulls leaves nothing")
            rows -= nulls.dropped
        ragged |= {n for n in lists if seen.get(n) == 0}  # every row empty: no fixed shape of 0 values
        cols = [as_ragged_list(c, first, where) if c.name in ragged else c for c in cols]
        if any(s < 0 for c in cols for s in c.shape):
            cols = infer_list_shapes(cols, first, where)
        self.columns, self.rows, self.nulls, self.block_rows = tuple(cols), rows, nulls, block_rows
        self._by_name, self._cats, self._drop = {c.name: c for c in cols}, cats, drop

    def _decoded(self, numbered: Iterator[tuple[int, Any]], max_rows: int,
                 names: tuple[str, ...]) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """``(first row, piece)`` of each batch cut to ``max_rows``: nulls filled or rows dropped."""
        import pyarrow as pa

        where, nulls, drop = str(self.path), self.nulls, self._drop
        for row0, b in numbered:
            if isinstance(b, dict):  # already decoded (a Parquet row group read in place), at most max_rows
                yield row0, b if len(b) == len(names) else {n: b[n] for n in names}
                continue
            for lo in range(0, b.num_rows, max_rows):
                part = b.slice(lo, max_rows)
                at: int | np.ndarray = row0 + lo
                gone = _null_mask(part, drop) if drop else None
                if gone is not None and gone.any():  # rows dropped: errors name each row's input row
                    nulls.dropped += int(gone.sum())
                    part, at = part.filter(pa.array(~gone)), row0 + lo + np.flatnonzero(~gone)
                    if part.num_rows == 0:
                        continue
                yield row0 + lo, {n: arrow_to_numpy(part.column(n), self._by_name[n], where, at, nulls,
                                                    self._cats.get(n)) for n in names}

    def _read(self, max_rows: int, names: tuple[str, ...]) -> Iterator[dict[str, np.ndarray]]:
        self.nulls.restart()
        read = tuple(dict.fromkeys([*names, *self._drop]))  # a row's nulls drop it whatever columns are asked for
        for _, piece in self._decoded(numbered(self._batches(max_rows, read), 0, read[0]), max_rows, names):
            yield piece

    def _near(self, max_rows: int, names: tuple[str, ...], start: int, stop: int) -> Iterator[tuple[int, Any]]:
        """The batches holding rows ``start`` to ``stop``, Arrow ones cut to them before decoding."""
        for row0, b in self._batches_from(max_rows, names, start):
            n = len(b[names[0]]) if isinstance(b, dict) else b.num_rows
            if row0 >= stop:
                return
            if row0 + n <= start:
                continue
            if not isinstance(b, dict) and (row0 < start or row0 + n > stop):
                lo = max(0, start - row0)
                b = b.slice(lo, min(n, stop - row0) - lo)
                row0 += lo
            yield row0, b

    def _read_range(self, max_rows: int, names: tuple[str, ...], start: int,
                    stop: int) -> Iterator[dict[str, np.ndarray]]:
        return trim(self._decoded(self._near(max_rows, names, start, stop), max_rows, names), names[0], 0, start,
                    stop)


def numbered(batches: Iterator[Any], row: int, first: str) -> Iterator[tuple[int, Any]]:
    """``(first row, batch)`` for consecutive batches (Arrow record batches or dicts of arrays)."""
    for b in batches:
        yield row, b
        row += len(b[first]) if isinstance(b, dict) else b.num_rows


def _null_mask(batch: Any, names: tuple[str, ...]) -> np.ndarray:
    """Rows of an Arrow batch with a null in any of ``names``."""
    mask = np.zeros(batch.num_rows, bool)
    for n in names:
        mask |= null_rows(batch.column(n))
    return mask


def _row_guess(c: Column) -> int:
    """The decoded bytes of a row of ``c`` for sizing a pass's batches (1 KiB where rows vary)."""
    return c.row_nbytes if not c.ragged and all(s > 0 for s in c.shape) else 1024


def _given_ragged(given: tuple[str, ...], lists: list[str], where: str) -> set[str]:
    """The list columns ``given`` as ragged; ``InputError`` for one that is not a variable-length list."""
    wrong = [n for n in given if n not in lists]
    if wrong:
        raise InputError(f"{where}: column {wrong[0]!r} cannot be read as ragged rows: it is not a variable-length "
                         f"list column (those are {lists})")
    return set(given)


def _scan(batches: Callable[[int, tuple[str, ...]], Iterator[Any]], cats: dict[str, Categories],
          drop: tuple[str, ...], lists: list[str], seen: dict[str, int], row_nbytes: int) -> tuple[int, set[str]]:
    """One pass over the columns that need it before any row is written: the categories of
    dictionary columns (``cats`` take them in), the rows ``drop`` leaves out (their count
    returned) and which of the variable-length ``lists`` have rows of different lengths
    (returned; ``seen``: the length of each one's first row, where known).
    ``row_nbytes``: the decoded bytes of a row of these columns (batches of about 8 MiB)."""
    import pyarrow as pa

    dropped, varying = 0, set()
    for b in batches(max(1, (8 << 20) // max(1, row_nbytes)), tuple(dict.fromkeys([*cats, *drop, *lists]))):
        if isinstance(b, dict):  # decoded in place: REQUIRED numbers, neither nulls nor dictionaries
            continue
        for n, c in cats.items():
            col = b.column(n)
            for chunk in col.chunks if isinstance(col, pa.ChunkedArray) else [col]:
                c.add(chunk)
        dropped += int(_null_mask(b, drop).sum()) if drop else 0
        varying |= varying_lists(b, [n for n in lists if n not in varying], seen)
        if not cats and not drop and len(varying) == len(lists):
            break
    return dropped, varying
