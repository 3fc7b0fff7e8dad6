"""Sources over named array-likes that have ``shape``, ``dtype`` and slicing along rows: the
base of the .npy, HDF5 and Zarr inputs (one column an array)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import InputError
from ._columns import as_stored, check_names, equal_lengths, numpy_column, select
from .base import Source

__all__ = ["ArraySource"]


class ArraySource(Source):
    """Columns that are arrays of equal length; ``where_of(name)`` names a column's file in errors.
    With ``random_access`` the arrays' slices may be read from several threads at once."""

    def __init__(self, path: Path, arrays: dict[str, Any], where_of: Callable[[str], str],
                 keep: tuple[str, ...] | None, random_access: bool = False) -> None:
        arrays = {n: arrays[n] for n in select(list(arrays), keep, str(path))}
        check_names(list(arrays), str(path))
        cols = []
        for name, a in arrays.items():
            if len(a.shape) == 0:
                raise InputError(f"{where_of(name)}: column {name!r} is a scalar, expected rows along axis 0")
            cols.append(numpy_column(name, np.dtype(a.dtype), tuple(int(d) for d in a.shape[1:]),
                                     f"{where_of(name)}: column {name!r}"))
        rows = equal_lengths({n: int(a.shape[0]) for n, a in arrays.items()}, str(path))
        for c in cols:
            if c.shape and c.row_items == 0:
                raise InputError(f"{where_of(c.name)}: column {c.name!r} has empty rows (shape {c.shape})")
        super().__init__(path, tuple(cols), rows)
        self._arrays = arrays
        self._random_access = random_access

    @property
    def random_access(self) -> bool:
        return self._random_access

    def _read(self, max_rows: int, names: tuple[str, ...]) -> Iterator[dict[str, np.ndarray]]:
        return self._read_range(max_rows, names, 0, self.rows)

    def _read_range(self, max_rows: int, names: tuple[str, ...], start: int,
                    stop: int) -> Iterator[dict[str, np.ndarray]]:
        for lo in range(start, stop, max_rows):
            hi = min(stop, lo + max_rows)
            yield {n: as_stored(np.asarray(self._arrays[n][lo:hi])) for n in names}
