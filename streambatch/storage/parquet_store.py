"""Parquet storage: files of row groups, one row group per shuffle unit.

Layout of a dataset folder::

    ds.parquet/
      part-00000.parquet    row groups of C rows; a new file every --shard-bytes
      part-00001.parquet
      _streambatch.json     the manifest (written last; the leading _ keeps pyarrow from reading it)

pyarrow writes the files.  Scalar columns are plain Parquet columns; a fixed-shape tensor column
is a non-null ``FixedSizeBinary`` of the row's bytes whose field metadata holds the row shape
(``streambatch.shape``, JSON) and dtype (``streambatch.dtype``), so that pyarrow and pandas read
every file without streambatch (``layout.tensors``: ``"fixed_size_binary"``; datasets written
before have ``FixedSizeList`` tensors and no such field).  Pages are PLAIN, without dictionary
or statistics, one per column chunk, and carry Parquet's CRC.

The shuffle unit is one row group; its byte range in the file and a checksum of those bytes
(CRC-32C) are recorded in the manifest, and so are the size and CRC-32C of each file's footer
(``layout.footer_size``, ``layout.footer_crc32c``: ``streambatch verify``).  In uncompressed
datasets each column's values lie back to back at the end of its column chunk: the manifest
records where they start in every unit (``layout.values``, taken from pyarrow's footer and
checked against the values written: ``_parquet_layout``), and the reader reads them in place
(``_parquet_read``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..io.checksum import DEFAULT_CHECKSUM, checksum_fn
from ..schema import Column
from ._arrow_schema import FIXED_SIZE_BINARY, arrow_arrays, arrow_schema
from ._parquet_check import check_parquet_files
from ._parquet_layout import find_offsets, offsets_crc, stored_as, stored_bytes, stored_nbytes, validate_layout
from ._parquet_read import Reader
from ._sink import TrackingSink
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
        self.schema = arrow_schema(columns, FIXED_SIZE_BINARY)
        self.codec = _PARQUET_CODEC[codec]
        # uncompressed: how each column's values lie in its page, to find them after each file
        # (ragged columns: None, pyarrow decodes them)
        self._kinds = [None if c.ragged else stored_as(c, FIXED_SIZE_BINARY) for c in columns] \
            if codec == "none" else None
        # one page per column chunk (the values back to back); a chunk over 1 GiB gets more
        # pages and is then left to pyarrow to decode (find_offsets)
        widest = max(c.row_nbytes * unit_rows if c.ragged else
                     stored_nbytes(c, stored_as(c, FIXED_SIZE_BINARY), unit_rows) for c in columns)
        self._page_bytes, self._page_rows = min(widest + (1 << 20), 1 << 30), unit_rows
        self._crc = checksum_fn("crc32c")
        self._value_crcs: list[list[int]] = []  # per unit of the open file: each column's values' CRC-32C
        self.values: dict[str, list[int]] = {c.name: [] for c in columns}
        self._no_offsets: set[str] = set()  # columns whose values were not found where expected
        self.files: list[str] = []
        self.loc: dict[str, list[int]] = {"file": [], "row_group": [], "offset": [], "size": [], "crc32": []}
        # per file: the bytes after its last row group (FileMetaData, its length, the magic), for verify
        self.footers: dict[str, list[int]] = {"footer_size": [], "footer_crc32c": []}
        self.stored: list[int] = []
        # per ragged column, the decoded bytes of its values in each unit (layout.ragged_nbytes)
        self.ragged_nbytes: dict[str, list[int]] = {c.name: [] for c in columns if c.ragged}
        self._writer: Any = None
        self._sink: TrackingSink | None = None
        self._groups = 0

    def _new_file(self) -> None:
        import pyarrow.parquet as pq

        self._close_file()
        name = f"part-{self._unit // self.units_per_file:05d}.parquet"
        self.files.append(name)
        self._sink = TrackingSink(self.folder / name)
        self._writer = pq.ParquetWriter(
            self._sink, self.schema, compression=self.codec, use_dictionary=False, write_statistics=False,
            write_page_checksum=True, data_page_size=self._page_bytes, max_rows_per_page=self._page_rows)
        self._sink.take_crc()  # the magic bytes belong to no row group
        self._groups = 0

    def write_unit(self, data: dict[str, np.ndarray]) -> None:
        import pyarrow as pa

        if self._sink is None or self._unit % self.units_per_file == 0:
            self._new_file()
        assert self._sink is not None
        arrays = {c.name: data[c.name] if c.ragged else np.ascontiguousarray(data[c.name], dtype=c.np_dtype)
                  for c in self.columns}
        rows = len(arrays[self.columns[0].name])
        for c in self.columns:
            if c.ragged:
                r = arrays[c.name]
                self.ragged_nbytes[c.name].append(int(r.offsets[-1] - r.offsets[0]) * c.item_nbytes)
        if self._kinds is not None:
            self._value_crcs.append([0 if how is None else self._crc(stored_bytes(c, how, arrays[c.name]))
                                     for c, how in zip(self.columns, self._kinds)])
        table = pa.Table.from_arrays([a for _, a in arrow_arrays(self.columns, self.schema, arrays)],
                                     schema=self.schema)
        start = self._sink.pos
        self._writer.write_table(table, row_group_size=max(1, rows))
        self._sink.flush()
        size = self._sink.pos - start
        self.loc["file"].append(len(self.files) - 1)
        self.loc["row_group"].append(self._groups)
        self.loc["offset"].append(start)
        self.loc["size"].append(size)
        self.loc["crc32"].append(self._sink.take_crc())
        self.stored.append(size)
        self._groups += 1
        self._unit += 1

    def write_units(self, data: dict[str, np.ndarray]) -> None:
        """Write consecutive units: ``data`` holds ``k * unit_rows`` rows (the last may be short)."""
        n = len(data[self.columns[0].name])
        for lo in range(0, n, self.unit_rows):
            self.write_unit({name: v[lo:lo + self.unit_rows] for name, v in data.items()})

    def _close_file(self, find: bool = True) -> None:
        """Close the open file (its footer recorded for verify) and, uncompressed, find where
        its units' values start (``find``; not for a failed conversion)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            assert self._sink is not None
            self.footers["footer_crc32c"].append(self._sink.crc)
            self.footers["footer_size"].append(self._sink.pos - self._sink.mark)
        if self._sink is not None:
            self._sink.close()
            self._sink = None
            if find and self._kinds is not None and self._value_crcs:
                n = len(self._value_crcs)
                found = find_offsets(self.folder / self.files[-1], self.columns, self._kinds, 0, self._value_crcs,
                                     self.loc["offset"][-n:])
                for c, at in zip(self.columns, found):
                    if at is None:
                        self._no_offsets.add(c.name)
                    else:
                        self.values[c.name] += at
        self._value_crcs = []

    def finish(self) -> WriteResult:
        self._close_file()
        layout: dict[str, Any] = {**self.loc, **self.footers, "checksum": DEFAULT_CHECKSUM, "page_checksums": True,
                                  "tensors": FIXED_SIZE_BINARY}
        if self._kinds is not None:  # where each unit's values start in its row group, per column
            _put_values(layout, {k: v for k, v in self.values.items() if k not in self._no_offsets})
        if self.ragged_nbytes:
            layout["ragged_nbytes"] = self.ragged_nbytes
        return self.files, layout, self.stored, list(self.loc["crc32"])

    @staticmethod
    def combine(parts: list[WriteResult]) -> WriteResult:
        """What :meth:`finish` returns for the whole dataset, from the parts' results in unit order."""
        files: list[str] = []
        first = parts[0][1]
        layout: dict[str, Any] = {"file": [], "row_group": [], "offset": [], "size": [], "crc32": [],
                                  "footer_size": [], "footer_crc32c": [],
                                  "checksum": first["checksum"], "page_checksums": first["page_checksums"],
                                  "tensors": first["tensors"]}
        # the columns every part found in place
        values: dict[str, list[int]] = {name: [] for name in first.get("values", {})
                                        if all(name in p[1].get("values", {}) for p in parts)}
        for part_files, part_layout, _, _ in parts:
            layout["file"] += [f + len(files) for f in part_layout["file"]]
            for k in ("row_group", "offset", "size", "crc32", "footer_size", "footer_crc32c"):
                layout[k] += part_layout[k]
            for name, v in values.items():
                v += part_layout["values"][name]
            files += part_files
        _put_values(layout, values)
        if "ragged_nbytes" in first:
            layout["ragged_nbytes"] = {k: [n for p in parts for n in p[1]["ragged_nbytes"][k]]
                                       for k in first["ragged_nbytes"]}
        return files, layout, [s for p in parts for s in p[2]], [c for p in parts for c in p[3]]

    def abort(self) -> None:
        try:
            self._close_file(find=False)
        except Exception:  # noqa: BLE001 - the conversion already failed; keep its error
            pass


