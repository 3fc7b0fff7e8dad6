"""Arrow IPC storage: uncompressed Arrow IPC files (Feather v2), one record batch per shuffle unit.

Layout of a dataset folder::

    ds.arrow/
      part-00000.arrow      record batches of C rows; a new file every --shard-bytes of rows
      part-00001.arrow
      _streambatch.json     the manifest (written last)

The files have the Arrow schema of ``_arrow_schema`` (scalars as plain fields, a tensor as a
non-null ``FixedSizeList`` with the row shape in field metadata ``streambatch.shape``) and no
compression, so ``pyarrow.ipc.open_file``, ``pyarrow.feather.read_table`` and pandas read them
without streambatch, memory-mapped without a copy.

The manifest's layout records per unit its record batch's byte range (message metadata and body)
and CRC-32C (``file``, ``batch``, ``offset``, ``size``, ``crc32``), and per unit and column where
the column's values start in the batch and their CRC-32C (``values``, ``values_crc32``); per file,
the size and CRC-32C of the bytes before the first batch (magic, schema message: ``head_size``,
``head_crc32c``) and after the last (end-of-stream marker, footer, magic: ``footer_size``,
``footer_crc32c``), which ``streambatch verify`` checks.

Reading parses no Arrow metadata: a whole unit is one vectored read of its batch that puts each
requested column's values straight into the caller's arrays (the rest into a scratch buffer), and
a slice of a unit reads only its rows; booleans (one bit a value) are unpacked.  With ``verify``
each column's values are checked against their CRC-32C; :meth:`Reader.verify_unit` checks the
whole batch and decodes it with pyarrow, which must find the values where the manifest says.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np

from .._fields import int_array
from ..errors import DataError, ManifestError
from ..io.checksum import DEFAULT_CHECKSUM, checksum_fn
from ..io.files import ByteRanges
from ..manifest import Manifest
from ..schema import Column
from ._arrow_check import check_arrow_files
from ._arrow_schema import arrow_schema
from ._arrow_write import Writer, units_per_file
from ._piece_reads import PieceReads
from .base import StorageFormat, piece_units

__all__ = ["Reader", "Writer", "row_places", "validate_layout", "FORMAT"]


def _nbytes(c: Column, rows: Any) -> Any:
    """Bytes of ``rows`` rows of ``c``'s values in a record batch (booleans: one bit a value)."""
    return -(-rows * c.row_items // 8) if c.np_dtype == np.bool_ else rows * c.row_nbytes


def validate_layout(layout: dict[str, Any], n_units: int, n_files: int, columns: tuple[Column, ...],
                    where: str, *, codec: str | None = None, unit_rows: np.ndarray | None = None) -> dict[str, Any]:
    """Check the Arrow layout: ``ManifestError`` unless every location is an in-range integer and
    each unit's column values lie in schema order inside its record batch."""
    w = f"{where}: layout"
    if layout.get("checksum") != DEFAULT_CHECKSUM:
        raise ManifestError(f"{w}.checksum must be {DEFAULT_CHECKSUM!r}, got {layout.get('checksum')!r}")
    max_size = 1 << 40
    if unit_rows is not None:  # the values, and at most a KiB of metadata and padding per column
        max_size = int(unit_rows.max()) * sum(c.row_nbytes for c in columns) + 1024 * len(columns) + (1 << 16)
    out: dict[str, Any] = {"checksum": DEFAULT_CHECKSUM}
    for k, lo, hi in (("file", 0, max(0, n_files - 1)), ("batch", 0, 1 << 31), ("offset", 8, 1 << 50),
                      ("size", 16, max_size), ("crc32", 0, 2**32 - 1)):
        out[k] = int_array(layout.get(k), n_units, f"{w}.{k}", lo=lo, hi=hi)
    for k, lo, hi in (("head_size", 16, 1 << 24), ("head_crc32c", 0, 2**32 - 1), ("footer_size", 16, 1 << 40),
                      ("footer_crc32c", 0, 2**32 - 1)):
        out[k] = int_array(layout.get(k), n_files, f"{w}.{k}", lo=lo, hi=hi)
    for key, hi in (("values", max_size), ("values_crc32", 2**32 - 1)):
        if not isinstance(layout.get(key), dict) or set(layout[key]) != {c.name for c in columns}:
            raise ManifestError(f"{w}.{key} must map each column to a list of one integer per unit")
        out[key] = {c.name: int_array(layout[key][c.name], n_units, f"{w}.{key}[{c.name!r}]", hi=hi) for c in columns}
    end = np.full(n_units, 8, np.int64)  # a batch starts with its continuation marker and metadata length
    for c in columns:
        at = out["values"][c.name]
        if np.any(at < end):
            raise ManifestError(f"{w}.values[{c.name!r}]: values overlap what comes before them in a record batch")
        end = at + (_nbytes(c, unit_rows) if unit_rows is not None else 0)
    if np.any(end > out["size"]):
        raise ManifestError(f"{w}.values: values run past the end of a unit's record batch")
    return out


def row_places(manifest: Manifest, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``StorageFormat.row_places``: a column's values lie in its record batch's body, row after
    row (booleans: bit-packed, so None)."""
    c = manifest.column(name)
    if c.np_dtype == np.bool_ or c.ragged:
        return None
    lay = manifest.layout
    return (np.asarray(lay["file"], np.int64),
            np.asarray(lay["offset"], np.int64) + np.asarray(lay["values"][name], np.int64))


class Reader(PieceReads):
    """Reads record batches by byte range (``ByteRanges``: ``preadv`` or ranged requests)."""

    def __init__(self, manifest: Manifest, verify: bool = False, remote: Any = None) -> None:
        self.manifest = manifest
        self.verify = verify
        self._files = ByteRanges(manifest, remote)
        lay = manifest.layout
        self._crc = checksum_fn(DEFAULT_CHECKSUM)
        self._columns = [(c, lay["values"][c.name]) for c in manifest.columns]  # schema order
        self._row_nbytes = sum(c.row_nbytes for c in manifest.columns)

    def _where(self, unit: int, col: str | None = None) -> str:
        c = f", column {col!r}" if col else ""
        return f"dataset {self.manifest.root}{c}, unit {unit}, file {self.manifest.files[self._range(unit)[0]]}"

    def _range(self, unit: int) -> tuple[int, int, int]:
        """``(file index, offset, size)`` of the unit's record batch."""
        lay = self.manifest.layout
        return int(lay["file"][unit]), int(lay["offset"][unit]), int(lay["size"][unit])

    def _row_places(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        return row_places(self.manifest, name)

    def _mostly(self, names: Any) -> bool:
        """Whether columns ``names`` hold at least half of a row's bytes (then one read of the
        whole batch beats a read per column)."""
        return 2 * sum(self.manifest.column(n).row_nbytes for n in names) >= self._row_nbytes

    def read_into(self, unit: int, lo: int, hi: int, out: dict[str, np.ndarray]) -> None:
        rows = int(self.manifest.unit_rows[unit])
        if not 0 <= lo < hi <= rows:
            raise ValueError(f"rows {lo}:{hi} outside unit {unit} of {rows} rows")
        if lo == 0 and hi == rows and self._mostly(out):
            self._read_batch(unit, rows, out)
            return
        fi, off, _ = self._range(unit)
        for c, at_unit in self._columns:
            dst = out.get(c.name)
            if dst is None:
                continue
            at = off + int(at_unit[unit])
            if self.verify or c.np_dtype == np.bool_:  # the column's values of the whole unit
                raw = self._files.read_scratch(fi, at, _nbytes(c, rows), lambda: self._where(unit, c.name))
                self._check_copy(unit, c, raw, rows, lo, hi, dst)
            elif dst.flags.c_contiguous:
                self._files.read_into(memoryview(dst.reshape(-1).view(np.uint8)), fi, at + lo * c.row_nbytes,
                                      lambda: self._where(unit, c.name))
            else:
                raw = self._files.read_scratch(fi, at + lo * c.row_nbytes, (hi - lo) * c.row_nbytes,
                                               lambda: self._where(unit, c.name))
                dst[...] = self._decode(c, raw, hi - lo)

    def _read_batch(self, unit: int, rows: int, out: dict[str, np.ndarray]) -> None:
        """A whole unit in one vectored read of its batch: each column of ``out`` that is C-contiguous
        and not boolean straight into place, the rest of the batch into the scratch buffer at the
        same offsets; then the values read aside are checked and copied."""
        fi, off, size = self._range(unit)
        scratch = self._files.scratch(size)
        pieces: list[memoryview] = []
        direct, aside = [], []
        pos = 0
        for c, at_unit in self._columns:
            dst = out.get(c.name)
            if dst is None:
                continue
            at = int(at_unit[unit])
            if not dst.flags.c_contiguous or c.np_dtype == np.bool_:
                aside.append((c, at, dst))
                continue
            pieces += [scratch[pos:at], memoryview(dst.reshape(-1).view(np.uint8))]
            direct.append((c, pieces[-1]))
            pos = at + dst.nbytes
        pieces.append(scratch[pos:size])
        self._files.read_vector(pieces, fi, off, lambda: self._where(unit))
        if self.verify:
            for c, piece in direct:
                self._check(unit, c, piece)
        for c, at, dst in aside:
            self._check_copy(unit, c, scratch[at:at + _nbytes(c, rows)], rows, 0, rows, dst)

    def _check(self, unit: int, c: Column, raw: Any) -> None:
        """``raw``, the values of column ``c`` in ``unit``, against their checksum (with ``verify``)."""
        if self._crc(raw) != int(self.manifest.layout["values_crc32"][c.name][unit]):
            raise DataError(f"{self._where(unit, c.name)}: checksum mismatch (data corrupt)")

    def _check_copy(self, unit: int, c: Column, raw: Any, rows: int, lo: int, hi: int, dst: np.ndarray) -> None:
        """Rows ``lo:hi`` of ``raw`` (the ``rows`` rows of ``c`` in ``unit``) into ``dst``, checked
        first with ``verify``."""
        if self.verify:
            self._check(unit, c, raw)
        dst[...] = self._decode(c, raw, rows)[lo:hi]

    @staticmethod
    def _decode(c: Column, raw: Any, rows: int) -> np.ndarray:
        """``rows`` rows of column ``c`` from its stored values ``raw``."""
        if c.np_dtype == np.bool_:
            bits = np.unpackbits(np.frombuffer(raw, np.uint8), count=rows * c.row_items, bitorder="little")
            return bits.view(np.bool_).reshape(rows, *c.shape)
        return np.frombuffer(raw, c.np_dtype.newbyteorder("<")).reshape(rows, *c.shape)

    def advise(self, pieces: Any, names: list[str]) -> None:
        """Hint the kernel to read the batches of a window's ``(unit, lo, hi, buffer row)`` pieces
        (``ByteRanges.advise``), or only the requested columns' values when they are a small part of a row."""
        units = piece_units(pieces)
        if self._mostly(names):
            ranges = [self._range(u) for u in units]
        else:
            at = {c.name: a for c, a in self._columns}
            ranges = [(fi, off + int(at[n][u]), _nbytes(self.manifest.column(n), int(self.manifest.unit_rows[u])))
                      for u in units for fi, off, _ in [self._range(u)] for n in names]
        self._files.advise_ranges(ranges, lambda: f"dataset {self.manifest.root}")

    def verify_unit(self, unit: int) -> None:
        """Check the whole record batch against its checksum (naming the damaged column when its
        values fail theirs), then decode it with pyarrow: it must hold the unit's rows, with each
        column's values where the manifest says."""
        fi, off, size = self._range(unit)
        raw = self._files.read_scratch(fi, off, size, lambda: self._where(unit))
        if self._crc(raw) != int(self.manifest.layout["crc32"][unit]):
            for c, at_unit in self._columns:
                at = int(at_unit[unit])
                self._check(unit, c, raw[at:at + _nbytes(c, int(self.manifest.unit_rows[unit]))])
            raise DataError(f"{self._where(unit)}: checksum mismatch in the record batch's metadata (data corrupt)")
        self._decode_check(unit, raw)

    def _decode_check(self, unit: int, raw: memoryview) -> None:
        import pyarrow as pa

        buf = pa.py_buffer(raw)
        try:
            msg = pa.ipc.read_message(buf)
            batch = pa.ipc.read_record_batch(msg, arrow_schema(self.manifest.columns))
            batch.validate(full=True)
        except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid/OSError/IOError on bad messages
            raise DataError(f"{self._where(unit)}: not a readable Arrow record batch: {e}") from None
        rows = int(self.manifest.unit_rows[unit])
        if batch.num_rows != rows or 8 + msg.metadata.size + msg.body.size != len(raw):
            raise DataError(f"{self._where(unit)}: record batch of {batch.num_rows} rows in "
                            f"{8 + msg.metadata.size + msg.body.size} bytes, manifest says {rows} rows in {len(raw)}")
        for (c, at_unit), col in zip(self._columns, batch.columns):
            values = (col.values if c.shape else col).buffers()[1]
            if values.address - buf.address != int(at_unit[unit]) or col.offset or values.size < _nbytes(c, rows):
                raise DataError(f"{self._where(unit, c.name)}: layout.values does not point at the column's values "
                                f"(manifest damaged)")

    def close(self) -> None:
        self._files.close()


class _Rows:
    """Random rows through pyarrow: each file memory-mapped and opened with ``pyarrow.ipc.open_file``,
    a row taken from its record batch (the naive baseline of ``streambatch bench``)."""

    def __init__(self, manifest: Manifest, names: list[str]) -> None:
        import pyarrow as pa

        self.m, self.names = manifest, names
        self.files = [pa.ipc.open_file(pa.memory_map(str(manifest.path_of(i)))) for i in range(len(manifest.files))]
        self.starts = manifest.unit_start.tolist()

    def __len__(self) -> int:
        return int(self.m.rows)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        u = bisect.bisect_right(self.starts, i) - 1
        lay = self.m.layout
        batch = self.files[int(lay["file"][u])].get_batch(int(lay["batch"][u])).slice(i - self.starts[u], 1)
        out = {}
        for n in self.names:
            c, col = self.m.column(n), batch.column(n)
            arr = (col.flatten() if c.shape else col).to_numpy(zero_copy_only=False)
            out[n] = arr.reshape(c.shape)
        return out


class ArrowFormat(StorageFormat):
    """Uncompressed Arrow IPC files of one record batch per unit, a new file every ``shard_bytes`` of rows."""

    name = "arrow"
    codecs = ("none",)
    reader_class = Reader
    writer_class = Writer

    units_per_file = staticmethod(units_per_file)
    validate_layout = staticmethod(validate_layout)
    check_files = staticmethod(check_arrow_files)

    def partial_reads(self, manifest: Manifest, names: list[str]) -> bool:
        # uncompressed buffers; booleans are bit-packed and read with their whole unit
        return all(manifest.column(n).np_dtype != np.bool_ for n in names)

    def row_places(self, manifest: Manifest, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        return row_places(manifest, name)

    def default_threads(self, cores: int) -> int:
        return min(8, cores)  # pyarrow serialises and writes without the GIL: a file per thread

    def library_rows(self, manifest: Manifest, names: list[str]) -> Any:
        return _Rows(manifest, names)


FORMAT = ArrowFormat()
