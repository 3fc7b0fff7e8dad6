"""The dataset manifest: one versioned JSON file, written last, that describes a dataset.

A dataset is a folder holding the data (a Zarr v3 group or Parquet files) and
``_streambatch.json``.  The manifest lists the schema, the shuffle units (row ranges and
where their bytes are), per-column statistics, checksums and how the dataset was made.
Per-feature statistics of columns wider than 1,024 values a row are in checksummed files
beside it (``_stats/``, see ``_feature_stats``), so the manifest stays small whatever the row
width.  Nothing in it is pickled; every path in it is relative to the dataset folder and is
checked to stay inside it.  Its last field is a CRC-32C of the bytes before it, checked at load.

This module reads and writes the document; what a storage format's ``layout`` holds is the
format's to check (``streambatch.storage.load_manifest`` passes its check to
:func:`read_manifest`), so that the formats may build on this module and not the other way.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from numpy.typing import NDArray

from ._feature_stats import check_stats_files, read_stats_file
from ._ragged_stats import check_ragged_stats, ragged_sizes
from ._fields import int_array, is_number, need, optional, safe_relpath
from .errors import DataError, ManifestError
from .io.checksum import checksum_fn
from .io.remote import RemoteFiles, RemoteRoot, is_url
from .schema import Column, parse_column

__all__ = ["MANIFEST_NAME", "FORMAT_VERSION", "Column", "Manifest", "LayoutCheck", "encode_manifest",
           "read_manifest", "compute_fingerprint"]

MANIFEST_NAME = "_streambatch.json"
FORMAT_VERSION = 1
# The version changes when a reader of the previous one would misread a dataset.  Readers ignore
# top-level fields they do not know, so a field an older reader can do without (``stats_files``:
# it then has no statistics for wide columns, and says so if asked to normalise them) keeps it.
_MAX_ROWS = 1 << 48
_MAX_MANIFEST_BYTES = 256 * 1024 * 1024
_MAX_UNIT_BYTES = 1 << 32  # decoded bytes of one shuffle unit (the converter's default is 256 KiB)


@dataclass(frozen=True, eq=False)
class Manifest:
    """A loaded, validated manifest.  ``root`` is the dataset folder.

    ``unit_start[i]`` and ``unit_rows[i]`` give the rows of shuffle unit ``i``;
    ``layout`` holds the storage-specific locations (see ``streambatch.storage``) as
    int64 arrays, one entry per unit.  ``stats`` holds per-feature statistics inline;
    ``stats_files`` the files holding those of wide columns, with a summary (read them with
    :meth:`feature_stats`).
    """

    root: Path
    storage: str
    rows: int
    columns: tuple[Column, ...]
    unit_start: NDArray[np.int64]
    unit_rows: NDArray[np.int64]
    unit_stored_nbytes: NDArray[np.int64]
    codec: str
    files: tuple[str, ...]
    layout: dict[str, Any]
    stats: dict[str, Any] = field(default_factory=dict)
    stats_files: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    fingerprint: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    version: int = FORMAT_VERSION
    checksum: str = ""  # the manifest's own, as loaded ("" for manifests written before it was recorded)

    @property
    def n_units(self) -> int:
        return int(self.unit_rows.shape[0])

    @property
    def row_nbytes(self) -> int:
        """Decoded bytes of one row over all columns (ragged ones: their mean row, and its offset)."""
        return sum(c.row_nbytes for c in self.columns)

    @property
    def decoded_nbytes(self) -> int:
        """Decoded bytes of every row (a ragged column's values as recorded per unit)."""
        ragged = self.layout.get("ragged_nbytes", {})
        return sum(int(np.sum(ragged[c.name])) if c.ragged else self.rows * c.row_nbytes for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.root}: no column {name!r}; columns are {[c.name for c in self.columns]}")

    def select(self, names: list[str] | tuple[str, ...] | None) -> tuple[Column, ...]:
        """The columns named (all if ``None``); ``ValueError`` naming an unknown one."""
        if names is None:
            return self.columns
        known = {c.name: c for c in self.columns}
        missing = [n for n in names if n not in known]
        if missing:
            raise ValueError(f"{self.root}: unknown column(s) {missing}; columns are {list(known)}")
        return tuple(known[n] for n in names)

    def path_of(self, file_index: int) -> Path:
        return self.root / self.files[file_index]

    def feature_stats(self, name: str, remote: Any = None) -> dict[str, NDArray[np.float64]]:
        """Per-feature ``mean``, ``std``, ``min`` and ``max`` of column ``name``: float64 arrays
        shaped like one row (NaN where not finite), from the manifest or, for a wide column, read
        from its statistics file now.  ``remote``: the ``RemoteFiles`` of a dataset at a URL
        (default options when not given).

        Raises ``KeyError`` for an unknown column, ``ManifestError`` when the column has no
        statistics, ``DataError`` naming the statistics file when it is missing or damaged.
        """
        col = self.column(name)
        entry = self.stats_files.get(name)
        if entry is not None:
            return read_stats_file(self.root, entry, col, remote)
        st = self.stats.get(name)
        if not st:
            raise ManifestError(f"{self.root}: no statistics for column {name!r}")
        # JSON null (not finite) -> NaN
        return {k: np.asarray(st[k], np.float64).reshape(col.shape) for k in ("mean", "std", "min", "max")}

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "streambatch",
            "version": self.version,
            "storage": self.storage,
            "rows": self.rows,
            "columns": [c.to_json() for c in self.columns],
            "codec": self.codec,
            "label": self.label,
            "files": list(self.files),
            "units": {
                "start": self.unit_start.tolist(),
                "rows": self.unit_rows.tolist(),
                "stored_nbytes": self.unit_stored_nbytes.tolist(),
            },
            "layout": _layout_to_json(self.layout),
            "stats": self.stats,
            **({"stats_files": self.stats_files} if self.stats_files else {}),
            "fingerprint": self.fingerprint,
            "source": self.source,
            "options": self.options,
        }

    def write(self, folder: Path) -> None:
        """Write the manifest into ``folder`` (atomically, via a temporary file)."""
        path = Path(folder) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        with open(tmp, "wb") as f:
            f.write(encode_manifest(self.to_json()))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


