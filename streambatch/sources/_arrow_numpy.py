"""Arrow columns as numpy: the column an Arrow field maps onto (numbers, bools, fixed-size
lists and tensors, dictionaries as categorical codes, timestamps and durations as int64; strings,
binary and variable-length lists as ragged rows, ``_arrow_ragged``) and each chunk's values,
checked for nulls (filled where asked) and ragged rows."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import InputError
from ..ragged import Ragged
from ..schema import Column
from ..storage._arrow_schema import binary_tensor, binary_values
from ._arrow_ragged import _at, arrow_to_ragged, ragged_kind
from ._columns import check_dtype
from ._mapped import Categories, Nulls, null_rows, time_meta

__all__ = ["arrow_column", "arrow_to_numpy", "infer_list_shapes"]


def arrow_column(field: Any, where: str) -> Column:
    """The column Arrow ``field`` maps onto (a list column's unknown sizes are -1; a dictionary's
    categories are read later); ``InputError`` for a type streambatch cannot store."""
    import pyarrow as pa

    t = field.type
    try:  # a tensor of a streambatch Parquet file: its rows' bytes, dtype and shape in field metadata
        tensor = binary_tensor(field)
    except ValueError as e:
        raise InputError(f"{where}: column {field.name!r}: {e}") from None
    if tensor is not None:
        return Column(field.name, tensor[0], tensor[1])
    kind = ragged_kind(t)
    if kind is not None:
        return Column(field.name, "uint8", (), kind=kind)
    shape: list[int] = []
    meta_shape = None
    if field.metadata and b"streambatch.shape" in field.metadata:
        meta_shape = json.loads(field.metadata[b"streambatch.shape"])
    if isinstance(t, pa.FixedShapeTensorType):
        # ``shape`` is the physical shape; rows come out of ``to_numpy_ndarray`` permuted
        perm = t.permutation if t.permutation is not None else range(len(t.shape))
        shape = [int(t.shape[p]) for p in perm]
        t = t.value_type
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        shape.append(t.list_size if pa.types.is_fixed_size_list(t) else -1)
        t = t.value_type
    cw = f"{where}: column {field.name!r}"
    meta = None
    if pa.types.is_dictionary(t) and not shape:  # codes; the categories are read by BatchSource
        v = t.value_type
        if not (pa.types.is_string(v) or pa.types.is_large_string(v) or pa.types.is_integer(v)
                or pa.types.is_floating(v)):
            raise InputError(f"{cw}: unsupported categories of type {v}; streambatch keeps string or number categories")
        return Column(field.name, "int8", (), meta={"type": "category", "categories": [], "ordered": t.ordered})
    if pa.types.is_boolean(t):
        dtype = "bool"
    elif pa.types.is_integer(t) or pa.types.is_floating(t):
        dtype = check_dtype(np.dtype(t.to_pandas_dtype()), cw)
    elif pa.types.is_timestamp(t) or pa.types.is_duration(t):
        dtype, meta = "int64", time_meta("timestamp" if pa.types.is_timestamp(t) else "duration", t.unit,
                                         getattr(t, "tz", None))
    else:
        raise InputError(f"{cw}: unsupported type {field.type}; streambatch stores numbers, bools, lists of "
                         "numbers, strings and binary")
    if meta_shape is not None and shape and all(s > 0 for s in shape) and math.prod(meta_shape) == math.prod(shape):
        shape = [int(s) for s in meta_shape]
    return Column(field.name, dtype, tuple(shape), meta=meta)


def arrow_to_numpy(arr: Any, col: Column, where: str, row0: int | np.ndarray, nulls: Nulls | None = None,
                   cats: Categories | None = None) -> np.ndarray | Ragged:
    """One Arrow column chunk to numpy, checking nulls (filling them with ``nulls.fill``) and
    (for lists) that rows are not ragged; a dictionary column gives its codes into ``cats``; a
    ragged column (``col.ragged``) gives ``Ragged`` rows (``_arrow_ragged.arrow_to_ragged``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if col.ragged:
        return arrow_to_ragged(arr, col, where, row0, nulls)

    cw = f"{where}: column {col.name!r}"
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if cats is not None:
        arr = cats.codes(arr)
    tensor = None
    if isinstance(arr.type, pa.FixedShapeTensorType):
        tensor, arr = arr, arr.storage
    hint = f"; pass --fill {col.name}=VALUE or --drop-nulls" if not col.shape else "; pass --drop-nulls"
    if arr.null_count:
        fill = nulls.fill.get(col.name) if nulls is not None else None
        if fill is None:  # list columns have none (Nulls.check)
            bad = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
            raise InputError(f"{cw}: missing value at row {_at(row0, bad)}{hint}")
        assert nulls is not None
        nulls.filled[col.name] += arr.null_count
        arr = pc.fill_null(arr, pa.scalar(fill.item(), arr.type))
    n = len(arr)
    if pa.types.is_fixed_size_binary(arr.type) and col.shape:  # rows of a tensor's bytes (binary_tensor)
        return binary_values(arr, col.np_dtype, col.shape)
    if tensor is not None:  # the type fixes every row's shape: rows cannot be ragged
        if arr.flatten().null_count:
            raise InputError(f"{cw}: missing value inside a tensor near row {_at(row0, 0)}{hint}")
        if n == 0:
            return np.empty((0, *col.shape), col.np_dtype)
        return np.asarray(tensor.to_numpy_ndarray()).reshape(n, *col.shape).astype(col.np_dtype, copy=False)
    dims: list[int] = []
    level = 0
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        if pa.types.is_fixed_size_list(arr.type):  # its size, also when metadata reshapes the column
            expect = arr.type.list_size
        else:
            expect = col.shape[level] if col.shape[level] > 0 else (int(lengths[0]) if len(lengths) else 0)
        bad = np.flatnonzero(lengths != expect)
        if bad.size:
            raise InputError(f"{cw}: ragged rows: row {_at(row0, int(bad[0]) // math.prod(dims))} "
                             f"has {int(lengths[bad[0]])} values where {expect} were expected")
        dims.append(expect)
        arr = arr.flatten()
        if arr.null_count:
            raise InputError(f"{cw}: missing value inside a list near row {_at(row0, 0)}{hint}")
        level += 1
    values = arr.to_numpy(zero_copy_only=False)
    shape = col.shape if all(d > 0 for d in col.shape) else dims  # col.shape: the streambatch.shape metadata
    out = values.reshape(n, *shape).astype(col.np_dtype, copy=False)
    return out


def infer_list_shapes(cols: list[Column], first: Any, where: str) -> list[Column]:
    """Fill in the shape of variable-size list columns from the first batch."""
    out = []
    for c in cols:
        if any(s < 0 for s in c.shape):
            full = np.flatnonzero(~null_rows(first.column(c.name))) if first is not None else []
            if len(full) == 0:
                raise InputError(f"{where}: column {c.name!r}: cannot tell the row shape of a list column from "
                                 "its first rows (empty, or each with a null)")
            arr = arrow_to_numpy(first.column(c.name).slice(int(full[0]), 1), c, where, int(full[0]))
            assert isinstance(arr, np.ndarray)  # a fixed-shape column
            c = replace(c, shape=tuple(int(d) for d in arr.shape[1:]))
        out.append(c)
    return out
