"""The shuffle planner: pure functions from (dataset, seed, epoch, layout, budget) to an epoch plan.

No I/O, no threads, no torch.  One epoch, for one (rank, worker)::

    units cut into pieces of piece_rows     u0[0:p] u0[p:2p] ... u1[0:p] ...   (0: whole units)
    pieces --permute (seed, epoch)--------> u7b u2a u9c u0a u5b ...    one global piece order
    concatenate their rows  ---------------> [ rank 0 rows | rank 1 rows | ... ]
                                              equal shares: ceil(N/W) rows (pad by
                                              wrapping) or floor(N/W) (drop_last)
    cut the rank's rows into windows of      [w0|w1 | win 2 | win 3 | win 4 | ... ]
    window_rows rows (a multiple of B),        worker w takes windows w, w+nw, ...
    after a ramp of W/8, W/4, W/2 rows
    within a window: a random permutation    perm(seed, epoch, phase, rank, window)
    of its rows, cut into batches of B       b0 b1 b2 ... (the rank's last batch may be short)

The ramp gets the first batch out after reading an eighth of a window (time to first batch)
at a small cost in the mixing of the epoch's first batches; ``describe()`` accounts for it.
Windows are whole multiples of the batch size, so every batch comes from one window, every
rank has the same number of batches, and the batch count does not depend on the number
of DataLoader workers.  A piece cut by a window (or rank) boundary is read in two parts, and
pieces of one unit that land side by side in a window are read as one.
The plan holds O(pieces) integers; a window's row permutation is made only when asked for.

Pieces are how the budget buys quality: a window mixes ``window_rows / piece_rows`` places
of the data, so the loader chooses ``piece_rows`` from its budget (``loader.sizing``) rather
than inheriting the conversion's unit size.

Elastic resume: an epoch may run in *phases* with different layouts (world size, workers,
window).  ``leftover`` turns a phase and the number of batches every rank took into the
rows not yet delivered (whole units where untouched, explicit row lists for partly served
windows), and the next phase plans those rows for its own layout.  Nothing is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

import numpy as np
from numpy.typing import NDArray

from ._pieces import Pieces, rows_to_pieces, storage_order, without_rows
from .ragged import runs

__all__ = ["Pieces", "Phase", "EpochPlan", "plan_epoch", "leftover", "split_units", "window_bounds", "window_rows_for",
           "worker_batch_counts", "split_consumed", "next_worker"]

_UNITS = 1  # tags that keep the random streams of the planner apart
_WINDOW = 2
_RESUME = 3
_I64 = np.int64


def window_bounds(rank_rows: int, window_rows: int, batch_size: int, ramp: int = 3) -> NDArray[np.int64]:
    """Row offsets of the windows of a rank's stream: ``ramp`` growing windows, then full ones.

    The first windows hold ``window_rows / 2**ramp``, ..., ``window_rows / 2`` rows (whole
    batches, at least one), so the first batch waits for a small read only.  The ramp covers
    at most a quarter of the rank's rows (its smallest windows are dropped first), so data
    that fits in one window is still shuffled whole.
    """
    sizes = [max(batch_size, ((window_rows >> k) // batch_size) * batch_size) for k in range(ramp, 0, -1)]
    while sizes and sum(sizes) > rank_rows // 4:
        sizes.pop(0)  # the ramp may cover a quarter of the epoch at most (small data: no ramp)
    starts = [0]
    for size in sizes:
        if starts[-1] >= rank_rows:
            break
        starts.append(starts[-1] + size)
    rest = np.arange(starts[-1] + window_rows, rank_rows, window_rows, dtype=_I64)
    bounds = np.concatenate([np.asarray(starts, _I64), rest, [rank_rows]])
    return np.unique(np.minimum(bounds, rank_rows))


def window_rows_for(window_bytes: int, row_nbytes: int, batch_size: int, total_rows: int) -> int:
    """Rows per window: as many whole batches as fit in ``window_bytes`` (at least one batch)."""
    fit = window_bytes // max(1, row_nbytes)
    rows = max(batch_size, (fit // batch_size) * batch_size)
    return int(min(rows, math.ceil(total_rows / batch_size) * batch_size))


class Phase(NamedTuple):
    """A finished phase of an epoch: its layout and the batches each of its ranks took.

    ``piece_rows`` is the epoch's shuffle piece size (the same in every phase of an epoch; 0:
    whole units, as states saved before pieces were sized at load time).
    """

    world_size: int
    num_workers: int
    window_rows: int
    batches: int
    piece_rows: int = 0


@dataclass(frozen=True)
class EpochPlan:
    """The plan of one epoch (phase) for one (rank, worker).

    ``pieces`` is the rank's stream; ``windows`` lists this worker's window numbers (within
    the rank); window ``j`` covers pieces ``win_seg[j]:win_seg[j+1]`` and stream rows
    ``win_start[j]:win_start[j+1]``; ``window_rows`` is the largest window.
    """

    seed: int
    epoch: int
    phase: int
    rank: int
    world_size: int
    worker: int
    num_workers: int
    batch_size: int
    drop_last: bool
    shuffle: bool
    window_rows: int
    rank_rows: int
    pieces: Pieces
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
        """Batches this worker serves in this phase of the epoch."""
        return int(sum(self.window_batches(int(j)) for j in self.windows))

    def window_pieces(self, j: int) -> Iterator[tuple[int, int, int, NDArray[np.int64] | None]]:
        """(unit, lo, hi, rows or None when the piece is all of lo:hi) of window ``j``, in buffer order."""
        table, keeps = self.window_table(j)
        for k, (u, lo, hi, _) in enumerate(table.tolist()):
            yield u, lo, hi, (None if keeps is None else keeps[k])

    def window_table(self, j: int) -> tuple[NDArray[np.int64], list[NDArray[np.int64] | None] | None]:
        """Window ``j``'s pieces as one array of rows ``(unit, lo, hi, buffer row)`` in buffer order,
        and each piece's kept rows (``None`` for all of ``lo:hi``; the list is ``None`` when no
        piece is sparse, as in every epoch that is not an elastic resume)."""
        p = self.pieces
        a, b = int(self.win_seg[j]), int(self.win_seg[j + 1])
        n = p.lengths()[a:b]
        table = np.stack([p.unit[a:b], p.lo[a:b], p.hi[a:b], np.cumsum(n) - n], axis=1).astype(_I64)
        ptr = p.keep_ptr[a:b + 1]
        if not (np.diff(ptr) > 0).any():
            return table, None
        ptr_l = ptr.tolist()
        return table, [p.keep[x:y] if y > x else None for x, y in zip(ptr_l[:-1], ptr_l[1:])]

    def window_row_ids(self, j: int, unit_start: NDArray[np.int64]) -> NDArray[np.int64]:
        """The global row number at each buffer position of window ``j``."""
        return self.pieces.global_rows(int(self.win_seg[j]), int(self.win_seg[j + 1]), unit_start)

    def window_perm(self, j: int) -> NDArray[np.int64]:
        """The serving order of window ``j``'s buffer positions (identity when not shuffling)."""
        n = self.window_size(j)
        if not self.shuffle:
            return np.arange(n, dtype=_I64)
        rng = np.random.default_rng((self.seed, self.epoch, _WINDOW, self.phase, self.rank, self.world_size, j))
        return rng.permutation(n).astype(_I64)


