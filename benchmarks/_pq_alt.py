"""Experimental: Parquet tensor columns written and read by pyarrow alone, for bench_parquet_codec.py.

Not part of the package.  The layout a replacement of the own page codec
(``streambatch/storage/_parquet_write.py`` and ``_parquet_pages.py``) would write:

* a tensor column is a non-null ``FixedSizeBinary(row_nbytes)`` whose field metadata holds
  ``streambatch.shape`` and ``streambatch.dtype`` (JSON); scalars stay plain non-null columns;
* PLAIN encoding, no dictionary, no compression, no statistics (min/max of 12 KB images would
  go into every footer), page CRCs on, and one data page per column chunk (``data_page_size``
  and ``max_rows_per_page`` above a unit).  A required, non-nested column has no repetition
  or definition levels, and a FIXED_LEN_BYTE_ARRAY page stores its values back to back, so a
  column chunk is one page header followed by the column's bytes as numpy holds them.

:class:`FlbaWriter` writes it (pyarrow's ``ParquetWriter``) and records, like the own writer,
where each unit's values start (``layout.values``), found from pyarrow's footer metadata
(values end where the chunk ends) and checked against a CRC-32C of the values taken while
writing: no Thrift of our own.  Two readers are plugged into ``StreamDataset`` by
:func:`patched_reader`:

* :class:`ArrowReader`: ``ParquetFile.read_row_group`` per unit (one file object per thread),
  the values buffer viewed with ``np.frombuffer`` and copied into the window;
* :class:`InplaceReader`: no decoding at all: whole units with the own reader's in-place path
  (``Reader._read_direct``: one ``preadv`` of the values straight into the window,
  checksummed), rows of a unit sliced out of its checksummed row group bytes.

The replacement this prototypes (the decision in benchmarks/RESULTS.md, "Parquet codec decision"):

* writer: ``pq.ParquetWriter(sink, schema, compression=codec, use_dictionary=False,
  write_statistics=False, write_page_checksum=True, data_page_size=unit_rows * max_row_bytes +
  1 MiB, max_rows_per_page=unit_rows)`` over today's ``_TrackingSink`` (unit offsets, sizes and
  CRC-32C as now); tensors built with ``pa.FixedSizeBinaryArray.from_buffers(type, n, [None,
  pa.py_buffer(arr.view(np.uint8))], null_count=0)`` (without ``null_count=0``
  ``Table.from_arrays`` spends 0.4 ms a unit counting nulls).  Scalars whose Parquet values are
  not numpy's bytes (bool; 8- and 16-bit ints, widened to INT32) get no offset and are decoded
  by pyarrow; this prototype refuses them.
* after closing each file (uncompressed only): ``pq.read_metadata``; per row group and column
  the values start at ``data_page_offset + total_compressed_size - rows * row_nbytes``; check a
  CRC-32C of the values taken while writing against those bytes (a second page, or a future
  pyarrow that lays pages out otherwise, fails it: then record no offsets and let pyarrow decode).
* manifest: as today (``layout.file/row_group/offset/size/crc32``, ``footer_size/footer_crc32c``,
  ``checksum``, ``page_checksums``), ``layout.values`` (per column, where its values start in each
  unit's row group) with ``values_crc32c``, and the tensor encoding (e.g. ``"tensors":
  "fixed_size_binary"``; absent: FixedSizeList, every dataset written so far).
* reader: uncompressed and every requested column with an offset: whole units by
  ``Reader._read_direct`` (local; remotely: the ranged row group read already made for the
  checksum, then copies), row ranges sliced out of the checked row group bytes; anything else
  (lz4/zstd, columns without offsets, FixedSizeList datasets written before) by
  ``ParquetFile(path, memory_map=True, pre_buffer=False).read_row_group(rg, columns,
  use_threads=False)`` per thread, FixedSizeBinary viewed with ``np.frombuffer``,
  FixedSizeList through ``flatten().to_numpy(zero_copy_only=True)`` (:func:`copy_column`).
  ``verify_unit`` compares the in-place bytes with pyarrow's decoding, as today.
* goes: ``_parquet_write.py``, ``_parquet_pages.py`` and the page walk in ``parquet_store``
  (``_walk_row_group``, ``_read_pages``, ``_chunk``, ``physical_for``, ``supports``).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from streambatch.errors import DataError
from streambatch.manifest import Column, Manifest
from streambatch.storage import parquet_store
from streambatch.io.checksum import checksum_fn
from streambatch.io.files import ByteRanges
from streambatch.storage._sink import TrackingSink

__all__ = ["ArrowReader", "FlbaWriter", "FslWriter", "InplaceReader", "RawPread", "copy_column", "flba_schema",
           "patched_reader", "patched_writer"]

# pyarrow's reader options: (memory_map, pre_buffer, buffer_size)
ARROW_OPTIONS = {
    "default": (False, True, 0),
    "no-prebuffer": (False, False, 0),
    "mmap": (True, False, 0),
    "buffered-1MiB": (False, False, 1 << 20),
}


def flba_schema(columns: tuple[Column, ...]) -> Any:
    """The Arrow schema: tensors as ``FixedSizeBinary(row_nbytes)``, shape and dtype in field metadata."""
    import pyarrow as pa

    fields = []
    for c in columns:
        if c.shape:
            meta = {"streambatch.shape": json.dumps(list(c.shape)), "streambatch.dtype": c.dtype}
            fields.append(pa.field(c.name, pa.binary(c.row_nbytes), nullable=False, metadata=meta))
        else:
            fields.append(pa.field(c.name, pa.from_numpy_dtype(c.np_dtype), nullable=False))
    return pa.schema(fields)


class FlbaWriter(parquet_store.Writer):
    """``parquet_store.Writer`` with pyarrow writing :func:`flba_schema` (see the module docstring)."""

    def __init__(self, folder: Path, columns: tuple[Column, ...], rows: int, unit_rows: int,
                 shard_bytes: int, codec: str, first_unit: int = 0) -> None:
        super().__init__(folder, columns, rows, unit_rows, shard_bytes, codec, first_unit)
        narrow = [c.name for c in columns if not c.shape and (c.np_dtype.kind == "b" or c.np_dtype.itemsize < 4)]
        if narrow or codec != "none":
            raise ValueError(f"prototype: codec none and scalars of 32 bits or more only, not {narrow or codec}")
        self._own = False
        self.schema = flba_schema(columns)
        self._page_bytes = unit_rows * max(c.row_nbytes for c in columns) + (1 << 20)  # one page per chunk
        self._page_rows = unit_rows
        self._value_crcs: dict[int, list[int]] = {}  # unit -> CRC-32C of each column's values, until checked
        self._crc = checksum_fn("crc32c")

    def _new_file(self) -> None:
        import pyarrow.parquet as pq

        self._close_file()
        name = f"part-{self._unit // self.units_per_file:05d}.parquet"
        self.files.append(name)
        self._sink = TrackingSink(self.folder / name)
        self._writer = pq.ParquetWriter(
            self._sink, self.schema, compression=self.codec, use_dictionary=False, write_statistics=False,
            data_page_size=self._page_bytes, max_rows_per_page=self._page_rows, write_page_checksum=True)
        self._sink.take_crc()
        self._groups = 0

    def write_unit(self, data: dict[str, np.ndarray]) -> None:
        arrays = {c.name: np.ascontiguousarray(data[c.name], dtype=c.np_dtype) for c in self.columns}
        self._value_crcs[self._unit] = [self._crc(arrays[c.name].reshape(-1).view(np.uint8)) for c in self.columns]
        super().write_unit(arrays)

    def _table(self, data: dict[str, np.ndarray]) -> Any:
        import pyarrow as pa

        arrays = []
        for c, field in zip(self.columns, self.schema):
            arr = data[c.name]
            if c.shape:
                # null_count=0: left unknown, Table.from_arrays counts it (0.4 ms a unit)
                arrays.append(pa.FixedSizeBinaryArray.from_buffers(
                    field.type, len(arr), [None, pa.py_buffer(arr.reshape(-1).view(np.uint8))], null_count=0))
            else:
                arrays.append(pa.array(arr))
        return pa.Table.from_arrays(arrays, schema=self.schema)

    def _close_file(self) -> None:
        open_file = self.files[-1] if self._writer is not None else None
        super()._close_file()
        if open_file is not None:
            self._record_values(self.folder / open_file)

    def _record_values(self, path: Path) -> None:
        """Where each unit's values start in its row group: the last ``rows * width`` bytes of the
        column chunk (one PLAIN page, no levels), checked by their CRC-32C."""
        import pyarrow.parquet as pq

        md = pq.read_metadata(path)
        n_groups = md.num_row_groups  # the file's last units: this writer's and the dataset's numbers
        first, first_unit = len(self.loc["offset"]) - n_groups, self._unit - n_groups
        with open(path, "rb") as f:
            for g in range(n_groups):
                rg, unit = md.row_group(g), first + g
                crcs = self._value_crcs.pop(first_unit + g)
                for j, c in enumerate(self.columns):
                    chunk = rg.column(j)
                    n = rg.num_rows * c.row_nbytes
                    at = chunk.data_page_offset + chunk.total_compressed_size - n
                    f.seek(at)
                    if self._crc(f.read(n)) != crcs[j]:
                        raise RuntimeError(f"{path}: unit {first_unit + g} column {c.name!r} is not one PLAIN page")
                    self.values[c.name].append(at - self.loc["offset"][unit])

    def finish(self) -> tuple[list[str], dict[str, Any], list[int], list[int]]:
        files, layout, stored, crcs = super().finish()
        layout["values"] = self.values
        layout["values_crc32c"] = parquet_store._offsets_crc([c.name for c in self.columns], self.values)
        return files, layout, stored, crcs


class ArrowReader:
    """Units decoded by pyarrow: ``read_row_group`` into an Arrow table, then one copy into ``out``.

    ``verify`` checks the manifest's CRC-32C of the row group's bytes, read separately (pyarrow
    cannot decode from the caller's buffer); ``page_crc`` asks pyarrow to check the pages' own
    CRC-32 instead (a weaker check: page headers and the binding to the manifest are not covered).
    """

    def __init__(self, manifest: Manifest, verify: bool = False, remote: Any = None, *,
                 options: str = "no-prebuffer", page_crc: bool = False) -> None:
        self.manifest = manifest
        self.verify = verify and not page_crc
        self._opts = ARROW_OPTIONS[options]
        self._page_crc = page_crc
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[Any] = []
        self._maps: dict[int, Any] = {}
        self._files = ByteRanges(manifest)
        self._checksum = checksum_fn(manifest.layout.get("checksum", "crc32"))

    def _file(self, fi: int) -> Any:
        import pyarrow.parquet as pq

        files = getattr(self._local, "files", None)
        if files is None:
            files = self._local.files = {}
        pf = files.get(fi)
        if pf is None:
            mm, pre, buf = self._opts
            pf = files[fi] = pq.ParquetFile(self.manifest.path_of(fi), memory_map=mm, pre_buffer=pre,
                                            buffer_size=buf, page_checksum_verification=self._page_crc)
            with self._lock:
                self._open.append(pf)
        return pf

    def table(self, unit: int, names: list[str]) -> Any:
        """The unit's row group as an Arrow table of ``names``."""
        lay = self.manifest.layout
        fi, rg = int(lay["file"][unit]), int(lay["row_group"][unit])
        if self.verify:
            if self._opts[0]:  # memory-mapped: checksum the mapped bytes, no copy
                raw = self._mapped(fi).read_at(int(lay["size"][unit]), int(lay["offset"][unit]))
            else:
                raw = self._files.read_scratch(fi, int(lay["offset"][unit]), int(lay["size"][unit]), lambda: "")
            if self._checksum(raw) != int(lay["crc32"][unit]):
                raise DataError(f"{self.manifest.root}: unit {unit}: checksum mismatch (data corrupt)")
        return self._file(fi).read_row_group(rg, columns=names, use_threads=False)

    def _mapped(self, fi: int) -> Any:
        """File ``fi`` memory-mapped by pyarrow (shared by the threads: ``read_at`` is thread-safe)."""
        import pyarrow as pa

        mm = self._maps.get(fi)
        if mm is None:
            with self._lock:
                mm = self._maps.get(fi) or self._maps.setdefault(fi, pa.memory_map(str(self.manifest.path_of(fi))))
        return mm

    def advise(self, pieces: list[tuple[int, int, int, Any]], names: list[str]) -> None:
        """The loader's read-ahead hint for a window, as ``parquet_store.Reader.advise`` gives it."""
        lay = self.manifest.layout
        self._files.advise([(int(lay["file"][u]), int(lay["offset"][u]), int(lay["size"][u])) for u, _, _, _ in pieces],
                           lambda: str(self.manifest.root))

    def read_into(self, unit: int, lo: int, hi: int, out: dict[str, np.ndarray]) -> None:
        table = self.table(unit, list(out))
        for name, dst in out.items():
            copy_column(table.column(name), self.manifest.column(name), lo, hi, dst)

    def verify_unit(self, unit: int) -> None:
        raise NotImplementedError("experimental reader")

    def close(self) -> None:
        self._files.close()
        with self._lock:
            files, self._open = self._open, []
            maps, self._maps = list(self._maps.values()), {}
        for f in files + maps:
            f.close()


def copy_column(chunked: Any, col: Column, lo: int, hi: int, dst: np.ndarray) -> None:
    """Rows ``lo:hi`` of an Arrow column (FixedSizeBinary, FixedSizeList or a primitive) into ``dst``."""
    import pyarrow as pa

    arr = chunked.chunk(0) if chunked.num_chunks == 1 else chunked.combine_chunks()
    if pa.types.is_fixed_size_binary(arr.type):
        values = np.frombuffer(arr.buffers()[1], dtype=col.np_dtype, count=len(arr) * col.row_items,
                               offset=arr.offset * col.row_nbytes)
    else:
        values = (arr.flatten() if col.shape else arr).to_numpy(zero_copy_only=True)
    dst[...] = values.reshape(len(arr), *col.shape)[lo:hi]


class InplaceReader(ArrowReader):
    """Uncompressed units read at the offsets ``FlbaWriter`` recorded, never decoded: whole units
    straight into place (``parquet_store.Reader._read_direct``: one ``preadv``, checksummed);
    rows ``lo:hi`` of a unit (a window that splits it) sliced out of the row group's bytes
    (``Reader._check``: read into the scratch buffer, checksummed).  pyarrow only for what
    has no offsets (here: nothing)."""

    def __init__(self, manifest: Manifest, verify: bool = False, remote: Any = None, **kw: Any) -> None:
        super().__init__(manifest, verify, remote, **kw)
        self._direct = parquet_store.Reader(manifest, verify=verify)
        if not self._direct._direct:
            raise ValueError(f"{manifest.root}: no layout.values to read in place")
        self._values = manifest.layout["values"]

    def read_into(self, unit: int, lo: int, hi: int, out: dict[str, np.ndarray]) -> None:
        if lo == 0 and hi == int(self.manifest.unit_rows[unit]) and self._direct._read_direct(unit, out):
            return
        raw = self._direct._check(unit) if self.verify else self._direct._row_group(unit)
        for name, dst in out.items():
            c = self.manifest.column(name)
            at = int(self._values[name][unit]) + lo * c.row_nbytes
            dst[...] = np.frombuffer(raw, c.np_dtype, count=(hi - lo) * c.row_items, offset=at).reshape(dst.shape)

    def close(self) -> None:
        self._direct.close()
        super().close()


class FslWriter(parquet_store.Writer):
    """Today's writer with the own page writer switched off: pyarrow writes FixedSizeList columns
    (what it does today for lz4/zstd, bool and float16)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._own = False


class RawPread:
    """The floor: one ``preadv`` per column of its values into place, nothing checked, whole
    units only (``read_into`` ignores ``lo``/``hi``)."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self._fds: dict[int, int] = {}

    def read_into(self, unit: int, lo: int, hi: int, out: dict[str, np.ndarray]) -> None:
        lay = self.manifest.layout
        fi, off = int(lay["file"][unit]), int(lay["offset"][unit])
        fd = self._fds.get(fi)
        if fd is None:
            fd = self._fds[fi] = os.open(self.manifest.path_of(fi), os.O_RDONLY)
        for c in self.manifest.columns:
            os.preadv(fd, [out[c.name].reshape(-1).view(np.uint8)], off + int(lay["values"][c.name][unit]))

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


@contextlib.contextmanager
def patched_writer(writer: type | None) -> Iterator[None]:
    """``streambatch.convert`` writes Parquet with ``writer`` (``None``: today's) inside the block."""
    fmt = parquet_store.FORMAT  # the registry's format object builds writers from its writer_class
    saved = fmt.writer_class
    if writer is not None:
        fmt.writer_class = writer
    try:
        yield
    finally:
        fmt.writer_class = saved


@contextlib.contextmanager
def patched_reader(factory: Any) -> Iterator[None]:
    """``StreamDataset`` opens its reader with ``factory(manifest, verify=, remote=)`` inside the block
    (``None``: today's ``open_reader``)."""
    import streambatch.dataset as sd

    saved = sd.open_reader
    if factory is not None:
        sd.open_reader = factory
    try:
        yield
    finally:
        sd.open_reader = saved
