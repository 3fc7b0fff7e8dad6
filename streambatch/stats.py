"""Per-column statistics computed in one streaming pass with a numerically stable merge.

Count, mean, standard deviation, min and max per feature (a tensor column gets one value
per element of its row shape), merged piece by piece with Chan et al.'s parallel update in
float64; an integer label column also gets a histogram and the intra-unit label
correlation that predicts shuffle quality (../shared/SHUFFLE.md).
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np

from .errors import InputError
from .schema import Column

__all__ = ["ColumnStats", "LabelStats", "shift_of", "FEATURE_SLICE", "BYTES_PER_FEATURE"]

# _small_int_moments: rows per float32 block (a sum of 258 squares of 255 is still below 2^24,
# where float32 stops holding every integer) and rows per call (n * sum(x^2) < 2^63 in int64)
_F32_EXACT_ROWS = 256
_EXACT_ROWS = 1 << 22


def _small_int_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and M2 per column of ``x`` (rows x features of 1-byte integers or bools), exactly up
    to one final rounding: sums and sums of squares are whole numbers, computed in float32 blocks
    small enough to hold them exactly (half the bytes of float64, twice the SIMD width), added up
    in int64, and M2 = (n * sum(x^2) - sum(x)^2) / n in integers (docs/PERFORMANCE.md,
    Statistics)."""
    n, feats = x.shape
    rows = max(1, min(_F32_EXACT_ROWS, (4 << 20) // (4 * max(1, feats))))
    buf = np.empty((min(rows, n), feats), np.float32)
    s = np.zeros(feats, np.int64)
    q = np.zeros(feats, np.int64)
    for lo in range(0, n, rows):
        part = x[lo:lo + rows]
        b = buf[: part.shape[0]]
        np.copyto(b, part, casting="unsafe")
        s += b.sum(axis=0).astype(np.int64)
        q += np.einsum("ij,ij->j", b, b).astype(np.int64)
    return s / n, (n * q - s * s) / n


_STAGE_BYTES = 1 << 20
"""Pieces below half this many bytes (by default) are copied into a staging buffer and summarised
when it is full: a summary is ~25 numpy calls, most of a small piece's cost (docs/PERFORMANCE.md,
Statistics)."""
FEATURE_SLICE = 1 << 16
"""Features summarised (and merged, and written out) at a time: the temporaries of a row of
millions of features stay a few arrays of this many float64 (512 KiB each)."""
BYTES_PER_FEATURE = 40
"""What a ``ColumnStats`` keeps per feature: mean, M2, min, max and the shift, float64 each."""
_WIDE_ITEMS = 2048
"""Min/max fold rows into rows of about this many items before reducing: numpy reduces axis 0 one
row at a time, slowly for narrow rows (docs/PERFORMANCE.md, Statistics)."""


def _fold(ufunc: np.ufunc, x: np.ndarray) -> np.ndarray:
    """``ufunc.reduce(x, axis=0)`` of a 2-D array, over rows folded to ~_WIDE_ITEMS items."""
    n, feats = x.shape
    k = max(1, _WIDE_ITEMS // max(1, feats))
    m = n // k * k
    if k == 1 or m == 0 or not x.flags.c_contiguous:
        return ufunc.reduce(x, axis=0)
    out = ufunc.reduce(ufunc.reduce(x[:m].reshape(m // k, k * feats), axis=0).reshape(k, feats), axis=0)
    return out if m == n else ufunc(out, ufunc.reduce(x[m:], axis=0))


def shift_of(row: np.ndarray) -> np.ndarray:
    """The per-feature ``ColumnStats`` shift for a column whose first row is ``row``: its values
    as float64 (0 where not finite; 0 for 1-byte columns, whose moments are exact unshifted)."""
    flat = np.asarray(row).reshape(-1)
    if flat.dtype.itemsize == 1 and flat.dtype.kind in "biu":
        return np.zeros(flat.size, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        out = flat.astype(np.float64)
    out[~np.isfinite(out)] = 0.0
    return out


class ColumnStats:
    """Running count/mean/M2/min/max of one column, per feature.

    ``update`` takes pieces in any order of size; ``merge`` adds the statistics of another part
    of the column (Chan et al.), so parts summarised in parallel combine into the same result
    to rounding.  Small pieces are staged and summarised together (read ``n``, ``to_json()``
    or ``merge``, which flush the stage, rather than ``mean``/``m2`` directly mid-way).
    """

    def __init__(self, col: Column, stage_bytes: int = _STAGE_BYTES, shift: np.ndarray | None = None) -> None:
        self.col = col
        self._stage_bytes = stage_bytes
        # Moments are of x - shift, a value of the column (its first row): far from zero, a
        # block's float64 mean carries an error of ~eps * |mean|, which Chan's merge turns into
        # an M2 error of ~delta * that (parts of int64 ids near 2^40 merged to 1e-9 of the std)
        self.shift = shift
        self._n = 0
        self.mean = np.zeros(col.row_items, np.float64)
        self.m2 = np.zeros(col.row_items, np.float64)
        self.min = np.full(col.row_items, np.inf)
        self.max = np.full(col.row_items, -np.inf)
        self._stage: np.ndarray | None = None
        self._staged = 0

    @property
    def n(self) -> int:
        self.flush()
        return self._n

    def update(self, values: np.ndarray) -> None:
        """Merge the rows of ``values`` in (staged first when the piece is small)."""
        n = values.shape[0]
        if n == 0:
            return
        x = values.reshape(n, -1)
        if x.nbytes >= self._stage_bytes // 2 or (self._stage is not None and x.dtype != self._stage.dtype):
            self.flush()
            self._summarise(x)
            return
        if self._stage is None:
            rows = max(1, self._stage_bytes // max(1, x.shape[1] * x.dtype.itemsize))
            self._stage = np.empty((rows, x.shape[1]), x.dtype)
        lo = 0
        while lo < n:
            take = min(n - lo, self._stage.shape[0] - self._staged)
            self._stage[self._staged:self._staged + take] = x[lo:lo + take]
            self._staged += take
            lo += take
            if self._staged == self._stage.shape[0]:
                self.flush()

    def flush(self) -> None:
        """Summarise the staged rows."""
        if self._staged:
            staged, self._staged = self._staged, 0
            assert self._stage is not None
            self._summarise(self._stage[:staged])

    def merge(self, other: ColumnStats) -> None:
        """Add the statistics of ``other`` (another part of the same column; exact to rounding
        when both were made with the same ``shift``)."""
        other.release()
        if other._n:
            self.flush()
            if self._n == 0 and self.shift is None:
                self.shift = other.shift
            step = max(1, min(self.mean.size, FEATURE_SLICE))
            with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN parts: stats become null
                for f0 in range(0, self.mean.size, step):
                    sl = slice(f0, f0 + step)
                    mean = other.mean[sl]
                    if other.shift is not self.shift:  # the other part's mean around this one's shift (None: 0)
                        mean = mean + ((0.0 if other.shift is None else other.shift[sl])
                                       - (0.0 if self.shift is None else self.shift[sl]))
                    self._merge(self._n, other._n, mean, other.m2[sl], sl=sl)
                np.minimum(self.min, other.min, out=self.min)
                np.maximum(self.max, other.max, out=self.max)
            self._n += other._n

    def release(self) -> None:
        """Summarise the staged rows and free the staging buffer (a finished part keeps only
        its statistics)."""
        self.flush()
        self._stage = None

    def _summarise(self, x: np.ndarray) -> None:
        """Merge the rows of ``x`` (rows x features): min/max in the source dtype; count, mean and
        M2 exactly for 1-byte integers (``_small_int_moments``), else in cache-sized float64 blocks.
        Features go ``FEATURE_SLICE`` at a time, updated in place: a row of millions of features
        then needs a few MiB of temporaries, not a dozen arrays as long as the row."""
        small = x.dtype.itemsize == 1 and x.dtype.kind in "biu"
        if self.shift is None and not small:
            self.shift = shift_of(x[0])
        feats = x.shape[1]
        step = max(1, min(feats, FEATURE_SLICE))
        with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN in the data: stats become null
            for f0 in range(0, feats, step):
                self._summarise_features(x[:, f0:f0 + step], slice(f0, f0 + step), small)
        self._n += x.shape[0]

    def _summarise_features(self, x: np.ndarray, sl: slice, small: bool) -> None:
        """``_summarise`` for the features ``sl`` (``x`` holds just those)."""
        n = x.shape[0]
        # min/max in the source dtype: exact, and fewer bytes than float64
        np.minimum(self.min[sl], _fold(np.minimum, x), out=self.min[sl])
        np.maximum(self.max[sl], _fold(np.maximum, x), out=self.max[sl])
        if small:
            for lo in range(0, n, _EXACT_ROWS):
                part = x[lo:lo + _EXACT_ROWS]
                self._merge(self._n + lo, part.shape[0], *_small_int_moments(part), sl=sl)
            return
        feats = x.shape[1]
        # at least 64 rows a block: wide rows (images) in 2 MB blocks of a few rows spent
        # most of their time in the per-block calls
        block = max(64, (2 << 20) // (8 * max(1, feats)))
        buf = np.empty((min(block, n), feats), np.float64)
        self._merge_blocks(x, buf, block, sl)

    def _merge_blocks(self, x: np.ndarray, buf: np.ndarray, block: int, sl: slice) -> None:
        n = x.shape[0]
        assert self.shift is not None
        shift = self.shift[sl]
        for lo in range(0, n, block):
            part = x[lo:lo + block]
            b = buf[: part.shape[0]]
            np.copyto(b, part, casting="unsafe")
            b -= shift
            nb = b.shape[0]
            sb = b.sum(axis=0)
            mb = sb / nb
            # One pass: M2 = sum(x^2) - sum(x) * mean.  That loses digits where |mean| >> std;
            # its relative error is ~eps * sum(x^2) / M2, so features with sum(x^2) > 16 M2
            # (|mean| > ~4 std, or constant) are recomputed centred (two-pass), keeping the
            # result within ~1e-13 of numpy's float64 std.
            sq = np.einsum("ij,ij->j", b, b)
            m2b = sq - sb * mb
            bad = ~(m2b * 16 >= sq)  # also NaN
            if bad.any():
                centred = b[:, bad] - mb[bad]
                m2b[bad] = np.einsum("ij,ij->j", centred, centred)
            self._merge(self._n + lo, nb, mb, m2b, sl=sl)

    def _merge(self, n0: int, nb: int, mb: np.ndarray, m2b: np.ndarray, sl: slice = slice(None)) -> None:
        """Chan et al.'s update of features ``sl``, which have seen ``n0`` rows, with a block of
        ``nb`` rows, mean ``mb`` and M2 ``m2b`` (in place; the caller counts the rows)."""
        total = n0 + nb
        mean, m2 = self.mean[sl], self.m2[sl]
        delta = mb - mean
        mean += delta * (nb / total)
        m2 += m2b
        delta **= 2
        delta *= n0 * nb / total
        m2 += delta

    def to_json(self) -> dict[str, Any]:
        self.flush()
        std = np.sqrt(self.m2 / max(1, self._n))
        mean = self.mean if self.shift is None else self.mean + self.shift

        def out(a: np.ndarray) -> Any:
            vals = [float(v) if np.isfinite(v) else None for v in a]
            return vals[0] if not self.col.shape else vals

        return {"count": self._n, "mean": out(mean), "std": out(std), "min": out(self.min), "max": out(self.max)}

    def _slices(self) -> Iterator[slice]:
        step = max(1, min(self.mean.size, FEATURE_SLICE))
        return (slice(f0, f0 + step) for f0 in range(0, self.mean.size, step))

    def _mean(self, sl: slice) -> np.ndarray:
        """The means of features ``sl`` (the moments are kept around ``shift``)."""
        return self.mean[sl] if self.shift is None else self.mean[sl] + self.shift[sl]

    def feature_values(self) -> Iterator[np.ndarray]:
        """The per-feature mean, std, min and max that ``to_json`` lists, as float64 (NaN or inf
        where the data held them): all means, then all stds, ..., ``FEATURE_SLICE`` features a piece,
        so that a row of millions of features is written out without a copy of its statistics."""
        self.flush()
        n = max(1, self._n)
        for sl in self._slices():
            yield self._mean(sl)
        for sl in self._slices():
            yield np.sqrt(self.m2[sl] / n)
        for sl in self._slices():
            yield self.min[sl]
        for sl in self._slices():
            yield self.max[sl]

    def summary(self) -> dict[str, Any]:
        """Count, and mean, std, min and max over every value of the column (all features and rows
        pooled; ``None`` where not finite): the inline digest of statistics kept in a file."""
        self.flush()
        n, feats = self._n, self.mean.size
        with np.errstate(invalid="ignore", over="ignore"):
            grand = sum(float(self._mean(sl).sum()) for sl in self._slices()) / max(1, feats)
            m2 = 0.0
            for sl in self._slices():  # pooled M2: within features, plus between their means
                m2 += float(self.m2[sl].sum()) + n * float(((self._mean(sl) - grand) ** 2).sum())
            std = math.sqrt(m2 / max(1, n * feats)) if m2 >= 0 else math.nan
            lo, hi = float(self.min.min(initial=math.inf)), float(self.max.max(initial=-math.inf))

        def out(v: float) -> float | None:
            return v if math.isfinite(v) else None

        return {"count": n, "mean": out(grand), "std": out(std), "min": out(lo), "max": out(hi)}


class LabelStats:
    """Histogram of an integer-valued label column, and per-unit counts for the label ICC."""

    def __init__(self, col: Column) -> None:
        if col.shape:
            raise InputError(f"label column {col.name!r} must be a scalar column, not shape {list(col.shape)}")
        self.col = col
        self.counts: dict[int, int] = {}
        self.unit_counts: list[dict[int, int]] = []
        self.rows_seen = 0

    def check(self, values: np.ndarray, where: str, first_row: int | None = None) -> None:
        """Raise ``InputError`` naming the row if a label is NaN or not a whole number.  Rows are
        counted from ``first_row``, or on from the rows checked before."""
        row = self.rows_seen if first_row is None else first_row
        if values.dtype.kind == "f":
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                raise InputError(f"{where}: label column {self.col.name!r} has NaN/inf at row "
                                 f"{row + int(bad[0])}")
            frac = np.flatnonzero(values != np.round(values))
            if frac.size:
                raise InputError(f"{where}: label column {self.col.name!r} has a non-integer value "
                                 f"{values[frac[0]]} at row {row + int(frac[0])}")
        self.rows_seen = row + values.shape[0]

    def merge(self, other: LabelStats) -> None:
        """Add the histogram and unit counts of ``other``, the units after this one's."""
        for k, c in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + c
        if len(self.counts) <= 4096:
            self.unit_counts += other.unit_counts
        self.rows_seen = max(self.rows_seen, other.rows_seen)

    def update_unit(self, values: np.ndarray) -> None:
        v = values.astype(np.int64, copy=False)
        lo, hi = (int(v.min()), int(v.max())) if v.size else (0, -1)
        if hi - lo < 1 << 16:  # the common case: a bincount is ~10x faster than np.unique
            cnt = np.bincount(v - lo, minlength=0) if v.size else np.zeros(0, np.int64)
            present = np.flatnonzero(cnt)
            unit = dict(zip((present + lo).tolist(), cnt[present].tolist()))
        else:
            vals, counts = np.unique(v, return_counts=True)
            unit = dict(zip(vals.tolist(), counts.tolist()))
        for k, c in unit.items():
            self.counts[k] = self.counts.get(k, 0) + c
        if len(self.counts) <= 4096:
            self.unit_counts.append(unit)

    def icc(self) -> float | None:
        """Intra-unit correlation of one-hot labels (0: units look random, 1: label-pure units)."""
        if len(self.counts) > 4096 or len(self.unit_counts) < 2 or len(self.counts) < 2:
            return None
        keys = sorted(self.counts)
        idx = {k: i for i, k in enumerate(keys)}
        cnt = np.zeros((len(self.unit_counts), len(keys)))
        for u, d in enumerate(self.unit_counts):
            for k, c in d.items():
                cnt[u, idx[k]] = c
        n = cnt.sum(axis=1, keepdims=True)
        p_c = cnt / n
        p = cnt.sum(axis=0) / n.sum()
        between = float((n * (p_c - p) ** 2).sum() / n.sum())
        total = float((p * (1 - p)).sum())
        cbar = float(n.mean())
        if total <= 0 or cbar <= 1:
            return None
        return float(np.clip((between - total / cbar) / (total * (1 - 1 / cbar)), 0.0, 1.0))

    def to_json(self) -> dict[str, Any]:
        keys = sorted(self.counts)
        return {"values": keys, "counts": [self.counts[k] for k in keys], "icc": self.icc()}