_SEAL_KEY = b'"checksum":"crc32c:'
_SEAL = re.compile(rb'"checksum":"crc32c:([0-9a-f]{8})"\}\s*')


def encode_manifest(doc: dict[str, Any]) -> bytes:
    """The bytes of manifest ``doc`` as streambatch writes them: compact JSON whose last field,
    ``"checksum": "crc32c:XXXXXXXX"``, is the CRC-32C of every byte before it (any ``"checksum"``
    in ``doc`` is replaced).  :func:`load_manifest` checks it.  Raises ``ValueError`` for NaN or
    infinite numbers."""
    # dumps, not dump: json.dump always takes the pure-Python encoder (0.2 s for 4,000 units)
    body = json.dumps({k: v for k, v in doc.items() if k != "checksum"}, separators=(",", ":"),
                      allow_nan=False).encode()
    head = body[:-1] + (b"," if len(body) > 2 else b"")
    return head + _SEAL_KEY + b"%08x\"}" % checksum_fn("crc32c")(head)


def _check_seal(raw: bytes, doc: Any, where: str) -> str:
    """The manifest's own checksum (``encode_manifest``), checked against ``raw``, its bytes;
    ``""`` for a manifest written before it was recorded.  ``ManifestError`` if it does not match."""
    at = raw.rfind(_SEAL_KEY)
    seal = _SEAL.fullmatch(raw, at) if at >= 0 else None
    if seal is None:
        if isinstance(doc, dict) and "checksum" in doc:
            raise ManifestError(f"{where}: damaged or edited: its 'checksum' field is not the last field as "
                                "streambatch writes it; re-convert the dataset or restore the manifest")
        return ""
    want, got = int(seal.group(1), 16), checksum_fn("crc32c")(memoryview(raw)[:at])
    if got != want:
        raise ManifestError(f"{where}: checksum mismatch: the manifest was damaged or edited after it was "
                            f"written (CRC-32C {got:08x}, recorded {want:08x}); re-convert the dataset or "
                            "restore the manifest")
    return f"crc32c:{want:08x}"


def compute_fingerprint(columns: tuple[Column, ...], rows: int, checksums: list[int]) -> str:
    """Content fingerprint: schema, row count and every unit checksum, hashed."""
    h = hashlib.sha256()
    h.update(json.dumps([c.to_json() for c in columns], sort_keys=True).encode())
    h.update(str(rows).encode())
    h.update(np.asarray(checksums, dtype=np.uint64).tobytes())
    return h.hexdigest()[:32]


