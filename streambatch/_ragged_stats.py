"""Ragged columns in the manifest: row-length statistics and the bytes of each unit.

The statistics are the lengths' min, mean, p50, p99 and max, and the longest row.

Lengths are counted in a histogram of 8 buckets an octave (a bucket spans 9% of its lower
edge), so the quantiles are those of the bucketed lengths: exact for lengths up to 16, within
9% above (rounded up to the bucket's upper edge, so that p99 never under-states).  The
histogram merges exactly, so parts summarised in parallel give the whole's statistics.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._fields import int_array
from .errors import ManifestError
from .ragged import Ragged
from .schema import Column

__all__ = ["RaggedStats", "check_ragged_stats", "ragged_sizes", "bucket_of", "bucket_top"]

_PER_OCTAVE = 8
_EXACT = 16  # lengths 0..15 have buckets of their own
_BUCKETS = _EXACT + _PER_OCTAVE * 64


def bucket_of(lengths: np.ndarray) -> np.ndarray:
    """Each length's histogram bucket."""
    lengths = np.asarray(lengths, np.int64)
    with np.errstate(divide="ignore"):
        log = np.floor((np.log2(np.maximum(lengths, 1)) - 4) * _PER_OCTAVE).astype(np.int64)
    return np.where(lengths < _EXACT, lengths, _EXACT + np.maximum(log, 0))


def bucket_top(b: int) -> int:
    """The largest length of bucket ``b``."""
    if b < _EXACT:
        return b
    return math.ceil(2 ** (4 + (b - _EXACT + 1) / _PER_OCTAVE)) - 1


class RaggedStats:
    """Row-length statistics of one ragged column, merged part by part in row order (``merge``
    adds a part that comes after this one: the longest row's index is shifted by this part's rows)."""

    def __init__(self, col: Column, *_: Any, **__: Any) -> None:
        self.col = col
        self._n = 0
        self.total = 0
        self.hist = np.zeros(_BUCKETS, np.int64)
        self.min = math.inf
        self.max = -1
        self.max_row = -1

    @property
    def n(self) -> int:
        return self._n

    def update(self, rows: Ragged) -> None:
        lengths = rows.lengths
        if lengths.size == 0:
            return
        self.hist += np.bincount(bucket_of(lengths), minlength=_BUCKETS)[:_BUCKETS]
        self.total += int(lengths.sum())
        self.min = min(self.min, int(lengths.min()))
        k = int(lengths.argmax())
        if int(lengths[k]) > self.max:
            self.max, self.max_row = int(lengths[k]), self._n + k
        self._n += lengths.size

    def flush(self) -> None:
        """Nothing is staged (the interface of ``ColumnStats``)."""

    def release(self) -> None:
        """Nothing to free (the interface of ``ColumnStats``)."""

    def merge(self, other: RaggedStats) -> None:
        """Add ``other``, the statistics of the rows that follow this part's."""
        if other._n:
            self.hist += other.hist
            self.total += other.total
            self.min = min(self.min, other.min)
            if other.max > self.max:
                self.max, self.max_row = other.max, self._n + other.max_row
            self._n += other._n

    def quantile(self, q: float) -> int:
        """The ``q`` quantile of the row lengths (to the bucket's upper edge)."""
        cum = np.cumsum(self.hist)
        b = int(np.searchsorted(cum, max(1, math.ceil(q * self._n))))
        return min(bucket_top(b), self.max)

    def to_json(self) -> dict[str, Any]:
        n = self._n
        lengths = {"min": int(self.min) if n else 0, "mean": self.total / n if n else 0.0,
                   "p50": self.quantile(0.5) if n else 0, "p99": self.quantile(0.99) if n else 0,
                   "max": max(0, self.max)}
        return {"count": n, "lengths": lengths, "max_row": max(0, self.max_row),
                "max_row_nbytes": max(0, self.max) * self.col.item_nbytes}


def check_ragged_stats(st: Any, where: str) -> None:
    """``ManifestError`` unless ``st`` is what :meth:`RaggedStats.to_json` writes."""
    lengths = st.get("lengths") if isinstance(st, dict) else None
    ok = (isinstance(lengths, dict) and all(isinstance(lengths.get(k), (int, float)) and lengths[k] >= 0
                                            for k in ("min", "mean", "p50", "p99", "max"))
          and all(type(st.get(k)) is int and st[k] >= 0 for k in ("count", "max_row", "max_row_nbytes")))
    if not ok:
        raise ManifestError(f"{where}: a ragged column's statistics need 'count', 'max_row', 'max_row_nbytes' and "
                            "'lengths' with min, mean, p50, p99 and max")


def ragged_sizes(columns: list[Column], layout: dict[str, Any], urows: NDArray[np.int64], where: str,
                 max_unit_bytes: int) -> tuple[list[Column], dict[str, NDArray[np.int64]]]:
    """The columns, each ragged one sized by its mean row (``nbytes_hint``: its values' bytes plus
    an 8-byte offset), and ``layout.ragged_nbytes``: per ragged column, the decoded bytes of its
    values in each unit.  The loader sizes windows by the mean and admits each by its real bytes."""
    if not any(c.ragged for c in columns):
        return columns, {}
    doc = layout.get("ragged_nbytes")
    if not isinstance(doc, dict):
        raise ManifestError(f"{where}: layout.ragged_nbytes must give each ragged column's bytes in every unit")
    sizes, out = {}, []
    for c in columns:
        if c.ragged:
            a = sizes[c.name] = int_array(doc.get(c.name), len(urows), f"{where}: layout.ragged_nbytes[{c.name!r}]",
                                          hi=max_unit_bytes)
            c = replace(c, nbytes_hint=-(-int(a.sum()) // int(urows.sum())) + 8)
        out.append(c)
    return out, sizes
