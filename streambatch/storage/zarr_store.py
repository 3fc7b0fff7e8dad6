"""Zarr v3 storage: one sharded array per column, read and written directly.

Layout of a dataset folder::

    ds.zarr/
      zarr.json                 the Zarr group
      x/zarr.json               array (rows, 128) float32, shards of S rows, inner chunks of C rows
      x/c/0/0  x/c/1/0 ...      shard files: C-row inner chunks back to back, index at the end
      _streambatch.json         the manifest (written last)

An inner chunk is the shuffle unit.  Any Zarr v3 reader (``zarr.open_group``) reads the
data; streambatch itself reads chunk bytes with ``os.pread`` at offsets recorded in the
manifest and decodes them with numcodecs, which is about ten times faster than the
zarr-python API and scales across threads (../shared/STORAGE.md).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .._fields import int_array, safe_relpath
from ..errors import DataError, ManifestError
from ..io.checksum import CHECKSUMS, DEFAULT_CHECKSUM, checksum_fn
from ..io.files import ByteRanges
from ..manifest import Manifest
from ..schema import Column
from ._zarr_check import check_zarr_files
from ._zarr_meta import EMPTY, chunk_key, metadata_documents
from .base import StorageFormat, WriteResult

__all__ = ["Reader", "Writer", "validate_layout", "FORMAT"]

def _compressor(codec: str, itemsize: int) -> Any:
    import numcodecs

    if codec == "lz4":
        return numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE, typesize=itemsize)
    if codec == "zstd":
        return numcodecs.Zstd(level=3)
    return None


def _write_json(path: Path, doc: dict[str, Any]) -> list[int]:
    """Write ``doc``; return ``[size, CRC-32C]`` of the bytes written (``streambatch verify`` checks them)."""
    raw = json.dumps(doc, indent=2).encode()
    with open(path, "xb") as f:
        f.write(raw)
    return [len(raw), checksum_fn("crc32c")(raw)]


def units_per_shard(columns: tuple[Column, ...], rows: int, unit_rows: int, shard_bytes: int) -> int:
    """Inner chunks (units) per shard: one size for all columns keeps every unit in shard u // k."""
    widest = max(c.row_nbytes for c in columns) * unit_rows
    return max(1, min(-(-rows // unit_rows), shard_bytes // max(1, widest)))


class Writer:
    """Writes columns as sharded Zarr v3 arrays, inner chunk by inner chunk.

    Each unit is encoded and appended to its column's current shard file; the shard
    index (offset, size per inner chunk, crc32c) is written when the shard is full.  The
    manifest records each chunk's checksum (CRC-32C) in ``layout.columns[name].crc32``, and the
    size and CRC-32C of each ``zarr.json`` in ``layout.metadata_crc32c`` (``streambatch verify``).

    A writer starting at ``first_unit`` (the first unit of a shard) writes that part of the
    dataset only: writers of different shards run in parallel, and :meth:`combine` joins what
    they return.  The one starting at unit 0 writes the Zarr metadata.
    """

    def __init__(self, folder: Path, columns: tuple[Column, ...], rows: int, unit_rows: int,
                 shard_bytes: int, codec: str, first_unit: int = 0) -> None:
        self.folder = Path(folder)
        self.columns = columns
        self.unit_rows = unit_rows
        self.codec = codec
        self.units_per_shard = units_per_shard(columns, rows, unit_rows, shard_bytes)
        if first_unit % self.units_per_shard:
            raise ValueError(f"a Zarr writer starts at a shard's first unit, not unit {first_unit}")
        shard_rows = self.units_per_shard * unit_rows
        # Metadata written directly (tests/test_zarr_meta.py checks it against zarr-python's):
        # importing zarr costs 0.5-1 s, the bulk of converting a small dataset.
        self.folder.mkdir(parents=True, exist_ok=True)
        self.metadata: dict[str, list[int]] = {}  # zarr.json files written: [size, CRC-32C]
        if first_unit == 0:
            for rel, doc in metadata_documents(columns, rows, unit_rows, shard_rows, codec):
                (self.folder / rel).parent.mkdir(exist_ok=True)
                self.metadata[rel] = _write_json(self.folder / rel, doc)
        self.files: list[str] = []
        self.loc: dict[str, dict[str, list[int]]] = {
            c.name: {"file": [], "offset": [], "size": [], "crc32": []} for c in columns}
        self.compressors = {c.name: _compressor(codec, c.np_dtype.itemsize) for c in columns}
        self.stored: list[int] = []
        self.checksums: list[int] = []
        self._checksum = checksum_fn(DEFAULT_CHECKSUM)
        self._handles: dict[str, Any] = {}
        self._pos: dict[str, int] = {}  # bytes written to each open shard (BufferedWriter.tell() is a syscall)
        self._index: dict[str, list[tuple[int, int]]] = {}
        self._unit = first_unit

    def _open_shard(self, col: Column, shard: int) -> Any:
        key = chunk_key(col, shard)
        path = self.folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        self.files.append(key)
        self._handles[col.name] = open(path, "wb")
        self._pos[col.name] = 0
        self._index[col.name] = []
        return self._handles[col.name]

    def write_unit(self, data: dict[str, np.ndarray]) -> None:
        u = self._unit
        shard, pos = divmod(u, self.units_per_shard)
        total = 0
        crc = 0
        for c in self.columns:
            f = self._shard_file(c, shard, pos)
            arr = np.ascontiguousarray(data[c.name], dtype=c.np_dtype.newbyteorder("<"))
            n = arr.shape[0]
            if n < self.unit_rows:  # the last unit: Zarr stores whole inner chunks, padded
                pad = np.zeros((self.unit_rows - n, *c.shape), dtype=arr.dtype)
                arr = np.concatenate([arr, pad])
            comp = self.compressors[c.name]
            payload = memoryview(arr).cast("B") if comp is None else comp.encode(arr)
            offset = self._pos[c.name]
            f.write(payload)
            size = len(payload)
            self._pos[c.name] = offset + size
            c32 = self._checksum(payload)
            self._record(c, pos, [offset], [size], [c32])
            total += size
            crc = zlib.crc32(c32.to_bytes(4, "little"), crc)
        self.stored.append(total)
        self.checksums.append(crc)
        self._unit += 1

    def write_units(self, data: dict[str, np.ndarray]) -> None:
        """Write consecutive units: ``data`` holds ``k * unit_rows`` rows (the last unit may be
        short).  Uncompressed, each column's units within a shard go out in one write: per-unit
        calls cost ~10 us of Python each per column, a sixth of a 1 GB conversion's CPU."""
        ur = self.unit_rows
        n = len(data[self.columns[0].name])
        whole = n // ur
        lo = 0
        if self.codec == "none":
            while lo < whole:
                shard, pos = divmod(self._unit, self.units_per_shard)
                k = min(whole - lo, self.units_per_shard - pos)
                crcs = [0] * k
                for c in self.columns:
                    f = self._shard_file(c, shard, pos)
                    arr = np.ascontiguousarray(data[c.name][lo * ur:(lo + k) * ur], dtype=c.np_dtype.newbyteorder("<"))
                    raw = memoryview(arr).cast("B").toreadonly()
                    f.write(raw)
                    ub = ur * c.row_nbytes
                    offset = self._pos[c.name]
                    self._pos[c.name] = offset + k * ub
                    c32 = [self._checksum(raw[i * ub:(i + 1) * ub]) for i in range(k)]
                    self._record(c, pos, list(range(offset, offset + k * ub, ub)), [ub] * k, c32)
                    crcs = [zlib.crc32(v.to_bytes(4, "little"), crc) for v, crc in zip(c32, crcs)]
                self.stored += [ur * sum(c.row_nbytes for c in self.columns)] * k
                self.checksums += crcs
                self._unit += k
                lo += k
        for u in range(lo * ur, n, ur):
            self.write_unit({name: v[u:u + ur] for name, v in data.items()})

    def _shard_file(self, col: Column, shard: int, pos: int) -> Any:
        """The open shard file of ``col``; at a shard's first unit (``pos`` 0), a new one."""
        if pos == 0:
            self._close_shard(col)
            return self._open_shard(col, shard)
        return self._handles[col.name]

    def _record(self, col: Column, pos: int, offsets: list[int], sizes: list[int], crcs: list[int]) -> None:
        """Where units of ``col`` went in its current shard, from unit position ``pos`` on."""
        loc = self.loc[col.name]
        loc["file"] += [len(self.files) - 1 if pos == 0 else loc["file"][-1]] * len(offsets)
        loc["offset"] += offsets
        loc["size"] += sizes
        loc["crc32"] += crcs
        self._index[col.name] += zip(offsets, sizes)

    def _close_shard(self, col: Column) -> None:
        import google_crc32c

        f = self._handles.pop(col.name, None)
        if f is None:
            return
        entries = self._index.pop(col.name)
        index = np.full((self.units_per_shard, 2), EMPTY, dtype="<u8")
        index[: len(entries)] = np.asarray(entries, dtype="<u8").reshape(-1, 2)
        raw = index.tobytes()
        f.write(raw)
        f.write(google_crc32c.value(raw).to_bytes(4, "little"))
        f.close()

    def finish(self) -> tuple[list[str], dict[str, Any], list[int], list[int]]:
        for c in self.columns:
            self._close_shard(c)
        layout = {"unit_rows": self.unit_rows, "units_per_shard": self.units_per_shard, "checksum": DEFAULT_CHECKSUM,
                  "columns": self.loc}
        if self.metadata:  # the first part's writer (combine keeps its layout's fields)
            layout["metadata_crc32c"] = self.metadata
        return self.files, layout, self.stored, self.checksums

    @staticmethod
    def combine(parts: list[tuple[list[str], dict[str, Any], list[int], list[int]]]
                ) -> tuple[list[str], dict[str, Any], list[int], list[int]]:
        """What :meth:`finish` returns for the whole dataset, from the parts' results in unit order."""
        files: list[str] = []
        stored: list[int] = []
        checksums: list[int] = []
        layout = {**parts[0][1], "columns": {name: {k: [] for k in loc} for name, loc in parts[0][1]["columns"].items()}}
        for part_files, part_layout, part_stored, part_checksums in parts:
            for name, loc in part_layout["columns"].items():
                out = layout["columns"][name]
                out["file"] += [f + len(files) for f in loc["file"]]
                for k in ("offset", "size", "crc32"):
                    out[k] += loc[k]
            files += part_files
            stored += part_stored
            checksums += part_checksums
        return files, layout, stored, checksums

    def abort(self) -> None:
        for f in self._handles.values():
            try:
                f.close()
            except OSError:  # a full disk fails the flush again; the converter removes the folder
                pass
        self._handles.clear()


def validate_layout(layout: dict[str, Any], n_units: int, n_files: int, columns: tuple[Column, ...],
                    where: str, *, codec: str | None = None, unit_rows: np.ndarray | None = None) -> dict[str, Any]:
    """Check the Zarr layout: ``ManifestError`` unless every location is an in-range integer.

    The inner chunks of a Zarr array are a regular grid, so every unit but the last holds
    exactly ``layout.unit_rows`` rows (checked when ``unit_rows``, the manifest's rows per
    unit, is given); an uncompressed chunk is exactly its decoded size.
    """
    chunk_rows = layout.get("unit_rows")
    if type(chunk_rows) is not int or not 0 < chunk_rows <= 1 << 48:
        raise ManifestError(f"{where}: layout.unit_rows must be a positive integer")
    if unit_rows is not None and ((unit_rows[:-1] != chunk_rows).any() or int(unit_rows[-1]) > chunk_rows):
        raise ManifestError(f"{where}: units.rows do not match the Zarr chunks of layout.unit_rows={chunk_rows} rows")
    checksum = layout.get("checksum", "crc32")
    if checksum not in CHECKSUMS:
        raise ManifestError(f"{where}: layout.checksum must be one of {', '.join(CHECKSUMS)}, got {checksum!r}")
    cols = layout.get("columns")
    if not isinstance(cols, dict):
        raise ManifestError(f"{where}: layout.columns must be an object")
    out: dict[str, Any] = {"unit_rows": chunk_rows, "checksum": checksum, "columns": {}}
    per_shard = layout.get("units_per_shard")  # absent: derived from the shard files by verify
    if per_shard is not None:
        if type(per_shard) is not int or not 0 < per_shard <= max(1, n_units):
            raise ManifestError(f"{where}: layout.units_per_shard must be an integer in [1, {max(1, n_units)}]")
        out["units_per_shard"] = per_shard
    if "metadata_crc32c" in layout:  # absent in datasets written before it was recorded
        out["metadata_crc32c"] = _file_checks(layout["metadata_crc32c"], f"{where}: layout.metadata_crc32c")
    for c in columns:
        loc = cols.get(c.name)
        cw = f"{where}: layout of column {c.name!r}"
        if not isinstance(loc, dict):
            raise ManifestError(f"{cw}: missing")
        chunk_bytes = chunk_rows * c.row_nbytes
        lo, hi = (chunk_bytes, chunk_bytes) if codec == "none" else (1, max(chunk_bytes + (1 << 16), 2 * chunk_bytes))
        out["columns"][c.name] = {
            "file": int_array(loc.get("file"), n_units, f"{cw}.file", hi=max(0, n_files - 1)),
            "offset": int_array(loc.get("offset"), n_units, f"{cw}.offset", hi=1 << 50),
            "size": int_array(loc.get("size"), n_units, f"{cw}.size", lo=lo, hi=hi),
            "crc32": int_array(loc.get("crc32"), n_units, f"{cw}.crc32", hi=2**32 - 1),
        }
    return out


def _file_checks(value: Any, where: str) -> dict[str, list[int]]:
    """``{path: [size, CRC-32C]}`` of files checked whole, each path inside the dataset folder."""
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: must map file paths to [size, CRC-32C]")
    for rel, check in value.items():
        safe_relpath(Path("."), rel, where)
        int_array(check, 2, f"{where}[{rel!r}]", hi=1 << 40)
    return value


class Reader:
    """Direct reader: ``os.preadv`` of recorded byte ranges, numcodecs decode, no zarr-python.

    An uncompressed unit is read straight into the caller's buffer (only the rows asked
    for).  ``pread`` beat a per-unit ``mmap`` 8 GB/s to 3.7 GB/s from a warm page cache
    (per-call mapping and unmapping cost more than the copy): tools/profile_read_paths.py.
    """

    def __init__(self, manifest: Manifest, verify: bool = False, remote: Any = None) -> None:
        self.manifest = manifest
        self.verify = verify
        self._remote = remote  # RemoteFiles for a dataset at a URL: ranged requests instead of pread
        self._files = ByteRanges(manifest, remote)
        self._decoders = {c.name: _compressor(manifest.codec, c.np_dtype.itemsize) for c in manifest.columns}
        self._unit_rows = manifest.layout["unit_rows"]
        self._checksum = checksum_fn(manifest.layout.get("checksum", "crc32"))

    def _where(self, col: Column, unit: int, file_index: int) -> str:
        return (f"dataset {self.manifest.root}, column {col.name!r}, unit {unit}, "
                f"file {self.manifest.files[file_index]}")

    def _pread_into(self, buf: memoryview, file_index: int, offset: int, col: Column, unit: int) -> None:
        self._files.read_into(buf, file_index, offset, lambda: self._where(col, unit, file_index))

    def _bytes(self, file_index: int, offset: int, size: int, col: Column, unit: int) -> memoryview:
        """The bytes, in this thread's scratch buffer (valid until its next read)."""
        return self._files.read_scratch(file_index, offset, size, lambda: self._where(col, unit, file_index))

    def advise(self, pieces: list[tuple[int, int, int, Any]], names: list[str]) -> None:
        """Hint the kernel to read the rows ``lo:hi`` of each ``(unit, lo, hi, _)`` piece of a window
        (``ByteRanges.advise``: only where they are not cached).  Called before the window's reads
        are queued."""
        ranges = []
        for name in names:
            col = self.manifest.column(name)
            whole = self._decoders[name] is not None
            for unit, lo, hi, _ in pieces:
                fi, off, size = self._stored_range(col, unit)
                ranges.append((fi, off, size) if whole else (fi, off + lo * col.row_nbytes, (hi - lo) * col.row_nbytes))
        self._files.advise(ranges, lambda: f"dataset {self.manifest.root}")

    def _stored_range(self, col: Column, unit: int) -> tuple[int, int, int]:
        loc = self.manifest.layout["columns"][col.name]
        return int(loc["file"][unit]), int(loc["offset"][unit]), int(loc["size"][unit])

    def _check(self, raw: Any, col: Column, unit: int, fi: int) -> None:
        want = int(self.manifest.layout["columns"][col.name]["crc32"][unit])
        if self._checksum(raw) != want:
            raise DataError(f"{self._where(col, unit, fi)}: checksum mismatch (data corrupt)")

    def read_into(self, unit: int, lo: int, hi: int, out: dict[str, np.ndarray]) -> None:
        rows_in_unit = int(self.manifest.unit_rows[unit])
        if not 0 <= lo < hi <= rows_in_unit:
            raise ValueError(f"rows {lo}:{hi} outside unit {unit} of {rows_in_unit} rows")
        for name, dst in out.items():
            col = self.manifest.column(name)
            fi, off, size = self._stored_range(col, unit)
            if self._decoders[name] is None:
                if size != self._unit_rows * col.row_nbytes:
                    raise DataError(f"{self._where(col, unit, fi)}: stored size {size} "
                                    f"does not match an uncompressed chunk")
                if not self.verify:  # only the rows asked for, straight into the caller's buffer
                    off = off + lo * col.row_nbytes
                    if dst.flags.c_contiguous:
                        self._pread_into(memoryview(dst.reshape(-1).view(np.uint8)), fi, off, col, unit)
                    else:
                        raw = self._bytes(fi, off, (hi - lo) * col.row_nbytes, col, unit)
                        dst[...] = np.frombuffer(raw, dtype=col.np_dtype.newbyteorder("<")).reshape(dst.shape)
                    continue
                if hi - lo == self._unit_rows and dst.flags.c_contiguous:  # a whole chunk: read, then check it
                    buf = memoryview(dst.reshape(-1).view(np.uint8))
                    self._pread_into(buf, fi, off, col, unit)
                    self._check(buf, col, unit, fi)
                    continue
            raw = self._bytes(fi, off, size, col, unit)
            if self.verify:
                self._check(raw, col, unit, fi)
            self._decode_into(raw, col, unit, fi, lo, hi, dst)

    def _decode_into(self, raw: bytearray, col: Column, unit: int, fi: int, lo: int, hi: int,
                     dst: np.ndarray | None) -> None:
        dec = self._decoders[col.name]
        want = self._unit_rows * col.row_nbytes
        # a whole Blosc frame (16-byte header: decoded size at 4, frame size at 12) of the right
        # decoded size is decompressed straight into the caller's buffer
        into = (self.manifest.codec == "lz4" and dst is not None and hi - lo == self._unit_rows
                and dst.flags.c_contiguous and int.from_bytes(raw[4:8], "little") == want
                and int.from_bytes(raw[12:16], "little") == len(raw))
        target = memoryview(dst.reshape(-1).view(np.uint8)) if into and dst is not None else None
        try:
            data = raw if dec is None else dec.decode(raw, out=target)
        except Exception as e:  # numcodecs raises RuntimeError/ValueError on corrupt frames
            raise DataError(f"{self._where(col, unit, fi)}: cannot decode chunk: {e}") from None
        if into:
            return
        got = len(memoryview(data).cast("B"))
        if got != want:
            raise DataError(f"{self._where(col, unit, fi)}: decoded {got} bytes, expected {want}")
        if dst is not None:
            full = np.frombuffer(data, dtype=col.np_dtype.newbyteorder("<")).reshape(self._unit_rows, *col.shape)
            dst[...] = full[lo:hi]
            del full
        del data

    def verify_unit(self, unit: int) -> None:
        for col in self.manifest.columns:
            fi, off, size = self._stored_range(col, unit)
            raw = self._bytes(fi, off, size, col, unit)
            self._check(raw, col, unit, fi)
            self._decode_into(raw, col, unit, fi, 0, 0, None)

    def close(self) -> None:
        self._files.close()


class ZarrFormat(StorageFormat):
    """Sharded Zarr v3: an inner chunk per unit, a shard file per column every ``shard_bytes``."""

    name = "zarr"
    reader_class = Reader
    writer_class = Writer

    def default_threads(self, cores: int) -> int:
        return min(8, cores)  # a shard per thread: reads, statistics and writes on every core

    def units_per_file(self, columns: tuple[Column, ...], rows: int, unit_rows: int, shard_bytes: int) -> int:
        return units_per_shard(columns, rows, unit_rows, shard_bytes)

    def validate_layout(self, layout: dict[str, Any], n_units: int, n_files: int, columns: tuple[Column, ...],
                        where: str, *, codec: str, unit_rows: np.ndarray | None) -> dict[str, Any]:
        return validate_layout(layout, n_units, n_files, columns, where, codec=codec, unit_rows=unit_rows)

    def check_files(self, checker: Any) -> str:
        return check_zarr_files(checker)


FORMAT = ZarrFormat()