def _put_values(layout: dict[str, Any], values: dict[str, list[int]]) -> None:
    """``layout.values`` and its checksum, for the columns of ``values`` (in schema order), if any."""
    if values:
        layout["values"] = values
        layout["values_crc32c"] = offsets_crc(list(values), values)


class ParquetFormat(StorageFormat):
    """Parquet files of one row group per unit, a new file every ``shard_bytes`` of decoded rows."""

    name = "parquet"
    reader_class = Reader
    writer_class = Writer

    def default_threads(self, cores: int) -> int:
        # One writing thread: a second gained nothing on 2 cores (docs/PERFORMANCE.md, Parquet write path)
        return 1

    def partial_reads(self, manifest: Manifest, names: list[str]) -> bool:
        # columns whose values are stored plain have offsets in the layout (read in place)
        values = manifest.layout.get("values", {})
        return all(n in values for n in names)

    def units_per_file(self, columns: tuple[Column, ...], rows: int, unit_rows: int, shard_bytes: int) -> int:
        return units_per_file(columns, rows, unit_rows, shard_bytes)

    def validate_layout(self, layout: dict[str, Any], n_units: int, n_files: int, columns: tuple[Column, ...],
                        where: str, *, codec: str, unit_rows: np.ndarray | None) -> dict[str, Any]:
        return validate_layout(layout, n_units, n_files, columns, where, codec=codec, unit_rows=unit_rows)

    def check_files(self, checker: Any) -> str:
        return check_parquet_files(checker)


FORMAT = ParquetFormat()
