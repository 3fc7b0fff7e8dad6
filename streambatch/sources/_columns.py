"""Column checks every input format shares: names, selection (``--columns``), dtypes, lengths."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError
from ..schema import Column
from ._mapped import numpy_time_meta

__all__ = ["check_dtype", "numpy_column", "as_stored", "check_names", "select", "equal_lengths"]


def check_dtype(dt: np.dtype[Any], where: str) -> str:
    """The stored dtype name of numeric or bool ``dt``; ``InputError`` naming any other kind."""
    if dt.kind in "biuf" and dt.itemsize <= 8 and dt.fields is None:
        return np.dtype(dt).newbyteorder("=").name
    what = {"O": "object", "c": "complex", "U": "string", "S": "bytes", "M": "datetime", "m": "timedelta",
            "V": "structured/void"}.get(dt.kind, str(dt))
    raise InputError(f"{where}: unsupported dtype {dt} ({what}); streambatch stores numeric and bool columns")


def numpy_column(name: str, dt: np.dtype[Any], shape: tuple[int, ...], where: str) -> Column:
    """A column of numpy dtype ``dt``: datetime64 / timedelta64 stored as int64 with their unit."""
    meta = numpy_time_meta(dt, where)
    return Column(name, "int64", shape, meta=meta) if meta else Column(name, check_dtype(dt, where), shape)


def as_stored(a: np.ndarray) -> np.ndarray:
    """``a`` as its column stores it: datetime64 / timedelta64 viewed as int64."""
    return a.view(np.dtype(np.int64).newbyteorder(a.dtype.byteorder)) if a.dtype.kind in "Mm" else a


def check_names(names: list[str], where: str) -> None:
    """``InputError`` for a duplicate column name or one that cannot be a file name."""
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise InputError(f"{where}: duplicate column name {n!r}")
        if not n or "/" in n or "\\" in n or n.startswith(".") or "\x00" in n:
            raise InputError(f"{where}: column name {n!r} cannot be stored (empty, or has '/' or a leading '.')")
        seen.add(n)


def select(names: list[str], keep: tuple[str, ...] | None, where: str) -> list[str]:
    """The input's column names to read, in the input's order: all of them, or those in
    ``keep`` (``--columns``; each must exist).  Columns left out are never validated, so an
    input with, say, a string column converts with ``--columns`` naming the numeric ones."""
    if keep is None:
        return names
    unknown = [n for n in keep if n not in names]
    if unknown:
        raise InputError(f"{where}: no column(s) {unknown}; columns are {names}")
    wanted = set(keep)
    return [n for n in names if n in wanted]


def equal_lengths(lengths: dict[str, int], where: str) -> int:
    """The row count shared by every column; ``InputError`` if they differ or it is 0."""
    if not lengths:
        raise InputError(f"{where}: no columns found")
    vals = set(lengths.values())
    if len(vals) > 1:
        desc = ", ".join(f"{k}={v}" for k, v in lengths.items())
        raise InputError(f"{where}: columns have different lengths ({desc})")
    rows = vals.pop()
    if rows == 0:
        raise InputError(f"{where}: input is empty (0 rows)")
    return rows
