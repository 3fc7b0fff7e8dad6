"""A writer for uncompressed Parquet files whose pages are the arrays' own bytes.

pyarrow's writer encodes a ``FixedSizeList`` column value by value through its repetition
and definition levels (npy->Parquet ran at ~200 MB/s against ~650 MB/s for npy->Zarr), and
it dictionary-encodes 1-byte columns in order of first appearance, so that every reader has
to look each byte up in a table (~0.3 ms per 258 KB image unit, the loader's bottleneck on
``img``).  Parquet has no 8-bit physical type: a uint8 written PLAIN takes an INT32, 4x its
size.

This writer produces the same logical file as pyarrow (the same Parquet schema, and the
``ARROW:schema`` footer entry that makes pyarrow and pandas read ``FixedSizeList`` columns
with their field metadata) with pages laid out for reading in place:

* one data page (format v1) per column chunk, PLAIN values: numeric columns are their
  little-endian bytes (ints narrower than 32 bits widened to INT32, as Parquet requires);
* 1-byte columns are dictionary-encoded with the *identity* dictionary (index ``b`` holds
  the value whose byte is ``b``) and a single bit-packed run of 8-bit indices, so the
  indices are the column's raw bytes and a reader that sees the identity copies them;
* a tensor column's levels are runs (``0``, then ``items - 1`` ones per row; all ones), a
  few bytes per row;
* each page carries Parquet's CRC-32 of its bytes, as pyarrow's ``write_page_checksum``.

Only what streambatch writes is covered (non-null numeric scalars and fixed-shape tensors,
no compression); :func:`supports` says when, and the caller uses pyarrow otherwise.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import numpy as np

from ..schema import Column
from ..io.checksum import crc32
from ._parquet_pages import IDENTITY

__all__ = ["FileWriter", "supports"]

# Parquet enums (parquet.thrift)
_INT32, _INT64, _FLOAT, _DOUBLE = 1, 2, 4, 5
_REQUIRED, _REPEATED = 0, 2
_PLAIN, _RLE, _RLE_DICTIONARY = 0, 3, 8
_DATA_PAGE, _DICTIONARY_PAGE = 0, 2
_LIST = 3  # ConvertedType.LIST
# numpy dtype -> (physical type, stored numpy dtype, ConvertedType, bit width, signed)
_TYPES: dict[str, tuple[int, str, int | None, int, bool]] = {
    "int8": (_INT32, "<i4", 15, 8, True), "int16": (_INT32, "<i4", 16, 16, True),
    "int32": (_INT32, "<i4", None, 32, True), "int64": (_INT64, "<i8", None, 64, True),
    "uint8": (_INT32, "<i4", 11, 8, False), "uint16": (_INT32, "<i4", 12, 16, False),
    "uint32": (_INT32, "<u4", 13, 32, False), "uint64": (_INT64, "<u8", 14, 64, False),
    "float32": (_FLOAT, "<f4", None, 32, True), "float64": (_DOUBLE, "<f8", None, 64, True),
}
# Thrift compact protocol field types
_T_TRUE, _T_FALSE, _T_BYTE, _T_I16, _T_I32, _T_I64, _T_BINARY, _T_LIST, _T_STRUCT = 1, 2, 3, 4, 5, 6, 8, 9, 12


def supports(columns: tuple[Column, ...], codec: str, unit_rows: int) -> bool:
    """Whether :class:`FileWriter` can write these columns with this codec in units of up to
    ``unit_rows`` rows: each column chunk is one page, whose size and value count are Thrift
    i32s (units of over 2 GiB per column, far beyond any memory budget, go to pyarrow)."""
    return codec == "none" and all(
        c.np_dtype.name in _TYPES
        and unit_rows * c.row_items * np.dtype(_TYPES[c.np_dtype.name][1]).itemsize + (1 << 20) < 1 << 31
        for c in columns)


_ONE_BYTE = [bytes([v]) for v in range(0x80)]


def _varint(v: int) -> bytes:
    """ULEB128 of ``v`` >= 0 (each page header holds ~9: a quarter of the writer's Python time
    went here before the one-byte values came from a table)."""
    if v < 0x80:
        return _ONE_BYTE[v]
    if v < 0x4000:  # sizes of a unit's pages; then value counts and offsets
        return bytes((v & 0x7F | 0x80, v >> 7))
    if v < 0x200000:
        return bytes((v & 0x7F | 0x80, v >> 7 & 0x7F | 0x80, v >> 14))
    out = []
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _zigzag(v: int) -> bytes:
    return _varint((v << 1) ^ (v >> 63))


class _Struct:
    """A Thrift compact-protocol struct, built field by field in increasing id order."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self._last = 0

    def _head(self, fid: int, ttype: int) -> None:
        delta = fid - self._last
        if 0 < delta <= 15:
            self.buf.append(delta << 4 | ttype)
        else:
            self.buf.append(ttype)
            self.buf += _zigzag(fid)
        self._last = fid

    def int(self, fid: int, v: int, ttype: int = _T_I32) -> _Struct:
        self._head(fid, ttype)
        if ttype == _T_BYTE:
            self.buf.append(v & 0xFF)
        else:
            self.buf += _zigzag(v)
        return self

    def i64(self, fid: int, v: int) -> _Struct:
        return self.int(fid, v, _T_I64)

    def bool(self, fid: int, v: bool) -> _Struct:
        self._head(fid, _T_TRUE if v else _T_FALSE)
        return self

    def binary(self, fid: int, v: bytes) -> _Struct:
        self._head(fid, _T_BINARY)
        self.buf += _varint(len(v)) + v
        return self

    def struct(self, fid: int, v: _Struct) -> _Struct:
        self._head(fid, _T_STRUCT)
        self.buf += v.end()
        return self

    def list(self, fid: int, etype: int, items: list[Any]) -> _Struct:
        self._head(fid, _T_LIST)
        n = len(items)
        self.buf += bytes([n << 4 | etype]) if n < 15 else bytes([0xF0 | etype]) + _varint(n)
        for it in items:
            if etype == _T_STRUCT:
                self.buf += it if isinstance(it, bytes) else it.end()  # bytes: an ended struct
            elif etype == _T_BINARY:
                self.buf += _varint(len(it)) + it
            else:
                self.buf += _zigzag(it)
        return self

    def end(self) -> bytes:
        return bytes(self.buf) + b"\x00"


