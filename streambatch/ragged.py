"""Variable-length rows in memory: a flat values array plus int64 offsets (``Ragged``).

Row ``i`` of a ``Ragged`` is ``values[offsets[i]:offsets[i + 1]]``; ``offsets`` has one entry
more than there are rows and starts anywhere (a slice keeps its parent's offsets).  The same
two arrays are what Arrow's ``large_list`` / ``large_binary`` / ``large_string`` hold, so
conversion to and from Arrow copies nothing.  A column of kind ``list`` holds numbers of the
column's dtype; ``bytes`` and ``string`` hold uint8 (a string's UTF-8 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

from ._kernels import gather

__all__ = ["Ragged", "RAGGED_KINDS", "RowSlices", "row_items", "concat_slices"]

RAGGED_KINDS = ("list", "bytes", "string")
"""Column kinds whose rows vary in length (``schema.Column.kind``)."""


@dataclass(frozen=True)
class Ragged:
    """Rows of varying length: ``values[offsets[i]:offsets[i+1]]`` is row ``i``."""

    values: np.ndarray
    offsets: NDArray[np.int64]

    def __post_init__(self) -> None:
        if self.offsets.ndim != 1 or self.offsets.size == 0 or self.offsets.dtype != np.int64:
            raise ValueError("Ragged offsets must be a non-empty 1-D int64 array")

    def __len__(self) -> int:
        return self.offsets.size - 1

    @property
    def lengths(self) -> NDArray[np.int64]:
        """Each row's length, in values."""
        return np.diff(self.offsets)

    @property
    def nbytes(self) -> int:
        """The bytes of this rows' values (not of any parent's) plus their offsets."""
        n = int(self.offsets[-1] - self.offsets[0])
        return n * self.values.itemsize * row_items(self.values) + 8 * self.offsets.size

    def row(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i]:self.offsets[i + 1]]

    def __getitem__(self, key: slice) -> Ragged:
        """Rows ``key`` (a slice with step 1): views, no copy."""
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("Ragged supports contiguous slices; use take() for other selections")
        lo, hi, _ = key.indices(len(self))
        return Ragged(self.values, self.offsets[lo:max(lo, hi) + 1])

    def compact(self) -> Ragged:
        """The same rows with offsets starting at 0 and only their own values (a copy if needed)."""
        a, b = int(self.offsets[0]), int(self.offsets[-1])
        if a == 0 and b == len(self.values):
            return self
        return Ragged(self.values[a:b].copy(), self.offsets - a)

    def take(self, rows: NDArray[np.int64]) -> Ragged:
        """Rows ``rows`` in that order, as one new compact ``Ragged``."""
        starts, stops = self.offsets[rows], self.offsets[np.asarray(rows) + 1]
        return concat_slices(self.values, starts, stops)

    @staticmethod
    def from_rows(rows: Sequence[Any], dtype: Any) -> Ragged:
        """A ``Ragged`` of the given rows (sequences of values, or bytes)."""
        arrays = [np.frombuffer(r, np.uint8) if isinstance(r, (bytes, bytearray, memoryview))
                  else np.asarray(r, dtype=dtype) for r in rows]
        offsets = np.zeros(len(arrays) + 1, np.int64)
        np.cumsum([len(a) for a in arrays], out=offsets[1:])
        values = np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.empty(0, dtype)
        return Ragged(values, offsets)

    @staticmethod
    def concat(parts: Sequence[Ragged]) -> Ragged:
        """The rows of ``parts``, one after another, as one compact ``Ragged``."""
        if not parts:
            return Ragged(np.empty(0, np.uint8), np.zeros(1, np.int64))
        if len(parts) == 1:
            return parts[0].compact()
        values = np.concatenate([p.values[int(p.offsets[0]):int(p.offsets[-1])] for p in parts])
        lengths = np.concatenate([p.lengths for p in parts])
        offsets = np.zeros(lengths.size + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return Ragged(values, offsets)


@dataclass(frozen=True)
class RowSlices:
    """Rows lying anywhere in ``values`` (a window's buffer): ``values[starts[i]:ends[i]]`` is row
    ``i``.  What a batch of a packed stream carries instead of a copy of its rows (the packer
    copies them once, into the packed batches); it must be done with before ``values`` is reused."""

    values: np.ndarray
    starts: NDArray[np.int64]
    ends: NDArray[np.int64]

    def __len__(self) -> int:
        return self.starts.size

    @property
    def lengths(self) -> NDArray[np.int64]:
        """Each row's length, in values."""
        return self.ends - self.starts

    def __getitem__(self, key: slice) -> RowSlices:
        """Rows ``key`` (a slice with step 1): views, no copy."""
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("RowSlices supports contiguous slices")
        return RowSlices(self.values, self.starts[key], self.ends[key])


def row_items(values: np.ndarray) -> int:
    """The numbers in one element of ``values`` (1 for a flat array; the element shape's product)."""
    return int(np.prod(values.shape[1:], dtype=np.int64)) if values.ndim > 1 else 1


def runs(starts: NDArray[np.int64], lengths: NDArray[np.int64]) -> NDArray[np.int64]:
    """``starts[k], starts[k] + 1, ..., starts[k] + lengths[k] - 1`` for every ``k``, one run after
    another (int64): the indices of many slices at once, without a Python step per slice."""
    first = np.cumsum(lengths) - lengths  # each run's place in the output
    return np.repeat(starts - first, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


def concat_slices(values: np.ndarray, starts: NDArray[np.int64], stops: NDArray[np.int64]) -> Ragged:
    """``values[starts[i]:stops[i]]`` for each ``i``, one after another, as a compact ``Ragged``."""
    lengths = stops - starts
    offsets = np.zeros(lengths.size + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    if lengths.size and total < 64 * lengths.size:  # short rows: one vectorised gather
        return Ragged(values[runs(starts, lengths)], offsets)
    # long rows: the slices copied one after another in one call (_kernels.gather)
    return Ragged(gather(values, starts, stops, total), offsets)
