"""Window reads and buffer reuse: a window's rows read into one buffer per column, by pool tasks.

A window's pieces (unit, rows) are read in buffer order, grouped into tasks of about
``4 * pool.TASK_BYTES``; ahead of them, a task hints the reads to a cold disk and one computes the
window's serving order.  Buffers are kept between epochs (a list the dataset holds), so the
page faults of fresh memory are paid once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..plan import EpochPlan
from ..schema import Column
from . import pool
from .direct import DirectRows
from .pool import Pool, Task, Where
from .readers import whole_units
from .rows import RaggedBuf, naming_pieces, ragged_buffers, read_rows_group

__all__ = ["Window", "Buffers", "start_window", "read_group"]

Bufs = dict[str, np.ndarray]
Table = NDArray[np.int64]  # rows (unit, lo, hi, buffer row): pieces of a window (EpochPlan.window_table)
Keeps = "list[NDArray[np.int64] | None] | None"  # each piece's kept rows (an elastic resume), or None


def _read_rows(reader: Any, unit: int, lo: int, hi: int, rows: NDArray[np.int64], out: Bufs) -> None:
    """Rows ``lo + rows`` of a unit (a partly served window, after an elastic resume)."""
    tmp = {name: np.empty((hi - lo, *dst.shape[1:]), dst.dtype) for name, dst in out.items()}
    reader.read_into(unit, lo, hi, tmp)
    for name, dst in out.items():
        np.take(tmp[name], rows, axis=0, out=dst)


def read_group(reader: Any, pieces: Table, keeps: Keeps, bufs: Bufs, root: Any, where: Where) -> None:
    """Read several pieces (rows ``(unit, lo, hi, buffer row)``; ``keeps``: their kept rows, or
    None when every piece is all of its rows) into the window buffer ``bufs``.  A reader with
    ``read_pieces`` takes them all in one call (one system call per piece and column)."""
    fast = getattr(reader, "read_pieces", None)
    if fast is not None and keeps is None and fast(pieces, bufs, naming_pieces(where, pieces, root)):
        return
    for k, (u, lo, hi, at) in enumerate(pieces.tolist()):
        keep = None if keeps is None else keeps[k]
        where.text = f"while reading unit {u} (rows {lo}:{hi}) of {root}"
        n = hi - lo if keep is None else keep.size
        out = {name: b[at:at + n] for name, b in bufs.items()}
        if keep is None:
            reader.read_into(u, lo, hi, out)
        else:
            _read_rows(reader, u, lo, hi, keep - lo, out)


def _touch_tail(bufs: Bufs, start: int) -> None:
    for b in bufs.values():
        b[start:] = 0


class Window:
    """One window in flight: its buffer, its read tasks and the global row id of each position."""

    __slots__ = ("j", "rows", "buffers", "own", "ragged", "reads", "row_ids", "perm", "nbytes", "next_b", "n_batches",
                 "in_flight", "reads_done", "touch", "next_group")

    def __init__(self, j: int, rows: int, buffers: Bufs, nbytes: int) -> None:
        self.j, self.rows, self.buffers, self.nbytes = j, rows, buffers, nbytes
        self.own = buffers  # the window buffers it reads into (``buffers`` adds the direct columns, direct.py)
        self.ragged: dict[str, RaggedBuf] = {}  # the ragged columns' buffers (rows.py)
        self.next_group: tuple[int, int] | None = None  # the next batch group's end and bytes, cut to fit
        self.reads: list[Task] = []
        self.touch: Task | None = None  # zero-fills the rows a fresh buffer's first window leaves unused
        self.row_ids: NDArray[np.int64] | None = None
        self.perm: Task | None = None  # the serving order of the buffer's rows, computed on a pool thread
        self.next_b = 0  # next batch to submit
        self.n_batches = 0
        self.in_flight = 0  # batch groups submitted and not yet taken
        self.reads_done = 0  # reads[:reads_done] are known to be finished

    def ready(self) -> bool:
        """True when every read has finished; raises the first failed read's error (never serve its rows)."""
        while self.reads_done < len(self.reads) and self.reads[self.reads_done].done.is_set():
            error = self.reads[self.reads_done].error
            if error is not None:
                raise error
            self.reads_done += 1
        return self.reads_done == len(self.reads)


class Buffers:
    """Window buffers, at most two, reused from ``keep`` (a list the caller holds across epochs)
    when their shapes fit, and handed back to it by :meth:`close`."""

    def __init__(self, columns: tuple[Column, ...], window_rows: int, keep: list[Bufs] | None) -> None:
        self._shapes = {c.name: ((window_rows, *c.shape), c.np_dtype) for c in columns}
        self._keep = keep
        self._free: list[Bufs] = [b for b in (keep or []) if self._fits(b)][:2]
        if keep is not None:
            keep.clear()

    def _fits(self, bufs: Bufs) -> bool:
        return bufs.keys() == self._shapes.keys() and all(
            bufs[k].shape == shape and bufs[k].dtype == dt for k, (shape, dt) in self._shapes.items())

    def take(self) -> tuple[Bufs, bool]:
        """A buffer for the next window, and whether it is fresh (never written)."""
        if self._free:
            return self._free.pop(), False
        return {name: np.empty(shape, dtype=dt) for name, (shape, dt) in self._shapes.items()}, True

    def give(self, bufs: Bufs) -> None:
        self._free.append(bufs)

    def close(self) -> None:
        if self._keep is not None:
            self._keep[:] = self._free[:2]
        self._free = []


