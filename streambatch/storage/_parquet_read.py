"""The Parquet reader: units read in place at the manifest's value offsets where it has them
(``_parquet_layout``), decoded by pyarrow otherwise.

In place (uncompressed datasets; every column of those written since the tensor encoding is
recorded, and of the own page writer's before): a whole unit is one vectored read, as a Zarr
chunk is, that puts each requested column's values straight into the caller's arrays and the
rest of the row group (page headers, unrequested columns) into a scratch buffer, the checksum
running over the pieces in file order; 8- and 16-bit integers (stored as INT32) and booleans
(bits) are read into the scratch buffer and converted.  Rows ``lo:hi`` of a unit are sliced
out of its checked row group bytes, or (without ``verify``) read alone, column by column.
Remote datasets take the same ranged reads.

pyarrow decodes the rest (compressed datasets, columns without offsets, and every
``FixedSizeList`` dataset written by pyarrow before): ``read_row_group`` on a ``ParquetFile``
per thread and file, copied into the caller's arrays.  docs/PERFORMANCE.md, "Parquet read path".
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..errors import DataError
from ..io.checksum import checksum_fn, extend_fn
from ..io.files import ByteRanges
from ..io.remote import RangeFile
from ..manifest import Manifest
from ..schema import Column
from ._arrow_schema import binary_values, ragged_rows
from ._parquet_layout import RAW, decode, stored_as, stored_nbytes, value_range
from ._piece_reads import PieceReads
from .base import piece_units

__all__ = ["Reader"]


class Reader(PieceReads):
    """Reads a Parquet dataset's units (see the module docstring); pyarrow's files are opened
    once per thread.  Pieces of columns stored plain, as they are in memory, are read as byte
    ranges like Zarr's and Arrow's (``PieceReads``: a window's pieces in one C call a column)."""

    def __init__(self, manifest: Manifest, verify: bool = False, remote: Any = None) -> None:
        self.manifest = manifest
        self.verify = verify
        self._local = threading.local()
        self._all: list[dict[int, Any]] = []
        self._lock = threading.Lock()
        lay = manifest.layout
        self._checksum = checksum_fn(lay.get("checksum", "crc32"))
        self._extend = extend_fn(lay.get("checksum", "crc32"))
        self._remote = remote  # RemoteFiles for a dataset at a URL: ranged requests instead of files
        self._files = ByteRanges(manifest, remote)
        offsets = lay.get("values", {})
        # columns read in place, in schema order: name -> (column, how stored, offset in each unit)
        self._inplace: dict[str, tuple[Column, str, np.ndarray]] = {
            c.name: (c, stored_as(c, lay.get("tensors")) or RAW, offsets[c.name])
            for c in manifest.columns if c.name in offsets}
        # per unit length, each in-place column's stored bytes (units mostly share a length)
        self._stored_sizes: dict[int, list[int]] = {}
        self._nbytes = {c.name: c.row_nbytes for c in manifest.columns}
        self._row_nbytes = sum(self._nbytes.values())

    def _row_places(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Each unit's file and the offset of its first value of column ``name``, where the values
        lie as numpy holds them, row after row (``PieceReads``); None for the others."""
        got = self._inplace.get(name)
        if got is None or got[1] != RAW:
            return None
        lay = self.manifest.layout
        return (np.asarray(lay["file"], np.int64),
                np.asarray(lay["offset"], np.int64) + np.asarray(got[2], np.int64))

    def _where(self, unit: int, fi: int, col: str | None = None) -> str:
        c = f", column {col!r}" if col else ""
        return f"dataset {self.manifest.root}{c}, unit {unit}, file {self.manifest.files[fi]}"

    def _file(self, fi: int, unit: int) -> Any:
        """This thread's ``ParquetFile`` of file ``fi``.  Not memory-mapped: a file truncated
        under a map kills the process (SIGBUS) where a read raises."""
        import pyarrow.parquet as pq

        files = getattr(self._local, "files", None)
        if files is None:
            files = self._local.files = {}
            with self._lock:
                self._all.append(files)
        pf = files.get(fi)
        if pf is None:
            try:
                pf = pq.ParquetFile(self._source(fi), pre_buffer=self._remote is not None)
            except OSError as e:
                raise DataError(f"{self._where(unit, fi)}: cannot open: {e}") from None
            except Exception as e:  # pyarrow raises ArrowInvalid on a broken footer
                raise DataError(f"{self._where(unit, fi)}: not a readable Parquet file: {e}") from None
            files[fi] = pf
        return pf

    def _source(self, fi: int) -> Any:
        """What pyarrow opens: the local path, or a ranged-read file object for a URL."""
        if self._remote is None:
            return str(self.manifest.path_of(fi))
        return RangeFile(self._remote, self.manifest.files[fi])

    def _stored_range(self, unit: int) -> tuple[int, int, int]:
        """``(file index, offset, size)`` of the unit's row group."""
        lay = self.manifest.layout
        return int(lay["file"][unit]), int(lay["offset"][unit]), int(lay["size"][unit])

    def _row_group(self, unit: int) -> memoryview:
        """The unit's row group bytes, in this thread's scratch buffer (``ByteRanges.scratch``)."""
        fi, off, size = self._stored_range(unit)
        return self._files.read_scratch(fi, off, size, lambda: self._where(unit, fi))

    def _check(self, unit: int) -> memoryview:
        """The unit's row group bytes (see ``_row_group``), checked against the manifest's checksum."""
        raw = self._row_group(unit)
        if self._checksum(raw) != int(self.manifest.layout["crc32"][unit]):
            raise self._corrupt(unit)
        return raw

    def _corrupt(self, unit: int) -> DataError:
        """The error for a unit whose bytes fail its checksum, naming the damaged column if the
        pages' own CRCs tell which."""
        fi = int(self.manifest.layout["file"][unit])
        bad = self._damaged_columns(unit, fi)
        if len(bad) == 1:
            where = self._where(unit, fi, bad[0])
        else:  # no page checksums (older datasets) or damage outside the column data
            names = bad or [c.name for c in self.manifest.columns]
            where = (f"dataset {self.manifest.root}, column one of {', '.join(map(repr, names))}, unit {unit}, "
                     f"file {self.manifest.files[fi]}")
        return DataError(f"{where}: checksum mismatch (data corrupt)")

    def _damaged_columns(self, unit: int, fi: int) -> list[str]:
        """The columns of ``unit`` whose pages fail Parquet's page CRC or do not decode."""
        import pyarrow.parquet as pq

        rg = int(self.manifest.layout["row_group"][unit])
        bad = []
        try:
            pf = pq.ParquetFile(self._source(fi), page_checksum_verification=True)
        except Exception:  # noqa: BLE001 - a broken footer: the read that follows names it
            return []
        with pf:
            for c in self.manifest.columns:
                try:
                    pf.read_row_group(rg, columns=[c.name], use_threads=False)
                except Exception:  # noqa: BLE001 - any failure marks the column
                    bad.append(c.name)
        return bad

    def advise(self, pieces: Any, names: list[str]) -> None:
        """Hint the kernel to read what a window's ``(unit, lo, hi, buffer row)`` pieces need
        (``ByteRanges.advise``: only where they are not cached).  Columns stored in place: each
        piece's rows of each, as they are read (a piece of a quarter of a unit no longer reads the
        whole row group from a cold disk: docs/PERFORMANCE.md, Parquet pieces).  Else the
        row groups of the pieces' units, only when the requested columns are most of a row (a few
        columns are read on their own, and whole row groups would read the others from disk too)."""
        where = lambda: f"dataset {self.manifest.root}"  # noqa: E731
        arr = np.asarray(pieces, dtype=np.int64).reshape(-1, 4)
        if len(arr) and names and all(n in self._inplace for n in names):
            lay = self.manifest.layout
            whole = (arr[:, 1] == 0) & (arr[:, 2] == self.manifest.unit_rows[arr[:, 0]])
            if whole.any():  # a unit read whole (checked, or a piece of its own): its row group
                self._files.advise_ranges([self._stored_range(u) for u in arr[whole, 0].tolist()], where)
            u, lo, hi = arr[~whole, 0], arr[~whole, 1], arr[~whole, 2]
            fi, base = np.asarray(lay["file"], np.int64)[u], np.asarray(lay["offset"], np.int64)[u]
            ranges = []
            for name in names:
                c, how, at_unit = self._inplace[name]
                start, end, _ = value_range(c, how, lo, hi)  # elementwise on the pieces' rows
                ranges.append((fi, base + np.asarray(at_unit, np.int64)[u] + start, end - start))
            self._files.advise(*(np.concatenate(x) for x in zip(*ranges)), where)
        elif self._mostly(dict.fromkeys(names)):
            self._files.advise_ranges([self._stored_range(u) for u in piece_units(pieces)], where)

    def _mostly(self, out: dict[str, Any]) -> bool:
        """Whether the columns of ``out`` hold at least half of a row's bytes (then reading the
        whole row group in one request beats one request per column)."""
        return 2 * sum(self._nbytes[n] for n in out) >= self._row_nbytes

    def read_into(self, unit: int, lo: int, hi: int, out: dict[str, np.ndarray]) -> None:
        rows = int(self.manifest.unit_rows[unit])
        if not 0 <= lo < hi <= rows:
            raise ValueError(f"rows {lo}:{hi} outside unit {unit} of {rows} rows")
        if lo == 0 and hi == rows and (self.verify or self._mostly(out)) and self._read_direct(unit, rows, out):
            return
        rest = {n: dst for n, dst in out.items() if n not in self._inplace}
        raw = self._check(unit) if self.verify else None
        if len(rest) < len(out):
            self._slice(unit, lo, hi, {n: dst for n, dst in out.items() if n in self._inplace}, raw)
        if rest:
            self._decode(unit, lo, hi, rest)

    def _read_direct(self, unit: int, rows: int, out: dict[str, np.ndarray]) -> bool:
        """A whole unit in place: one vectored read puts each requested column's values straight
        into ``out`` (those stored otherwise than numpy holds them into the scratch buffer, then
        converted) and the rest of the row group into the scratch buffer; the checksum runs over
        the pieces in file order.  False (nothing read) if a column of ``out`` has no offsets or
        ``out`` is not contiguous."""
        if not all(name in self._inplace and dst.flags.c_contiguous for name, dst in out.items()):
            return False
        fi, off, size = self._stored_range(unit)
        sizes = self._stored_sizes.get(rows)
        if sizes is None:
            sizes = self._stored_sizes[rows] = [stored_nbytes(c, how, rows) for c, how, _ in self._inplace.values()]
        scratch = self._files.scratch(size)
        pieces: list[memoryview] = []
        later: list[tuple[str, memoryview, np.ndarray]] = []  # (how, stored bytes, destination)
        pos = used = 0
        for (name, (c, how, at_unit)), n in zip(self._inplace.items(), sizes):
            dst = out.get(name)
            if dst is None:  # read with the gap, into the scratch buffer
                continue
            at = int(at_unit[unit])
            if at < pos or at + n > size:  # not in schema order: the manifest was edited; read otherwise
                return False
            if at > pos:
                pieces.append(scratch[used:used + at - pos])
                used += at - pos
            if how == RAW:
                pieces.append(memoryview(dst.reshape(-1).view(np.uint8)))
            else:
                pieces.append(scratch[used:used + n])
                later.append((how, pieces[-1], dst))
                used += n
            pos = at + n
        if pos < size:
            pieces.append(scratch[used:used + size - pos])
        self._files.read_vector(pieces, fi, off, lambda: self._where(unit, fi))
        if self.verify:
            crc = 0
            for piece in pieces:
                crc = self._extend(crc, piece)
            if crc != int(self.manifest.layout["crc32"][unit]):
                raise self._corrupt(unit)
        for how, stored, dst in later:
            decode(how, stored, 0, dst)
        return True

    def _slice(self, unit: int, lo: int, hi: int, out: dict[str, np.ndarray], raw: memoryview | None) -> None:
        """Rows ``lo:hi`` of in-place columns: out of ``raw`` (the unit's row group bytes) when
        given or, for a remote dataset, fetched when the columns are most of a row (one request);
        otherwise each column's rows read alone, into place where they are stored as they are."""
        fi, base, _ = self._stored_range(unit)
        if raw is None and self._remote is not None and self._mostly(out):
            raw = self._row_group(unit)
        for name, dst in out.items():
            c, how, at_unit = self._inplace[name]
            start, end, skip = value_range(c, how, lo, hi)
            at = int(at_unit[unit])
            if raw is not None:
                decode(how, raw[at + start:at + end], skip, dst)
            elif how == RAW and dst.flags.c_contiguous:
                self._files.read_into(memoryview(dst.reshape(-1).view(np.uint8)), fi, base + at + start,
                                      lambda: self._where(unit, fi, name))
            else:
                decode(how, self._files.read(fi, base + at + start, end - start, lambda: self._where(unit, fi, name)),
                       skip, dst)

    def _table(self, unit: int, names: list[str]) -> Any:
        """The unit's row group, columns ``names``, decoded by pyarrow (``DataError`` naming it)."""
        rows = int(self.manifest.unit_rows[unit])
        lay = self.manifest.layout
        fi, rg = int(lay["file"][unit]), int(lay["row_group"][unit])
        try:
            table = self._file(fi, unit).read_row_group(rg, columns=names, use_threads=False)
        except DataError:
            raise
        except Exception as e:  # pyarrow raises OSError/ArrowInvalid on corrupt pages
            raise DataError(f"{self._where(unit, fi)}: cannot read row group {rg}: {e}") from None
        if table.num_rows != rows:
            raise DataError(f"{self._where(unit, fi)}: row group {rg} has {table.num_rows} rows, manifest says {rows}")
        return table

    def _decode(self, unit: int, lo: int, hi: int, out: dict[str, np.ndarray]) -> None:
        """Rows ``lo:hi`` of the columns of ``out``, decoded by pyarrow."""
        table = self._table(unit, list(out))
        for name, dst in out.items():
            self._fixed(unit, name, _rows(table, name, lo, hi), dst)

    def _fixed(self, unit: int, name: str, arr: Any, dst: np.ndarray) -> None:
        """The rows ``arr`` (an Arrow array) of fixed-size column ``name`` into ``dst``."""
        import pyarrow as pa

        c = self.manifest.column(name)
        if pa.types.is_fixed_size_binary(arr.type) and arr.type.byte_width == c.row_nbytes and c.shape:
            values = binary_values(arr, c.np_dtype, c.shape)
        elif pa.types.is_fixed_size_list(arr.type) == bool(c.shape):  # flattened; rows checked below
            values = (arr.flatten() if c.shape else arr).to_numpy(zero_copy_only=False)
        else:
            values = None
        if values is None or values.dtype != c.np_dtype or values.size != dst.size:
            fi = int(self.manifest.layout["file"][unit])
            raise DataError(f"{self._where(unit, fi, name)}: the file stores {arr.type}, not rows of "
                            f"{c.dtype}{list(c.shape)} (manifest and file disagree)")
        dst[...] = values.reshape(dst.shape)  # dst may be strided

    def release_unused(self) -> None:
        """Hand back to the system what pyarrow's allocator keeps from decoding (mimalloc holds
        freed pages: under a 32 MiB budget, 12 MiB of peak RSS; about 2 us a call)."""
        import pyarrow as pa

        pa.default_memory_pool().release_unused()

    def read_rows(self, unit: int, lo: int, hi: int, names: list[str]) -> dict[str, Any]:
        """Rows ``lo:hi`` of columns ``names`` of ``unit``, decoded by pyarrow: numpy arrays, and a
        ``Ragged`` over pyarrow's buffers for a ragged column.  With ``verify``, the unit's bytes
        are checked first.  Raises ``DataError`` naming the unit (and column)."""
        rows = int(self.manifest.unit_rows[unit])
        if not 0 <= lo < hi <= rows:
            raise ValueError(f"rows {lo}:{hi} outside unit {unit} of {rows} rows")
        if self.verify:
            self._check(unit)
        table = self._table(unit, names)
        out: dict[str, Any] = {}
        for name in names:
            c, arr = self.manifest.column(name), _rows(table, name, lo, hi)
            if not c.ragged:
                out[name] = np.empty((hi - lo, *c.shape), c.np_dtype)
                self._fixed(unit, name, arr, out[name])
                continue
            try:
                out[name] = ragged_rows(c, arr)
            except ValueError as e:
                fi = int(self.manifest.layout["file"][unit])
                raise DataError(f"{self._where(unit, fi, name)}: the file {e} (manifest and file disagree)") from None
        return out

    def verify_unit(self, unit: int) -> None:
        """Check the unit's bytes and have pyarrow decode every column; where the loader reads
        columns in place, also that the manifest's value offsets pick out what pyarrow decodes
        (the pages' own CRC only guards against accidental damage)."""
        raw = self._check(unit)
        rows = int(self.manifest.unit_rows[unit])
        if any(c.ragged for c in self.manifest.columns):
            self.read_rows(unit, 0, rows, [c.name for c in self.manifest.columns])
        decoded = {c.name: np.empty((rows, *c.shape), c.np_dtype) for c in self.manifest.columns if not c.ragged}
        self._decode(unit, 0, rows, decoded)
        for name, (c, how, at_unit) in self._inplace.items():
            start, end, _ = value_range(c, how, 0, rows)
            at = int(at_unit[unit])
            got = np.empty_like(decoded[name])
            if at + end > len(raw):
                ok = False
            else:
                decode(how, raw[at + start:at + end], 0, got)
                ok = got.tobytes() == decoded[name].tobytes()
            if not ok:
                fi = int(self.manifest.layout["file"][unit])
                raise DataError(f"{self._where(unit, fi, name)}: layout.values does not point at the column's "
                                f"values (manifest damaged)")

    def close(self) -> None:
        self._files.close()
        with self._lock:
            all_files, self._all = self._all, []
        for files in all_files:
            for pf in files.values():
                pf.close()
            files.clear()


def _rows(table: Any, name: str, lo: int, hi: int) -> Any:
    """Rows ``lo:hi`` of column ``name`` of an Arrow table, as one array."""
    chunked = table.column(name)
    return (chunked.chunk(0) if chunked.num_chunks == 1 else chunked.combine_chunks()).slice(lo, hi - lo)
