"""The shuffle planner: pure functions from (dataset, seed, epoch, layout, budget) to an epoch plan.

No I/O, no threads, no torch.  One epoch, for one (rank, worker)::

    units 0..M-1 --permute (seed, epoch)--> u7 u2 u9 u0 u5 ...        one global unit order
    concatenate their rows  ---------------> [ rank 0 rows | rank 1 rows | ... ]
                                              equal shares: ceil(N/W) rows (pad by
                                              wrapping) or floor(N/W) (drop_last)
    cut the rank's rows into windows of      [w0|w1 | win 2 | win 3 | win 4 | ... ]
    window_rows rows (a multiple of B),        worker w takes windows w, w+nw, ...
    after a ramp of W/8, W/4, W/2 rows
    within a window: a random permutation    perm(seed, epoch, rank, window)
    of its rows, cut into batches of B       b0 b1 b2 ... (the rank's last batch may be short)

The ramp gets the first batch out after reading an eighth of a window (time to first batch)
at a small cost in the mixing of the epoch's first batches; ``describe()`` accounts for it.
Windows are whole multiples of the batch size, so every batch comes from one window, every
rank has the same number of batches, and the batch count does not depend on the number
of DataLoader workers.  A unit cut by a window (or rank) boundary is read in two parts.
The plan holds O(units) integers; a window's row permutation is made only when asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["EpochPlan", "plan_epoch", "window_bounds", "window_rows_for", "worker_batch_counts", "split_consumed", "next_worker"]

_UNITS = 1  # tags that keep the random streams of the planner apart
_WINDOW = 2


def window_bounds(rank_rows: int, window_rows: int, batch_size: int, ramp: int = 3) -> NDArray[np.int64]:
    """Row offsets of the windows of a rank's stream: ``ramp`` growing windows, then full ones.

    The first windows hold ``window_rows / 2**ramp``, ..., ``window_rows / 2`` rows (whole
    batches, at least one), so the first batch waits for a small read only.
    """
    sizes = [max(batch_size, ((window_rows >> k) // batch_size) * batch_size) for k in range(ramp, 0, -1)]
    starts = [0]
    for size in sizes:
        if starts[-1] >= rank_rows:
            break
        starts.append(starts[-1] + size)
    rest = np.arange(starts[-1] + window_rows, rank_rows, window_rows, dtype=np.int64)
    bounds = np.concatenate([np.asarray(starts, np.int64), rest, [rank_rows]])
    return np.unique(np.minimum(bounds, rank_rows))


def window_rows_for(window_bytes: int, row_nbytes: int, batch_size: int, total_rows: int) -> int:
    """Rows per window: as many whole batches as fit in ``window_bytes`` (at least one batch)."""
    fit = window_bytes // max(1, row_nbytes)
    rows = max(batch_size, (fit // batch_size) * batch_size)
    return int(min(rows, math.ceil(total_rows / batch_size) * batch_size))


@dataclass(frozen=True)
class EpochPlan:
    """The plan of one epoch for one (rank, worker).

    ``seg_unit[i], seg_lo[i], seg_hi[i]``: the i-th piece of the rank's stream is rows
    ``seg_lo:seg_hi`` of unit ``seg_unit[i]``.  ``windows`` lists this worker's window
    numbers (within the rank); window ``j`` covers segments ``win_seg[j]:win_seg[j+1]`` and
    stream rows ``win_start[j]:win_start[j+1]``; ``window_rows`` is the largest window.
    """

    seed: int
    epoch: int
    rank: int
    world_size: int
    worker: int
    num_workers: int
    batch_size: int
    drop_last: bool
    shuffle: bool
    window_rows: int
    rank_rows: int
    seg_unit: NDArray[np.int64]
    seg_lo: NDArray[np.int64]
    seg_hi: NDArray[np.int64]
    win_seg: NDArray[np.int64]
    win_start: NDArray[np.int64]
    windows: NDArray[np.int64]

    @property
    def n_windows_rank(self) -> int:
        return int(self.win_seg.shape[0] - 1)

    def window_size(self, j: int) -> int:
        return int(self.win_start[j + 1] - self.win_start[j])

    def window_batches(self, j: int) -> int:
        n = self.window_size(j)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def n_batches(self) -> int:
        """Batches this worker serves this epoch."""
        return int(sum(self.window_batches(int(j)) for j in self.windows))

    def window_segments(self, j: int) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        """(unit, lo, hi) of window ``j``'s pieces, in the order they are placed in its buffer."""
        a, b = int(self.win_seg[j]), int(self.win_seg[j + 1])
        return self.seg_unit[a:b], self.seg_lo[a:b], self.seg_hi[a:b]

    def window_perm(self, j: int) -> NDArray[np.int64]:
        """The serving order of window ``j``'s buffer positions (identity when not shuffling)."""
        n = self.window_size(j)
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        rng = np.random.default_rng((self.seed, self.epoch, _WINDOW, self.rank, self.world_size, j))
        return rng.permutation(n).astype(np.int64)


