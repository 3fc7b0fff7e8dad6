"""Zarr v3 storage: one sharded array per column, read and written directly.

Layout of a dataset folder::

    ds.zarr/
      zarr.json                 the Zarr group
      x/zarr.json               array (rows, 128) float32, shards of S rows, inner chunks of C rows
      x/c/0/0  x/c/1/0 ...      shard files: C-row inner chunks back to back, index at the end
      tokens/zarr.json          a variable-length column: a group of two arrays,
      tokens/offsets/...        int64 (rows + 1,) and
      tokens/values/...         the values of every row, one after another (``_zarr_ragged``)
      _streambatch.json         the manifest (written last)

An inner chunk is the shuffle unit.  Any Zarr v3 reader (``zarr.open_group``) reads the
data; streambatch itself reads chunk bytes with ``os.pread`` at offsets recorded in the
manifest and decodes them with numcodecs, which is about ten times faster than the
zarr-python API and scales across threads (../shared/STORAGE.md).  The writer is ``_zarr_write``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
from numpy.typing import NDArray

from .._fields import int_array, safe_relpath
from ..errors import DataError, ManifestError
from ..ragged import Ragged
from ..io.checksum import CHECKSUMS, checksum_fn
from .._kernels import crc_ranges, native, read_checked
from ..io.files import SPAN_BYTES, ByteRanges
from ..manifest import Manifest
from ..schema import Column
from ._piece_reads import PieceReads
from ._zarr_check import check_zarr_files
from ._zarr_meta import chunk_locations
from ._zarr_ragged import RaggedReader, validate_ragged
from ._zarr_ragged_group import pieces_ok, read_pieces
from ._zarr_write import Writer, compressor, units_per_shard
from .base import StorageFormat

__all__ = ["Reader", "Writer", "row_places", "validate_layout", "FORMAT"]

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
        out["columns"][c.name] = validate_ragged(loc, layout, n_units, n_files, c, unit_rows, codec, cw) if c.ragged \
            else chunk_locations(loc, n_units, n_files, chunk_rows * c.row_nbytes, codec, cw)
    return out


def _file_checks(value: Any, where: str) -> dict[str, list[int]]:
    """``{path: [size, CRC-32C]}`` of files checked whole, each path inside the dataset folder."""
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: must map file paths to [size, CRC-32C]")
    for rel, check in value.items():
        safe_relpath(Path("."), rel, where)
        int_array(check, 2, f"{where}[{rel!r}]", hi=1 << 40)
    return value


def row_places(manifest: Manifest, name: str) -> tuple[NDArray[np.int64], NDArray[np.int64]] | None:
    """``StorageFormat.row_places``: an uncompressed chunk holds its unit's rows from its first byte on."""
    if manifest.codec != "none" or manifest.column(name).ragged:
        return None
    loc = manifest.layout["columns"][name]
    return np.asarray(loc["file"], np.int64), np.asarray(loc["offset"], np.int64)


