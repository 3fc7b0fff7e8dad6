"""Variable-length columns in Zarr v3: a group of two sharded arrays per ragged column.

For ragged column ``c`` (``Column.ragged``)::

    c/zarr.json             a group (its attributes hold the column)
    c/offsets/zarr.json     int64, shape (rows + 1,): row i is values[offsets[i]:offsets[i + 1]]
    c/offsets/c/0 ...       inner chunks of one unit's rows (the unit's row starts), shards as the
                            fixed columns'
    c/values/zarr.json      the column's dtype, shape (values, *element shape)
    c/values/c/0 ...        inner chunks of ``chunk`` values, ``per_shard`` to a shard file

so zarr-python reads row ``i`` as ``g["c/values"][o[i]:o[i + 1]]`` with ``o = g["c/offsets"][:]``.
A regular chunk grid cannot give each unit a values chunk of its own, so units straddle values
chunks: a values chunk holds about a quarter of a mean unit's values (``values_chunk``), so that
a compressed or checked read of a unit decodes about 1.25x its values.  The manifest records
where each unit's values start (``layout.columns[c].start``, one entry more than there are
units) and every chunk's file, offset, size and CRC-32C of both arrays (``values``, ``offsets``),
so a unit is read as byte ranges: uncompressed and unchecked, its values are one ``pread`` per
shard file straight into the output.  The chunks are written in order by one writer (a dataset
with ragged columns is one part: ``ZarrFormat.units_per_file``), because a unit's offsets and
values positions depend on every unit before it.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._fields import int_array
from ..errors import DataError, ManifestError
from ..io.checksum import DEFAULT_CHECKSUM, checksum_fn, chunk_checksums
from ..io.files import ByteRanges
from ..manifest import Manifest
from ..ragged import Ragged
from ..schema import Column
from ._zarr_meta import chunk_key, chunk_locations, compressor, ragged_documents, shard_index

__all__ = ["ShardedArray", "RaggedWriter", "RaggedReader", "values_chunk", "validate_ragged"]

_MIN_CHUNK_BYTES = 4096


def values_chunk(col: Column, unit_rows: int) -> int:
    """Values in an inner chunk of ``col``'s values array: a quarter of a unit's, by the column's
    size hint (at least 4 KiB of values)."""
    per_row = max(1, col.nbytes_hint - 8) / col.item_nbytes
    return max(1, -(-_MIN_CHUNK_BYTES // col.item_nbytes), int(unit_rows * per_row) // 4)


class ShardedArray:
    """One sharded Zarr array written inner chunk by inner chunk, in order: a shard file is opened
    at each ``per_shard``-th chunk (its name appended to ``files``) and closed with its index."""

    def __init__(self, folder: Path, key_of: Callable[[int], str], per_shard: int, files: list[str]) -> None:
        self.folder, self.key_of, self.per_shard, self.files = folder, key_of, per_shard, files
        self.loc: dict[str, list[int]] = {"file": [], "offset": [], "size": [], "crc32": []}
        self._f: Any = None
        self._fi = self._pos = 0
        self._index: list[tuple[int, int]] = []
        self._crc = checksum_fn(DEFAULT_CHECKSUM)

    def append(self, payload: Any) -> tuple[int, int]:
        """Write the next inner chunk's stored bytes; return their size and CRC-32C."""
        if len(self.loc["file"]) % self.per_shard == 0:
            self.close()
            key = self.key_of(len(self.loc["file"]) // self.per_shard)
            (self.folder / key).parent.mkdir(parents=True, exist_ok=True)
            self.files.append(key)
            self._f, self._fi, self._pos, self._index = open(self.folder / key, "wb"), len(self.files) - 1, 0, []
        self._f.write(payload)
        size, crc = len(payload), self._crc(payload)
        for k, v in zip(self.loc, (self._fi, self._pos, size, crc)):
            self.loc[k].append(v)
        self._index.append((self._pos, size))
        self._pos += size
        return size, crc

    def close(self) -> None:
        """Finish the open shard file (its index and the index's CRC-32C)."""
        f, self._f = self._f, None
        if f is not None:
            f.write(shard_index(self._index, self.per_shard))
            f.close()

    def abort(self) -> None:
        f, self._f = self._f, None
        if f is not None:
            try:
                f.close()
            except OSError:  # a full disk fails the flush again; the converter removes the folder
                pass


class RaggedWriter:
    """The two arrays of one ragged column, unit by unit from unit 0 (see the module docstring)."""

    def __init__(self, folder: Path, col: Column, unit_rows: int, units_per_shard: int, shard_bytes: int,
                 codec: str, files: list[str]) -> None:
        self.folder, self.col, self.unit_rows, self.codec = folder, col, unit_rows, codec
        self.chunk = values_chunk(col, unit_rows)
        self.shard_rows = unit_rows * units_per_shard
        per_shard = max(1, shard_bytes // (self.chunk * col.item_nbytes))
        self.values = ShardedArray(folder, lambda s: chunk_key(col, s, "values"), per_shard, files)
        self.offsets = ShardedArray(folder, lambda s: chunk_key(col, s, "offsets"), units_per_shard, files)
        self._compress = {"values": compressor(codec, col.np_dtype.itemsize), "offsets": compressor(codec, 8)}
        self._dtype = col.np_dtype.newbyteorder("<")
        self.start = [0]
        self.nbytes: list[int] = []  # layout.ragged_nbytes: each unit's decoded values
        self.rows = 0
        self._pending = np.empty((0, *col.shape), self._dtype)

    def _put(self, part: str, arr: np.ndarray) -> tuple[int, int]:
        comp = self._compress[part]
        payload = memoryview(arr).cast("B") if comp is None else comp.encode(arr)
        return (self.values if part == "values" else self.offsets).append(payload)

    def write_unit(self, rows: Ragged) -> tuple[int, int]:
        """Append one unit's rows; return the bytes stored for it and a CRC-32 of their checksums."""
        a, b, n = int(rows.offsets[0]), int(rows.offsets[-1]), len(rows)
        base = self.start[-1]
        offs = np.zeros(self.unit_rows, "<i8")
        offs[:n] = rows.offsets[:-1] + (base - a)
        if n < self.unit_rows:  # the last unit: the end offset, offsets[rows], is in its chunk
            offs[n] = base + b - a
        done = [self._put("offsets", offs)]
        vals = np.ascontiguousarray(rows.values[a:b], dtype=self._dtype)
        if len(self._pending):
            vals = np.concatenate([self._pending, vals])
        whole = len(vals) // self.chunk * self.chunk
        done += [self._put("values", vals[i:i + self.chunk]) for i in range(0, whole, self.chunk)]
        self._pending = vals[whole:].copy()
        self.start.append(base + b - a)
        self.nbytes.append((b - a) * self.col.item_nbytes)
        self.rows += n
        return _totals(done)

    def finish(self) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]], int, int]:
        """Write the last chunks and close the shards; return the column's layout, its
        ``zarr.json`` documents, and the bytes stored and a CRC-32 of their checksums (the last unit's)."""
        done = []
        if len(self._pending):  # Zarr stores whole chunks: the last one padded
            pad = np.zeros((self.chunk - len(self._pending), *self.col.shape), self._dtype)
            done.append(self._put("values", np.concatenate([self._pending, pad])))
        if self.rows % self.unit_rows == 0:  # offsets[rows] starts a chunk of its own
            offs = np.zeros(self.unit_rows, "<i8")
            offs[0] = self.start[-1]
            done.append(self._put("offsets", offs))
        self.values.close()
        self.offsets.close()
        layout = {"start": self.start, "values": {"chunk": self.chunk, "per_shard": self.values.per_shard,
                                                  **self.values.loc}, "offsets": self.offsets.loc}
        docs = ragged_documents(self.col, self.rows, self.unit_rows, self.shard_rows, self.start[-1], self.chunk,
                                self.values.per_shard, self.codec)
        return (layout, docs, *_totals(done))

    def abort(self) -> None:
        self.values.abort()
        self.offsets.abort()