def _layout_to_json(layout: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in layout.items():
        if isinstance(v, np.ndarray):
            out[k] = v.tolist()
        elif isinstance(v, dict):
            out[k] = _layout_to_json(v)
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------------- loading


LayoutCheck = Callable[..., dict[str, Any]]
"""``check(storage, layout, n_units, n_files, columns, codec, where, unit_rows=...)``: the storage
format's check of the manifest's ``layout`` (``streambatch.storage.validate_layout``): the layout
with int64 arrays, or ``ManifestError`` (also for an unknown storage format)."""


def read_manifest(path: str | os.PathLike[str], check_layout: LayoutCheck, remote: Any = None) -> Manifest:
    """Read and validate the manifest of the dataset at ``path`` (the folder or the JSON file),
    its storage layout with ``check_layout``.

    ``path`` may be a URL (``s3://``, ``gs://``, ``https://`` ...); ``remote`` is then the
    ``streambatch.io.remote.RemoteFiles`` to read it through (default options when not given).
    Raises ``ManifestError`` naming the file and field for anything missing, of the wrong
    type, out of range or pointing outside the dataset folder, and naming the file for a manifest
    whose bytes do not match its own checksum (damaged or edited); nothing else escapes.
    """
    if is_url(path):
        return _read_remote(str(path), check_layout, remote)
    p = Path(path)
    root = p.parent if p.name == MANIFEST_NAME else p
    mpath = root / MANIFEST_NAME
    where = str(mpath)
    try:
        with open(mpath, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > _MAX_MANIFEST_BYTES:  # checked before reading: no allocation of what a file claims
                raise ManifestError(f"{where}: manifest larger than {_MAX_MANIFEST_BYTES >> 20} MiB")
            # allocate what the file holds (one byte more shows growth); st_size 0 may be a pseudo file
            raw = f.read(size + 1 if size else _MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        if not root.exists():
            raise ManifestError(f"{root}: no such dataset") from None
        raise ManifestError(f"{mpath}: manifest missing; is {root} a streambatch dataset "
                            "(made by `streambatch convert`)?") from None
    except OSError as e:
        raise ManifestError(f"{mpath}: cannot read manifest: {e.strerror or e}") from None
    if len(raw) > max(size, _MAX_MANIFEST_BYTES if not size else 0):
        raise ManifestError(f"{where}: manifest larger than {_MAX_MANIFEST_BYTES >> 20} MiB or changed while "
                            "it was read")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"{where}: not valid JSON ({e})") from None
    checksum = _check_seal(raw, doc, where)
    try:
        return _parse(root, doc, where, check_layout, checksum)
    except ManifestError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, OverflowError) as e:  # pragma: no cover - safety net
        raise ManifestError(f"{where}: inconsistent manifest ({type(e).__name__}: {e})") from None


def _read_remote(url: str, check_layout: LayoutCheck, remote: Any) -> Manifest:
    url = url.rstrip("/")
    if url.endswith("/" + MANIFEST_NAME):
        url = url[: -len(MANIFEST_NAME) - 1]
    where = f"{url}/{MANIFEST_NAME}"
    files = remote if remote is not None else RemoteFiles(url)
    try:
        raw = files.cat(MANIFEST_NAME)
    except DataError as e:
        raise ManifestError(f"{where}: cannot read manifest: {e}") from None
    if len(raw) > _MAX_MANIFEST_BYTES:
        raise ManifestError(f"{where}: manifest larger than {_MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"{where}: not valid JSON ({e})") from None
    checksum = _check_seal(raw, doc, where)
    try:
        return _parse(RemoteRoot(url), doc, where, check_layout, checksum)  # type: ignore[arg-type]
    except ManifestError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, OverflowError) as e:  # pragma: no cover - safety net
        raise ManifestError(f"{where}: inconsistent manifest ({type(e).__name__}: {e})") from None


def _parse(root: Path, doc: Any, where: str, check_layout: LayoutCheck, checksum: str = "") -> Manifest:
    if not isinstance(doc, dict):
        raise ManifestError(f"{where}: top level must be a JSON object")
    if doc.get("format") != "streambatch":
        raise ManifestError(f"{where}: not a streambatch manifest (field 'format' is {doc.get('format')!r})")
    version = need(doc, "version", int, where)
    if version != FORMAT_VERSION:
        raise ManifestError(f"{where}: format version {version} is not supported (this streambatch "
                            f"reads version {FORMAT_VERSION}); upgrade streambatch or re-convert")
    storage = need(doc, "storage", str, where)
    rows = need(doc, "rows", int, where)
    if not 0 < rows <= _MAX_ROWS:
        raise ManifestError(f"{where}: row count {rows} out of range")
    cols_doc = need(doc, "columns", list, where)
    if not cols_doc:
        raise ManifestError(f"{where}: no columns")
    seen: set[str] = set()
    columns = [parse_column(c, f"{where}: column {i}", seen) for i, c in enumerate(cols_doc)]
    files = tuple(safe_relpath(root, f, f"{where}: files[{i}]")
                  for i, f in enumerate(need(doc, "files", list, where)))
    units = need(doc, "units", dict, where)
    n_start = need(units, "start", list, f"{where}: units")
    n = len(n_start)
    if n == 0:
        raise ManifestError(f"{where}: no shuffle units")
    start = int_array(n_start, None, f"{where}: units.start", hi=rows)
    urows = int_array(need(units, "rows", list, f"{where}: units"), n, f"{where}: units.rows", lo=1, hi=rows)
    stored = int_array(need(units, "stored_nbytes", list, f"{where}: units"), n,
                       f"{where}: units.stored_nbytes", hi=1 << 40)
    expect = np.concatenate([[0], np.cumsum(urows)[:-1]])
    if not np.array_equal(start, expect) or int(urows.sum()) != rows:
        raise ManifestError(f"{where}: units do not tile rows 0..{rows} contiguously")
    layout = need(doc, "layout", dict, where)
    columns, ragged_nbytes = ragged_sizes(columns, layout, urows, where, _MAX_UNIT_BYTES)
    row_nbytes = sum(c.row_nbytes for c in columns)
    if int(urows.max()) * row_nbytes > _MAX_UNIT_BYTES:
        raise ManifestError(f"{where}: a unit of {int(urows.max())} rows x {row_nbytes} bytes is larger than "
                            f"{_MAX_UNIT_BYTES} bytes decoded; re-convert with a smaller --unit-bytes")
    codec = need(doc, "codec", str, where)
    label = doc.get("label")
    if label is not None and (not isinstance(label, str) or label not in seen):
        raise ManifestError(f"{where}: label column {label!r} is not a column")
    checked = check_layout(storage, layout, n, len(files), tuple(columns), codec, where, unit_rows=urows)
    if ragged_nbytes:
        checked["ragged_nbytes"] = ragged_nbytes
    by_name = {c.name: c for c in columns}
    stats = _check_stats(doc.get("stats", {}), by_name, where)
    stats_files = check_stats_files(doc.get("stats_files", {}), by_name, stats, where)
    fp, source, options = (optional(doc, key, typ, default, where) for key, typ, default in
                           (("fingerprint", str, ""), ("source", dict, {}), ("options", dict, {})))
    return Manifest(
        root=root, storage=storage, rows=rows, columns=tuple(columns), unit_start=start,
        unit_rows=urows, unit_stored_nbytes=stored, codec=codec, files=files, layout=checked,
        stats=stats, stats_files=stats_files, label=label, fingerprint=fp, source=source, options=options,
        version=version, checksum=checksum,
    )


def _check_stats(stats: Any, columns: dict[str, Column], where: str) -> dict[str, Any]:
    """Per-column statistics: count, and mean, std, min, max as numbers (null when not finite) of
    the column's row shape; the label column's histogram."""
    if not isinstance(stats, dict):
        raise ManifestError(f"{where}: field 'stats' must be an object")
    for name, st in stats.items():
        sw = f"{where}: stats of column {name!r}"
        col = columns.get(name)
        if col is None:
            raise ManifestError(f"{sw}: no such column")
        if not isinstance(st, dict):
            raise ManifestError(f"{sw}: must be an object")
        if col.ragged:
            check_ragged_stats(st, sw)
            continue
        missing = [k for k in ("count", "mean", "std", "min", "max") if k not in st]
        if missing:
            raise ManifestError(f"{sw}: missing {', '.join(map(repr, missing))}")
        if type(st["count"]) is not int or st["count"] < 0:
            raise ManifestError(f"{sw}: 'count' must be a non-negative integer")
        for key in ("mean", "std", "min", "max"):
            v = st[key]
            ok = (is_number(v) if not col.shape else
                  isinstance(v, list) and len(v) == col.row_items and all(is_number(x) for x in v))
            if not ok:
                want = "a number" if not col.shape else f"a list of {col.row_items} numbers"
                raise ManifestError(f"{sw}: {key!r} must be {want}")
        if "histogram" in st:
            h = st["histogram"]
            if not (isinstance(h, dict) and isinstance(h.get("values"), list) and isinstance(h.get("counts"), list)
                    and len(h["values"]) == len(h["counts"])
                    and all(type(x) is int for x in h["values"])
                    and all(type(x) is int and x >= 0 for x in h["counts"])
                    and is_number(h.get("icc"))):
                raise ManifestError(f"{sw}: 'histogram' must hold equal-length integer lists 'values' and "
                                    "'counts' and a number 'icc'")
    return stats
