"""Inputs that reach streambatch's numeric columns through a mapping recorded in the manifest.

* Nulls (Arrow-based inputs: Parquet, Arrow IPC / Feather, CSV, JSON Lines): ``fill`` puts a
  value of the column's dtype in their place (in a list, bytes or string column: ``"empty"``,
  an empty row), ``drop_nulls`` drops their rows; how many of each is counted.  Without
  either, a null is an ``InputError`` naming file, column and row.
* Hugging Face image (and audio) columns, ``struct<bytes: binary, path: string>``: the bytes
  (``image_parts``); a row without bytes is a null.
* Categoricals (Arrow dictionaries, pandas' ``category``): the integer codes, in the smallest
  signed dtype that holds them (as pandas' ``cat.codes``), and the categories in ``meta``.
* Timestamps and durations (Arrow ``timestamp[unit, tz]`` / ``duration[unit]``, numpy
  ``datetime64`` / ``timedelta64``): int64 counts of ``unit``, with unit and timezone in ``meta``.
* Hive-partitioned Parquet folders (``key=value/`` directories): each key is a column
  (``_hive``).

``meta`` is the column's (``manifest.Column``); every error is an ``InputError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

import numpy as np

from ..errors import InputError
from ..schema import Column

__all__ = ["Nulls", "null_rows", "is_image_type", "image_parts", "EMPTY", "Categories", "code_dtype", "time_meta",
           "numpy_time_meta"]

EMPTY = "empty"
"""The ``fill`` value of a list, bytes or string column: its null rows become empty rows."""


@dataclass
class Nulls:
    """What to do with the nulls of an input, and what was done on the last pass over it.

    ``fill`` maps a column to its value for nulls (as given, then typed by :meth:`check`);
    with ``drop``, a row with a null in a kept column without a ``fill`` value is left out.
    ``filled`` counts the values filled per column, ``dropped`` the rows left out.
    """

    fill: dict[str, Any] = field(default_factory=dict)
    drop: bool = False
    filled: dict[str, int] = field(default_factory=dict)
    dropped: int = 0

    @property
    def active(self) -> bool:
        return self.drop or bool(self.fill)

    def drop_names(self, names: Iterable[str]) -> tuple[str, ...]:
        """The columns among ``names`` whose nulls drop their row."""
        return tuple(n for n in names if n not in self.fill) if self.drop else ()

    def restart(self) -> None:
        """Zero the counts: a new pass over the input begins."""
        self.filled = {n: 0 for n in self.fill}
        self.dropped = 0

    def check(self, columns: tuple[Column, ...], where: str) -> None:
        """Type every ``fill`` value for its column; ``InputError`` for a column not kept, a list
        column or a value its dtype cannot hold."""
        by_name = {c.name: c for c in columns}
        for name, value in self.fill.items():
            col = by_name.get(name)
            if col is None:
                raise InputError(f"{where}: --fill names column {name!r}, which is not among the columns {list(by_name)}")
            self.fill[name] = _typed(col, value, f"{where}: --fill {name}={value}")
        self.restart()

    def report(self) -> dict[str, Any]:
        """The counts, for the manifest's ``source``."""
        out: dict[str, Any] = {}
        if self.fill:
            out["filled"] = dict(self.filled)
        if self.drop:
            out["dropped_rows"] = self.dropped
        return out

    def options(self) -> dict[str, Any]:
        """The options as JSON (a non-finite fill value as its string), for the manifest's ``options``."""
        out: dict[str, Any] = {}
        if self.fill:
            out["fill"] = {n: v if isinstance(v, str) else v.item() if np.isfinite(v) else str(v.item())
                           for n, v in self.fill.items()}
        if self.drop:
            out["drop_nulls"] = True
        return out


def _typed(col: Column, value: Any, where: str) -> np.generic | str:
    """``value`` (a number, bool or string) as a scalar of ``col``'s dtype; for a ragged column,
    ``EMPTY`` (given as "empty", or any empty str, bytes or sequence)."""
    if col.ragged:
        if (isinstance(value, str) and value.strip().lower() == EMPTY) or (hasattr(value, "__len__")
                                                                        and len(value) == 0):
            return EMPTY
        raise InputError(f"{where}: column {col.name!r} is a {col.kind} column; its nulls can only be "
                         f"filled with an empty row: --fill {col.name}={EMPTY} (or use --drop-nulls)")
    if col.shape:
        raise InputError(f"{where}: column {col.name!r} holds rows of shape {col.shape}; --fill applies to "
                         "scalar columns (use --drop-nulls)")
    dt = col.np_dtype
    text = value.strip().lower() if isinstance(value, str) else None
    try:
        if dt.kind == "b":
            if isinstance(value, (bool, np.bool_)) or text in ("true", "false", "1", "0"):
                return np.bool_(value if text is None else text in ("true", "1"))
        elif not isinstance(value, (bool, np.bool_)) and dt.kind in "iu":
            v = int(value) if text is not None or float(value).is_integer() else None
            if v is not None and np.iinfo(dt).min <= v <= np.iinfo(dt).max:
                return dt.type(v)
        elif not isinstance(value, (bool, np.bool_)):
            return dt.type(float(value))
    except (TypeError, ValueError, OverflowError):
        pass
    raise InputError(f"{where}: not a value of column {col.name!r} ({col.dtype}"
                     f"{', ' + _meta_word(col) if col.meta else ''})")