def split_units(unit_rows: NDArray[np.int64], piece_rows: int) -> Pieces:
    """Every unit cut into pieces of ``piece_rows`` rows (a unit's last piece may be shorter), in
    storage order; ``piece_rows`` 0 (or at least the largest unit): one piece per unit."""
    m = unit_rows.shape[0]
    if piece_rows <= 0 or piece_rows >= int(unit_rows.max()):
        return Pieces.dense(np.arange(m, dtype=_I64), np.zeros(m, _I64), unit_rows.copy())
    per = -(-unit_rows // piece_rows)
    unit = np.repeat(np.arange(m, dtype=_I64), per)
    lo = runs(np.zeros(m, _I64), per) * piece_rows  # each piece's number within its unit, times its rows
    return Pieces.dense(unit, lo, np.minimum(lo + piece_rows, unit_rows[unit]))


def _full_stream(unit_rows: NDArray[np.int64], seed: int, epoch: int, shuffle: bool, piece_rows: int) -> Pieces:
    pieces = split_units(unit_rows, piece_rows)
    if not shuffle:
        return pieces
    return pieces.take(np.random.default_rng((seed, epoch, _UNITS)).permutation(pieces.n).astype(_I64))


def _coalesce(p: Pieces, win_seg: NDArray[np.int64]) -> tuple[Pieces, NDArray[np.int64]]:
    """Merge neighbours within a window that continue each other (same unit, dense, ``hi == next
    lo``): one read each.  Returns the merged pieces and the windows' new piece offsets."""
    if p.n < 2:
        return p, win_seg
    dense = ~p.sparse
    joins = (p.unit[1:] == p.unit[:-1]) & (p.hi[:-1] == p.lo[1:]) & dense[1:] & dense[:-1] & (p.pad[1:] == p.pad[:-1])
    joins[win_seg[1:-1][(win_seg[1:-1] > 0) & (win_seg[1:-1] < p.n)] - 1] = False  # never across windows
    if not joins.any():
        return p, win_seg
    head = np.concatenate([[True], ~joins])
    starts = np.flatnonzero(head)
    ends = np.concatenate([starts[1:], [p.n]]) - 1
    n_keep = np.diff(p.keep_ptr)
    ptr = np.concatenate([[0], np.cumsum(n_keep[starts])]).astype(_I64)  # merged pieces are dense: same keeps
    merged = Pieces(p.unit[starts], p.lo[starts], p.hi[ends], ptr, p.keep, p.pad[starts])
    new_seg = np.concatenate([[0], np.cumsum(head)])[win_seg].astype(_I64)  # heads before each boundary
    return merged, new_seg


def _check_layout(batch_size: int, rank: int, world_size: int, worker: int, num_workers: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    if not 0 <= worker < num_workers:
        raise ValueError(f"worker {worker} outside {num_workers} workers")


def _plan_stream(stream: Pieces, *, seed: int, epoch: int, phase: int, batch_size: int, window_rows: int,
                 rank: int, world_size: int, worker: int, num_workers: int, shuffle: bool, drop_last: bool,
                 ramp: int) -> EpochPlan:
    _check_layout(batch_size, rank, world_size, worker, num_workers)
    n = int(stream.lengths().sum())
    rank_rows = n // world_size if drop_last else -(-n // world_size)
    if rank_rows == 0:
        raise ValueError(f"{n} rows cannot be shared by {world_size} ranks"
                         + (" with drop_last" if drop_last else ""))
    window_rows = max(batch_size, (window_rows // batch_size) * batch_size)
    mine = stream.slice_rows(rank * rank_rows, (rank + 1) * rank_rows)
    win_start = window_bounds(rank_rows, window_rows, batch_size, ramp)
    mine, pstart = mine.split_at(win_start[1:-1])
    win_seg = np.searchsorted(pstart, win_start, side="left")
    win_seg[-1] = mine.n
    # Inside a window, place pieces in storage order: reads of neighbouring units run in file order.
    window_of = np.repeat(np.arange(win_seg.size - 1, dtype=_I64), np.diff(win_seg))
    mine = mine.take(storage_order(window_of, mine.unit, mine.lo, int(mine.hi.max()) + 1 if mine.n else 1))
    # Pieces of one unit that a window holds side by side are read as one.
    mine, win_seg = _coalesce(mine, win_seg)
    windows = np.arange(worker, win_start.size - 1, num_workers, dtype=_I64)
    return EpochPlan(seed, epoch, phase, rank, world_size, worker, num_workers, batch_size, drop_last, shuffle,
                     window_rows, rank_rows, mine, win_seg.astype(_I64), win_start, windows)


def leftover(stream: Pieces, phase: Phase, *, unit_start: NDArray[np.int64], seed: int, epoch: int,
             phase_index: int, batch_size: int, shuffle: bool, drop_last: bool, ramp: int = 3) -> Pieces:
    """The rows of ``stream`` not delivered by a phase whose every rank took ``phase.batches``.

    Padding copies are never carried over, and a row whose padding copy was delivered is
    dropped from the rest.  The result is shuffled at piece level for the next phase.
    """
    parts: list[Pieces] = []
    pad_rows: list[NDArray[np.int64]] = []
    kw = dict(seed=seed, epoch=epoch, phase=phase_index, batch_size=batch_size, window_rows=phase.window_rows,
              world_size=phase.world_size, num_workers=phase.num_workers, shuffle=shuffle, drop_last=drop_last,
              ramp=ramp)
    for r in range(phase.world_size):
        plans = [_plan_stream(stream, rank=r, worker=w, **kw) for w in range(phase.num_workers)]  # type: ignore[arg-type]
        taken = split_consumed([p.n_batches for p in plans], phase.batches)
        for plan, c in zip(plans, taken):
            pcs = plan.pieces
            for j in plan.windows.tolist():
                nb, size = plan.window_batches(j), plan.window_size(j)
                a, b = int(plan.win_seg[j]), int(plan.win_seg[j + 1])
                served_n = min(c, nb) * batch_size
                c = max(0, c - nb)
                has_pad = bool(pcs.pad[a:b].any())
                if served_n == 0 and nb * batch_size >= size and not has_pad:
                    parts.append(pcs.take(np.arange(a, b, dtype=_I64)))  # untouched: as it is
                    continue
                if served_n >= size and not has_pad:
                    continue  # all delivered
                perm = plan.window_perm(j)
                row_of, lengths = pcs.rows_of(a, b)
                piece_of = np.repeat(np.arange(a, b, dtype=_I64), lengths)
                unit_of = pcs.unit[piece_of]
                served = perm[:served_n]
                if has_pad:
                    sp = served[pcs.pad[piece_of[served]]]
                    pad_rows.append(unit_start[unit_of[sp]] + row_of[sp])
                rest = np.sort(perm[served_n:min(size, nb * batch_size)])
                rest = rest[~pcs.pad[piece_of[rest]]]
                if rest.size:
                    parts.append(rows_to_pieces(unit_of[rest], row_of[rest]))
    out = Pieces.concat(parts)
    if pad_rows:
        out = without_rows(out, np.unique(np.concatenate(pad_rows)), unit_start)
    if shuffle and out.n:
        out = out.take(np.random.default_rng((seed, epoch, _RESUME, phase_index)).permutation(out.n).astype(_I64))
    return out


def plan_epoch(unit_rows: NDArray[np.int64], *, seed: int, epoch: int, batch_size: int, window_rows: int,
               rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1,
               shuffle: bool = True, drop_last: bool = False, ramp: int = 3,
               history: Sequence[Phase] = (), piece_rows: int = 0) -> EpochPlan:
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
        history: earlier phases of this epoch (elastic resume): plan only what they left.
        piece_rows: rows per shuffle piece: each unit is cut into pieces of this many rows,
            and the epoch's order is a permutation of pieces (0: whole units).  With
            ``history``, the epoch keeps the piece size its first phase was planned with.

    Raises:
        ValueError: on out-of-range arguments or a rank share with no rows.
    """
    unit_rows = np.asarray(unit_rows, dtype=_I64)
    if unit_rows.ndim != 1 or unit_rows.size == 0 or (unit_rows <= 0).any():
        raise ValueError("unit_rows must be a non-empty 1-D array of positive row counts")
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got {seed}, {epoch}")
    _check_layout(batch_size, rank, world_size, worker, num_workers)
    if history:
        piece_rows = history[0].piece_rows
    if piece_rows < 0:
        raise ValueError(f"piece_rows must be >= 0, got {piece_rows}")
    stream = _full_stream(unit_rows, seed, epoch, shuffle, piece_rows)
    unit_start = np.concatenate([[0], np.cumsum(unit_rows)[:-1]]).astype(_I64)
    for i, ph in enumerate(history):
        stream = leftover(stream, ph, unit_start=unit_start, seed=seed, epoch=epoch, phase_index=i,
                          batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, ramp=ramp)
        if stream.n == 0:
            break
    if stream.n == 0:  # the epoch was complete
        empty = Pieces.concat([])
        return EpochPlan(seed, epoch, len(history), rank, world_size, worker, num_workers, batch_size, drop_last,
                         shuffle, window_rows, 0, empty, np.zeros(1, _I64), np.zeros(1, _I64), np.zeros(0, _I64))
    return _plan_stream(stream, seed=seed, epoch=epoch, phase=len(history), batch_size=batch_size,
                        window_rows=window_rows, rank=rank, world_size=world_size, worker=worker,
                        num_workers=num_workers, shuffle=shuffle, drop_last=drop_last, ramp=ramp)


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
