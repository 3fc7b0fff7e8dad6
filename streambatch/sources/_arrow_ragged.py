"""Arrow's variable-length columns as :class:`~streambatch.ragged.Ragged` rows: lists of numbers
(``list`` / ``large_list``, their elements numbers or fixed-size lists of them), strings and
binary (``string``, ``binary``, their ``large_`` and ``_view`` forms) and Hugging Face image columns
(``struct<bytes, path>``: the bytes).

Values come straight from Arrow's buffers (no copy, except bools and lists whose elements need
a cast); 32-bit offsets are widened to int64 (a copy of the offsets only).  A null row is an
``InputError`` naming it unless ``--fill COL=empty`` makes it an empty row (``--drop-nulls``
drops it before it gets here); a null inside a row (an element of a list) is refused.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import InputError
from ..ragged import Ragged
from ..schema import Column
from ._mapped import EMPTY, Nulls, image_parts, is_image_type, null_rows

__all__ = ["ragged_kind", "arrow_to_ragged", "varying_lists", "as_ragged_list"]


def ragged_kind(t: Any) -> str | None:
    """``"string"`` or ``"bytes"`` for an Arrow string, binary or image type; ``None`` otherwise."""
    import pyarrow as pa

    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t) or is_image_type(t):
        return "bytes"
    return None


def _at(row0: int | np.ndarray, i: int) -> int:
    """The input row of row ``i`` of a chunk whose first row is ``row0`` (or whose rows are ``row0``)."""
    return int(row0[i]) if isinstance(row0, np.ndarray) else row0 + i


def arrow_to_ragged(arr: Any, col: Column, where: str, row0: int | np.ndarray, nulls: Nulls | None) -> Ragged:
    """One Arrow column chunk of ragged column ``col`` as ``Ragged`` rows (``row0``: its first
    input row, or each row's, for errors); null rows filled with empty rows where ``nulls`` says
    so, else an ``InputError`` naming the row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cw = f"{where}: column {col.name!r}"
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    image = image_parts(arr)
    if image is not None:
        arr = image[0]
    if pa.types.is_string_view(arr.type) or pa.types.is_binary_view(arr.type):  # (Polars' IPC) one buffer: a copy
        arr = arr.cast(pa.large_string() if pa.types.is_string_view(arr.type) else pa.large_binary())
    if arr.null_count:
        if (nulls.fill.get(col.name) if nulls is not None else None) != EMPTY:
            bad = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
            path = image[1][bad].as_py() if image is not None else None
            what = f"no image bytes, only the path {path!r} (paths are not followed)" if path else "a null"
            raise InputError(f"{cw}: row {_at(row0, bad)} has {what}; pass --fill {col.name}={EMPTY} "
                             "(an empty row) or --drop-nulls")
        assert nulls is not None
        nulls.filled[col.name] += arr.null_count
        arr = pc.fill_null(arr, pa.scalar([] if col.kind == "list" else b"" if col.kind == "bytes" else "",
                                          arr.type))
    if col.kind != "list":  # string or binary: [validity, offsets, data]
        _, off, data = arr.buffers()
        wide = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
        offsets = np.frombuffer(off, np.int64 if wide else np.int32)[arr.offset:arr.offset + len(arr) + 1]
        values = np.frombuffer(data, np.uint8) if data is not None else np.empty(0, np.uint8)
        return Ragged(values, offsets.astype(np.int64, copy=False))
    offsets = arr.offsets.to_numpy().astype(np.int64, copy=False)
    a, b = int(offsets[0]), int(offsets[-1])
    return Ragged(_elements(arr, arr.values.slice(a, b - a), col, cw, row0), offsets - a)


def _elements(arr: Any, child: Any, col: Column, cw: str, row0: int | np.ndarray) -> np.ndarray:
    """The elements ``child`` of the rows of list chunk ``arr`` as numpy, shape ``(n, *col.shape)``:
    inner lists checked to be ``col.shape``, no nulls."""
    import pyarrow.compute as pc

    def row_of(element: int) -> int:  # the input row of the list element at ``element``
        return _at(row0, int(pc.list_parent_indices(arr)[element].as_py()))

    dims: list[int] = []
    for size in col.shape:
        lengths = pc.list_value_length(child).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(lengths != size)
        if bad.size:
            raise InputError(f"{cw}: row {row_of(int(bad[0]) // math.prod(dims))} has an element of "
                             f"{int(lengths[bad[0]])} values where {size} were expected (elements of a list "
                             "column must all have one shape)")
        dims.append(size)
        child = child.flatten()
    if child.null_count:
        bad = int(np.flatnonzero(child.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(f"{cw}: row {row_of(bad // math.prod(dims))} has a null inside its list; streambatch "
                         "stores no nulls inside a row (--drop-nulls leaves such rows out)")
    values = child.to_numpy(zero_copy_only=False)
    return values.reshape(-1, *col.shape).astype(col.np_dtype, copy=False)


def varying_lists(batch: Any, names: list[str], seen: dict[str, int]) -> set[str]:
    """The list columns among ``names`` whose rows in Arrow ``batch`` (null rows aside) differ in
    length from each other or from the length in ``seen`` (which records each column's first)."""
    import pyarrow.compute as pc

    out: set[str] = set()
    if batch is None:
        return out
    for n in names:
        arr = batch.column(n)
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)[~null_rows(arr)]
        if lengths.size == 0:
            continue
        first = seen.setdefault(n, int(lengths[0]))
        if (lengths != first).any():
            out.add(n)
    return out


def as_ragged_list(col: Column, first: Any, where: str) -> Column:
    """Column ``col`` (a variable-size list: ``shape[0]`` is -1) as a ragged ``list`` column whose
    element shape is the rest of its shape (inner variable sizes from ``first``, a batch)."""
    rest = col.shape[1:]
    if any(s < 0 for s in rest):  # list<list<...>>: the inner sizes of the first element
        import pyarrow.compute as pc

        inner = first.column(col.name).flatten() if first is not None else None
        if inner is None or len(inner) == 0:
            raise InputError(f"{where}: column {col.name!r}: cannot tell the element shape of a list column "
                             "from its first rows (empty, or each with a null)")
        shape = []
        for _ in rest:
            shape.append(int(pc.list_value_length(inner)[0].as_py() or 0))
            inner = inner.flatten()
        rest = tuple(shape)
    return replace(col, shape=rest, kind="list")
