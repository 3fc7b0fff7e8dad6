"""Where a Parquet unit's values lie in its row group, and how they are stored there: the
manifest's ``layout.values`` (per column, the offset of its values in each unit's row group,
sealed by ``layout.values_crc32c``) and its check.

An uncompressed column chunk written PLAIN, in one data page, without dictionary and (a
required, non-nested column) without levels, ends with the column's values back to back:
``FixedSizeBinary`` tensors and 4- and 8-byte numbers (and float16, a 2-byte
FIXED_LEN_BYTE_ARRAY) as numpy holds them, 8- and 16-bit integers widened to INT32, booleans
packed to bits.  The writer takes each offset from pyarrow's footer and keeps it only if the
bytes there are the values it gave (:func:`find_offsets`); the reader then reads them in
place.  Datasets written before (``layout.tensors`` absent: ``FixedSizeList`` tensors) hold
offsets from streambatch's own page writer of the time, whose 1-byte values were the indices
of an identity dictionary, so their bytes too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .._fields import int_array
from ..errors import ManifestError
from ..io.checksum import CHECKSUMS, checksum_fn, extend_fn
from ..schema import Column
from ._arrow_schema import FIXED_SIZE_BINARY

__all__ = ["RAW", "INT32", "BITS", "stored_as", "stored_nbytes", "stored_bytes", "value_range", "decode",
           "find_offsets", "offsets_crc", "validate_layout"]

RAW, INT32, BITS = "raw", "int32", "bits"


def stored_as(c: Column, tensors: str | None) -> str | None:
    """How ``c``'s values lie in a page of a file whose tensors are ``tensors`` (the layout's
    field): :data:`RAW` (numpy's bytes), :data:`INT32` (1- and 2-byte integers widened) or
    :data:`BITS` (booleans, least significant bit first); ``None`` where such files never have
    offsets for it (booleans and float16 of the ``FixedSizeList`` files: pyarrow wrote them)."""
    dt = c.np_dtype
    if tensors == FIXED_SIZE_BINARY:
        if c.shape:
            return RAW
        if dt.kind == "b":
            return BITS
        return INT32 if dt.kind in "iu" and dt.itemsize < 4 else RAW
    if dt.kind == "b" or dt == np.float16:
        return None
    return INT32 if dt.itemsize == 2 else RAW


def stored_nbytes(c: Column, how: str, rows: Any) -> Any:
    """Bytes of ``rows`` rows of ``c`` stored ``how`` (an int, or an array of row counts)."""
    n = rows * c.row_items
    return -(-n // 8) if how == BITS else n * (4 if how == INT32 else c.np_dtype.itemsize)


def stored_bytes(c: Column, how: str, arr: np.ndarray) -> np.ndarray:
    """The bytes Parquet stores for the rows ``arr`` of ``c`` (for the writer's check)."""
    flat = np.ascontiguousarray(arr, dtype=c.np_dtype).reshape(-1)
    if how == BITS:
        return np.packbits(flat, bitorder="little")
    return (flat.astype("<i4") if how == INT32 else flat).view(np.uint8)


def value_range(c: Column, how: str, lo: int, hi: int) -> tuple[int, int, int]:
    """``(start, end, skip)``: the bytes of rows ``lo:hi`` relative to where the values start, and
    (:data:`BITS`) how many values of the first byte come before row ``lo``."""
    if how == BITS:
        first, last = lo * c.row_items, hi * c.row_items
        return first // 8, -(-last // 8), first % 8
    width = c.row_items * (4 if how == INT32 else c.np_dtype.itemsize)
    return lo * width, hi * width, 0


def decode(how: str, raw: Any, skip: int, dst: np.ndarray) -> None:
    """Stored values ``raw`` (from :func:`value_range`) into ``dst``, which may be strided."""
    if how == BITS:
        bits = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little", count=skip + dst.size)[skip:]
        np.copyto(dst, bits.view(np.bool_).reshape(dst.shape))
    elif how == INT32:
        np.copyto(dst, np.frombuffer(raw, "<i4").reshape(dst.shape), casting="unsafe")  # narrowing what was widened
    else:
        np.copyto(dst, np.frombuffer(raw, dst.dtype).reshape(dst.shape))


def find_offsets(path: Path, columns: tuple[Column, ...], kinds: list[str | None], first_group: int,
                 crcs: list[list[int]], starts: list[int]) -> list[list[int] | None]:
    """Per column, where its values start in each of row groups ``first_group`` on of the file
    ``path`` (relative to the row group's start, ``starts``): the last bytes of its column chunk,
    as pyarrow's footer places them, if for every row group their CRC-32C is the one taken from
    the values written (``crcs``, per row group and column); else ``None`` for that column (a
    chunk of several pages, or a pyarrow that lays pages out otherwise: pyarrow decodes it)."""
    import pyarrow.parquet as pq

    md = pq.read_metadata(path)
    crc = checksum_fn("crc32c")
    out: list[list[int] | None] = [None if how is None else [] for how in kinds]
    buf = bytearray()
    fd = os.open(path, os.O_RDONLY)
    try:
        for g, (want, start) in enumerate(zip(crcs, starts)):
            rg = md.row_group(first_group + g)
            for j, (c, how) in enumerate(zip(columns, kinds)):
                got = out[j]
                if got is None:
                    continue
                chunk, n = rg.column(j), stored_nbytes(c, how, rg.num_rows)
                at = chunk.data_page_offset + chunk.total_compressed_size - n
                if len(buf) < n:
                    buf = bytearray(n)
                view = memoryview(buf)[:n]
                if at < start or os.preadv(fd, [view], at) != n or crc(view) != want[j]:
                    out[j] = None
                else:
                    got.append(at - start)
    finally:
        os.close(fd)
    return out


def offsets_crc(names: list[str], values: dict[str, Any]) -> int:
    """CRC-32C of the value offsets, column by column in schema order (``names``), as little-endian int64s."""
    crc = 0
    extend = extend_fn("crc32c")
    for name in names:
        crc = extend(crc, np.ascontiguousarray(values[name], dtype="<i8"))
    return crc


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
    tensors = layout.get("tensors")
    if tensors not in (None, FIXED_SIZE_BINARY):
        raise ManifestError(f"{w}.tensors must be {FIXED_SIZE_BINARY!r} (or absent: FixedSizeList), got {tensors!r}")
    max_size = 1 << 40
    if unit_rows is not None and not any(c.ragged for c in columns):
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
    if tensors is not None:
        out["tensors"] = tensors
    if "ragged_nbytes" in layout:  # checked by the manifest (manifest.ragged_nbytes)
        out["ragged_nbytes"] = layout["ragged_nbytes"]
    if "footer_crc32c" in layout:  # absent in datasets written before it was recorded
        out["footer_size"] = int_array(layout.get("footer_size"), n_files, f"{w}.footer_size", lo=8, hi=1 << 40)
        out["footer_crc32c"] = int_array(layout["footer_crc32c"], n_files, f"{w}.footer_crc32c", hi=2**32 - 1)
    if "values" in layout:
        out["values"] = _values(layout, columns, out["size"], unit_rows, max_size, tensors, codec, w)
        out["values_crc32c"] = layout["values_crc32c"]
    return out


def _values(layout: dict[str, Any], columns: tuple[Column, ...], size: np.ndarray, unit_rows: np.ndarray | None,
            max_size: int, tensors: str | None, codec: str | None, w: str) -> dict[str, np.ndarray]:
    """``layout.values`` checked: columns stored in place, offsets whose values end inside the row
    group, and the offsets' own checksum (the unit checksums cover the bytes, not which of them
    are a column's values: a changed offset would pass them and serve the wrong bytes)."""
    values = layout["values"]
    names = [c.name for c in columns if isinstance(values, dict) and c.name in values]
    if not isinstance(values, dict) or not names or len(names) != len(values) or codec not in (None, "none"):
        raise ManifestError(f"{w}.values must map columns of an uncompressed dataset to the offsets of "
                            f"their values in every unit")
    out = {}
    for c in columns:
        if c.name not in values:
            continue
        how = stored_as(c, tensors)
        if how is None:
            raise ManifestError(f"{w}.values[{c.name!r}]: a {c.dtype} column is not stored in place in these files")
        at = int_array(values[c.name], len(size), f"{w}.values[{c.name!r}]", hi=max_size)
        if unit_rows is not None and np.any(at + stored_nbytes(c, how, unit_rows) > size):
            raise ManifestError(f"{w}.values[{c.name!r}]: values run past the end of a unit's row group")
        out[c.name] = at
    if layout.get("values_crc32c") != offsets_crc(names, out):
        raise ManifestError(f"{w}.values do not match values_crc32c (manifest damaged)")
    return out
