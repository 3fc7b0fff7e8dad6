"""Parquet storage: files of row groups, one row group per shuffle unit.

Layout of a dataset folder::

    ds.parquet/
      part-00000.parquet    row groups of C rows; a new file every --shard-bytes
      part-00001.parquet
      _streambatch.json     the manifest (written last; the leading _ keeps pyarrow from reading it)

Scalar columns are plain Parquet columns; a fixed-shape tensor column is a
``FixedSizeList<dtype, prod(shape)>`` whose field metadata ``streambatch.shape`` holds the
row shape as JSON, so pyarrow and pandas read every file without streambatch.  The
shuffle unit is one row group; its byte range in the file and a checksum of those bytes
(CRC-32C) are recorded in the manifest, and so are the size and CRC-32C of each file's footer
(``layout.footer_size``, ``layout.footer_crc32c``: ``streambatch verify``).  Pages carry Parquet's
own CRC too, so that a unit that fails its checksum can be traced to the column holding the
damaged bytes.

Writing: uncompressed numeric datasets (codec ``none``, no bool or float16 column) are
written by ``_parquet_write``, whose pages hold the arrays' own bytes (1-byte columns under
an identity dictionary); everything else by pyarrow's writer.  Both produce the same schema.

Reading: a whole unit of a ``_parquet_write`` file is read like a Zarr chunk: the manifest
records where each column's values start in the row group (``layout.values``, with its own
CRC), and one vectored read puts them straight into the caller's arrays.  Otherwise
uncompressed columns (PLAIN pages, and dictionary-encoded 1-byte columns) are decoded out of
the row group's bytes, which the checksum read already holds, by walking its pages in schema
order (``_parquet_pages``; no footer metadata per unit); compressed columns (and booleans)
are decoded by pyarrow.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from .._fields import int_array
from ..errors import DataError, ManifestError
from ..io.checksum import CHECKSUMS, DEFAULT_CHECKSUM, checksum_fn, extend_fn
from ..io.files import ByteRanges
from ..io.remote import RangeFile
from ..manifest import Manifest
from ..schema import Column
from ._arrow_schema import arrow_schema
from ._parquet_check import check_parquet_files
from ._parquet_pages import physical_for
from ._parquet_write import FileWriter, supports
from ._sink import TrackingSink as _TrackingSink
from .base import StorageFormat, WriteResult

__all__ = ["Reader", "Writer", "validate_layout", "arrow_schema", "FORMAT"]

_PARQUET_CODEC = {"none": "none", "lz4": "lz4", "zstd": "zstd"}


def units_per_file(columns: tuple[Column, ...], rows: int, unit_rows: int, shard_bytes: int) -> int:
    """Row groups (units) per file: ``shard_bytes`` of decoded rows, at least one unit."""
    return max(1, min(-(-rows // unit_rows), shard_bytes // max(1, unit_rows * sum(c.row_nbytes for c in columns))))


class Writer:
    """Appends one row group per unit, starting a new file every ``shard_bytes`` of decoded rows
    (:func:`units_per_file`; compressed files come out smaller, as Zarr shards do).

    A writer starting at ``first_unit`` (the first unit of a file) writes that part of the
    dataset only: writers of different files run in parallel, and :meth:`combine` joins what
    they return.
    """

    def __init__(self, folder: Path, columns: tuple[Column, ...], rows: int, unit_rows: int,
                 shard_bytes: int, codec: str, first_unit: int = 0) -> None:
        self.units_per_file = units_per_file(columns, rows, unit_rows, shard_bytes)
        if first_unit % self.units_per_file:
            raise ValueError(f"a Parquet writer starts at a file's first unit, not unit {first_unit}")
        self._unit = first_unit
        self.unit_rows = unit_rows
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.columns = columns
        self.schema = arrow_schema(columns)
        self.codec = _PARQUET_CODEC[codec]
        self._own = supports(columns, codec, unit_rows)  # uncompressed numeric columns: our page writer
        self.values: dict[str, list[int]] = {c.name: [] for c in columns}
        self.files: list[str] = []
        self.loc: dict[str, list[int]] = {"file": [], "row_group": [], "offset": [], "size": [], "crc32": []}
        # per file: the bytes after its last row group (FileMetaData, its length, the magic), for verify
        self.footers: dict[str, list[int]] = {"footer_size": [], "footer_crc32c": []}
        self.stored: list[int] = []
        self._writer: Any = None
        self._sink: _TrackingSink | None = None
        self._groups = 0

    def _new_file(self) -> None:
        import pyarrow.parquet as pq

        self._close_file()
        name = f"part-{self._unit // self.units_per_file:05d}.parquet"
        self.files.append(name)
        self._sink = _TrackingSink(self.folder / name)
        if self._own:
            from .._version import __version__

            self._writer = FileWriter(self._sink, self.columns, self.schema, f"streambatch version {__version__}")
        else:
            self._writer = pq.ParquetWriter(
                self._sink, self.schema, compression=self.codec, use_dictionary=self._dictionary_columns(),
                write_statistics=False, data_page_size=1 << 20, write_page_checksum=True)
        self._sink.take_crc()  # the magic bytes belong to no row group
        self._groups = 0

    def _dictionary_columns(self) -> list[str]:
        """1-byte columns get dictionary encoding: Parquet has no 8-bit physical type, so plain
        encoding stores uint8 images as INT32 (4x their size); the dictionary packs them to 8 bits."""
        return [f"{c.name}.list.element" if c.shape else c.name for c in self.columns if c.np_dtype.itemsize == 1]

    def write_unit(self, data: dict[str, np.ndarray]) -> None:
        if self._sink is None or self._unit % self.units_per_file == 0:
            self._new_file()
        assert self._sink is not None
        start = self._sink.pos
        if self._own:
            self._writer.write_row_group(data)
        else:
            self._writer.write_table(self._table(data), row_group_size=max(1, len(data[self.columns[0].name])))
        self._sink.flush()
        size = self._sink.pos - start
        self.loc["file"].append(len(self.files) - 1)
        self.loc["row_group"].append(self._groups)
        self.loc["offset"].append(start)
        self.loc["size"].append(size)
        self.loc["crc32"].append(self._sink.take_crc())
        if self._own:
            for c, at in zip(self.columns, self._writer.values_at):
                self.values[c.name].append(at - start)
        self.stored.append(size)
        self._groups += 1
        self._unit += 1

    def write_units(self, data: dict[str, np.ndarray]) -> None:
        """Write consecutive units: ``data`` holds ``k * unit_rows`` rows (the last may be short)."""
        n = len(data[self.columns[0].name])
        for lo in range(0, n, self.unit_rows):
            self.write_unit({name: v[lo:lo + self.unit_rows] for name, v in data.items()})

    def _table(self, data: dict[str, np.ndarray]) -> Any:
        import pyarrow as pa

        arrays = []
        for c, field in zip(self.columns, self.schema):
            flat = pa.array(np.ascontiguousarray(data[c.name], dtype=c.np_dtype).reshape(-1))
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, type=field.type) if c.shape else flat)
        return pa.Table.from_arrays(arrays, schema=self.schema)

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            assert self._sink is not None
            self.footers["footer_crc32c"].append(self._sink.crc)
            self.footers["footer_size"].append(self._sink.pos - self._sink.mark)
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    def finish(self) -> tuple[list[str], dict[str, Any], list[int], list[int]]:
        self._close_file()
        layout: dict[str, Any] = {**self.loc, **self.footers, "checksum": DEFAULT_CHECKSUM, "page_checksums": True}
        if self._own:  # where each unit's values start in its row group, per column (see Reader._direct)
            layout["values"] = self.values
            layout["values_crc32c"] = _offsets_crc([c.name for c in self.columns], self.values)
        return self.files, layout, self.stored, list(self.loc["crc32"])

    @staticmethod
    def combine(parts: list[tuple[list[str], dict[str, Any], list[int], list[int]]]
                ) -> tuple[list[str], dict[str, Any], list[int], list[int]]:
        """What :meth:`finish` returns for the whole dataset, from the parts' results in unit order."""
        files: list[str] = []
        first = parts[0][1]
        layout: dict[str, Any] = {"file": [], "row_group": [], "offset": [], "size": [], "crc32": [],
                                  "footer_size": [], "footer_crc32c": [],
                                  "checksum": first["checksum"], "page_checksums": first["page_checksums"]}
        values: dict[str, list[int]] = {name: [] for name in first.get("values", {})}
        for part_files, part_layout, _, _ in parts:
            layout["file"] += [f + len(files) for f in part_layout["file"]]
            for k in ("row_group", "offset", "size", "crc32", "footer_size", "footer_crc32c"):
                layout[k] += part_layout[k]
            for name, v in part_layout.get("values", {}).items():
                values[name] += v
            files += part_files
        if "values" in first:
            layout["values"] = values
            layout["values_crc32c"] = _offsets_crc(list(values), values)
        return files, layout, [s for p in parts for s in p[2]], [c for p in parts for c in p[3]]

    def abort(self) -> None:
        try:
            self._close_file()
        except Exception:  # noqa: BLE001 - the conversion already failed; keep its error
            pass


