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

from ..schema import SUPPORTED_DTYPES, Column

__all__ = ["FIXED_SIZE_BINARY", "arrow_schema", "arrow_arrays", "binary_tensor", "binary_values"]

FIXED_SIZE_BINARY = "fixed_size_binary"
"""``layout.tensors`` of Parquet datasets whose tensors are ``FixedSizeBinary`` (absent: ``FixedSizeList``)."""


def arrow_schema(columns: tuple[Column, ...], tensors: str | None = None) -> Any:
    """The ``pyarrow.Schema`` of ``columns`` (see the module docstring); ``tensors``:
    ``None`` for ``FixedSizeList`` tensors, :data:`FIXED_SIZE_BINARY` for ``FixedSizeBinary``."""
    import pyarrow as pa

    fields = []
    for c in columns:
        t = pa.from_numpy_dtype(c.np_dtype)
        if c.shape and tensors == FIXED_SIZE_BINARY:
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
