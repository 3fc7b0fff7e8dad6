"""The storage contract: what every format provides, and the reader/writer interfaces.

Every format stores rows in *shuffle units* (a Zarr inner chunk, a Parquet row group ...) and is
one module with one :class:`StorageFormat` object, listed in ``streambatch.storage.FORMATS``:
the CLI's choices, the manifest check, the converter's thread counts and the benchmarks all read
that registry, so a new format is one module plus one subclass of the shared contract tests
(``tests/test_storage_contract.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..manifest import Manifest
from ..schema import Column

__all__ = ["StorageFormat", "UnitReader", "UnitWriter", "WriteResult", "CODECS", "piece_units"]

CODECS = ("none", "lz4", "zstd")

WriteResult = tuple[list[str], dict[str, Any], list[int], list[int]]
"""What a writer's ``finish`` returns: (files, layout, stored bytes per unit, checksum per unit)."""


def piece_units(pieces: Any) -> list[int]:
    """The units of a window's ``(unit, lo, hi, buffer row)`` pieces (an int64 table, or rows of
    one), each once, in order: a reader that hints whole units hints each once."""
    return list(dict.fromkeys(np.asarray(pieces, np.int64).reshape(-1, 4)[:, 0].tolist()))


class UnitReader(Protocol):
    """Reads shuffle units of one dataset.  Thread-safe: many threads may read at once."""

    manifest: Manifest

    def read_into(self, unit: int, lo: int, hi: int, out: dict[str, np.ndarray]) -> None:
        """Copy rows ``lo:hi`` (relative to the unit) of every column in ``out`` into it.

        ``out[name]`` has shape ``(hi - lo, *column.shape)`` and the column's dtype.
        Raises ``DataError`` naming the dataset, column, unit and file when stored bytes
        are missing, truncated or (with ``verify``) fail their checksum.
        """
        ...

    def verify_unit(self, unit: int) -> None:
        """Re-read unit ``unit`` in full and check its checksums; raise ``DataError`` if bad."""
        ...

    def close(self) -> None:
        """Release open files; idempotent."""
        ...


class UnitWriter(Protocol):
    """Writes shuffle units in order into a dataset folder (the converter's temp folder).

    A writer opened at ``first_unit`` (a file's first unit, a multiple of ``units_per_file``)
    writes from there on; writers of different files may run in parallel in one folder, and the
    format's ``combine`` joins their :meth:`finish` results in unit order.
    """

    def write_unit(self, data: dict[str, np.ndarray]) -> None:
        """Append one unit: ``data[name]`` holds the same number of rows for every column."""
        ...

    def write_units(self, data: dict[str, np.ndarray]) -> None:
        """Append consecutive whole units (``k * unit_rows`` rows; the dataset's last may be short)."""
        ...

    def finish(self) -> WriteResult:
        """Close files; return (files, layout, stored bytes per unit, checksum per unit)."""
        ...

    def abort(self) -> None:
        """Close files after a failure (the converter removes the folder)."""
        ...


class StorageFormat(ABC):
    """One storage format: its name, codecs, sizing, reader, writer parts and layout check."""

    name: str
    codecs: tuple[str, ...] = CODECS
    reader_class: Any  # Reader(manifest, verify=, remote=): a UnitReader
    writer_class: Any  # Writer(folder, columns, rows, unit_rows, shard_bytes, codec, first_unit): a UnitWriter
    # with a static ``combine(parts)``

    @abstractmethod
    def default_threads(self, cores: int) -> int:
        """Files ``convert`` writes at once by default on ``cores`` cores."""

    @abstractmethod
    def units_per_file(self, columns: tuple[Column, ...], rows: int, unit_rows: int, shard_bytes: int) -> int:
        """Shuffle units in each file (a writer part writes one file)."""

    def reader(self, manifest: Manifest, verify: bool, remote: Any) -> UnitReader:
        """A reader of ``manifest``'s units (``remote``: the ``RemoteFiles`` of a dataset at a URL)."""
        return self.reader_class(manifest, verify=verify, remote=remote)  # type: ignore[no-any-return]

    def writer(self, folder: Path, columns: tuple[Column, ...], rows: int, unit_rows: int, shard_bytes: int,
               codec: str, first_unit: int) -> UnitWriter:
        """A writer of the part of the dataset that starts at unit ``first_unit``."""
        return self.writer_class(folder, columns, rows, unit_rows, shard_bytes, codec,  # type: ignore[no-any-return]
                                 first_unit)

    def combine(self, parts: list[WriteResult]) -> WriteResult:
        """The ``finish`` results of writers of consecutive parts, as one writer's of the whole."""
        return self.writer_class.combine(parts)  # type: ignore[no-any-return]

    @abstractmethod
    def validate_layout(self, layout: dict[str, Any], n_units: int, n_files: int, columns: tuple[Column, ...],
                        where: str, *, codec: str, unit_rows: np.ndarray | None) -> dict[str, Any]:
        """The manifest's layout checked, with int64 arrays; ``ManifestError`` naming what is wrong."""

    def partial_reads(self, manifest: Manifest, names: list[str]) -> bool:
        """Whether rows ``lo:hi`` of a unit's columns ``names`` are read from local files without
        reading or decoding the rest of the unit (stored uncompressed, addressable by row).  The
        loader then shuffles pieces smaller than a unit (``loader.sizing``); otherwise a unit is
        read whole, once an epoch.  Default: no."""
        return False

    def row_places(self, manifest: Manifest, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Where column ``name``'s rows lie as plain bytes in local files: each unit's file index and
        the byte offset of its first row (row ``r`` at that offset plus ``r`` times the row's bytes),
        so that the loader reads large rows straight into the batches (``loader.direct``); None
        where they do not lie so (compressed, bit-packed, pages).  Default: None."""
        return None

    def library_rows(self, manifest: Manifest, names: list[str]) -> Any:
        """Random rows of ``manifest``'s columns ``names`` as a map-style dataset, through the
        format's own library where it has one (``streambatch bench --compare naive``); here, a
        ``read_into`` of one row per item."""
        return _ReaderRows(self, manifest, names)

    @abstractmethod
    def check_files(self, checker: Any) -> str:
        """Check every byte of the format's files that the manifest's unit checksums do not cover
        (``streambatch verify``; ``checker`` reads files and names them in errors); return what
        was checked, in words.  Raises ``DataError`` naming the file."""


class _ReaderRows:
    """Rows of a dataset through its format's reader, opened for each item (no reader outlives it)."""

    def __init__(self, fmt: StorageFormat, manifest: Manifest, names: list[str]) -> None:
        self.fmt, self.m, self.names = fmt, manifest, names

    def __len__(self) -> int:
        return int(self.m.rows)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        u = int(np.searchsorted(self.m.unit_start, i, side="right") - 1)
        lo = i - int(self.m.unit_start[u])
        out = {c.name: np.empty((1, *c.shape), c.np_dtype) for c in self.m.columns if c.name in self.names}
        reader = self.fmt.reader(self.m, False, None)
        reader.read_into(u, lo, lo + 1, out)
        reader.close()
        return {k: v[0] for k, v in out.items()}