def validate_layout(layout: dict[str, Any], n_units: int, n_files: int, columns: tuple[Column, ...],
                    where: str, *, codec: str | None = None, unit_rows: np.ndarray | None = None) -> dict[str, Any]:
    """Check the Parquet layout: ``ManifestError`` unless every location is an in-range integer.

    A row group's stored size is bounded (when ``unit_rows`` is given) by twice its values as
    Parquet stores them (8- and 16-bit integers as 32-bit ones) plus a byte of levels per value
    and page overhead.
    """
    w = f"{where}: layout"
    checksum = layout.get("checksum", "crc32")
    if checksum not in CHECKSUMS:
        raise ManifestError(f"{w}.checksum must be one of {', '.join(CHECKSUMS)}, got {checksum!r}")
    page_checksums = layout.get("page_checksums", False)
    if not isinstance(page_checksums, bool):
        raise ManifestError(f"{w}.page_checksums must be true or false")
    max_size = 1 << 40
    if unit_rows is not None:
        stored_row = sum(c.row_items * (2 * max(4, c.np_dtype.itemsize) + 1) for c in columns)
        max_size = int(unit_rows.max()) * stored_row + 1024 * len(columns) + (1 << 16)
    out = {
        "file": int_array(layout.get("file"), n_units, f"{w}.file", hi=max(0, n_files - 1)),
        "row_group": int_array(layout.get("row_group"), n_units, f"{w}.row_group", hi=1 << 31),
        "offset": int_array(layout.get("offset"), n_units, f"{w}.offset", hi=1 << 50),
        "size": int_array(layout.get("size"), n_units, f"{w}.size", lo=1, hi=max_size),
        "crc32": int_array(layout.get("crc32"), n_units, f"{w}.crc32", hi=2**32 - 1),
        "checksum": checksum,
        "page_checksums": page_checksums,
    }
    if "footer_crc32c" in layout:  # absent in datasets written before it was recorded
        out["footer_size"] = int_array(layout.get("footer_size"), n_files, f"{w}.footer_size", lo=8, hi=1 << 40)
        out["footer_crc32c"] = int_array(layout["footer_crc32c"], n_files, f"{w}.footer_crc32c", hi=2**32 - 1)
    values = layout.get("values")  # written by _parquet_write: where each unit's values start
    if values is not None:
        if not isinstance(values, dict) or set(values) != {c.name for c in columns}:
            raise ManifestError(f"{w}.values must map each column to the offsets of its values in every unit")
        out["values"] = {}
        for c in columns:
            at = int_array(values[c.name], n_units, f"{w}.values[{c.name!r}]", hi=max_size)
            if unit_rows is not None and np.any(at + unit_rows * c.row_items * _stored_width(c) > out["size"]):
                raise ManifestError(f"{w}.values[{c.name!r}]: values run past the end of a unit's row group")
            out["values"][c.name] = at
        # the unit checksums cover the bytes, not which of them are a column's values: a changed
        # offset would pass them and serve the wrong bytes, so the offsets carry their own
        if layout.get("values_crc32c") != _offsets_crc([c.name for c in columns], out["values"]):
            raise ManifestError(f"{w}.values do not match values_crc32c (manifest damaged)")
        out["values_crc32c"] = layout["values_crc32c"]
    return out


