"""Storage formats behind one reader interface, one module per format, chosen by a dict.

Every format stores rows in *shuffle units*: a Zarr v3 inner chunk (inside a shard file)
or a Parquet row group.  A reader copies rows ``lo:hi`` of a unit into buffers the caller
owns (``read_into``), so the loader can fill its window buffers without extra copies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import ManifestError
from ..manifest import Column, Manifest

__all__ = ["UnitReader", "UnitWriter", "open_reader", "read_all", "open_writer", "units_per_file", "combine",
           "validate_layout", "CODECS", "STORAGES"]

CODECS = ("none", "lz4", "zstd")
STORAGES = ("zarr", "parquet")


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

    A writer opened at ``first_unit`` (a file's first unit, a multiple of :func:`units_per_file`)
    writes from there on; writers of different files may run in parallel in one folder, and
    :func:`combine` joins their :meth:`finish` results in unit order.
    """

    def write_unit(self, data: dict[str, np.ndarray]) -> None:
        """Append one unit: ``data[name]`` holds the same number of rows for every column."""
        ...

    def write_units(self, data: dict[str, np.ndarray]) -> None:
        """Append consecutive whole units (``k * unit_rows`` rows; the dataset's last may be short)."""
        ...

    def finish(self) -> tuple[list[str], dict[str, Any], list[int], list[int]]:
        """Close files; return (files, layout, stored bytes per unit, checksum per unit)."""
        ...

    def abort(self) -> None:
        """Close files after a failure (the converter removes the folder)."""
        ...


def _modules() -> dict[str, Any]:
    from . import parquet_store, zarr_store

    return {"zarr": zarr_store, "parquet": parquet_store}


def open_reader(manifest: Manifest, verify: bool = False, remote: Any = None) -> UnitReader:
    """The reader for ``manifest``'s storage format.

    For a dataset at a URL, ``remote`` is the ``streambatch.remote.RemoteFiles`` to read
    through (made with default options when not given).
    """
    from ..remote import RemoteFiles, RemoteRoot

    if remote is None and isinstance(manifest.root, RemoteRoot):
        remote = RemoteFiles(manifest.root.url)
    return _modules()[manifest.storage].Reader(manifest, verify=verify, remote=remote)  # type: ignore[no-any-return]


def read_all(manifest: Manifest, columns: tuple[Column, ...] | None = None, verify: bool = False
             ) -> dict[str, np.ndarray]:
    """Every row of ``columns`` (all by default) in storage order, in memory: for small data only."""
    cols = columns or manifest.columns
    out = {c.name: np.empty((manifest.rows, *c.shape), c.np_dtype) for c in cols}
    reader = open_reader(manifest, verify=verify)
    try:
        for u in range(manifest.n_units):
            s, n = int(manifest.unit_start[u]), int(manifest.unit_rows[u])
            reader.read_into(u, 0, n, {k: v[s:s + n] for k, v in out.items()})
    finally:
        reader.close()
    return out


def open_writer(storage: str, folder: Path, columns: tuple[Column, ...], rows: int, unit_rows: int,
                shard_bytes: int, codec: str, first_unit: int = 0) -> UnitWriter:
    """A writer of ``storage`` format into ``folder``, from unit ``first_unit`` on."""
    if storage not in STORAGES:
        raise ValueError(f"unknown output format {storage!r}; choose one of {', '.join(STORAGES)}")
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
    return _modules()[storage].Writer(  # type: ignore[no-any-return]
        folder, columns, rows, unit_rows, shard_bytes, codec, first_unit)


def units_per_file(storage: str, columns: tuple[Column, ...], rows: int, unit_rows: int, shard_bytes: int) -> int:
    """Units in each file of ``storage`` format (a Zarr shard of every column, a Parquet file)."""
    mod = _modules()[storage]
    fn = mod.units_per_shard if storage == "zarr" else mod.units_per_file
    return fn(columns, rows, unit_rows, shard_bytes)  # type: ignore[no-any-return]


def combine(storage: str, parts: list[tuple[list[str], dict[str, Any], list[int], list[int]]]
            ) -> tuple[list[str], dict[str, Any], list[int], list[int]]:
    """The ``finish`` results of writers of consecutive parts, as one writer's of the whole."""
    return _modules()[storage].Writer.combine(parts)  # type: ignore[no-any-return]


def validate_layout(storage: str, layout: dict[str, Any], n_units: int, n_files: int,
                    columns: tuple[Column, ...], codec: str, where: str,
                    unit_rows: np.ndarray | None = None) -> dict[str, Any]:
    """Check a manifest's storage layout; return it with int64 arrays.  ``ManifestError`` if bad.

    ``unit_rows`` (the manifest's rows per unit) lets a format check that its layout holds them.
    """
    if codec not in CODECS:
        raise ManifestError(f"{where}: unknown codec {codec!r}")
    return _modules()[storage].validate_layout(  # type: ignore[no-any-return]
        layout, n_units, n_files, columns, where, codec=codec, unit_rows=unit_rows)
