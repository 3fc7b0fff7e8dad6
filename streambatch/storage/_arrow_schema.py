"""The Arrow schema of a dataset's columns, shared by the formats that store Arrow data (Parquet, Arrow IPC):
scalars as plain fields; a fixed-shape tensor either as a non-null ``FixedSizeList`` whose field
metadata ``streambatch.shape`` holds the row shape as JSON (Arrow IPC, and Parquet datasets
written before the tensor encoding was recorded), or as a non-null ``FixedSizeBinary`` of the
row's bytes whose field metadata holds ``streambatch.shape`` and ``streambatch.dtype`` (Parquet:
``layout.tensors`` is ``"fixed_size_binary"``)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from ..ragged import Ragged
from ..schema import SUPPORTED_DTYPES, Column

__all__ = ["FIXED_SIZE_BINARY", "arrow_schema", "arrow_arrays", "ragged_type", "ragged_array", "ragged_rows",
           "binary_tensor", "binary_values"]

FIXED_SIZE_BINARY = "fixed_size_binary"
"""``layout.tensors`` of Parquet datasets whose tensors are ``FixedSizeBinary`` (absent: ``FixedSizeList``)."""


def arrow_schema(columns: tuple[Column, ...], tensors: str | None = None) -> Any:
    """The ``pyarrow.Schema`` of ``columns`` (see the module docstring); ``tensors``:
    ``None`` for ``FixedSizeList`` tensors, :data:`FIXED_SIZE_BINARY` for ``FixedSizeBinary``."""
    import pyarrow as pa

    fields = []
    for c in columns:
        t = pa.from_numpy_dtype(c.np_dtype)
        if c.ragged:
            fields.append(pa.field(c.name, ragged_type(c), nullable=False))
        elif c.shape and tensors == FIXED_SIZE_BINARY:
            meta = {"streambatch.shape": json.dumps(list(c.shape)), "streambatch.dtype": c.dtype}
            fields.append(pa.field(c.name, pa.binary(c.row_nbytes), nullable=False, metadata=meta))
        elif c.shape:
            # Non-null elements: no definition levels per value (docs/PERFORMANCE.md, Parquet read path)
            element = pa.field("element", t, nullable=False)
            fields.append(pa.field(c.name, pa.list_(element, c.row_items), nullable=False,
                                   metadata={"streambatch.shape": json.dumps(list(c.shape))}))
        else:
            fields.append(pa.field(c.name, t, nullable=False))
    return pa.schema(fields)


def arrow_arrays(columns: tuple[Column, ...], schema: Any, data: dict[str, np.ndarray]) -> list[tuple[Any, Any]]:
    """Per column of ``schema``, ``(values, array)``: the rows of ``data`` as a flat Arrow array of
    the values over the arrays' own bytes (booleans packed to bits) and the column's array (that
    same array for scalars and ``FixedSizeBinary`` tensors, a ``FixedSizeList`` over it for the
    others).  Built from buffers, not with ``pyarrow.array``, which imports pandas (2 s on a small
    machine) on its first call."""
    import pyarrow as pa

    out = []
    for c, field in zip(columns, schema):
        if c.ragged:
            arr = ragged_array(c, data[c.name])
            out.append((arr, arr))
            continue
        flat = np.ascontiguousarray(data[c.name], dtype=c.np_dtype).reshape(-1)
        if pa.types.is_fixed_size_binary(field.type):
            values = pa.FixedSizeBinaryArray.from_buffers(field.type, len(data[c.name]),
                                                          [None, pa.py_buffer(flat.view(np.uint8))],
                                                          null_count=0)  # unknown: Table.from_arrays counts them
            out.append((values, values))
            continue
        stored = np.packbits(flat, bitorder="little") if c.np_dtype == np.bool_ else flat
        values = pa.Array.from_buffers(field.type.value_type if c.shape else field.type, len(flat),
                                       [None, pa.py_buffer(stored)])
        out.append((values, pa.FixedSizeListArray.from_arrays(values, type=field.type) if c.shape else values))
    return out


def ragged_type(c: Column) -> Any:
    """The Arrow type of ragged column ``c``: ``large_list`` of its values (of a fixed-size list
    of them for an element shape), ``large_binary`` or ``large_string``."""
    import pyarrow as pa

    if c.kind == "bytes":
        return pa.large_binary()
    if c.kind == "string":
        return pa.large_string()
    t = pa.from_numpy_dtype(c.np_dtype)
    element = pa.list_(pa.field("element", t, nullable=False), c.row_items) if c.shape else t
    return pa.large_list(pa.field("element", element, nullable=False))


def ragged_array(c: Column, rows: Ragged) -> Any:
    """The Arrow array of ``rows`` of ragged column ``c``, over their buffers (no copy of compact rows)."""
    import pyarrow as pa

    r = rows.compact()
    offsets = pa.py_buffer(np.ascontiguousarray(r.offsets))
    if c.kind in ("bytes", "string"):
        data = pa.py_buffer(np.ascontiguousarray(r.values, np.uint8))
        return pa.Array.from_buffers(ragged_type(c), len(r), [None, offsets, data], null_count=0)
    flat = np.ascontiguousarray(r.values, dtype=c.np_dtype).reshape(-1)
    stored = np.packbits(flat, bitorder="little") if c.np_dtype == np.bool_ else flat
    values = pa.Array.from_buffers(pa.from_numpy_dtype(c.np_dtype), len(flat), [None, pa.py_buffer(stored)])
    if c.shape:
        values = pa.FixedSizeListArray.from_arrays(values, type=ragged_type(c).value_type)
    return pa.Array.from_buffers(ragged_type(c), len(r), [None, offsets], children=[values], null_count=0)


def ragged_rows(c: Column, arr: Any) -> Ragged:
    """The rows of an Arrow list / binary / string array (no nulls) as a ``Ragged`` over its buffers
    (offsets widened to int64 where the array's are 32-bit).  ``ValueError`` for another type."""
    import pyarrow as pa

    t = arr.type
    if c.kind in ("bytes", "string"):
        if not (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_string(t)
                or pa.types.is_large_string(t)):
            raise ValueError(f"stores {t}, not {c.kind}")
        wide = pa.types.is_large_binary(t) or pa.types.is_large_string(t)
        bufs = arr.buffers()
        offsets = _offsets(bufs[1], wide, arr.offset, len(arr))
        values = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.empty(0, np.uint8)
        return Ragged(values, offsets)
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        raise ValueError(f"stores {t}, not a list of {c.dtype}")
    offsets = _offsets(arr.buffers()[1], pa.types.is_large_list(t), arr.offset, len(arr))
    child = arr.values  # the whole child array: offsets index into it
    if c.shape:
        if not pa.types.is_fixed_size_list(child.type) or child.type.list_size != c.row_items:
            raise ValueError(f"stores {t}, not a list of {c.dtype}{list(c.shape)}")
        child = child.flatten()
    flat = child.to_numpy(zero_copy_only=False)
    if flat.dtype != c.np_dtype:
        raise ValueError(f"stores {t}, not a list of {c.dtype}")
    return Ragged(flat.reshape(-1, *c.shape) if c.shape else flat, offsets)


def _offsets(buf: Any, wide: bool, at: int, n: int) -> np.ndarray:
    raw = np.frombuffer(buf, np.int64 if wide else np.int32)[at:at + n + 1]
    return raw if wide else raw.astype(np.int64)


def binary_tensor(field: Any) -> tuple[str, tuple[int, ...]] | None:
    """``(dtype, shape)`` of a ``FixedSizeBinary`` field that carries ``streambatch.dtype`` and
    ``streambatch.shape`` metadata (a tensor column of a streambatch Parquet file), else ``None``.
    Raises ``ValueError`` (saying what) where that metadata does not describe the field's width."""
    import pyarrow as pa

    meta = field.metadata or {}
    if not pa.types.is_fixed_size_binary(field.type) or b"streambatch.dtype" not in meta:
        return None
    try:
        dtype = meta[b"streambatch.dtype"].decode()
        shape = tuple(json.loads(meta.get(b"streambatch.shape", b"[]")))
    except (UnicodeDecodeError, ValueError, TypeError):
        raise ValueError("its streambatch.dtype / streambatch.shape metadata is not readable") from None
    if (dtype not in SUPPORTED_DTYPES or not all(type(s) is int and s > 0 for s in shape)
            or math.prod(shape) * np.dtype(dtype).itemsize != field.type.byte_width):
        raise ValueError(f"its metadata (dtype {dtype!r}, shape {list(shape)}) does not make rows of "
                         f"{field.type.byte_width} bytes")
    return dtype, shape


def binary_values(arr: Any, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
    """The rows of a ``FixedSizeBinary`` Arrow array (no nulls) as a read-only numpy view
    ``(len(arr), *shape)`` of its buffer."""
    width = arr.type.byte_width
    raw = np.frombuffer(arr.buffers()[1], np.uint8, count=len(arr) * width, offset=arr.offset * width)
    return raw.view(dtype).reshape(len(arr), *shape)
