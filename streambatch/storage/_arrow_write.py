"""Writing Arrow IPC files: one record batch per shuffle unit, through pyarrow's IPC file writer.

pyarrow writes the file (magic, schema message, record batches, footer) into :class:`_Sink`, which
counts and checksums the bytes as they pass; once a file is closed it is memory-mapped to find where
each column's values start in each batch (``buffer.address`` minus the mapping's address).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..io.checksum import DEFAULT_CHECKSUM, checksum_fn
from ..schema import Column
from ._arrow_schema import arrow_arrays, arrow_schema
from ._sink import TrackingSink
from .base import WriteResult

__all__ = ["Writer", "units_per_file", "MAGIC"]

MAGIC = b"ARROW1"
_PREFIX = 16  # magic, 2 bytes of padding, the schema message's continuation marker and metadata length
_UNIT_KEYS = ("batch", "offset", "size", "crc32")
_FILE_KEYS = ("head_size", "head_crc32c", "footer_size", "footer_crc32c")


def units_per_file(columns: tuple[Column, ...], rows: int, unit_rows: int, shard_bytes: int) -> int:
    """Record batches (units) per file: ``shard_bytes`` of rows, at least one unit."""
    return max(1, min(-(-rows // unit_rows), shard_bytes // max(1, unit_rows * sum(c.row_nbytes for c in columns))))


class _Sink(TrackingSink):
    """The file pyarrow's IPC writer writes to (a ``TrackingSink``), which also finds where the
    schema message ends: pyarrow writes it with the first batch, so the checksum is split there
    (``head`` bytes of magic and schema message, checksum ``head_crc``)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.head: int | None = None
        self.head_crc = 0
        self._cut = False  # whether the checksum has been split at ``head``
        self._start = b""

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._f.write(view)
        at, self.pos = self.pos, self.pos + len(view)
        if self.head is None and len(self._start) < _PREFIX:
            self._start += bytes(view[:_PREFIX - len(self._start)])
            if len(self._start) == _PREFIX:
                if self._start[:6] != MAGIC or self._start[8:12] != b"\xff\xff\xff\xff":
                    raise RuntimeError(f"pyarrow wrote an Arrow file that does not start as expected: {self._start!r}")
                self.head = _PREFIX + int.from_bytes(self._start[12:], "little")
        if self.head is not None and not self._cut and self.head <= self.pos:
            cut = self.head - at  # the first batch starts inside (or right after) this write
            self.head_crc = self._extend(self.crc, view[:cut])
            self.crc = self._extend(0, view[cut:])
            self._cut = True
        else:
            self.crc = self._extend(self.crc, view)
        return len(view)


