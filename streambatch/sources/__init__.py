"""Input formats for ``streambatch convert``: each read in pieces, never whole.

One :class:`~streambatch.sources.base.Source` subclass a format, one module each, listed in
:data:`SOURCES` (the ``--from`` choices, in this order); a streambatch dataset folder (one with
a manifest, in any storage format of ``storage.FORMATS``) is read through its own unit reader
(``dataset``).  Detection is by path (:func:`detect_format`) or forced with ``--from``.  Every
problem is an ``InputError`` naming the file and the column (or row) and what is wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from ..storage import FORMATS
from . import dataset
from ._mapped import Nulls
from .arrow import ArrowSource
from .base import ReadOptions, Source, SourceSpec
from .csv import CsvSource
from .hdf5 import Hdf5Source
from .imagefolder import ImageFolderSource
from .jsonl import JsonlSource
from .npy import NpySource
from .npz import NpzSource
from .parquet import ParquetSource
from .zarr import ZarrSource

__all__ = ["Source", "SourceSpec", "SOURCES", "SOURCE_FORMATS", "detect_format", "open_source"]

SOURCES: dict[str, type[Source]] = {c.name: c for c in (
    NpySource, NpzSource, ParquetSource, CsvSource, JsonlSource, ArrowSource, Hdf5Source, ZarrSource,
    ImageFolderSource)}
"""Every input format by its ``--from`` name."""
SOURCE_FORMATS = tuple(SOURCES)
_EXT = {ext: c.name for c in SOURCES.values() for ext in c.extensions}


def detect_format(path: Path) -> str:
    """The input format of ``path`` by its extension or folder contents; ``InputError`` if unknown."""
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    ext = path.suffix.lower()
    if path.is_dir():
        first: dict[str, str] = {}  # a file of each format, by extension
        for p in sorted(path.iterdir()):
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _EXT:
                first.setdefault(_EXT[p.suffix.lower()], p.name)
        for c in sorted(SOURCES.values(), key=lambda c: c.detect_rank):
            if c.claims_folder(path, set(first)):
                return c.name
        if len(first) > 1:
            raise InputError(f"{path}: holds files of several input formats ({', '.join(first.values())}); keep "
                             "one format in the folder (--from npy, parquet or jsonl reads only that format's files)")
        raise InputError(f"{path}: cannot tell the input format of this folder (expected .npy files, "
                         "Parquet files, JSON Lines files, key=value partition folders, a Zarr store, class "
                         "folders of images or a streambatch dataset); pass --from")
    if ext in _EXT:
        return _EXT[ext]
    raise InputError(f"{path}: unknown file extension {ext!r}; pass --from with one of {', '.join(SOURCE_FORMATS)}")


def open_source(path: str | Path, fmt: str | None = None, columns: tuple[str, ...] | None = None, *,
                fill: dict[str, Any] | None = None, drop_nulls: bool = False, delimiter: str | None = None,
                ragged: tuple[str, ...] | None = None, index: Any = None) -> Source:
    """Open ``path`` as an input of format ``fmt`` (detected when ``None``); only ``columns``
    (all when ``None``) are checked and read.  ``fill`` (column -> value) and ``drop_nulls``
    say what becomes of nulls (only Arrow-based inputs have them: see ``_mapped.Nulls``);
    ``delimiter`` is a CSV's field separator (default ``,``); ``ragged`` names the
    variable-length list columns to read as ragged rows (``None``: those whose rows vary in
    length, which may take a pass over them); ``index``: an earlier open's ``Source.index`` of
    this input.  The source's ``spec`` opens it again, its ``ragged`` and ``index`` as found.
    Raises ``InputError``."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    fmt = fmt or detect_format(p)
    if fmt not in SOURCES:
        raise InputError(f"{p}: unknown input format {fmt!r}; choose one of {', '.join(SOURCE_FORMATS)}")
    if delimiter is not None and (fmt != "csv" or len(delimiter) != 1 or delimiter in "\r\n\""):
        raise InputError(f"{p}: --delimiter {delimiter!r}: " + ("one character other than a quote or line break"
                                                              if fmt == "csv" else f"applies to CSV input, not {fmt}"))
    keep = tuple(columns) if columns is not None else None
    opts = ReadOptions(Nulls(dict(fill or {}), drop_nulls), delimiter, tuple(ragged) if ragged is not None else None,
                       index)
    source = dataset._open_dataset(p, fmt, keep) if fmt in FORMATS and p.is_dir() else None
    if source is None:
        source = SOURCES[fmt].open(p, keep, opts)
    opts.nulls.check(source.columns, str(p))
    source.nulls = opts.nulls
    source.spec = SourceSpec(str(p), fmt, keep, dict(fill or {}), drop_nulls, delimiter,
                             tuple(c.name for c in source.columns if c.kind == "list"), source.index)
    return source