def start_window(workers: Pool, reader: Any, plan: EpochPlan, j: int, bufs: Bufs, fresh: bool, row_nbytes: int,
                 unit_start: NDArray[np.int64] | None, ragged: tuple[Column, ...] = (), scratch: int = 0,
                 direct: DirectRows | None = None, order: tuple[str, ...] = ()) -> Window:
    """Submit window ``j``'s hints, shuffle and reads into ``bufs``; row ids when ``unit_start`` is
    given.  With ``ragged`` columns, the window's ragged buffers are made for its pieces and
    every piece is read whole by the reader's ``read_rows`` (``rows.read_rows_group``); the
    window's ``nbytes`` are then its fixed columns' plus those buffers' (``scratch``: what a read
    task may hold beside them, ``rows.group_read_bytes``).  ``direct``: the columns read row by row
    into the batches (direct.py), served beside ``bufs`` in the column ``order``; their units'
    checks, where verifying, are among the window's reads."""
    table, keeps = plan.window_table(j)
    rows = plan.window_size(j)
    w = Window(j, rows, bufs, plan.window_rows * row_nbytes)
    advise = getattr(reader, "advise", None)
    direct_rows = _direct_window(workers, w, plan, direct, bufs, order, advise) if direct is not None else None
    if ragged:
        w.ragged = ragged_buffers(reader.manifest, ragged, table, plan.window_rows)
        w.nbytes = plan.window_rows * sum(b[:1].nbytes for b in bufs.values()) + sum(
            b.nbytes for b in w.ragged.values())
    root = getattr(getattr(reader, "manifest", None), "root", "")
    if advise is not None:  # let a cold disk work on the whole window at once (a pool task, ahead
        # of the reads: a window's hints are a thousand system calls, off the consuming thread), its
        # buffers' columns and those its batch tasks read (direct.py)
        names = list(bufs) + (list(direct.names) if direct is not None else [])
        workers.submit(1, advise, (table, names), f"while hinting the reads of window {j}")
    # The window's row permutation (milliseconds for a large window) on a pool thread, ahead of its
    # reads, not on the consuming thread (docs/PERFORMANCE.md, Loader: task size).
    w.perm = workers.submit(1, plan.window_perm, (j,), f"while shuffling window {j}")
    # Read tasks of about 4 x TASK_BYTES each: a task starts at the piece where the bytes before it
    # pass the next multiple (no loop over pieces on the consuming thread).  Each task has a fixed
    # cost per column; with small pieces 4 MiB tasks served img 1.35x as fast as 1 MiB ones
    # (docs/PERFORMANCE.md, Loader: pieces).
    step = 4 * pool.TASK_BYTES
    start_bytes = table[:, 3] * row_nbytes
    firsts = np.unique(np.searchsorted(start_bytes, np.arange(0, int(start_bytes[-1]) + 1, step)))
    bounds = np.append(firsts, table.shape[0]).tolist()
    for a, b in zip(bounds[:-1], bounds[1:]) if bufs or w.ragged else ():  # (direct columns alone: none)
        if w.ragged:
            u, lo, hi = table[a, :3].tolist()
            where = Where(f"while reading unit {u} (rows {lo}:{hi}) of {root}")
            w.reads.append(workers.submit(1, read_rows_group, (reader, table[a:b], a, None if keeps is None else
                                                               keeps[a:b], bufs, w.ragged, root, where, scratch),
                                              where))
            continue
        w.reads.append(_submit_reads(workers, reader, table[a:b], None if keeps is None else keeps[a:b], bufs,
                                     root))
    if fresh and rows < plan.window_rows:
        # A short first window (the ramp, a small dataset) would leave the rest of a fresh buffer
        # untouched, so peak RSS would depend on the dataset's length; touching it here, after this
        # window's reads, makes it the budget's from the first epoch on.
        w.touch = workers.submit(1, _touch_tail, (bufs, rows), f"while preparing the buffer of window {j}")
    if unit_start is not None:  # (a window of direct columns has them already)
        w.row_ids = direct_rows if direct_rows is not None else plan.window_row_ids(j, unit_start)
    w.n_batches = plan.window_batches(j)
    return w


def _direct_window(workers: Pool, w: Window, plan: EpochPlan, direct: DirectRows, bufs: Bufs,
                   order: tuple[str, ...], advise: Any = None) -> NDArray[np.int64]:
    """Window ``w``'s direct columns beside its buffers, and the checks of the units it needs
    whose rows' sums are not known (tasks of about ``4 * TASK_BYTES`` of units each), after a
    task hinting those whole units (``advise``: the reader's) for a cold disk; the global row
    number at each of its positions."""
    rows = plan.window_row_ids(w.j, direct.manifest.unit_start)
    cols = direct.window(rows)
    w.buffers = {n: bufs[n] if n in bufs else cols[n] for n in order}
    units = direct.units_to_check(rows)
    if units.size and advise is not None:
        workers.submit(1, advise, (whole_units(direct.manifest.unit_rows, units), list(direct.names)),
                       f"while hinting the units window {w.j} checks")
    if units.size:
        unit_bytes = int(direct.manifest.unit_rows.max()) * sum(c.row_nbytes for c in direct.columns.values())
        step = max(1, 4 * pool.TASK_BYTES // max(1, unit_bytes))
        for a in range(0, units.size, step):
            part = units[a:a + step]
            w.reads.append(workers.submit(1, direct.check_units, (part,), Where(
                f"while checking units {int(part[0])}..{int(part[-1])} of {direct.manifest.root}")))
    return rows


def _submit_reads(workers: Pool, reader: Any, pieces: Table, keeps: Keeps, bufs: Bufs, root: Any) -> Task:
    u, lo, hi = pieces[0, :3].tolist()
    where = Where(f"while reading unit {u} (rows {lo}:{hi}) of {root}")
    return workers.submit(1, read_group, (reader, pieces, keeps, bufs, root, where), where)
