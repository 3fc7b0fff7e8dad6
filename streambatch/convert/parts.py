"""A part of a conversion: a range of shuffle units written into its file(s), with the statistics
of its rows.  Both write paths use :class:`PartWriter`: the parallel one runs one :class:`Part`
per file, each reading its own rows; the sequential one is a single part fed, in order, by the
read-ahead (and pre-shuffle) pipeline.

A part is plain data with explicit inputs and outputs: ``Part`` (its unit range) and
``PartOptions`` (what every part of a conversion shares, the source's ``SourceSpec`` included)
in, a ``PartResult`` (the writer's files, layout, stored sizes and checksums; the statistics;
the rows) out, so that it may run in another process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..schema import Column
from ..sources import Source, SourceSpec, open_source
from .._ragged_stats import RaggedStats
from ..ragged import Ragged
from ..stats import ColumnStats, LabelStats, shift_of
from ..storage import combine, open_writer
from .temp import writing

__all__ = ["Abandoned", "Part", "PartOptions", "PartResult", "PartWriter", "Summary", "first_row_shifts",
           "plan_parts", "stage_units"]


class Abandoned(Exception):
    """A part stops because a part before it failed or the conversion was interrupted."""


@dataclass(frozen=True)
class PartOptions:
    """What every part of one conversion shares (plain, picklable values)."""

    source: SourceSpec
    fmt: str
    columns: tuple[Column, ...]
    rows: int
    """The dataset's rows (a writer sizes its files by them)."""
    unit_rows: int
    shard_bytes: int
    codec: str
    label: str | None
    piece_rows: int
    """Rows a piece read from the source."""
    stage_bytes: int
    """Bytes of each column's statistics staging buffer."""
    shifts: dict[str, np.ndarray] | None = None
    """Each column's statistics shift (``first_row_shifts``): parts merged then keep float64
    precision however far the values are from zero (see ``ColumnStats``)."""
    runs: bool = True
    """Write the whole units of a piece with one call (``write_units``), or unit by unit."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def label_column(self) -> Column | None:
        return next(c for c in self.columns if c.name == self.label) if self.label is not None else None


@dataclass
class PartResult:
    """What a part wrote: the writer's ``finish`` (files, layout, stored bytes and checksum per
    unit), the statistics of its rows, its label statistics, and its rows."""

    written: Any
    stats: dict[str, ColumnStats]
    labels: LabelStats | None
    rows: int


class PartWriter:
    """The units of one part into its file(s): the format's writer opened at ``first_unit``, the
    statistics of the rows (``summarised``, in source order) and the label statistics of each unit.
    ``progress(rows)`` is told of the rows written.  Without a ``folder`` it only summarises (the
    pre-shuffle's first pass on a cluster): :meth:`finish` then has nothing ``written``."""

    def __init__(self, opts: PartOptions, folder: Path | None, target: Path, first_unit: int = 0,
                 progress: Callable[[int], None] | None = None) -> None:
        self.opts, self.target, self.progress = opts, target, progress
        shifts = opts.shifts or {}
        self.stats = {c.name: column_stats(c, opts.stage_bytes, shifts.get(c.name)) for c in opts.columns}
        label = opts.label_column
        self.labels = LabelStats(label) if label is not None else None
        self.rows = 0
        self.writer: Any = None
        if folder is None:
            return
        with writing(target):  # write errors only: a read error keeps its own type
            self.writer = open_writer(opts.fmt, folder, opts.columns, opts.rows, opts.unit_rows, opts.shard_bytes,
                                      opts.codec, first_unit=first_unit)

    def summarised(self, source: Source, start: int = 0, stop: int | None = None,
                   abandon: Callable[[], bool] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """The source's rows ``start`` to ``stop`` (all by default) in pieces, each added to the
        statistics as read.  Raises ``InputError`` naming the row of a bad label, and
        :class:`Abandoned` where ``abandon()``, asked before each piece, is true."""
        where, row, first = str(source.path), start, self.opts.columns[0].name
        for piece in source.pieces(self.opts.piece_rows, self.opts.names, start, stop):
            if abandon is not None and abandon():
                raise Abandoned
            for c in self.opts.columns:
                self.stats[c.name].update(piece[c.name])
            if self.labels is not None:
                self.labels.check(piece[self.labels.col.name], where, row)
            row += len(piece[first])
            yield piece

    def write(self, pieces: Iterator[dict[str, np.ndarray]]) -> None:
        """Write ``pieces`` (any sizes, in the dataset's order) as units."""
        unit_rows, runs = self.opts.unit_rows, self.opts.runs
        first = self.opts.columns[0].name
        for run in stage_units(pieces, unit_rows, runs):
            with writing(self.target):
                if runs:
                    self.writer.write_units(run)
                else:
                    self.writer.write_unit(run)
            if self.labels is not None:
                labels = run[self.labels.col.name]
                for u in range(0, len(labels), unit_rows):
                    self.labels.update_unit(labels[u:u + unit_rows])
            n = len(run[first])
            self.rows += n
            if self.progress is not None:
                self.progress(n)

    def finish(self) -> PartResult:
        """Close the files; the part's result (statistics' staging buffers released)."""
        with writing(self.target):
            written = self.writer.finish() if self.writer is not None else None
        for st in self.stats.values():
            st.release()
        return PartResult(written, self.stats, self.labels, self.rows)

    def abort(self) -> None:
        """Close the files after a failure (the converter removes the folder)."""
        try:
            if self.writer is not None:
                self.writer.abort()
        except OSError:  # closing a file on a full disk fails again; the first error is raised
            pass


@dataclass(frozen=True)
class Part:
    """The units ``first_unit`` on of one file: the source's rows ``start`` to ``stop``."""

    index: int
    first_unit: int
    start: int
    stop: int

    def run(self, opts: PartOptions, folder: Path, target: Path, source: Source | None = None,
            abandon: Callable[[], bool] | None = None, progress: Callable[[int], None] | None = None) -> PartResult:
        """Read the part's rows from ``source`` (random access; opened from ``opts.source`` when
        ``None``), summarise and write them into ``folder``.  ``abandon()`` is asked before each
        piece: true, the part raises :class:`Abandoned`.  Raises what the source and the writer
        raise (writes as ``WriteError`` naming ``target``); the part's files are closed."""
        if source is None:
            with open_source(**vars(opts.source)) as opened:
                return self.run(opts, folder, target, opened, abandon, progress)
        part = PartWriter(opts, folder, target, self.first_unit, progress)
        try:
            part.write(part.summarised(source, self.start, self.stop, abandon))
            return part.finish()
        except BaseException:
            part.abort()
            raise


def plan_parts(rows: int, unit_rows: int, per_file: int) -> list[Part]:
    """One part a file of ``per_file`` units."""
    units = -(-rows // unit_rows)
    return [Part(i, u0, u0 * unit_rows, min(rows, (u0 + per_file) * unit_rows))
            for i, u0 in enumerate(range(0, units, per_file))]


def first_row_shifts(source: Source, cols: tuple[Column, ...]) -> dict[str, np.ndarray]:
    """Every column's statistics shift: its first row (``shift_of``)."""
    first = next(source.pieces(1, tuple(c.name for c in cols), 0, 1))
    return {c.name: shift_of(first[c.name][0]) for c in cols if not c.ragged}


def column_stats(c: Column, stage_bytes: int | None = None, shift: np.ndarray | None = None) -> Any:
    """The statistics kept of column ``c``: ``ColumnStats``, or ``RaggedStats`` (row lengths) for
    a ragged column."""
    if c.ragged:
        return RaggedStats(c)
    return ColumnStats(c, shift=shift) if stage_bytes is None else ColumnStats(c, stage_bytes, shift)


def _concat(parts: list[Any]) -> Any:
    """Rows of the same column one after another (arrays, or ``Ragged``)."""
    return Ragged.concat(parts) if isinstance(parts[0], Ragged) else np.concatenate(parts)


class Summary:
    """The results of consecutive parts joined in order: statistics merged (the whole's, to
    rounding), the writers' results kept for ``combine``."""

    def __init__(self, opts: PartOptions) -> None:
        shifts = opts.shifts or {}
        self.fmt = opts.fmt
        self.stats = {c.name: column_stats(c, shift=shifts.get(c.name)) for c in opts.columns}
        self.labels: LabelStats | None = None
        self.written: list[Any] = []
        self.rows = 0

    def add(self, part: PartResult) -> None:
        """Merge the part after the ones added so far."""
        self.add_stats(part.stats, part.labels)
        self.written.append(part.written)
        self.rows += part.rows

    def add_stats(self, stats: dict[str, ColumnStats], labels: LabelStats | None) -> None:
        """Merge the statistics of rows after the ones added so far (a part's, or the rows a
        pre-shuffle pass read, whose units are added later)."""
        for name, st in stats.items():
            self.stats[name].merge(st)
        if labels is not None:
            if self.labels is None:
                self.labels = labels
            else:
                self.labels.merge(labels)

    def result(self) -> PartResult:
        """The whole as one part's result."""
        return PartResult(combine(self.fmt, self.written), self.stats, self.labels, self.rows)


def stage_units(pieces: Iterator[dict[str, np.ndarray]], unit_rows: int,
                runs: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Re-cut pieces of any size into units of exactly ``unit_rows`` rows (the last may be short);
    with ``runs``, the whole units within one piece come out together, as one run of units."""
    pending: list[dict[str, np.ndarray]] = []
    have = 0
    for piece in pieces:
        n = len(next(iter(piece.values())))
        lo = 0
        if have:
            take = min(unit_rows - have, n)
            pending.append({k: v[:take] for k, v in piece.items()})
            have += take
            lo = take
            if have == unit_rows:
                yield {k: _concat([p[k] for p in pending]) for k in piece}
                pending, have = [], 0
        while n - lo >= unit_rows:
            take = (n - lo) // unit_rows * unit_rows if runs else unit_rows
            yield {k: v[lo:lo + take] for k, v in piece.items()}
            lo += take
        if lo < n:
            pending.append({k: v[lo:] for k, v in piece.items()})
            have += n - lo
    if have:
        keys = pending[0].keys()
        yield {k: _concat([p[k] for p in pending]) for k in keys}
