"""A fast decoder for the uncompressed Parquet column chunks that streambatch writes.

streambatch's own Parquet files store tensors as non-null ``FixedSizeList`` columns, so a
chunk's values are exactly ``rows * row_items`` numbers; the repetition and definition
levels in front of each page's values carry no information and are skipped.  pyarrow
decodes such chunks value by value, through the levels (0.4-1.3 GB/s for float32[128]
rows, ~0.1 GB/s for dictionary-encoded uint8 images).  Here the page headers are read
(Thrift compact protocol) and the values are viewed in place (PLAIN pages) or looked up
in the dictionary from indices that are, for incompressible 8-bit data, raw bytes.

:func:`decode_chunk` returns ``None`` for anything it does not handle (compression, other
encodings, nulls, an unexpected page), and the reader then falls back to pyarrow, which
also produces the errors for damaged pages.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["IDENTITY", "decode_chunk", "decode_pages", "chunk_plan", "physical_for"]

# Parquet PageType
_DATA_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2 = 0, 2, 3
# Parquet Encoding
_PLAIN, _PLAIN_DICTIONARY, _RLE_DICTIONARY = 0, 2, 8
# physical type -> value width in bytes and the numpy kinds it may hold
_PHYSICAL = {"INT32": (4, "iu"), "INT64": (8, "iu"), "FLOAT": (4, "f"), "DOUBLE": (8, "f")}


# the identity dictionaries of 1-byte columns, as INT32 PLAIN pages (see _parquet_write)
IDENTITY = {name: np.arange(256, dtype=np.uint8).view(name).astype("<i4").tobytes() for name in ("int8", "uint8")}
_NO_LUT = np.zeros(0, np.int32)  # a dictionary seen but not decoded (skip=True)


class _Unsupported(Exception):
    """The page is not something this fast path reads; use pyarrow."""


def _varint(b: bytes, pos: int) -> tuple[int, int]:
    """An unsigned LEB128 varint of ``b`` at ``pos``: ``(value, next position)``."""
    out = shift = 0
    while True:
        x = b[pos]
        pos += 1
        out |= (x & 0x7F) << shift
        if x < 0x80:
            return out, pos
        shift += 7
        if shift > 70:
            raise _Unsupported("varint too long")


def _skip(b: bytes, pos: int, ttype: int) -> int:
    """The position after a value of Thrift compact type ``ttype`` at ``pos``."""
    if ttype in (1, 2):  # bool true/false: the value is in the type
        return pos
    if ttype == 3:
        return pos + 1
    if ttype in (4, 5, 6):
        return _varint(b, pos)[1]
    if ttype == 7:
        return pos + 8
    if ttype == 8:
        size, pos = _varint(b, pos)
        return pos + size
    if ttype in (9, 10):
        head = b[pos]
        pos += 1
        size = head >> 4
        if size == 15:
            size, pos = _varint(b, pos)
        for _ in range(size):
            pos = _skip(b, pos, head & 0x0F)
        return pos
    if ttype == 11:
        size, pos = _varint(b, pos)
        if size:
            kv = b[pos]
            pos += 1
            for _ in range(size):
                pos = _skip(b, _skip(b, pos, kv >> 4), kv & 0x0F)
        return pos
    if ttype == 12:
        return _struct(b, pos, {})[1]
    raise _Unsupported(f"unknown thrift type {ttype}")


def _struct(b: bytes, pos: int, want: dict[int, Any]) -> tuple[dict[int, Any], int]:
    """Just enough of Thrift's compact protocol to read a ``PageHeader``: the struct at
    ``pos``, whose fields with an id in ``want`` are read (ints, bools, or a nested struct
    described by a dict) and the rest skipped; ``(fields, next position)``.  Reads past the
    end of ``b`` raise IndexError."""
    out: dict[int, Any] = {}
    fid = 0
    while True:
        head = b[pos]
        pos += 1
        if head == 0:
            return out, pos
        ttype = head & 0x0F
        if head >> 4:
            fid += head >> 4
        else:
            v, pos = _varint(b, pos)
            fid = (v >> 1) ^ -(v & 1)
        spec = want.get(fid)
        if spec is None:
            pos = _skip(b, pos, ttype)
        elif spec is int and ttype in (4, 5, 6):
            v = b[pos]
            if v < 0x80:  # one byte (types, encodings): no call
                pos += 1
            else:
                v, pos = _varint(b, pos)
            out[fid] = (v >> 1) ^ -(v & 1)
        elif spec is int and ttype == 3:
            out[fid] = b[pos]
            pos += 1
        elif isinstance(spec, dict) and ttype == 12:
            out[fid], pos = _struct(b, pos, spec)
        elif spec is bool and ttype in (1, 2):
            out[fid] = ttype == 1
        else:
            raise _Unsupported(f"field {fid} has thrift type {ttype}")


def _page_header(buf: memoryview, pos: int) -> tuple[dict[int, Any], int]:
    """The ``PageHeader`` at ``pos`` of ``buf`` and where its page's body starts.  The parse
    runs on a copy of the next bytes (``bytes`` indexing is several times faster than a
    memoryview's); a header longer than that is retried on all of the rest."""
    for span in (512, len(buf) - pos):
        try:
            h, n = _struct(bytes(buf[pos:pos + span]), 0, _HEADER)
            return h, pos + n
        except IndexError:
            if span >= len(buf) - pos:
                break
    raise _Unsupported("page header runs past the chunk")


# PageHeader: 1 type, 2 uncompressed size, 3 compressed size, 5 DataPageHeader, 8 DataPageHeaderV2
# DataPageHeader: 1 num_values, 2 encoding; V2: 1 num_values, 2 num_nulls, 4 encoding,
# 5 definition_levels_byte_length, 6 repetition_levels_byte_length, 7 is_compressed
_V1 = {1: int, 2: int}
_V2 = {1: int, 2: int, 4: int, 5: int, 6: int, 7: bool}
_DICT = {1: int, 2: int}
_HEADER = {1: int, 2: int, 3: int, 5: _V1, 7: _DICT, 8: _V2}


def _data_region(chunk: memoryview, h: dict[int, Any], body: int, max_rep: int,
                 max_def: int) -> tuple[int, int, int, int]:
    """``(encoding, values, start, end)`` of a data page's encoded values (levels skipped)."""
    end = body + h[3]
    if h.get(1) == _DATA_PAGE and 5 in h:
        d, at = h[5], body
        for present in (max_rep > 0, max_def > 0):  # v1: levels are length-prefixed
            if present:
                if at + 4 > end:
                    raise _Unsupported("levels run past the page")
                at += 4 + int.from_bytes(chunk[at:at + 4], "little")
        return d.get(2, -1), d.get(1, -1), at, end
    if h.get(1) == _DATA_PAGE_V2 and 8 in h:
        d = h[8]
        if d.get(2, 0) != 0 or d.get(7, True):
            raise _Unsupported("nulls, or compressed values")
        return d.get(4, -1), d.get(1, -1), body + d.get(5, 0) + d.get(6, 0), end
    raise _Unsupported("not a data page")


def _hybrid(data: memoryview, count: int, width: int) -> list[np.ndarray]:
    """Parquet's RLE / bit-packed hybrid encoding (dictionary indices): arrays holding ``count``
    values in order, the last one possibly padded (a bit-packed run ends on a group of 8)."""
    if width == 0:
        return [np.zeros(count, np.uint32)]
    run_bytes = 63 * width + 1  # pyarrow's longest literal run: 63 groups of 8 values, a 1-byte header
    full = min(count // 504, len(data) // run_bytes)
    parts: list[np.ndarray] = []
    pos = seen = 0
    if width == 8 and full and data[0] == 127:  # incompressible bytes (noise, photos): runs of 504 literals
        runs = np.frombuffer(data, np.uint8, count=full * run_bytes).reshape(full, run_bytes)
        literal = runs[:, 0] == 127
        k = full if literal.all() else int(np.argmin(literal))
        if k:
            parts.append(runs[:k, 1:])  # (k, 504), strided: np.take reads it in place
            pos, seen = k * run_bytes, k * 504
    value_bytes = (width + 7) // 8
    while seen < count:
        try:
            head, pos = _varint(data, pos)
        except IndexError:
            raise _Unsupported("run header past the page") from None
        if head & 1:  # bit-packed: (head >> 1) groups of 8 values, width bytes per group
            n = (head >> 1) * 8
            nbytes = (head >> 1) * width
            if pos + nbytes > len(data):
                raise _Unsupported("bit-packed run past the page")
            raw = np.frombuffer(data, np.uint8, count=nbytes, offset=pos)
            if width == 8:
                vals = raw
            else:
                bits = np.unpackbits(raw, bitorder="little").reshape(-1, width)
                vals = bits.astype(np.uint32) @ (np.uint32(1) << np.arange(width, dtype=np.uint32))
            pos += nbytes
        else:  # repeated: head >> 1 copies of one little-endian value (no more than the page holds)
            n = min(head >> 1, count - seen)
            if pos + value_bytes > len(data) or n == 0:
                raise _Unsupported("bad repeated run")
            v = int.from_bytes(data[pos:pos + value_bytes], "little")
            vals = np.full(n, v, np.uint32)
            pos += value_bytes
        parts.append(vals)
        seen += n
    return parts


def _pairwise(idx: np.ndarray, dst: np.ndarray) -> bool:
    """Whether 8-bit indices ``idx`` may be looked up two at a time into 8-bit ``dst``: both
    have an even, contiguous last axis and ``dst`` is 2-byte aligned (unaligned output makes
    numpy buffer the result), and there are enough of them to repay building the 64K table."""
    return (idx.dtype == np.uint8 and dst.dtype.itemsize == 1 and idx.size >= 1 << 16
            and idx.shape[-1] % 2 == 0 and idx.strides[-1] == 1 and dst.strides[-1] == 1
            and dst.ctypes.data % 2 == 0)


def _lut16(lut: np.ndarray) -> np.ndarray:
    """The 65536-entry table that maps two 8-bit indices read as one little-endian uint16 to
    their two looked-up bytes: half the elements for ``np.take``, which widens every index to
    intp (an 8-bit image unit decodes ~2x faster)."""
    full = np.zeros(256, lut.dtype)
    full[:min(len(lut), 256)] = lut[:256]  # 8-bit indices reach the first 256 entries only
    lo = full.view(np.uint8).astype("<u2")  # the bytes: int8 -1 is 0x00FF, not sign-extended 0xFFFF
    return (lo[None, :] | (lo[:, None] << 8)).reshape(-1)


def decode_chunk(chunk: memoryview, n_values: int, physical: np.dtype, max_rep: int, max_def: int,
                 dtype: np.dtype | None = None, out: np.ndarray | None = None) -> np.ndarray | None:
    """The ``n_values`` values of one column chunk (its bytes), or ``None``.

    Handles uncompressed pages without nulls that are PLAIN or dictionary-encoded (a PLAIN
    dictionary page, then RLE / bit-packed indices); ``None`` for anything else, which the
    caller leaves to pyarrow.  The values come out as ``dtype`` (default ``physical``), written
    into ``out`` (1-D, ``n_values`` long, e.g. a view of the loader's window buffer) when given,
    so that each value is copied once, from the page to its destination.
    """
    got = decode_pages(chunk, 0, n_values, physical, max_rep, max_def, dtype, out)
    return None if got is None else got[0]


def decode_pages(buf: memoryview, pos: int, n_values: int, physical: np.dtype, max_rep: int, max_def: int,
                 dtype: np.dtype | None = None, out: np.ndarray | None = None,
                 skip: bool = False) -> tuple[np.ndarray | None, int] | None:
    """:func:`decode_chunk` for the column chunk that starts at ``pos`` of ``buf`` (e.g. a whole
    row group, whose chunks follow each other in schema order): ``(values, end)``, where
    ``end`` is where the chunk's pages end, or ``None``.  ``skip`` only walks the page
    headers (``values`` is then ``None``)."""
    if out is None and not skip:
        out = np.empty(n_values, dtype if dtype is not None else physical)
    lut: np.ndarray | None = None
    identity = False
    seen = 0
    width = physical.itemsize
    try:
        while seen < n_values:
            h, body = _page_header(buf, pos)
            size = h.get(3, -1)
            if size < 0 or h.get(2) != size or body + size > len(buf):
                return None  # compressed, or a size that does not fit the chunk
            pos = body + size
            if h.get(1) == _DICTIONARY_PAGE and 7 in h and lut is None:
                d = h[7]
                if d.get(2, _PLAIN) not in (_PLAIN, _PLAIN_DICTIONARY) or d.get(1, -1) * width != size:
                    return None
                if out is not None:
                    lut = np.frombuffer(buf, physical, count=d[1], offset=body).astype(out.dtype)
                    # streambatch's own writer stores 1-byte columns with the identity dictionary
                    # (entry b is the value whose byte is b): the indices are the values
                    identity = out.dtype.itemsize == 1 and bytes(buf[body:body + size]) == IDENTITY.get(out.dtype.name)
                else:
                    lut = _NO_LUT
                continue
            encoding, count, at, end = _data_region(buf, h, body, max_rep, max_def)
            if count < 0 or at > end or seen + count > n_values:
                return None
            if out is None:
                pass
            elif encoding == _PLAIN:
                if end - at != count * width:
                    return None
                np.copyto(out[seen:seen + count], np.frombuffer(buf, physical, count=count, offset=at),
                          casting="unsafe")
            elif encoding in (_RLE_DICTIONARY, _PLAIN_DICTIONARY) and lut is not None and at < end:
                bits = buf[at]
                filled = seen
                pairs = None  # lut16, built on first use
                for idx in _hybrid(buf[at + 1:end], count, bits):
                    n = min(idx.size, seen + count - filled)
                    if idx.ndim == 1:
                        idx = idx[:n]
                    if len(lut) < 1 << bits and n and int(idx.max()) >= len(lut):
                        return None
                    dst = out[filled:filled + n].reshape(idx.shape)
                    if identity and idx.dtype == np.uint8:
                        np.copyto(dst.view(np.uint8), idx)
                    elif _pairwise(idx, dst):
                        if pairs is None:
                            pairs = _lut16(lut)
                        np.take(pairs, idx.view(np.uint16), out=dst.view(np.uint16), mode="clip")
                    else:
                        # mode="clip": no bounds-checking copy (checked above where it can fail);
                        # np.take is 2.5x faster than lut[idx] for uint8 indices
                        np.take(lut, idx, out=dst, mode="clip")
                    filled += n
                if filled != seen + count:
                    return None
            else:
                return None
            seen += count
    except _Unsupported:
        return None
    return (out, pos) if seen == n_values else None


def chunk_plan(metadata: Any, rg: int, column_index: int, np_dtype: Any) -> tuple[int, int, np.dtype, int, int] | None:
    """``(offset, size, physical dtype, max_rep, max_def)`` of a column chunk in file
    ``metadata`` if :func:`decode_chunk` may read it (uncompressed; a numeric physical type
    that holds the dtype: INT32 for integers up to 32 bits, INT64, FLOAT, DOUBLE), else
    ``None``.  ``offset`` is from the start of the file."""
    col = metadata.row_group(rg).column(column_index)
    width_kinds = _PHYSICAL.get(col.physical_type)
    if (width_kinds is None or np_dtype.kind not in width_kinds[1] or col.compression != "UNCOMPRESSED"
            or (np_dtype.kind == "f" and width_kinds[0] != np_dtype.itemsize)
            or np_dtype.itemsize > width_kinds[0]
            or not set(col.encodings) <= {"PLAIN", "RLE", "BIT_PACKED", "RLE_DICTIONARY", "PLAIN_DICTIONARY"}):
        return None
    physical = _physical(np_dtype, width_kinds[0])
    offset = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
    schema_col = metadata.schema.column(column_index)
    return (offset, col.total_compressed_size, physical, schema_col.max_repetition_level,
            schema_col.max_definition_level)


def _physical(np_dtype: np.dtype, width: int) -> np.dtype:
    """The numpy view of a ``width``-byte physical value that holds ``np_dtype``."""
    kind = "u" if np_dtype.kind == "u" and np_dtype.itemsize == width else ("f" if np_dtype.kind == "f" else "i")
    return np.dtype(f"<{kind}{width}")


def physical_for(np_dtype: np.dtype) -> np.dtype | None:
    """The physical values streambatch's Parquet files hold ``np_dtype`` in (INT32 for integers
    up to 32 bits, INT64, FLOAT, DOUBLE), or ``None`` for a dtype :func:`decode_pages` does not
    read (bool, float16).  Used where the footer is not consulted: the page sizes then
    catch a file that stores a column otherwise."""
    if np_dtype.kind in "iu" and np_dtype.itemsize <= 8:
        return _physical(np_dtype, 4 if np_dtype.itemsize <= 4 else 8)
    if np_dtype.kind == "f" and np_dtype.itemsize in (4, 8):
        return _physical(np_dtype, np_dtype.itemsize)
    return None
