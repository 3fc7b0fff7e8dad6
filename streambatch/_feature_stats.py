"""Per-feature statistics of wide tensor columns, in a checksummed file beside the manifest.

Four numbers a feature as JSON made the manifest of 3 rows of float32[2,000,000] 156 MB, and
reading it took over a gigabyte.  A column with more than ``INLINE_FEATURES`` values a row
keeps its per-feature mean, std, min and max in ``_stats/<i>-<name>.npy`` instead: a plain
little-endian float64 ``.npy`` of shape ``(4, *row shape)``, rows mean, std, min, max (NaN or inf
where the data held them), readable with ``numpy.load(path, allow_pickle=False)``.  The
manifest's ``stats_files`` entry for the column records the file's path, size and CRC-32C, the
row count, and the mean, std, min and max over all of the column's values (so ``streambatch
info`` has a summary without reading the file).  The file is read only when asked for
(``Manifest.feature_stats``: normalisation, ``streambatch verify``), and its size and checksum
are checked before anything in it is used.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import DataError, ManifestError
from ._fields import is_number as _is_number
from ._fields import safe_relpath
from .stats import ColumnStats
from .io.checksum import checksum_fn, extend_fn
from .io.remote import RemoteFiles
from .schema import Column

__all__ = ["INLINE_FEATURES", "FIELDS", "stats_json", "read_stats_file", "check_stats_files"]

INLINE_FEATURES = 1024
"""Columns with at most this many values a row keep their per-feature statistics inline in the
manifest: at most ~90 KB of JSON a column (tab's float32[128] stays inline)."""
FIELDS = ("mean", "std", "min", "max")
_DIR = "_stats"
_HEADER_MAX = 4096  # the .npy header written here is 128 bytes


def _path(index: int, name: str) -> str:
    """The file of column ``index`` (its name, made safe for any file system or URL, for people)."""
    return f"{_DIR}/{index}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)[:64]}.npy"


def _write(folder: Path, rel: str, stats: ColumnStats) -> dict[str, Any]:
    """Write the per-feature statistics of ``stats`` to ``folder/rel`` (fsynced), a slice of
    features at a time; return the column's ``stats_files`` entry."""
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": "<f8", "fortran_order": False, "shape": (len(FIELDS), *stats.col.shape)})
    extend = extend_fn("crc32c")
    path = folder / rel
    path.parent.mkdir(exist_ok=True)
    crc = size = 0
    with open(path, "wb") as f:
        chunk = memoryview(head.getvalue())
        for values in stats.feature_values():
            f.write(chunk)
            crc, size = extend(crc, chunk), size + len(chunk)
            chunk = memoryview(np.ascontiguousarray(values, "<f8")).cast("B")
        f.write(chunk)
        crc, size = extend(crc, chunk), size + len(chunk)
        f.flush()
        os.fsync(f.fileno())
    return {"path": rel, "size": size, "crc32c": crc, **stats.summary()}


def stats_json(stats: Mapping[str, ColumnStats], columns: tuple[Column, ...],
               folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest's ``stats`` (inline, per feature) and ``stats_files`` (wide columns, whose
    files this writes into ``folder``) for the statistics of ``columns``."""
    inline: dict[str, Any] = {}
    files: dict[str, Any] = {}
    for i, c in enumerate(columns):
        if c.row_items > INLINE_FEATURES:
            files[c.name] = _write(folder, _path(i, c.name), stats[c.name])
        else:
            inline[c.name] = stats[c.name].to_json()
    return inline, files


def check_stats_files(doc: Any, columns: Mapping[str, Column], inline: Mapping[str, Any],
                      where: str) -> dict[str, Any]:
    """Validate the manifest's ``stats_files`` (``ManifestError`` naming the column and field)."""
    if not isinstance(doc, dict):
        raise ManifestError(f"{where}: field 'stats_files' must be an object")
    for name, entry in doc.items():
        sw = f"{where}: stats_files of column {name!r}"
        col = columns.get(name)
        if col is None or name in inline:
            raise ManifestError(f"{sw}: {'no such column' if col is None else 'its statistics are also inline'}")
        if not isinstance(entry, dict):
            raise ManifestError(f"{sw}: must be an object")
        safe_relpath(Path("."), entry.get("path"), sw)
        limits = {"size": _HEADER_MAX + 8 * len(FIELDS) * col.row_items, "crc32c": (1 << 32) - 1, "count": 1 << 48}
        for key, hi in limits.items():
            v = entry.get(key)
            if type(v) is not int or not 0 <= v <= hi:
                raise ManifestError(f"{sw}: {key!r} must be an integer in [0, {hi}]")
        bad = [k for k in FIELDS if k not in entry or not _is_number(entry[k])]
        if bad:
            raise ManifestError(f"{sw}: {', '.join(map(repr, bad))} must be numbers (or null)")
    return doc


def read_stats_file(root: Any, entry: Mapping[str, Any], col: Column, remote: Any = None) -> dict[str, np.ndarray]:
    """The per-feature statistics of ``col`` from its file (``entry`` from ``stats_files``), as
    float64 arrays shaped like one row.  ``remote``: the ``RemoteFiles`` of a dataset at a URL.

    Raises ``DataError`` naming the file when it is missing, unreadable, of another size than
    the manifest records, fails its CRC-32C, or does not hold this column's statistics.
    """
    rel, size = entry["path"], entry["size"]
    where = str(root / rel)
    raw = _read(root, rel, size, remote, where)
    if checksum_fn("crc32c")(raw) != entry["crc32c"]:
        raise DataError(f"{where}: checksum mismatch (statistics file of column {col.name!r} corrupt; "
                        "re-convert the dataset)")
    head = io.BytesIO(bytes(raw[:_HEADER_MAX]))
    shape = (len(FIELDS), *col.shape)
    try:
        version = np.lib.format.read_magic(head)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        got = read(head)
    except ValueError as e:
        raise DataError(f"{where}: not an .npy file ({e})") from None
    offset = head.tell()
    if got != (shape, False, np.dtype("<f8")) or len(raw) - offset != 8 * len(FIELDS) * col.row_items:
        raise DataError(f"{where}: holds {got[2]} {got[0]}, not the float64 {shape} statistics of column {col.name!r}")
    arr = np.frombuffer(raw, "<f8", offset=offset).reshape(shape)
    return {k: arr[i] for i, k in enumerate(FIELDS)}


def _read(root: Any, rel: str, size: int, remote: Any, where: str) -> bytearray:
    """The ``size`` bytes of file ``rel`` (its size checked before anything is allocated)."""
    if not isinstance(root, Path):  # a dataset at a URL: through the same file access as its manifest
        files = remote if remote is not None else RemoteFiles(str(root))
        have = files.size(rel)
        if have != size:
            raise DataError(f"{where}: statistics file has {have} bytes, the manifest records {size}")
        return bytearray(files.read(rel, 0, size))
    try:
        with open(root / rel, "rb") as f:
            have = os.fstat(f.fileno()).st_size
            raw = bytearray(size if have == size else 0)
            got = f.readinto(raw)
    except OSError as e:
        raise DataError(f"{where}: cannot read statistics file: {e.strerror or e}") from None
    if have != size or got != size:
        raise DataError(f"{where}: statistics file has {have} bytes, the manifest records {size} "
                        "(truncated or replaced)")
    return raw
