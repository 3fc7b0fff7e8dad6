"""Storage formats behind one contract (``base.StorageFormat``), one module per format, chosen by
the registry :data:`FORMATS`.

Every format stores rows in *shuffle units*: a Zarr v3 inner chunk (inside a shard file),
a Parquet row group or an Arrow IPC record batch.  A reader copies rows ``lo:hi`` of a unit into buffers the caller
owns (``read_into``), so the loader can fill its window buffers without extra copies.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ManifestError
from ..io.remote import RemoteFiles, RemoteRoot
from ..manifest import Manifest, read_manifest
from ..ragged import Ragged
from ..schema import Column
from . import arrow_store, parquet_store, zarr_store
from ._integrity import FileChecker, recorded_files
from .base import CODECS, StorageFormat, UnitReader, UnitWriter, WriteResult

__all__ = ["FORMATS", "STORAGES", "DEFAULT_FORMAT", "CODECS", "StorageFormat", "UnitReader", "UnitWriter",
           "load_manifest", "storage_format", "check_codec", "open_reader", "read_all", "open_writer",
           "units_per_file", "combine", "validate_layout", "verify_dataset"]

FORMATS: dict[str, StorageFormat] = {f.name: f for f in (zarr_store.FORMAT, parquet_store.FORMAT,
                                                          arrow_store.FORMAT)}
"""Every storage format, by name (the manifest's ``storage`` field, ``convert --format``)."""
STORAGES = tuple(FORMATS)
DEFAULT_FORMAT = zarr_store.FORMAT.name
"""What ``convert`` writes unless told otherwise."""


def storage_format(name: str) -> StorageFormat:
    """The format called ``name``; ``ValueError`` naming the known ones otherwise."""
    fmt = FORMATS.get(name)
    if fmt is None:
        raise ValueError(f"unknown output format {name!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def check_codec(storage: str, codec: str) -> None:
    """``ValueError`` unless format ``storage`` writes ``codec`` (and exists), naming what it writes."""
    fmt = storage_format(storage)
    if codec not in fmt.codecs:
        known = "" if codec in CODECS else f"unknown codec {codec!r}; "
        raise ValueError(f"{known}format {storage!r} takes --codec {' or '.join(fmt.codecs)}, not {codec!r}")


def load_manifest(path: str | os.PathLike[str], remote: Any = None) -> Manifest:
    """Read and validate the manifest of the dataset at ``path`` (a folder, its manifest file or
    a URL), its storage layout included.  ``remote``: the ``RemoteFiles`` to read a URL through.

    Raises ``ManifestError`` naming the file and field for anything missing, of the wrong type,
    out of range, pointing outside the dataset folder, or damaged (the manifest's own checksum).
    """
    return read_manifest(path, validate_layout, remote)


def open_reader(manifest: Manifest, verify: bool = False, remote: Any = None) -> UnitReader:
    """The reader for ``manifest``'s storage format.

    For a dataset at a URL, ``remote`` is the ``streambatch.io.remote.RemoteFiles`` to read
    through (made with default options when not given).
    """
    if remote is None and isinstance(manifest.root, RemoteRoot):
        remote = RemoteFiles(manifest.root.url)
    return FORMATS[manifest.storage].reader(manifest, verify, remote)


def read_all(manifest: Manifest, columns: tuple[Column, ...] | None = None, verify: bool = False
             ) -> dict[str, np.ndarray]:
    """Every row of ``columns`` (all by default) in storage order, in memory: for small data only
    (a ragged column as one ``Ragged``)."""
    cols = columns or manifest.columns
    if any(c.ragged for c in cols):
        return _read_all_rows(manifest, cols, verify)
    out = {c.name: np.empty((manifest.rows, *c.shape), c.np_dtype) for c in cols}
    reader = open_reader(manifest, verify=verify)
    try:
        for u in range(manifest.n_units):
            s, n = int(manifest.unit_start[u]), int(manifest.unit_rows[u])
            reader.read_into(u, 0, n, {k: v[s:s + n] for k, v in out.items()})
    finally:
        reader.close()
    return out


def _read_all_rows(manifest: Manifest, cols: tuple[Column, ...], verify: bool) -> dict[str, Any]:
    reader = open_reader(manifest, verify=verify)
    names = [c.name for c in cols]
    try:
        units = [reader.read_rows(u, 0, int(manifest.unit_rows[u]), names) for u in range(manifest.n_units)]
    finally:
        reader.close()
    return {c.name: Ragged.concat([p[c.name] for p in units]) if c.ragged else
            np.concatenate([p[c.name] for p in units]) for c in cols}


def open_writer(storage: str, folder: Path, columns: tuple[Column, ...], rows: int, unit_rows: int,
                shard_bytes: int, codec: str, first_unit: int = 0) -> UnitWriter:
    """A writer of ``storage`` format into ``folder``, from unit ``first_unit`` on (``ValueError``
    for an unknown format or a codec it does not write)."""
    check_codec(storage, codec)
    fmt = storage_format(storage)
    return fmt.writer(folder, columns, rows, unit_rows, shard_bytes, codec, first_unit)


def units_per_file(storage: str, columns: tuple[Column, ...], rows: int, unit_rows: int, shard_bytes: int) -> int:
    """Units in each file of ``storage`` format (a Zarr shard of every column, a Parquet or Arrow file)."""
    return storage_format(storage).units_per_file(columns, rows, unit_rows, shard_bytes)


def combine(storage: str, parts: list[WriteResult]) -> WriteResult:
    """The ``finish`` results of writers of consecutive parts, as one writer's of the whole."""
    return storage_format(storage).combine(parts)


def validate_layout(storage: str, layout: dict[str, Any], n_units: int, n_files: int,
                    columns: tuple[Column, ...], codec: str, where: str,
                    unit_rows: np.ndarray | None = None) -> dict[str, Any]:
    """Check a manifest's storage layout; return it with int64 arrays.  ``ManifestError`` if bad
    (an unknown format or codec included).

    ``unit_rows`` (the manifest's rows per unit) lets a format check that its layout holds them.
    """
    fmt = FORMATS.get(storage)
    if fmt is None:
        raise ManifestError(f"{where}: unknown storage {storage!r}")
    if codec not in fmt.codecs:
        raise ManifestError(f"{where}: unknown codec {codec!r}")
    return fmt.validate_layout(layout, n_units, n_files, columns, where, codec=codec, unit_rows=unit_rows)


def verify_dataset(manifest: Manifest, extra: Sequence[tuple[str, int, int]] = ()) -> str:
    """Check every file of the dataset, then every unit (checksum and decoding); return what
    was checked, in words.  ``extra``: more files to check whole, as ``(path, size, CRC-32C)``.

    Raises ``DataError`` naming the dataset and the file (and the column and unit for a unit's
    bytes) at the first damage found.
    """
    remote = RemoteFiles(manifest.root.url) if isinstance(manifest.root, RemoteRoot) else None
    check = FileChecker(manifest, remote)
    reader = open_reader(manifest, verify=True, remote=remote)
    try:
        done = [check.manifest(), FORMATS[manifest.storage].check_files(check),
                check.whole([*recorded_files(manifest), *extra])]
        for u in range(manifest.n_units):
            reader.verify_unit(u)
    finally:
        check.close()
        reader.close()
    return "; ".join(["every unit's checksum and decoding", *(d for d in done if d)])
