"""Where the values of a PLAIN, uncompressed Parquet column chunk lie, without decoding them.

streambatch's own Parquet files store tensors as non-null ``FixedSizeList`` columns, so a
chunk's values are exactly ``rows * row_items`` fixed-width numbers; only the repetition
and definition levels in front of each page's values differ from a raw array.  pyarrow
decodes such a chunk value by value (0.4-1.3 GB/s for float32[128] rows); reading the page
headers (Thrift compact protocol) and viewing the values in place runs at memcpy speed.

:func:`plain_value_ranges` returns ``None`` for anything it does not handle (compression,
dictionary or other encodings, nulls, an unexpected page), and the reader then falls back
to pyarrow, which also produces the errors for damaged pages.
"""

from __future__ import annotations

from typing import Any

__all__ = ["plain_value_ranges", "chunk_plan"]

# Parquet PageType
_DATA_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2 = 0, 2, 3
_PLAIN = 0
# physical type -> value width in bytes and the numpy kinds it may hold
_PHYSICAL = {"INT32": (4, "iu"), "INT64": (8, "iu"), "FLOAT": (4, "f"), "DOUBLE": (8, "f")}


class _Unsupported(Exception):
    """The page is not something this fast path reads; use pyarrow."""


class _Compact:
    """Just enough of Thrift's compact protocol to read a ``PageHeader``."""

    def __init__(self, buf: memoryview, pos: int) -> None:
        self.buf = buf
        self.pos = pos

    def byte(self) -> int:
        if self.pos >= len(self.buf):
            raise _Unsupported("page header runs past the chunk")
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        out = shift = 0
        while True:
            b = self.byte()
            out |= (b & 0x7F) << shift
            if not b & 0x80:
                return out
            shift += 7
            if shift > 70:
                raise _Unsupported("varint too long")

    def zigzag(self) -> int:
        v = self.varint()
        return (v >> 1) ^ -(v & 1)

    def skip(self, ttype: int) -> None:
        if ttype in (1, 2):  # bool true/false: the value is in the type
            return
        if ttype == 3:
            self.byte()
        elif ttype in (4, 5, 6):
            self.varint()
        elif ttype == 7:
            self.pos += 8
        elif ttype == 8:
            self.pos += self.varint()
        elif ttype in (9, 10):
            head = self.byte()
            size = head >> 4
            if size == 15:
                size = self.varint()
            for _ in range(size):
                self.skip(head & 0x0F)
        elif ttype == 11:
            size = self.varint()
            if size:
                kv = self.byte()
                for _ in range(size):
                    self.skip(kv >> 4)
                    self.skip(kv & 0x0F)
        elif ttype == 12:
            self.struct({})
        else:
            raise _Unsupported(f"unknown thrift type {ttype}")

    def struct(self, want: dict[int, Any]) -> dict[int, Any]:
        """Read a struct; fields whose id is in ``want`` are read (ints, or a nested struct
        described by a dict), the rest skipped."""
        out: dict[int, Any] = {}
        fid = 0
        while True:
            head = self.byte()
            if head == 0:
                return out
            ttype = head & 0x0F
            delta = head >> 4
            fid = fid + delta if delta else self.zigzag()
            spec = want.get(fid)
            if spec is None:
                self.skip(ttype)
            elif isinstance(spec, dict) and ttype == 12:
                out[fid] = self.struct(spec)
            elif spec is int and ttype in (3, 4, 5, 6):
                out[fid] = self.byte() if ttype == 3 else self.zigzag()
            elif spec is bool and ttype in (1, 2):
                out[fid] = ttype == 1
            else:
                raise _Unsupported(f"field {fid} has thrift type {ttype}")


# PageHeader: 1 type, 2 uncompressed size, 3 compressed size, 5 DataPageHeader, 8 DataPageHeaderV2
# DataPageHeader: 1 num_values, 2 encoding; V2: 1 num_values, 2 num_nulls, 4 encoding,
# 5 definition_levels_byte_length, 6 repetition_levels_byte_length, 7 is_compressed
_V1 = {1: int, 2: int}
_V2 = {1: int, 2: int, 4: int, 5: int, 6: int, 7: bool}
_HEADER = {1: int, 2: int, 3: int, 5: _V1, 8: _V2}


def plain_value_ranges(chunk: memoryview, n_values: int, width: int, max_rep: int,
                       max_def: int) -> list[tuple[int, int]] | None:
    """``[(offset, nbytes), ...]`` of the values in ``chunk`` (one column chunk's bytes), or ``None``.

    The ranges hold exactly ``n_values`` values of ``width`` bytes, in order; ``None`` if any
    page is not an uncompressed PLAIN data page without nulls.
    """
    out: list[tuple[int, int]] = []
    pos, seen = 0, 0
    try:
        while seen < n_values:
            r = _Compact(chunk, pos)
            h = r.struct(_HEADER)
            body, size = r.pos, h.get(3, -1)
            if size < 0 or h.get(2) != size or body + size > len(chunk):
                return None  # compressed, or a size that does not fit the chunk
            kind = h.get(1)
            if kind == _DATA_PAGE and 5 in h:
                d = h[5]
                count, at, end = d.get(1, -1), body, body + size
                if d.get(2) != _PLAIN:
                    return None
                for present in (max_rep > 0, max_def > 0):  # v1: levels are length-prefixed
                    if present:
                        if at + 4 > end:
                            return None
                        at += 4 + int.from_bytes(chunk[at:at + 4], "little")
            elif kind == _DATA_PAGE_V2 and 8 in h:
                d = h[8]
                count = d.get(1, -1)
                if d.get(4) != _PLAIN or d.get(2, 0) != 0 or d.get(7, True):
                    return None
                at, end = body + d.get(5, 0) + d.get(6, 0), body + size
            else:
                return None  # a dictionary or index page
            if count < 0 or at > end or end - at != count * width:
                return None
            out.append((at, end - at))
            seen += count
            pos = end
    except _Unsupported:
        return None
    return out if seen == n_values else None


def chunk_plan(metadata: Any, rg: int, column_index: int, np_dtype: Any) -> tuple[int, int, int, int] | None:
    """``(offset, size, max_rep, max_def)`` of a column chunk in file ``metadata`` if its
    layout allows the fast path (uncompressed, no dictionary, a physical type of the dtype's
    width), else ``None``.  ``offset`` is from the start of the file."""
    col = metadata.row_group(rg).column(column_index)
    width_kinds = _PHYSICAL.get(col.physical_type)
    if (width_kinds is None or width_kinds[0] != np_dtype.itemsize or np_dtype.kind not in width_kinds[1]
            or col.compression != "UNCOMPRESSED" or col.has_dictionary_page
            or not set(col.encodings) <= {"PLAIN", "RLE", "BIT_PACKED"}):
        return None
    schema_col = metadata.schema.column(column_index)
    return (col.data_page_offset, col.total_compressed_size, schema_col.max_repetition_level,
            schema_col.max_definition_level)