def _totals(done: list[tuple[int, int]]) -> tuple[int, int]:
    """The sum of the sizes and a CRC-32 over the checksums of ``(size, checksum)`` pairs."""
    crc = 0
    for _, c in done:
        crc = zlib.crc32(c.to_bytes(4, "little"), crc)
    return sum(s for s, _ in done), crc


def validate_ragged(loc: Any, layout: dict[str, Any], n_units: int, n_files: int, col: Column,
                    unit_rows: np.ndarray | None, codec: str | None, cw: str) -> dict[str, Any]:
    """Ragged column ``col``'s layout checked (``ManifestError`` naming what is wrong): value
    starts from 0 that never decrease and agree with ``layout.ragged_nbytes``, and the chunks of
    both arrays."""
    if not isinstance(loc, dict) or not isinstance(loc.get("values"), dict):
        raise ManifestError(f"{cw}: missing, or not the layout of a variable-length column")
    start = int_array(loc.get("start"), n_units + 1, f"{cw}.start", hi=1 << 50)
    if start[0] != 0 or (np.diff(start) < 0).any():
        raise ManifestError(f"{cw}.start must begin at 0 and never decrease")
    nbytes = layout.get("ragged_nbytes", {}).get(col.name) if isinstance(layout.get("ragged_nbytes"), dict) else None
    if nbytes != (np.diff(start) * col.item_nbytes).tolist():
        raise ManifestError(f"{cw}.start does not match layout.ragged_nbytes[{col.name!r}]")
    vals = loc["values"]
    chunk, per_shard = vals.get("chunk"), vals.get("per_shard")
    if type(chunk) is not int or type(per_shard) is not int or not 0 < chunk <= 1 << 40 or not 0 < per_shard <= 1 << 40:
        raise ManifestError(f"{cw}.values: chunk and per_shard must be positive integers")
    ur = layout["unit_rows"]
    n_offsets = -(-(int(unit_rows.sum()) + 1) // ur) if unit_rows is not None else len(loc.get("offsets", {}).get(
        "file", ()))
    if not n_units <= n_offsets <= n_units + 1:
        raise ManifestError(f"{cw}.offsets: expected {n_units} or {n_units + 1} chunks")
    return {"start": start,
            "values": {"chunk": chunk, "per_shard": per_shard, **chunk_locations(
                vals, -(-int(start[-1]) // chunk), n_files, chunk * col.item_nbytes, codec, f"{cw}.values")},
            "offsets": chunk_locations(loc.get("offsets"), n_offsets, n_files, ur * 8, codec, f"{cw}.offsets")}


SMALL = 1 << 16
"""Stored chunks up to this size are read as ``bytes`` (one ``pread``), larger ones into the
thread's scratch buffer (a fresh buffer per read costs page faults)."""


class RaggedReader:
    """Reads units of a dataset's ragged columns as byte ranges of their two arrays, through the
    Zarr reader's files (see the module docstring)."""

    def __init__(self, manifest: Manifest, files: ByteRanges, verify: bool) -> None:
        self.m, self.files, self.verify = manifest, files, verify
        self._checksum_name = manifest.layout.get("checksum", "crc32")
        self._checksum = checksum_fn(self._checksum_name)
        self._values_dec = {c.name: compressor(manifest.codec, c.np_dtype.itemsize) for c in manifest.columns}
        self._offsets_dec = compressor(manifest.codec, 8)

    def _where(self, col: Column, unit: int, fi: int) -> str:
        return f"dataset {self.m.root}, column {col.name!r}, unit {unit}, file {self.m.files[fi]}"

    def _check(self, col: Column, unit: int, loc: dict[str, Any], k: int, raw: Any) -> None:
        """``DataError`` where the stored bytes ``raw`` of inner chunk ``k`` do not match their checksum."""
        if self._checksum(raw) != int(loc["crc32"][k]):
            raise DataError(f"{self._where(col, unit, int(loc['file'][k]))}: checksum mismatch (data corrupt)")

    def _chunk(self, col: Column, unit: int, loc: dict[str, Any], k: int, dec: Any, nbytes: int) -> memoryview:
        """Inner chunk ``k`` of one of ``col``'s arrays (``loc``), checked (with ``verify``) and
        decoded: ``nbytes`` bytes, valid until this thread's next read."""
        fi, off, size = int(loc["file"][k]), int(loc["offset"][k]), int(loc["size"][k])
        where = lambda: self._where(col, unit, fi)  # noqa: E731
        raw = self.files.read_small(fi, off, size, where) if size <= SMALL else self.files.read_scratch(fi, off, size,
                                                                                                       where)
        if self.verify:
            self._check(col, unit, loc, k, raw)
        try:
            data = memoryview(raw if dec is None else dec.decode(raw)).cast("B")
        except Exception as e:  # numcodecs raises RuntimeError/ValueError on corrupt frames
            raise DataError(f"{self._where(col, unit, fi)}: cannot decode chunk: {e}") from None
        if len(data) != nbytes:
            raise DataError(f"{self._where(col, unit, fi)}: decoded {len(data)} bytes, expected {nbytes}")
        return data

    def offsets(self, col: Column, unit: int) -> np.ndarray:
        """The unit's offsets (one more than its rows), checked to lie within its values."""
        loc = self.m.layout["columns"][col.name]
        ur, n = int(self.m.layout["unit_rows"]), int(self.m.unit_rows[unit])
        a, b = int(loc["start"][unit]), int(loc["start"][unit + 1])
        got = np.frombuffer(self._chunk(col, unit, loc["offsets"], unit, self._offsets_dec, ur * 8), "<i8")
        out = np.empty(n + 1, np.int64)
        out[:n], out[n] = got[:n], b
        tail = got[n] if n < ur else b
        if unit + 2 == len(loc["start"]) and n == ur and len(loc["offsets"]["file"]) > unit + 1:
            tail = np.frombuffer(self._chunk(col, unit, loc["offsets"], unit + 1, self._offsets_dec, ur * 8), "<i8")[0]
        if out[0] != a or tail != b or (out[1:] < out[:-1]).any():
            fi = int(loc["offsets"]["file"][unit])
            raise DataError(f"{self._where(col, unit, fi)}: offsets do not lie within the unit's values "
                            f"{a}:{b} (data corrupt)")
        return out

    def values(self, col: Column, unit: int, a: int, b: int) -> np.ndarray:
        """Values ``a:b`` of ``col`` (the rows of ``unit`` they belong to name it in errors).

        Uncompressed chunks wanted whole are read straight into place (adjacent ones in one read)
        and checked there; the others go through the scratch buffer, as compressed ones must."""
        loc = self.m.layout["columns"][col.name]["values"]
        chunk, isz = int(loc["chunk"]), col.item_nbytes
        dec = self._values_dec[col.name]
        if dec is None and self.verify and b > a:
            whole = self._whole_chunks(col, unit, loc, a // chunk, -(-b // chunk))
            if whole is not None:
                out = whole[a - a // chunk * chunk:b - a // chunk * chunk]
                return out if out.dtype == col.np_dtype else out.astype(col.np_dtype)
        out = np.empty((b - a, *col.shape), col.np_dtype.newbyteorder("<"))
        flat = out.reshape(-1).view(np.uint8)
        runs: list[list[int]] = []  # [file, offset, where in out, bytes]: ranges of adjacent chunks merged
        placed: list[tuple[int, int, int]] = []  # (chunk, where in out, bytes): read in place, checked after
        for k in range(a // chunk, -(-b // chunk)):
            lo, hi = max(a, k * chunk), min(b, (k + 1) * chunk)  # values of chunk k wanted
            at, n, skip = (lo - a) * isz, (hi - lo) * isz, (lo - k * chunk) * isz
            if dec is not None or (self.verify and n != chunk * isz):  # a copy out of the decoded chunk
                flat[at:at + n] = np.frombuffer(self._chunk(col, unit, loc, k, dec, chunk * isz), np.uint8, n, skip)
                continue
            if self.verify:
                placed.append((k, at, n))
            fi, off = int(loc["file"][k]), int(loc["offset"][k]) + skip
            if runs and runs[-1][0] == fi and runs[-1][1] + runs[-1][3] == off:
                runs[-1][3] += n
            else:
                runs.append([fi, off, at, n])
        for fi, off, at, n in runs:
            self.files.read_into(memoryview(flat[at:at + n]), fi, off,
                                 lambda fi=fi: self._where(col, unit, fi))  # type: ignore[misc]
        for k, at, n in placed:
            self._check(col, unit, loc, k, flat[at:at + n])
        return out if out.dtype == col.np_dtype else out.astype(col.np_dtype)

    def _whole_chunks(self, col: Column, unit: int, loc: dict[str, Any], k0: int, k1: int) -> np.ndarray | None:
        """Uncompressed inner chunks ``k0:k1`` of ``col``'s values, read with one ``pread`` and
        checked with one call (``chunk_checksums``), where they follow each other in one file (as
        a unit's do, but at a shard's end); None where they do not.  Checked values must be read
        as whole chunks anyway: this reads the two a unit shares with its neighbours once each,
        into place, not through the scratch buffer, and pays the Python of a chunk once a unit."""
        fis, offs = loc["file"][k0:k1], loc["offset"][k0:k1]
        fi, cb = int(fis[0]), int(loc["chunk"]) * col.item_nbytes
        if k1 - k0 > 1 and ((fis[1:] != fi).any() or (offs[1:] - offs[:-1] != cb).any()):
            return None
        whole = np.empty(((k1 - k0) * int(loc["chunk"]), *col.shape), col.np_dtype.newbyteorder("<"))
        flat = whole.reshape(-1).view(np.uint8)
        self.files.read_into(memoryview(flat), fi, int(offs[0]), lambda: self._where(col, unit, fi))
        if chunk_checksums(self._checksum_name, flat, cb) != loc["crc32"][k0:k1].tolist():
            raise DataError(f"{self._where(col, unit, fi)}: checksum mismatch (data corrupt)")
        return whole

    def read(self, col: Column, unit: int, lo: int, hi: int) -> Ragged:
        """Rows ``lo:hi`` of ``unit`` of ragged column ``col``."""
        offs = self.offsets(col, unit)
        a, b = int(offs[lo]), int(offs[hi])
        return Ragged(self.values(col, unit, a, b), offs[lo:hi + 1] - a)