def _schema_elements(columns: tuple[Column, ...]) -> list[_Struct]:
    """Parquet's flattened schema tree, as pyarrow writes it for streambatch's Arrow schema."""
    elements = [_Struct().binary(4, b"schema").int(5, len(columns))]
    for c in columns:
        physical, _, converted, bits, signed = _TYPES[c.np_dtype.name]
        leaf = _Struct().int(1, physical).int(3, _REQUIRED)
        name = c.name.encode()
        if c.shape:
            elements.append(_Struct().int(3, _REQUIRED).binary(4, name).int(5, 1).int(6, _LIST)
                            .struct(10, _Struct().struct(3, _Struct())))
            elements.append(_Struct().int(3, _REPEATED).binary(4, b"list").int(5, 1))
            name = b"element"
        leaf.binary(4, name)
        if converted is not None:
            leaf.int(6, converted).struct(10, _Struct().struct(10, _Struct().int(1, bits, _T_BYTE).bool(2, signed)))
        elements.append(leaf)
    return elements


def _page(page_type: int, body: list[Any], inner: bytes) -> list[Any]:
    """A page: its ``PageHeader`` (type, sizes, CRC-32 of the body, then ``inner``: the
    ended data or dictionary page header struct, whose field id follows from the page type),
    then the buffers of ``body``, written as they are (no joined copy).  Built as bytes
    directly: these headers are written once per column and unit."""
    size = crc = 0
    for part in body:
        size += memoryview(part).nbytes
        crc = crc32(part, crc)
    if crc >= 1 << 31:
        crc -= 1 << 32  # Thrift i32
    zsize = _zigzag(size)
    # fields 1-4 are i32 (delta 1, type 5); 5 DataPageHeader or 7 DictionaryPageHeader: a struct
    head = (b"\x15" + _zigzag(page_type) + b"\x15" + zsize + b"\x15" + zsize + b"\x15" + _zigzag(crc)
            + (b"\x1c" if page_type == _DATA_PAGE else b"\x3c") + inner + b"\x00")
    return [head, *body]


# the rest of a DataPageHeader after num_values (field 1): 2 encoding, 3-4 level encodings (RLE), end
_PLAIN_VALUES = b"\x15" + _zigzag(_PLAIN) + b"\x15" + _zigzag(_RLE) + b"\x15" + _zigzag(_RLE) + b"\x00"
_DICTIONARY_INDICES = (b"\x15" + _zigzag(_RLE_DICTIONARY) + b"\x15" + _zigzag(_RLE) + b"\x15" + _zigzag(_RLE)
                       + b"\x00")
_DICTIONARY_HEADER = _Struct().int(1, 256).int(2, _PLAIN).end()  # 256 PLAIN values


def _levels(rows: int, items: int) -> bytes:
    """The v1 repetition and definition levels of ``rows`` full non-null lists of ``items``
    values (bit width 1, RLE runs), each section prefixed by its 4-byte length."""
    if items == 1:
        rep = _varint(rows << 1) + b"\x00"
    else:  # per row: one 0 (a new list), then items - 1 ones
        rep = (b"\x02\x00" + _varint((items - 1) << 1) + b"\x01") * rows
    definition = _varint((rows * items) << 1) + b"\x01"
    return struct.pack("<I", len(rep)) + rep + struct.pack("<I", len(definition)) + definition