def _unit_order(unit_rows: NDArray[np.int64], seed: int, epoch: int, shuffle: bool) -> NDArray[np.int64]:
    m = unit_rows.shape[0]
    if not shuffle:
        return np.arange(m, dtype=np.int64)
    return np.random.default_rng((seed, epoch, _UNITS)).permutation(m).astype(np.int64)


def _cut(order: NDArray[np.int64], unit_rows: NDArray[np.int64], start: int, stop: int
         ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Segments covering positions ``start:stop`` of the stream of units in ``order`` (wrapping)."""
    sizes = unit_rows[order]
    ends = np.cumsum(sizes)
    total = int(ends[-1])
    units, los, his = [], [], []
    pos = start
    while pos < stop:
        base = (pos // total) * total
        p = pos - base
        q = min(stop - base, total)
        i0 = int(np.searchsorted(ends, p, side="right"))
        i1 = int(np.searchsorted(ends, q, side="left"))
        idx = np.arange(i0, i1 + 1)
        seg_start = ends[idx] - sizes[idx]
        lo = np.maximum(p - seg_start, 0)
        hi = np.minimum(q - seg_start, sizes[idx])
        units.append(order[idx])
        los.append(lo)
        his.append(hi)
        pos = base + q
    return np.concatenate(units), np.concatenate(los), np.concatenate(his)


def plan_epoch(unit_rows: NDArray[np.int64], *, seed: int, epoch: int, batch_size: int, window_rows: int,
               rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1,
               shuffle: bool = True, drop_last: bool = False, ramp: int = 3) -> EpochPlan:
    """Plan epoch ``epoch`` for ``(rank, worker)``.

    Args:
        unit_rows: rows of each shuffle unit, in storage order.
        seed, epoch: the random streams come from ``default_rng((seed, epoch, ...))``.
        batch_size: rows per batch.
        window_rows: rows mixed together; rounded down to a multiple of ``batch_size``.
        rank, world_size: this process's share: ``ceil(N/W)`` rows, padded by wrapping to the
            epoch's first rows, or ``floor(N/W)`` rows with ``drop_last``.
        worker, num_workers: DataLoader workers split the rank's windows round-robin.
        shuffle: permute units and rows (otherwise storage order).
        drop_last: drop each rank's last short batch (and the ``N mod W`` remainder rows).
        ramp: the number of smaller windows (W/2**ramp ... W/2) that start the epoch.

    Raises:
        ValueError: on out-of-range arguments or a rank share with no rows.
    """
    unit_rows = np.asarray(unit_rows, dtype=np.int64)
    if unit_rows.ndim != 1 or unit_rows.size == 0 or (unit_rows <= 0).any():
        raise ValueError("unit_rows must be a non-empty 1-D array of positive row counts")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    if not 0 <= worker < num_workers:
        raise ValueError(f"worker {worker} outside {num_workers} workers")
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got {seed}, {epoch}")
    n = int(unit_rows.sum())
    rank_rows = n // world_size if drop_last else -(-n // world_size)
    if rank_rows == 0:
        raise ValueError(f"{n} rows cannot be shared by {world_size} ranks with drop_last")
    window_rows = max(batch_size, (window_rows // batch_size) * batch_size)
    order = _unit_order(unit_rows, seed, epoch, shuffle)
    su, sl, sh = _cut(order, unit_rows, rank * rank_rows, (rank + 1) * rank_rows)
    # Cut the rank's segments at window boundaries.
    win_start = window_bounds(rank_rows, window_rows, batch_size, ramp)
    n_win = win_start.size - 1
    lengths = sh - sl
    seg_end = np.cumsum(lengths)
    seg_start = seg_end - lengths
    cuts = win_start[1:-1]
    bounds = np.union1d(np.concatenate([[0], seg_end]), cuts)
    piece_start, piece_len = bounds[:-1], np.diff(bounds)
    idx = np.searchsorted(seg_end, piece_start, side="right")
    su = su[idx]
    sl = sl[idx] + (piece_start - seg_start[idx])
    sh = sl + piece_len
    win_seg = np.searchsorted(piece_start, win_start, side="left")
    win_seg[-1] = piece_start.size
    # Inside a window, place pieces in storage order: reads of neighbouring units run in file order.
    for j in range(n_win):
        a, b = int(win_seg[j]), int(win_seg[j + 1])
        o = np.lexsort((sl[a:b], su[a:b]))
        su[a:b], sl[a:b], sh[a:b] = su[a:b][o], sl[a:b][o], sh[a:b][o]
    windows = np.arange(worker, n_win, num_workers, dtype=np.int64)
    return EpochPlan(seed, epoch, rank, world_size, worker, num_workers, batch_size, drop_last, shuffle,
                     window_rows, rank_rows, su, sl, sh, win_seg, win_start, windows)


def worker_batch_counts(plan_of_worker0: EpochPlan) -> list[int]:
    """Batches served by each worker of the plan's rank (same for every rank)."""
    p = plan_of_worker0
    counts = [0] * p.num_workers
    for j in range(p.n_windows_rank):
        counts[j % p.num_workers] += p.window_batches(j)
    return counts


def split_consumed(counts: list[int], consumed: int) -> list[int]:
    """How many batches of each worker a DataLoader has yielded after ``consumed`` batches.

    A DataLoader over an IterableDataset takes batches from its workers round-robin and
    skips workers that are exhausted; this replays that order arithmetically.
    """
    if consumed < 0 or consumed > sum(counts):
        raise ValueError(f"consumed batches {consumed} outside 0..{sum(counts)}")
    taken = [0] * len(counts)
    left = consumed
    rnd = 0
    while left:
        active = [w for w, c in enumerate(counts) if c > rnd]
        if left >= len(active):
            for w in active:
                taken[w] += 1
            left -= len(active)
        else:
            for w in active[:left]:
                taken[w] += 1
            left = 0
        rnd += 1
    return taken


def next_worker(counts: list[int], consumed: int) -> int:
    """The worker whose batch a DataLoader yields after ``consumed`` batches (0 when all are done).

    On resume, new worker ``i`` takes over worker ``(next_worker + i) % num_workers``, so that
    the DataLoader, which starts again at worker 0, continues in the original order.
    """
    taken = split_consumed(counts, consumed)
    rnd = min((t for w, t in enumerate(taken) if t < counts[w]), default=None)
    if rnd is None:
        return 0
    # In round `rnd`, workers with more than `rnd` batches go in order; the first one that
    # has not yet given its round-`rnd` batch is next.
    for w, c in enumerate(counts):
        if c > rnd and taken[w] == rnd:
            return w
    return 0  # pragma: no cover - unreachable when consumed < sum(counts)