class Reader(PieceReads):
    """Direct reader: ``os.preadv`` of recorded byte ranges, numcodecs decode, no zarr-python.

    An uncompressed unit is read straight into the caller's buffer (only the rows asked
    for), with ``pread``, not a per-unit ``mmap`` (docs/PERFORMANCE.md, Zarr reads).
    """

    def __init__(self, manifest: Manifest, verify: bool = False, remote: Any = None) -> None:
        self.manifest = manifest
        self.verify = verify
        self._remote = remote  # RemoteFiles for a dataset at a URL: ranged requests instead of pread
        self._files = ByteRanges(manifest, remote)
        self._decoders = {c.name: compressor(manifest.codec, c.np_dtype.itemsize) for c in manifest.columns}
        self._unit_rows = manifest.layout["unit_rows"]
        self._checksum = checksum_fn(manifest.layout.get("checksum", "crc32"))
        self._ragged = RaggedReader(manifest, self._files, verify)

    def _where(self, col: Column, unit: int, file_index: int) -> str:
        return (f"dataset {self.manifest.root}, column {col.name!r}, unit {unit}, "
                f"file {self.manifest.files[file_index]}")

    def _pread_into(self, buf: memoryview, file_index: int, offset: int, col: Column, unit: int) -> None:
        self._files.read_into(buf, file_index, offset, lambda: self._where(col, unit, file_index))

    def _bytes(self, file_index: int, offset: int, size: int, col: Column, unit: int) -> memoryview:
        """The bytes, in this thread's scratch buffer (valid until its next read)."""
        return self._files.read_scratch(file_index, offset, size, lambda: self._where(col, unit, file_index))

    def advise(self, pieces: Any, names: list[str]) -> None:
        """Hint the kernel to read the rows ``lo:hi`` of each ``(unit, lo, hi, buffer row)`` piece of a
        window, an int64 table (``ByteRanges.advise``: only where they are not cached).  Called
        before the window's reads are queued."""
        if not len(pieces):
            return
        arr = np.asarray(pieces, dtype=np.int64)
        units, lo, hi = arr[:, 0], arr[:, 1], arr[:, 2]
        fis, starts, sizes = [], [], []
        for name in names:
            col = self.manifest.column(name)
            if col.ragged:  # read whole by read_rows, in a few ranges
                continue
            loc = self.manifest.layout["columns"][name]
            fis.append(loc["file"][units])
            if self._decoders[name] is not None:  # compressed: the whole chunk
                starts.append(loc["offset"][units])
                sizes.append(loc["size"][units])
            else:
                starts.append(loc["offset"][units] + lo * col.row_nbytes)
                sizes.append((hi - lo) * col.row_nbytes)
        if fis:
            self._files.advise(*(np.concatenate(x).astype(np.int64, copy=False) for x in (fis, starts, sizes)),
                               lambda: f"dataset {self.manifest.root}")

    def check_units(self, units: NDArray[np.int64], pieces: NDArray[np.int64], bufs: dict[str, np.ndarray],
                    sums: Any) -> bool | None:
        """Read ``units`` (sorted, distinct) whole, check each chunk's stored CRC-32C, copy the rows of
        ``pieces`` (rows ``(unit, lo, hi, buffer row)`` of those units) into the window buffers
        ``bufs`` and record each unit's part sums in ``sums`` (``loader.sums.PieceSums``, sums before
        flags): per column, ``_kernels.read_checked`` for as many chunks as this thread's scratch
        holds and ``crc_ranges`` for their parts, in place of a Python read and check per unit and
        column.  False where a chunk could not be read whole or its checksum differs (the caller
        checks the units one by one, which says what is wrong); None where this path does not
        apply (remote, compressed, another checksum, no C module)."""
        crc = sums.crc
        if (not self.verify or self._files.remote is not None or crc is None or not native()
                or self.manifest.layout.get("checksum") != "crc32c" or bufs.keys() != set(sums.names)
                or any(self._decoders[n] is not None or not b.flags.c_contiguous for n, b in bufs.items())):
            return None
        rows = self.manifest.unit_rows[units]
        parts = -(-rows // sums.cut)
        for name, buf in bufs.items():
            loc = self.manifest.layout["columns"][name]
            rb = self.manifest.column(name).row_nbytes
            chunk = self._unit_rows * rb
            if (loc["size"][units] != chunk).any():
                return None  # a stored size that is not an uncompressed chunk's: read_into names it
            try:
                fds = self._files.descriptors(loc["file"][units], lambda k: self._where(
                    self.manifest.column(name), int(units[k]), int(loc["file"][units[k]])))[0]
            except DataError:
                return False
            scratch = np.frombuffer(self._files.scratch(max(SPAN_BYTES, chunk)), np.uint8)
            step = max(1, scratch.nbytes // chunk)
            flat = buf.reshape(-1).view(np.uint8)
            for a in range(0, len(units), step):
                b = min(len(units), a + step)
                mine = (pieces[:, 0] >= units[a]) & (pieces[:, 0] <= units[b - 1])
                at = np.searchsorted(units[a:b], pieces[mine, 0]) * chunk
                lo, hi = pieces[mine, 1], pieces[mine, 2]
                if read_checked(*crc, fds[a:b], loc["offset"][units[a:b]], chunk, loc["crc32"][units[a:b]], scratch,
                                at + lo * rb, (hi - lo) * rb, flat, pieces[mine, 3] * rb) >= 0:
                    return False
                n = parts[a:b]
                rep = np.repeat(np.arange(b - a), n)
                k = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
                sizes = np.minimum(sums.cut, rows[a:b][rep] - k * sums.cut) * rb
                sums.sums[name][sums.first[units[a:b]][rep] + k] = crc_ranges(*crc, scratch, rep * chunk + k * sums.cut * rb,
                                                                              sizes)
        for u in units.tolist():
            sums.known[sums.first[u]:sums.first[u + 1]] = True
        return True

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

    def _row_places(self, name: str) -> tuple[NDArray[np.int64], NDArray[np.int64]] | None:
        return row_places(self.manifest, name)

    def _places(self, name: str, units: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]] | None:
        if (self.manifest.layout["columns"][name]["size"][units] != self._unit_rows *
                self.manifest.column(name).row_nbytes).any():
            return None  # a stored size that is not an uncompressed chunk's: read_into names it
        return super()._places(name, units)

    def read_ragged_pieces(self, pieces: np.ndarray, bufs: dict[str, tuple[np.ndarray, ...]],
                           name: Callable[[int], None], scratch: int = 0) -> NDArray[np.bool_]:
        """Pieces (rows ``(unit, lo, hi, window position)``) of ragged columns into a window's
        buffers (``bufs``: column -> its values, starts, ends and where each piece's values
        begin), those of them that ``_zarr_ragged_group.read_pieces`` reads, as one group; which pieces
        were read (the others are left to ``read_rows``).  ``name(k)``, ``scratch``: see there."""
        cols = [self.manifest.column(n) for n in bufs]
        ok = np.ones(pieces.shape[0], bool)
        for c in cols:
            ok &= pieces_ok(self._ragged, c, pieces[:, 0])
        if ok.any():
            idx = np.flatnonzero(ok)
            for c in cols:
                values, starts, ends, first = bufs[c.name]
                read_pieces(self._ragged, c, pieces[idx], first[idx], values, starts, ends,
                            lambda k: name(int(idx[k])), scratch)
        return ok

    def read_rows(self, unit: int, lo: int, hi: int, names: list[str]) -> dict[str, Any]:
        """Rows ``lo:hi`` of columns ``names`` of ``unit``: numpy arrays, and a ``Ragged`` for a
        ragged column (its offsets and values read as byte ranges, checked with ``verify``).
        Raises ``DataError`` naming the column, unit and file."""
        rows = int(self.manifest.unit_rows[unit])
        if not 0 <= lo < hi <= rows:
            raise ValueError(f"rows {lo}:{hi} outside unit {unit} of {rows} rows")
        cols = [self.manifest.column(n) for n in names]
        out: dict[str, Any] = {c.name: np.empty((hi - lo, *c.shape), c.np_dtype) for c in cols if not c.ragged}
        if out:
            self.read_into(unit, lo, hi, out)
        ragged: dict[str, Ragged] = {c.name: self._ragged.read(c, unit, lo, hi) for c in cols if c.ragged}
        return {n: out[n] if n in out else ragged[n] for n in names}

    def verify_unit(self, unit: int) -> None:
        for col in self.manifest.columns:
            if col.ragged:  # every chunk the unit's rows touch, checked and decoded
                self._ragged.read(col, unit, 0, int(self.manifest.unit_rows[unit]))
                continue
            fi, off, size = self._stored_range(col, unit)
            raw = self._bytes(fi, off, size, col, unit)
            self._check(raw, col, unit, fi)
            self._decode_into(raw, col, unit, fi, 0, 0, None)

    def close(self) -> None:
        self._files.close()


class _Rows:
    """Rows of a streambatch Zarr dataset through the zarr-python API (the naive baseline)."""

    def __init__(self, root: Path, names: list[str]) -> None:
        import zarr

        g = zarr.open_group(str(root), mode="r")
        self.arrays = {n: g[n] for n in names}
        self.n = next(iter(self.arrays.values())).shape[0]

    def __len__(self) -> int:
        return int(self.n)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {k: np.asarray(a[i]) for k, a in self.arrays.items()}


class ZarrFormat(StorageFormat):
    """Sharded Zarr v3: an inner chunk per unit, a shard file per column every ``shard_bytes``."""

    name = "zarr"
    reader_class = Reader
    writer_class = Writer

    def default_threads(self, cores: int) -> int:
        return min(8, cores)  # a shard per thread: reads, statistics and writes on every core

    def partial_reads(self, manifest: Manifest, names: list[str]) -> bool:
        # an uncompressed chunk's rows are byte ranges; a ragged column's unit is read whole
        return manifest.codec == "none" and not any(manifest.column(n).ragged for n in names)

    def row_places(self, manifest: Manifest, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        return row_places(manifest, name)

    def units_per_file(self, columns: tuple[Column, ...], rows: int, unit_rows: int, shard_bytes: int) -> int:
        if any(c.ragged for c in columns):  # one writer: a unit's values start where the last one's end
            return max(1, -(-rows // unit_rows))
        return units_per_shard(columns, rows, unit_rows, shard_bytes)

    def validate_layout(self, layout: dict[str, Any], n_units: int, n_files: int, columns: tuple[Column, ...],
                        where: str, *, codec: str, unit_rows: np.ndarray | None) -> dict[str, Any]:
        return validate_layout(layout, n_units, n_files, columns, where, codec=codec, unit_rows=unit_rows)

    def check_files(self, checker: Any) -> str:
        return check_zarr_files(checker)

    def library_rows(self, manifest: Manifest, names: list[str]) -> Any:
        return _Rows(manifest.root, names)


FORMAT = ZarrFormat()
