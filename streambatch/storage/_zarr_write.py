"""Writing Zarr v3 shard files directly (no zarr-python): the writer of ``zarr_store``."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..io.checksum import DEFAULT_CHECKSUM, checksum_fn
from ..schema import Column
from ._zarr_meta import chunk_key, compressor, metadata_documents, shard_index
from ._zarr_ragged import RaggedWriter

__all__ = ["Writer", "units_per_shard", "compressor"]


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
    they return.  The one starting at unit 0 writes the Zarr metadata.  A ragged column is two
    arrays written by a ``RaggedWriter`` (``_zarr_ragged``), whose data takes one writer from unit 0.
    """

    def __init__(self, folder: Path, columns: tuple[Column, ...], rows: int, unit_rows: int,
                 shard_bytes: int, codec: str, first_unit: int = 0) -> None:
        self.folder = Path(folder)
        self.columns = columns
        self.unit_rows = unit_rows
        self.codec = codec
        self.units_per_shard = units_per_shard(columns, rows, unit_rows, shard_bytes)
        if first_unit % self.units_per_shard or (first_unit and any(c.ragged for c in columns)):
            raise ValueError(f"a Zarr writer starts at a shard's first unit (at unit 0 for variable-length "
                             f"columns), not unit {first_unit}")
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
        self.loc: dict[str, dict[str, Any]] = {
            c.name: {"file": [], "offset": [], "size": [], "crc32": []} for c in columns}
        self._ragged = {c.name: RaggedWriter(self.folder, c, unit_rows, self.units_per_shard, shard_bytes, codec,
                                             self.files) for c in columns if c.ragged}
        self.compressors = {c.name: compressor(codec, c.np_dtype.itemsize) for c in columns}
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
            if c.ragged:
                size, c32 = self._ragged[c.name].write_unit(data[c.name])  # type: ignore[arg-type]
                total += size
                crc = zlib.crc32(c32.to_bytes(4, "little"), crc)
                continue
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
        short).  Uncompressed, each column's units within a shard go out in one write, not a call
        per unit (docs/PERFORMANCE.md, Zarr writes)."""
        ur = self.unit_rows
        n = len(data[self.columns[0].name])
        whole = n // ur
        lo = 0
        if self.codec == "none" and not self._ragged:
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
        f = self._handles.pop(col.name, None)
        if f is None:
            return
        f.write(shard_index(self._index.pop(col.name), self.units_per_shard))
        f.close()

    def finish(self) -> tuple[list[str], dict[str, Any], list[int], list[int]]:
        for c in self.columns:
            self._close_shard(c)
        for name, rw in self._ragged.items():  # the last chunks, and the arrays' zarr.json documents
            self.loc[name], docs, size, c32 = rw.finish()
            for rel, doc in docs:
                (self.folder / rel).parent.mkdir(parents=True, exist_ok=True)
                self.metadata[rel] = _write_json(self.folder / rel, doc)
            if size:
                self.stored[-1] += size
                self.checksums[-1] = zlib.crc32(c32.to_bytes(4, "little"), self.checksums[-1])
        layout: dict[str, Any] = {"unit_rows": self.unit_rows, "units_per_shard": self.units_per_shard,
                                  "checksum": DEFAULT_CHECKSUM, "columns": self.loc}
        if self.metadata:  # the first part's writer (combine keeps its layout's fields)
            layout["metadata_crc32c"] = self.metadata
        if self._ragged:
            layout["ragged_nbytes"] = {name: rw.nbytes for name, rw in self._ragged.items()}
        return self.files, layout, self.stored, self.checksums

    @staticmethod
    def combine(parts: list[tuple[list[str], dict[str, Any], list[int], list[int]]]
                ) -> tuple[list[str], dict[str, Any], list[int], list[int]]:
        """What :meth:`finish` returns for the whole dataset, from the parts' results in unit order."""
        if len(parts) == 1:  # also every dataset with ragged columns (one writer)
            return parts[0]
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
        for rw in self._ragged.values():
            rw.abort()
        for f in self._handles.values():
            try:
                f.close()
            except OSError:  # a full disk fails the flush again; the converter removes the folder
                pass
        self._handles.clear()
