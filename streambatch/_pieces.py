"""``Pieces``: a stream of rows as pieces of shuffle units, the planner's currency (``streambatch.plan``).

Pure numpy: no I/O.  A piece is a run of rows of one unit, or an explicit ascending list of
them (a *sparse* piece, left by a partly served window after an elastic resume).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from numpy.typing import NDArray

from .ragged import runs

__all__ = ["Pieces", "rows_to_pieces", "storage_order", "without_rows"]

_I64 = np.int64


@dataclass(frozen=True)
class Pieces:
    """A stream of rows as pieces of units.

    Piece ``i`` is rows ``lo[i]:hi[i]`` of unit ``unit[i]``; a *sparse* piece (one with
    ``keep_ptr[i] < keep_ptr[i+1]``) is exactly the rows ``keep[keep_ptr[i]:keep_ptr[i+1]]``
    of that unit (ascending, inside ``lo:hi``).  ``pad[i]`` marks a wrapped copy of the
    stream's first rows (padding that evens out the ranks' shares).
    """

    unit: NDArray[np.int64]
    lo: NDArray[np.int64]
    hi: NDArray[np.int64]
    keep_ptr: NDArray[np.int64]
    keep: NDArray[np.int64]
    pad: NDArray[np.bool_]

    @staticmethod
    def dense(unit: NDArray[np.int64], lo: NDArray[np.int64], hi: NDArray[np.int64]) -> "Pieces":
        n = unit.shape[0]
        return Pieces(unit.astype(_I64), lo.astype(_I64), hi.astype(_I64), np.zeros(n + 1, _I64),
                      np.zeros(0, _I64), np.zeros(n, bool))

    @staticmethod
    def concat(parts: Sequence["Pieces"]) -> "Pieces":
        parts = [p for p in parts if p.n]
        if not parts:
            return Pieces.dense(np.zeros(0, _I64), np.zeros(0, _I64), np.zeros(0, _I64))
        offs = np.cumsum([0] + [p.keep.shape[0] for p in parts[:-1]])
        ptr = np.concatenate([parts[0].keep_ptr[:1]] + [p.keep_ptr[1:] + o for p, o in zip(parts, offs)])
        return Pieces(np.concatenate([p.unit for p in parts]), np.concatenate([p.lo for p in parts]),
                      np.concatenate([p.hi for p in parts]), ptr, np.concatenate([p.keep for p in parts]),
                      np.concatenate([p.pad for p in parts]))

    @property
    def n(self) -> int:
        return int(self.unit.shape[0])

    @property
    def sparse(self) -> NDArray[np.bool_]:
        return np.diff(self.keep_ptr) > 0

    def lengths(self) -> NDArray[np.int64]:
        return np.where(self.sparse, np.diff(self.keep_ptr), self.hi - self.lo)

    def rows(self, i: int) -> NDArray[np.int64]:
        """Row offsets (within the unit) of piece ``i``, in order."""
        a, b = int(self.keep_ptr[i]), int(self.keep_ptr[i + 1])
        return self.keep[a:b] if b > a else np.arange(int(self.lo[i]), int(self.hi[i]), dtype=_I64)

    def rows_of(self, start: int, stop: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """The rows (within their units) of pieces ``start:stop``: ``rows(i)`` for each,
        concatenated without a Python step per piece, and each piece's row count."""
        ptr = self.keep_ptr
        nkeep = ptr[start + 1:stop + 1] - ptr[start:stop]
        sparse = nkeep > 0
        n = np.where(sparse, nkeep, self.hi[start:stop] - self.lo[start:stop])
        out = runs(self.lo[start:stop], n)
        if ptr[stop] > ptr[start]:  # sparse pieces: their kept rows, which lie in keep in piece order
            first = np.cumsum(n) - n  # each piece's place in the output
            out[runs(first[sparse], nkeep[sparse])] = self.keep[int(ptr[start]):int(ptr[stop])]
        return out, n

    def global_rows(self, start: int, stop: int, unit_start: NDArray[np.int64]) -> NDArray[np.int64]:
        """The global row numbers of pieces ``start:stop``, in order: ``unit_start[unit[i]] + rows(i)``."""
        rows, n = self.rows_of(start, stop)
        return rows + np.repeat(unit_start[self.unit[start:stop]], n)

    def sub(self, src: NDArray[np.int64], off: NDArray[np.int64], length: NDArray[np.int64]) -> "Pieces":
        """New pieces: ``length[k]`` rows of piece ``src[k]`` starting at its ``off[k]``-th row."""
        sp = self.sparse[src]
        lo = self.lo[src] + off
        hi = lo + length
        n_keep = np.where(sp, length, 0)
        ptr = np.concatenate([[0], np.cumsum(n_keep)]).astype(_I64)
        pos = np.repeat(self.keep_ptr[src] + off - ptr[:-1], n_keep) + np.arange(ptr[-1], dtype=_I64)
        keep = self.keep[pos]
        s = np.flatnonzero(sp)
        if s.size:
            lo[s] = keep[ptr[s]]
            hi[s] = keep[ptr[s + 1] - 1] + 1
        return Pieces(self.unit[src], lo, hi, ptr, keep, self.pad[src])

    def take(self, idx: NDArray[np.int64]) -> "Pieces":
        if self.keep.shape[0] == 0:  # all dense (every epoch but an elastic resume): copies only
            return Pieces(self.unit[idx], self.lo[idx], self.hi[idx], np.zeros(idx.shape[0] + 1, _I64), self.keep,
                          self.pad[idx])
        return self.sub(idx, np.zeros(idx.shape[0], _I64), self.lengths()[idx])

    def split_at(self, cuts: NDArray[np.int64]) -> tuple["Pieces", NDArray[np.int64]]:
        """Cut pieces at the stream positions ``cuts``; also return each new piece's start."""
        lengths = self.lengths()
        end = np.cumsum(lengths)
        start = end - lengths
        bounds = np.concatenate([[0], end, cuts]).astype(_I64)  # their sorted union (np.union1d, a hash
        bounds.sort()  # set on ~14k pieces, cost 1.5 ms of each epoch's plan on the consuming thread)
        bounds = bounds[np.concatenate([[True], bounds[1:] != bounds[:-1]])]
        pstart, plen = bounds[:-1], np.diff(bounds)
        src = np.searchsorted(end, pstart, side="right")
        return self.sub(src, pstart - start[src], plen), pstart

    def slice_rows(self, start: int, stop: int) -> "Pieces":
        """Stream positions ``start:stop``; positions past the end wrap around and are marked pad."""
        total = int(self.lengths().sum())
        if start == 0 and stop == total:
            return self  # the whole stream (one rank): no copy
        parts = []
        pos = start
        while pos < stop:
            base = (pos // total) * total
            a, b = pos - base, min(stop - base, total)
            cut, pstart = self.split_at(np.asarray([a, b], _I64))
            keep = (pstart >= a) & (pstart < b)
            part = cut.take(np.flatnonzero(keep))
            if base:
                part = Pieces(part.unit, part.lo, part.hi, part.keep_ptr, part.keep, np.ones(part.n, bool))
            parts.append(part)
            pos = base + b
        return Pieces.concat(parts)


def rows_to_pieces(units: NDArray[np.int64], rows: NDArray[np.int64]) -> Pieces:
    """Sparse pieces, one per unit, holding the given (unit, row) pairs (sorted per unit)."""
    o = np.lexsort((rows, units))
    units, rows = units[o], rows[o]
    starts = np.flatnonzero(np.concatenate([[True], units[1:] != units[:-1]]))
    ends = np.concatenate([starts[1:], [units.size]])
    ptr = np.concatenate([[0], ends]).astype(_I64)
    return Pieces(units[starts], rows[starts], rows[ends - 1] + 1, ptr, rows.astype(_I64),
                  np.zeros(starts.size, bool))


def without_rows(p: Pieces, drop: NDArray[np.int64], unit_start: NDArray[np.int64]) -> Pieces:
    """``p`` without the global rows ``drop`` (few): the pieces that hold them become sparse."""
    lo_g, hi_g = unit_start[p.unit] + p.lo, unit_start[p.unit] + p.hi
    hit = np.flatnonzero((np.searchsorted(drop, lo_g, side="left") < np.searchsorted(drop, hi_g, side="left")))
    if hit.size == 0:
        return p
    fixed = []
    for i in hit.tolist():
        rows = p.rows(i)
        rows = rows[~np.isin(unit_start[p.unit[i]] + rows, drop)]
        if rows.size:
            fixed.append(rows_to_pieces(np.full(rows.size, p.unit[i], _I64), rows))
    keep = np.setdiff1d(np.arange(p.n, dtype=_I64), hit)
    return Pieces.concat([p.take(keep)] + fixed)


def storage_order(window: NDArray[np.int64], unit: NDArray[np.int64], lo: NDArray[np.int64], rows: int,
                  one_key: bool = True) -> NDArray[np.int64]:
    """The order that sorts pieces by ``window``, then ``unit``, then ``lo`` (< ``rows``), ties kept
    in place: ``np.lexsort``'s.  Where (window, unit, row, place) fit one int64 key, each key is
    distinct and one unstable ``argsort`` of it gives that same order in a fifth of the time (an
    epoch's plan runs on the consuming thread: 2 ms of ``tab``'s 9)."""
    n = unit.shape[0]
    units = int(unit.max()) + 1 if n else 1
    if one_key and (int(window.max()) + 1 if n else 1) * units * rows * max(1, n) < 1 << 62:
        return np.argsort(((window * units + unit) * rows + lo) * max(1, n) + np.arange(n, dtype=_I64)).astype(_I64)
    return np.lexsort((lo, unit, window)).astype(_I64)