def _offsets_crc(names: list[str], values: dict[str, Any]) -> int:
    """CRC-32C of the value offsets, column by column in schema order (``names``), as little-endian int64s."""
    crc = 0
    extend = extend_fn("crc32c")
    for name in names:
        crc = extend(crc, np.ascontiguousarray(values[name], dtype="<i8"))
    return crc


def _stored_width(c: Column) -> int:
    """Bytes per value in a streambatch-written page: 1-byte columns as dictionary indices of
    one byte, narrower ints widened to INT32, the rest as they are."""
    return 1 if c.np_dtype.itemsize == 1 else max(4, c.np_dtype.itemsize)


class Reader:
    """Reads row groups with pyarrow (which releases the GIL); one ``ParquetFile`` per thread."""

    def __init__(self, manifest: Manifest, verify: bool = False, remote: Any = None) -> None:
        self.manifest = manifest
        self.verify = verify
        self._local = threading.local()
        self._all: list[dict[int, Any]] = []
        self._lock = threading.Lock()
        self._checksum = checksum_fn(manifest.layout.get("checksum", "crc32"))
        self._remote = remote  # RemoteFiles for a dataset at a URL: ranged requests instead of files
        self._files = ByteRanges(manifest, remote)  # the row groups' bytes, for checksums and the page decoder
        self._pyarrow: set[str] = set()  # columns the page decoder does not read: pyarrow decodes them
        self._leaf: dict[str, int] = {}  # column name -> its leaf's index in the Parquet schema
        # uncompressed numeric columns: decode a unit by walking its row group's pages
        self._walk = manifest.codec == "none" and all(physical_for(c.np_dtype) is not None for c in manifest.columns)
        self._row_nbytes = sum(c.row_nbytes for c in manifest.columns)
        # per column, in schema order, what the walk needs (a FixedSizeList has a repeated level
        # and a present one: max_rep = max_def = 1): name, values per row, shape, physical, levels, dtype
        self._specs = [(c.name, c.row_items, c.shape, physical_for(c.np_dtype), 1 if c.shape else 0, c.np_dtype)
                       for c in manifest.columns] if self._walk else []
        # files of _parquet_write whose values are the arrays' bytes (no int16/uint16, widened
        # to INT32), local: (name, values per row, offsets of the values in each unit), schema order
        offsets = manifest.layout.get("values")
        self._direct = [(c.name, c.row_items, offsets[c.name]) for c in manifest.columns] if (
            offsets is not None and remote is None and manifest.codec == "none"
            and all(_stored_width(c) == c.np_dtype.itemsize for c in manifest.columns)) else []
        self._extend = extend_fn(manifest.layout.get("checksum", "crc32"))

    def _where(self, unit: int, fi: int, col: str | None = None) -> str:
        c = f", column {col!r}" if col else ""
        return f"dataset {self.manifest.root}{c}, unit {unit}, file {self.manifest.files[fi]}"

    def _file(self, fi: int, unit: int) -> Any:
        import pyarrow.parquet as pq

        files = getattr(self._local, "files", None)
        if files is None:
            files = self._local.files = {}
            with self._lock:
                self._all.append(files)
        pf = files.get(fi)
        if pf is None:
            path = self._source(fi)
            try:
                pf = pq.ParquetFile(path)
            except OSError as e:
                raise DataError(f"{self._where(unit, fi)}: cannot open: {e}") from None
            except Exception as e:  # pyarrow raises ArrowInvalid on a broken footer
                raise DataError(f"{self._where(unit, fi)}: not a readable Parquet file: {e}") from None
            files[fi] = pf
        return pf

    def _source(self, fi: int) -> Any:
        """What pyarrow opens: the local path, or a ranged-read file object for a URL."""
        if self._remote is None:
            return self.manifest.path_of(fi)
        return RangeFile(self._remote, self.manifest.files[fi])

    def _read_range(self, unit: int, fi: int, off: int, size: int) -> bytearray:
        """``size`` bytes at ``off`` of file ``fi`` (a local pread or a ranged request), exactly."""
        return self._files.read(fi, off, size, lambda: self._where(unit, fi))

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

    def _read_direct(self, unit: int, out: dict[str, np.ndarray]) -> bool:
        """A whole unit of a file from ``_parquet_write``, as the Zarr reader reads a chunk: one
        vectored read puts each requested column's values (stored as the array's own bytes, at
        the offsets the manifest records) straight into ``out`` and the rest of the row group
        (page headers, levels, unrequested columns) into the scratch buffer; the checksum runs
        over the pieces in file order.  False (nothing read) if ``out`` is not contiguous."""
        if not all(dst.flags.c_contiguous for dst in out.values()):
            return False
        lay = self.manifest.layout
        fi, off, size = self._stored_range(unit)
        rows = int(self.manifest.unit_rows[unit])
        scratch = self._files.scratch(size)
        pieces: list[memoryview] = []
        pos = used = 0
        for name, items, at_unit in self._direct:
            dst = out.get(name)
            if dst is None:  # read with the gap, into the scratch buffer
                continue
            at = int(at_unit[unit])
            if at > pos:
                pieces.append(scratch[used:used + at - pos])
                used += at - pos
            pieces.append(memoryview(dst.reshape(-1).view(np.uint8)))
            pos = at + rows * items * dst.itemsize
        if pos < size:
            pieces.append(scratch[used:used + size - pos])
        self._files.read_vector(pieces, fi, off, lambda: self._where(unit, fi))
        if self.verify:
            crc = 0
            for piece in pieces:
                crc = self._extend(crc, piece)
            if crc != int(lay["crc32"][unit]):
                raise self._corrupt(unit)
        return True

    def _chunk(self, unit: int, fi: int, name: str) -> tuple[int, int, np.dtype, int, int] | None:
        """``(offset, size, physical dtype, max_rep, max_def)`` of a column chunk of ``unit`` if
        ``_parquet_pages`` may decode it, else ``None``.  Looked up in the footer each time (not
        cached per unit: that cache grew with the dataset); only a projection of a few columns
        comes here, whole units walk their row group."""
        if name in self._pyarrow:
            return None
        from ._parquet_pages import chunk_plan

        md = self._file(fi, unit).metadata
        index = self._leaf.get(name)
        if index is None:  # every file has the dataset's schema: one leaf per column, in order
            arrow = md.schema.to_arrow_schema()
            index = self._leaf[name] = arrow.get_field_index(name) if len(arrow) == md.num_columns else -1
        plan = None if index < 0 else chunk_plan(md, int(self.manifest.layout["row_group"][unit]), index,
                                                 self.manifest.column(name).np_dtype)
        if plan is None:
            self._pyarrow.add(name)
        return plan

    def advise(self, pieces: list[tuple[int, int, int, Any]], names: list[str]) -> None:
        """Hint the kernel to read the row groups of a window's ``(unit, lo, hi, _)`` pieces
        (``ByteRanges.advise``: only where they are not cached).  Only when the requested
        columns are most of a row: a few columns are read chunk by chunk from the footer's
        offsets, and hinting whole row groups would read the others from disk too."""
        if not self._mostly(dict.fromkeys(names)):
            return
        self._files.advise([self._stored_range(u) for u, _, _, _ in pieces], lambda: f"dataset {self.manifest.root}")

    def _mostly(self, out: dict[str, Any]) -> bool:
        """Whether the columns of ``out`` hold at least half of a row's bytes (then reading the
        whole row group in one request beats one request per column chunk)."""
        return 2 * sum(self.manifest.column(n).row_nbytes for n in out) >= self._row_nbytes

    def _walk_row_group(self, unit: int, raw: memoryview, lo: int, hi: int, out: dict[str, np.ndarray]) -> bool:
        """Decode the columns of ``out`` from ``raw``, the unit's whole row group, walking its
        pages in schema order without the footer (no per-unit metadata: the loader opens a
        reader per epoch, and pyarrow's metadata objects cost ~0.1 ms per column chunk).
        False, and no more walking, if a chunk is not something ``_parquet_pages`` reads."""
        from ._parquet_pages import decode_pages

        rows = int(self.manifest.unit_rows[unit])
        buf = memoryview(raw)
        pos = 0
        for name, items, shape, physical, levels, dtype in self._specs:
            dst = out.get(name)
            whole = dst is not None and lo == 0 and hi == rows and dst.flags.c_contiguous
            got = decode_pages(buf, pos, rows * items, physical, levels, levels, dtype,
                               dst.reshape(-1) if whole else None, skip=dst is None)
            if got is None:
                self._walk = False
                return False
            values, pos = got
            if dst is not None and not whole:
                dst[...] = values.reshape(rows, *shape)[lo:hi]
        if pos != len(buf):
            self._walk = False
            return False
        return True

    def _read_pages(self, unit: int, fi: int, raw: memoryview | None, lo: int, hi: int,
                    out: dict[str, np.ndarray]) -> list[str]:
        """Decode the columns of ``out`` that ``_parquet_pages`` handles; return the other names."""
        from ._parquet_pages import decode_chunk

        rows = int(self.manifest.unit_rows[unit])
        base = int(self.manifest.layout["offset"][unit])
        rest = []
        for name, dst in out.items():
            plan = self._chunk(unit, fi, name)
            col = self.manifest.column(name)
            if plan is None:
                rest.append(name)
                continue
            off, size, physical, max_rep, max_def = plan
            if raw is not None and base <= off and off + size <= base + len(raw):
                buf, at = raw, off - base
            else:
                buf, at = self._read_range(unit, fi, off, size), 0
            whole = lo == 0 and hi == rows and dst.flags.c_contiguous  # decode straight into the window
            values = decode_chunk(memoryview(buf)[at:at + size], rows * col.row_items, physical, max_rep, max_def,
                                  col.np_dtype, dst.reshape(-1) if whole else None)
            if values is None:
                self._pyarrow.add(name)  # e.g. an encoding it does not read: pyarrow from now on
                rest.append(name)
                continue
            if not whole:
                dst[...] = values.reshape(rows, *col.shape)[lo:hi]
        return rest

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

    def read_into(self, unit: int, lo: int, hi: int, out: dict[str, np.ndarray]) -> None:
        rows_in_unit = int(self.manifest.unit_rows[unit])
        if not 0 <= lo < hi <= rows_in_unit:
            raise ValueError(f"rows {lo}:{hi} outside unit {unit} of {rows_in_unit} rows")
        if (self._direct and lo == 0 and hi == rows_in_unit and (self.verify or self._mostly(out))
                and self._read_direct(unit, out)):
            return
        self._decode(unit, lo, hi, out, self._check(unit) if self.verify else None)

    def _decode(self, unit: int, lo: int, hi: int, out: dict[str, np.ndarray], raw: memoryview | None) -> None:
        """Rows ``lo:hi`` of ``unit`` into ``out``, from ``raw`` (its checked row group bytes) when given."""
        rows_in_unit = int(self.manifest.unit_rows[unit])
        lay = self.manifest.layout
        fi, rg = int(lay["file"][unit]), int(lay["row_group"][unit])
        if self._walk and (raw is not None or self._mostly(out)):
            if raw is None:
                raw = self._row_group(unit)
            if self._walk_row_group(unit, raw, lo, hi, out):
                return
        rest = self._read_pages(unit, fi, raw, lo, hi, out)
        if not rest:
            return
        pf = self._file(fi, unit)
        try:
            table = pf.read_row_group(rg, columns=rest, use_threads=False)
        except Exception as e:  # pyarrow raises OSError/ArrowInvalid on corrupt pages
            raise DataError(f"{self._where(unit, fi)}: cannot read row group {rg}: {e}") from None
        if table.num_rows != rows_in_unit:
            raise DataError(f"{self._where(unit, fi)}: row group {rg} has {table.num_rows} rows, "
                            f"manifest says {rows_in_unit}")
        for name in rest:
            dst = out[name]
            col = self.manifest.column(name)
            arr = table.column(name).slice(lo, hi - lo).combine_chunks()
            if col.shape:
                arr = arr.flatten()
            dst[...] = arr.to_numpy(zero_copy_only=False).reshape(dst.shape)  # dst may be strided

    def verify_unit(self, unit: int) -> None:
        """Check the unit's bytes and decode its pages; where the loader reads it straight into
        place (``_read_direct``), also that the manifest's value offsets pick out what the pages
        hold (their own CRC only guards against accidental damage)."""
        raw = self._check(unit)  # read once: checked, then decoded from the same bytes
        rows = int(self.manifest.unit_rows[unit])
        decoded = {c.name: np.empty((rows, *c.shape), c.np_dtype) for c in self.manifest.columns}
        self._decode(unit, 0, rows, decoded, raw)
        for name, _, at_unit in self._direct:  # what _read_direct would take from the same bytes
            arr = decoded[name]
            at = int(at_unit[unit])
            if bytes(raw[at:at + arr.nbytes]) != arr.tobytes():
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


class ParquetFormat(StorageFormat):
    """Parquet files of one row group per unit, a new file every ``shard_bytes`` of decoded rows."""

    name = "parquet"
    reader_class = Reader
    writer_class = Writer

    def default_threads(self, cores: int) -> int:
        # One writing thread: the page writer is Python and holds the GIL, and two writing threads
        # ran npy -> Parquet 12% slower than one writer beside the reading thread.
        return 1

    def units_per_file(self, columns: tuple[Column, ...], rows: int, unit_rows: int, shard_bytes: int) -> int:
        return units_per_file(columns, rows, unit_rows, shard_bytes)

    def validate_layout(self, layout: dict[str, Any], n_units: int, n_files: int, columns: tuple[Column, ...],
                        where: str, *, codec: str, unit_rows: np.ndarray | None) -> dict[str, Any]:
        return validate_layout(layout, n_units, n_files, columns, where, codec=codec, unit_rows=unit_rows)

    def check_files(self, checker: Any) -> str:
        return check_parquet_files(checker)


FORMAT = ParquetFormat()
