"""Sizing a conversion: the shuffle unit, the files, the memory left for pieces once statistics
are counted, the threads that fit, and whether the parts are written in parallel or in order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._sizes import cores, format_size, parse_size
from ..errors import InputError
from ..manifest import _MAX_UNIT_BYTES
from ..schema import Column
from ..sources import Source
from ..stats import BYTES_PER_FEATURE
from ..storage import FORMATS, units_per_file

__all__ = ["Plan", "make_plan", "cores", "DEFAULT_UNIT_BYTES", "DEFAULT_SHARD_BYTES", "DEFAULT_CODEC", "DEFAULT_MEMORY"]

DEFAULT_UNIT_BYTES = 256 * 1024
DEFAULT_RAGGED_UNIT_BYTES = 64 * 1024
"""Units of datasets with variable-length columns: they are read whole (no load-time pieces), so
smaller units mix better (20,000 label-sorted JPEGs of ~45 KB under a 256 MiB budget: predicted
deff 1.69 with 5 images a unit, 256 KiB; 1.0 with one, 64 KiB).  Inputs over 16 GB get larger
units, so that the manifest (about 180 bytes a unit in Zarr) stays under ~45 MB."""
DEFAULT_SHARD_BYTES = 128 * 1024 * 1024
DEFAULT_CODEC = "none"
DEFAULT_MEMORY = 1024 * 1024 * 1024
_PIECE_BYTES = 8 * 1024 * 1024
_PARALLEL_PIECE_BYTES = 1024 * 1024
_SMALL_BUFFERS = 16 * 1024 * 1024
"""Buffers up to this size are part of the converter's fixed overhead: a smaller ``--memory``
still runs (a tiny budget makes tiny pieces), refused only where rows or units need more."""


@dataclass(frozen=True)
class Plan:
    """How a conversion is cut and sized (see :func:`make_plan`)."""

    fmt: str
    codec: str
    rows: int
    row_bytes: int
    unit_rows: int
    shard_bytes: int
    memory: int
    """The budget as given (bytes)."""
    work: int
    """What the budget leaves for pieces, units and shuffle buckets once statistics are counted."""
    per_file: int
    """Shuffle units in a file (a part)."""
    threads: int

    @property
    def units(self) -> int:
        return -(-self.rows // self.unit_rows)

    @property
    def files(self) -> int:
        return -(-self.units // self.per_file)

    def parallel(self, source: Source, shuffle: int | None) -> bool:
        """Whether files are written by parts on several threads: a random access source, no
        pre-shuffle, and blocks (Parquet row groups) within an eighth of a file, else every part
        would decode the blocks it shares with its neighbours: such a source is read in order."""
        return (shuffle is None and source.random_access and source.block_rows <= self.per_file * self.unit_rows // 8
                and self.threads > 1 and self.files > 1)

    def piece_sizes(self, columns: int, parallel: bool) -> tuple[int, int]:
        """(rows a piece read, bytes of the statistics' staging buffer).  A parallel part reads
        whole units a piece, small enough to stay in the core's cache from the read to the write;
        the sequential path reads pieces of at most 8 MiB (docs/PERFORMANCE.md, "Convert: piece sizes")."""
        if parallel:
            piece_bytes = max(1, min(_PARALLEL_PIECE_BYTES, self.work // (16 * self.threads)))
            rows = max(1, piece_bytes // max(1, self.unit_rows * self.row_bytes)) * self.unit_rows
            return rows, max(4096, min(1 << 20, piece_bytes // max(1, columns)))
        rows = max(1, min(self.work // 16, _PIECE_BYTES) // max(1, self.row_bytes))
        return rows, max(4096, min(1 << 20, self.work // (16 * columns)))

    def to_json(self, source: Source, cols: tuple[Column, ...]) -> dict[str, Any]:
        """The plan ``dry_run`` returns."""
        return {
            "source": str(source.path), "source_format": source.format, "format": self.fmt, "codec": self.codec,
            "rows": self.rows, "columns": [c.to_json() for c in cols], "row_bytes": self.row_bytes,
            "unit_rows": self.unit_rows, "unit_bytes": self.unit_rows * self.row_bytes, "units": self.units,
            "shards": self.files,
            "bytes": self.rows * self.row_bytes,
            **({"dropped_rows": source.nulls.dropped} if source.nulls.drop else {}),
        }


def make_plan(source: Source, cols: tuple[Column, ...], fmt: str, codec: str, unit_rows: int | None,
              unit_bytes: int | str | None, shard_bytes: int, memory: int, threads: int | None) -> Plan:
    """The plan of converting ``cols`` of ``source``: ``unit_rows`` (or ``unit_bytes`` decoded, by
    default 256 KiB) rows a unit, at most the source's rows; ``threads`` by default the format's.

    Raises:
        ValueError: a unit of no rows, of more than 4 GiB, or a bad ``unit_bytes``.
        InputError: ``memory`` cannot hold the statistics and 8 units.
    """
    row_bytes = sum(c.row_nbytes for c in cols)
    if unit_rows is None:
        # ragged: small units, but at most about 250,000 of them (the manifest holds ~180 bytes a unit)
        default = max(DEFAULT_RAGGED_UNIT_BYTES, source.nbytes // 250_000) if any(c.ragged for c in cols) \
            else DEFAULT_UNIT_BYTES
        ub = parse_size(unit_bytes, "unit bytes") if unit_bytes is not None else default
        unit_rows = max(1, ub // max(1, row_bytes))
    if unit_rows <= 0:
        raise ValueError(f"unit rows must be positive, got {unit_rows}")
    unit_rows = min(unit_rows, source.rows)
    if unit_rows * row_bytes > _MAX_UNIT_BYTES:
        raise ValueError(f"a shuffle unit of {unit_rows} rows x {row_bytes} bytes is larger than "
                         f"{_MAX_UNIT_BYTES} bytes; choose a smaller unit")
    work = _work_memory(source, cols, unit_rows, memory)
    threads = threads or FORMATS[fmt].default_threads(cores())  # each format's own default
    # Each thread holds a piece (sized below), a unit or two being staged and encoded, its
    # statistics' stage (an eighth of a piece) and the statistics of up to two parts (see
    # parallel.ParallelParts): fewer threads where big units or wide rows would not fit.
    per_thread = 8 * unit_rows * row_bytes + 2 * (memory - work)
    threads = max(1, min(threads, work // per_thread))
    return Plan(fmt, codec, source.rows, row_bytes, unit_rows, shard_bytes, memory, work,
                units_per_file(fmt, cols, source.rows, unit_rows, shard_bytes), threads)


def _work_memory(source: Source, cols: tuple[Column, ...], unit_rows: int, memory_b: int) -> int:
    """What ``memory_b`` leaves for pieces, units and shuffle buckets once the statistics are
    counted (``BYTES_PER_FEATURE`` a value of a row: 80 MB for rows of 2,000,000 values).

    Raises ``InputError`` naming the least ``--memory`` that holds the statistics and 8 units (the
    pieces read ahead, a unit staged and one encoded) when they need more than ``memory_b`` plus
    ``_SMALL_BUFFERS``, which are counted in the converter's fixed overhead.
    """
    values = sum(c.row_items for c in cols)
    row_bytes = sum(c.row_nbytes for c in cols)
    stats_b = BYTES_PER_FEATURE * values
    need = stats_b + 8 * unit_rows * row_bytes
    if need > memory_b + _SMALL_BUFFERS:
        raise InputError(f"{source.path}: --memory {format_size(memory_b)} is too small for rows of "
                         f"{format_size(row_bytes)} ({values:,} values a row, whose statistics take "
                         f"{format_size(stats_b)}) in units of {unit_rows:,} row(s): give at least "
                         f"{-(-need // (1 << 20))}MiB")
    return max(memory_b - stats_b, memory_b // 4)