class Writer:
    """Appends one record batch per unit, starting a new file every ``shard_bytes`` of rows
    (:func:`units_per_file`).  A writer starting at ``first_unit`` (a file's first unit) writes
    that part only: writers of different files run in parallel, and :meth:`combine` joins them."""

    def __init__(self, folder: Path, columns: tuple[Column, ...], rows: int, unit_rows: int,
                 shard_bytes: int, codec: str, first_unit: int = 0) -> None:
        if codec != "none":
            raise ValueError(f"Arrow files are written uncompressed (codec none), not {codec!r}")
        self.folder, self.columns, self.unit_rows, self.schema = Path(folder), columns, unit_rows, arrow_schema(columns)
        self.units_per_file = units_per_file(columns, rows, unit_rows, shard_bytes)
        if first_unit % self.units_per_file:
            raise ValueError(f"an Arrow writer starts at a file's first unit, not unit {first_unit}")
        self._unit = first_unit
        self.folder.mkdir(parents=True, exist_ok=True)
        self.files: list[str] = []
        self.loc: dict[str, list[int]] = {k: [] for k in ("file", *_UNIT_KEYS)}
        self.ends: dict[str, list[int]] = {k: [] for k in _FILE_KEYS}  # per file, for verify
        self.values: dict[str, list[int]] = {c.name: [] for c in columns}  # where each unit's values start
        self.values_crc: dict[str, list[int]] = {c.name: [] for c in columns}
        self._crc = checksum_fn(DEFAULT_CHECKSUM)
        self._writer: Any = None
        self._sink: _Sink | None = None
        self._first = 0  # this file's first unit, as an index into self.loc

    def _new_file(self) -> None:
        import pyarrow as pa

        self._close_file()
        name = f"part-{self._unit // self.units_per_file:05d}.arrow"
        self.files.append(name)
        self._sink = _Sink(self.folder / name)
        self._writer = pa.ipc.new_file(self._sink, self.schema)
        self._first = len(self.loc["file"])

    def write_unit(self, data: dict[str, np.ndarray]) -> None:
        import pyarrow as pa

        if self._sink is None or self._unit % self.units_per_file == 0:
            self._new_file()
        assert self._sink is not None
        start = self._sink.pos
        flats = arrow_arrays(self.columns, self.schema, data)
        self._writer.write_batch(pa.RecordBatch.from_arrays([a for _, a in flats], schema=self.schema))
        assert self._sink.head is not None
        start = max(start, self._sink.head)  # the first batch comes after the schema message
        for c, (values, _) in zip(self.columns, flats):
            self.values_crc[c.name].append(self._crc(values.buffers()[1]))
        for k, v in zip(("file", *_UNIT_KEYS), (len(self.files) - 1, len(self.loc["file"]) - self._first, start,
                                                self._sink.pos - start, self._sink.take_crc())):
            self.loc[k].append(v)
        self._unit += 1

    def write_units(self, data: dict[str, np.ndarray]) -> None:
        """Write consecutive units: ``data`` holds ``k * unit_rows`` rows (the last may be short)."""
        n = len(data[self.columns[0].name])
        for lo in range(0, n, self.unit_rows):
            self.write_unit({name: v[lo:lo + self.unit_rows] for name, v in data.items()})

    def _close_file(self) -> None:
        if self._writer is None:
            return
        sink, self._sink = self._sink, None
        assert sink is not None
        try:
            self._writer.close()
        finally:
            self._writer = None
            sink.close()
        end = self.loc["offset"][-1] + self.loc["size"][-1]
        for k, v in zip(_FILE_KEYS, (sink.head, sink.head_crc, sink.pos - end, sink.crc)):
            self.ends[k].append(v)
        self._find_values(self.folder / self.files[-1])

    def _find_values(self, path: Path) -> None:
        """Where each column's values start in each record batch of the file just closed (relative
        to the batch): the address of the buffer pyarrow reads them from, in a memory map of the file."""
        import pyarrow as pa

        with pa.memory_map(str(path)) as mm:
            whole = mm.read_buffer()
            reader = pa.ipc.open_file(whole)
            for i, u in enumerate(range(self._first, len(self.loc["file"]))):
                batch = reader.get_batch(i)
                for c, col in zip(self.columns, batch.columns):
                    values = (col.values if c.shape else col).buffers()[1]
                    at = values.address - whole.address - self.loc["offset"][u]
                    if not 0 < at <= at + values.size <= self.loc["size"][u]:
                        raise RuntimeError(f"{path}: column {c.name!r} of batch {i} lies outside its message")
                    self.values[c.name].append(at)

    def finish(self) -> WriteResult:
        self._close_file()
        layout: dict[str, Any] = {"checksum": DEFAULT_CHECKSUM, **self.loc, **self.ends, "values": self.values,
                                  "values_crc32": self.values_crc}
        return self.files, layout, [int(s) for s in self.loc["size"]], list(self.loc["crc32"])

    @staticmethod
    def combine(parts: list[WriteResult]) -> WriteResult:
        """What :meth:`finish` returns for the whole dataset, from the parts' results in unit order."""
        first = parts[0][1]
        files: list[str] = []
        layout: dict[str, Any] = {"checksum": first["checksum"], "file": []}
        layout.update({k: [] for k in (*_UNIT_KEYS, *_FILE_KEYS)})
        for key in ("values", "values_crc32"):
            layout[key] = {name: [] for name in first[key]}
        for part_files, part, _, _ in parts:
            layout["file"] += [f + len(files) for f in part["file"]]
            for k in (*_UNIT_KEYS, *_FILE_KEYS):
                layout[k] += part[k]
            for key in ("values", "values_crc32"):
                for name, v in part[key].items():
                    layout[key][name] += v
            files += part_files
        return files, layout, [s for p in parts for s in p[2]], [c for p in parts for c in p[3]]

    def abort(self) -> None:
        try:
            self._close_file()
        except Exception:  # noqa: BLE001 - the conversion already failed; keep its error
            pass