class FileWriter:
    """Writes one Parquet file to ``sink`` (a file object with ``write`` and ``pos``): the
    magic, then one row group per :meth:`write_row_group`, then the footer on :meth:`close`."""

    def __init__(self, sink: Any, columns: tuple[Column, ...], arrow_schema: Any, created_by: str) -> None:
        self.sink = sink
        self.columns = columns
        self._arrow = base64.b64encode(arrow_schema.serialize().to_pybytes())
        self._created_by = created_by.encode()
        self._groups: list[bytes] = []
        self._rows = 0
        self._levels: dict[tuple[int, int], bytes] = {}  # (rows, items) -> levels; units mostly share a size
        # per column: its ColumnMetaData fields 1-4 (type, encodings, path, codec), the same in every unit
        self._meta_head: dict[str, bytes] = {}
        self._stored = {c.name: np.dtype(_TYPES[c.np_dtype.name][1]) for c in columns}  # PLAIN values' dtype
        self._one_byte = {c.name: IDENTITY.get(c.np_dtype.name) for c in columns}  # identity dictionary, or None
        for c in columns:
            encodings = [_PLAIN, _RLE, _RLE_DICTIONARY] if c.np_dtype.itemsize == 1 else \
                [_PLAIN, _RLE] if c.shape else [_PLAIN]
            path = [c.name.encode(), b"list", b"element"] if c.shape else [c.name.encode()]
            head = _Struct().int(1, _TYPES[c.np_dtype.name][0]).list(2, _T_I32, encodings).list(3, _T_BINARY, path)
            self._meta_head[c.name] = bytes(head.int(4, 0).buf)
        sink.write(b"PAR1")

    def write_row_group(self, data: dict[str, np.ndarray]) -> None:
        """Write one row group; :attr:`values_at` then holds, per column, where in the file its
        values start (the array's bytes, contiguous: readers may read them straight into place)."""
        start = self.sink.pos
        self.values_at: list[int] = []
        chunks = []
        rows = 0
        for c in self.columns:
            arr = np.ascontiguousarray(data[c.name], dtype=c.np_dtype)
            rows = arr.shape[0]
            chunks.append(self._column_chunk(c, arr))
        size = self.sink.pos - start
        group = _Struct().list(1, _T_STRUCT, chunks).i64(2, size).i64(3, rows).i64(5, start).i64(6, size)
        if len(self._groups) < 1 << 15:  # the optional ordinal is an i16
            group.int(7, len(self._groups), _T_I16)
        self._groups.append(group.end())
        self._rows += rows

    def _column_chunk(self, c: Column, arr: np.ndarray) -> bytes:
        """Write the column's pages; return its ended ``ColumnChunk`` struct."""
        rows = arr.shape[0]
        values = rows * c.row_items
        start = self.sink.pos
        levels = b""
        if c.shape:
            levels = self._levels.get((rows, c.row_items)) or self._levels.setdefault(
                (rows, c.row_items), _levels(rows, c.row_items))
        identity = self._one_byte[c.name]
        if identity is not None:  # identity dictionary; the indices are the bytes themselves
            self._write(_page(_DICTIONARY_PAGE, [identity], _DICTIONARY_HEADER))
            groups = -(-values // 8)
            prefix, raw = levels + b"\x08" + _varint(groups << 1 | 1), arr.reshape(-1).view(np.uint8)
            pad = b"\x00" * (groups * 8 - values)
            inner = b"\x15" + _zigzag(values) + _DICTIONARY_INDICES
        else:
            prefix, raw, pad = levels, arr.reshape(-1).astype(self._stored[c.name], copy=False).view(np.uint8), b""
            inner = b"\x15" + _zigzag(values) + _PLAIN_VALUES
        data_offset = self.sink.pos
        self._write(_page(_DATA_PAGE, [b for b in (prefix, raw, pad) if len(b)], inner))
        self.values_at.append(self.sink.pos - len(pad) - raw.nbytes)
        zsize = _zigzag(self.sink.pos - start)
        # ColumnMetaData 5 num_values, 6-7 sizes, 9 data page offset, 11 dictionary page offset (i64s)
        meta = (self._meta_head[c.name] + b"\x16" + _zigzag(values) + b"\x16" + zsize + b"\x16" + zsize
                + b"\x26" + _zigzag(data_offset) + (b"\x26" + _zigzag(start) if identity is not None else b"")
                + b"\x00")
        return b"\x26\x00\x1c" + meta + b"\x00"  # ColumnChunk: 2 file_offset 0, 3 meta_data

    def _write(self, parts: list[Any]) -> None:
        small = b""
        for p in parts:  # the header and the levels in one write, then the values
            if isinstance(p, bytes) and len(p) < 1 << 16:
                small += p
                continue
            if small:
                self.sink.write(small)
                small = b""
            self.sink.write(p)
        if small:
            self.sink.write(small)

    def close(self) -> None:
        """Write the footer (FileMetaData, its length, the magic)."""
        meta = (_Struct().int(1, 2).list(2, _T_STRUCT, _schema_elements(self.columns)).i64(3, self._rows)
                .list(4, _T_STRUCT, self._groups)
                .list(5, _T_STRUCT, [_Struct().binary(1, b"ARROW:schema").binary(2, self._arrow)])
                .binary(6, self._created_by)).end()
        self.sink.write(meta)
        self.sink.write(struct.pack("<I", len(meta)) + b"PAR1")