def _meta_word(col: Column) -> str:
    m = col.meta or {}
    if m.get("type") == "category":
        return "categorical codes: -1 is pandas' code for a missing category"
    return f"{m.get('type')} in {m.get('unit')}"


def null_rows(arr: Any) -> np.ndarray:
    """Which rows of an Arrow array hold a null, at the top or inside (nested) lists."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if isinstance(arr.type, pa.FixedShapeTensorType):
        arr = arr.storage
    image = image_parts(arr)
    arr = image[0] if image is not None else arr
    out = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else np.zeros(len(arr), bool)
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        inner = null_rows(arr.flatten())  # the values of the rows that are not null, in order
        if inner.any():
            out[pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)[inner]] = True
    return out


def is_image_type(t: Any) -> bool:
    """Whether Arrow type ``t`` is a Hugging Face image column's, ``struct<bytes: binary, path:
    string>`` (as ``datasets`` writes ``Image()`` and ``Audio()`` features; large types too)."""
    import pyarrow as pa

    if not (pa.types.is_struct(t) and sorted(f.name for f in t) == ["bytes", "path"]):
        return False
    b, p = t.field("bytes").type, t.field("path").type
    return (pa.types.is_binary(b) or pa.types.is_large_binary(b)) and (pa.types.is_string(p)
                                                                        or pa.types.is_large_string(p))


def image_parts(arr: Any) -> tuple[Any, Any] | None:
    """``(bytes, path)`` of an image column chunk (``is_image_type``; a null struct gives null
    bytes), or ``None`` for any other array."""
    if not is_image_type(arr.type):
        return None
    parts = dict(zip((f.name for f in arr.type), arr.flatten()))  # flatten: the struct's offset and nulls applied
    return parts["bytes"], parts["path"]


def code_dtype(n: int) -> str:
    """The dtype of the codes into ``n`` categories: the smallest signed integer (-1 fits), as pandas."""
    return next(d for d, top in (("int8", 1 << 7), ("int16", 1 << 15), ("int32", 1 << 31), ("int64", 1 << 63))
                if n < top)


class Categories:
    """The categories of a dictionary column, unified over the dictionaries of its batches (files,
    row groups) in first-seen order, as pyarrow's ``to_pandas`` does; and the codes into them."""

    def __init__(self, col: Column, where: str) -> None:
        self.col, self.where = col, where
        self.values: list[Any] = list((col.meta or {}).get("categories", []))
        self._index = {v: i for i, v in enumerate(self.values)}
        self._last: Any = None
        self._arrow: Any = None
        self._remap: tuple[Any, Any] | None = None  # (a batch's dictionary, its codes): one tuple, swapped whole

    def add(self, arr: Any) -> None:
        """Take in the dictionary of one Arrow dictionary array."""
        d = arr.dictionary
        if self._last is not None and d.equals(self._last):
            return
        self._last = d
        for v in d.to_pylist():
            if v in self._index:
                continue
            if not (isinstance(v, str) or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                          and math.isfinite(v))):
                raise InputError(f"{self.where}: column {self.col.name!r}: category {v!r} cannot be kept in the "
                                 "manifest (categories must be strings or finite numbers)")
            self._index[v] = len(self.values)
            self.values.append(v)

    def column(self) -> Column:
        """The column of codes, its categories in ``meta``."""
        meta = {**(self.col.meta or {}), "type": "category", "categories": self.values}
        return replace(self.col, dtype=code_dtype(len(self.values)), meta=meta)

    def codes(self, arr: Any) -> Any:
        """An Arrow dictionary array as an Arrow array of codes (``column()``'s dtype; nulls kept)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        out = pa.from_numpy_dtype(np.dtype(code_dtype(len(self.values))))
        if self._arrow is None:
            self._arrow = pa.array(self.values, type=arr.type.value_type)
        d = arr.dictionary
        cached = self._remap
        if cached is not None and cached[0].equals(d):
            remap = cached[1]
        else:
            remap = None if d.equals(self._arrow) else pc.index_in(d, value_set=self._arrow)
            if remap is not None and remap.null_count:
                raise InputError(f"{self.where}: column {self.col.name!r}: category "
                                 f"{d[int(np.flatnonzero(remap.is_null().to_numpy(zero_copy_only=False))[0])]} "
                                 "appeared after the categories were read (input changed?)")
            self._remap = (d, remap)
        return arr.indices.cast(out) if remap is None else pc.take(remap.cast(out), arr.indices)


_NUMPY_UNITS = frozenset("Y M W D h m s ms us ns ps fs as".split())


def time_meta(kind: str, unit: str, timezone: str | None = None) -> dict[str, Any]:
    """``meta`` of a timestamp or duration column stored as int64 counts of ``unit``."""
    return {"type": kind, "unit": unit, **({"timezone": timezone} if timezone else {})}


def numpy_time_meta(dt: np.dtype[Any], where: str) -> dict[str, Any] | None:
    """``meta`` for a numpy ``datetime64`` / ``timedelta64`` dtype (``None`` for other dtypes);
    NaT is kept as its int64 value, -2**63, which views back as NaT."""
    if dt.kind not in "Mm":
        return None
    unit, count = np.datetime_data(dt)
    if unit not in _NUMPY_UNITS:
        raise InputError(f"{where}: {dt} has no unit; streambatch stores datetime64 / timedelta64 with one")
    return time_meta("timestamp" if dt.kind == "M" else "duration", unit if count == 1 else f"{count}{unit}")
