"""Sizing: one memory budget -> reader threads, batches ahead and window rows, and what
``StreamDataset.describe()`` predicts from them (peak bytes, shuffle quality), before any data is read.

A process holds at most two windows (the one being served and the next being read) plus the
batches assembled ahead::

    budget per process = memory_budget / DataLoader workers
    window rows        = whole batches in (budget - reserved batches) / 2, reserving
                         BATCHES_AHEAD_MAX batches, or a quarter of a small budget (>= 2)
    peak bytes         = (2 window rows + batches ahead x batch size) x row bytes
    piece rows         = the largest piece whose predicted design effect at this window is at
                         most TARGET_DEFF (whole units when they already are), where the
                         storage reads rows of a unit alone
    device ring        = with ``device=``, the reserved batches hold the ring of (pinned) host
                         batch buffers instead: batches ahead + one group being served + the
                         copies in flight (``device_layout``); the windows, so the plan, stay as
                         they are without a device

Quality is then a matter of the budget at load time, not of the unit size chosen at conversion:
a window mixes ``window_rows / piece_rows`` places of the data.  Compressed units, and data at
a URL, are read whole (once an epoch), so their pieces are units.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._sizes import cores
from ..manifest import Manifest
from ..plan import window_bounds, window_rows_for
from ..quality import predict_deff, predict_kl

__all__ = ["BATCHES_AHEAD_MAX", "HANDOFF_IN_FLIGHT", "LOCAL_THREADS", "TARGET_DEFF", "Layout", "Sizing", "describe",
           "device_layout", "label_icc_of", "worker_layout"]

# Batches assembled ahead of the consumer: 8 per thread (two groups of 4), at most this many.  The
# budget always reserves room for the maximum, so the plan (and every batch) does not depend on
# the thread count.
BATCHES_AHEAD_MAX = 16
LOCAL_THREADS = 2  # default reader threads per process for local files (see Sizing.threads)
# The predicted design effect that pieces aim for (measured deff follows the prediction within a
# few percent: tests/test_pieces.py, benchmarks/bench_quality.py).  Smaller pieces cost more reads.
TARGET_DEFF = 1.2
# What an epoch's plan costs per piece, outside the budget (tracemalloc of plan_epoch on 4,033
# units of 496 rows: 184,527 pieces held 6.1 MB and peaked at 27.8 MB while planned; 993,579
# pieces 32.8 and 149.7 MB).  Each process (each DataLoader worker) plans its epoch.
PLAN_BYTES_PER_PIECE = 34
PLAN_PEAK_BYTES_PER_PIECE = 151
# With ragged columns, what a process holds outside the bytes it accounts (the batch the consumer
# holds, the documents the packer still writes from, each thread's unit as read, the allocator's
# own): measured 11-14 MiB (median) and 17-20 MiB (at the peak) above the accounted bytes at
# budgets of 64 and 256 MiB on heavy-tailed token documents (docs/PERFORMANCE.md, "Memory: the
# allocator").  The budget keeps a quarter of itself for it, at most this plus the batch the
# consumer holds (a batch of 256 decoded 224 x 224 images is 38.5 MB), so that the process stays
# within the budget.
OUTSIDE_MAX = 24 << 20
# With ragged columns, a window's bytes are those of the units it draws, which vary around the
# rows' share: windows are sized this many standard deviations of a window's bytes below their
# share, so that two windows fit beside each other nearly always and the next window is read while
# the one before is served (sized at the mean, half the windows did not fit beside the one before:
# its reads waited for it, and the consumer for them; docs/PERFORMANCE.md, "Packed tokens").
WINDOW_SPREAD_SDS = 2.0
# In a DataLoader worker, batches are assembled in slots of shared memory that the main process
# maps (loader/handoff.py): the batches ahead, the rest of a group being served, and this many on
# their way or held by the main process (the DataLoader's prefetch_factor, 2 by default, the batch
# the loop holds, and the one it held while it asked for the next).
HANDOFF_IN_FLIGHT = 4
# Where the large columns are read straight into the batches (loader/direct.py), a window holds a
# few bytes a row of them, and windows may hold this many times the rows of windows of whole rows:
# fewer windows an epoch (each costs some milliseconds of CPU: its table, places, hints and reads)
# and better mixing.  The two windows' rows, hinted for a cold disk, then wait in the page cache
# (outside the budget) until served: about 4 times the budget's bytes (docs/PERFORMANCE.md,
# "Windows four times larger": 4 and 2 windows held ran as fast as 2 and 4, 2 and 2 at 0.86x).
DIRECT_WINDOW_FACTOR = 4
PLACE_BYTES = 16  # a window's bytes a row and direct column: the row's file descriptor and offset


@dataclass(frozen=True)
class Layout:
    """One process's share of the budget and what it holds."""

    budget: int  # bytes for this process
    threads: int  # reader threads
    ahead: int  # batches assembled ahead of the consumer
    window_rows: int
    piece_rows: int = 0  # rows per shuffle piece; 0: whole units
    ring: int = 0  # host batch buffers of the device path (loader/device.py); 0 without a device
    copy_slots: int = 0  # of those, buffers the copy thread holds while their copies run
    outside: int = 0  # bytes of the budget kept for what the process holds outside its accounting
    handoff: int = 0  # a DataLoader worker's slots of shared memory its batches cross in (worker_layout)

    @property
    def held_batches(self) -> int:
        """Batches the budget holds besides the two windows."""
        return max(self.ahead, self.ring, self.handoff)


@dataclass(frozen=True)
class Sizing:
    """What the layout depends on: the budget, the rows and bytes of a batch, this rank's share."""

    memory_budget: int
    batch_size: int
    row_nbytes: int
    rows: int  # rows of the dataset
    world_size: int
    drop_last: bool
    threads_asked: int | None  # the caller's reader threads; None: the default
    remote: bool  # the dataset is at a URL
    root: Any  # the dataset, for error messages
    unit_rows: int = 0  # rows of the dataset's largest unit
    n_units: int = 1
    partial: bool = False  # the storage reads rows of a unit alone (StorageFormat.partial_reads)
    icc: float = 1.0  # label correlation within units (the manifest's; 1, the worst case, when unknown)
    piece_rows_asked: int | None = None  # the caller's piece size; None: from the budget
    window_slack: int = 0  # bytes a window may hold beyond its rows (ragged columns: rows.ragged_slack)
    batch_extra: int = 0  # bytes a row adds in a batch, not in a window (images decoded as batches are made)
    device: bool = False  # batches are copied to a device through a ring of host buffers
    ragged: bool = False  # ragged columns: the budget keeps room for what is held outside it (OUTSIDE_MAX)
    padded_batch: int = 0  # collate="pad": bytes of a batch padded to the longest row, with its mask (the worst case)
    unit_nbytes_sd: float = 0.0  # ragged columns: the standard deviation of a unit's bytes (rows.ragged_sizing)
    window_row_nbytes: int = 0  # bytes a window holds a row, where less than row_nbytes (loader/direct.py)

    @property
    def batch_row_nbytes(self) -> int:
        """Bytes of a row in a batch: its stored bytes and what decoding adds."""
        return self.row_nbytes + self.batch_extra

    @property
    def rank_rows(self) -> int:
        """Rows each rank serves: an equal share, padded (or, with ``drop_last``, cut)."""
        n = self.rows
        return n // self.world_size if self.drop_last else -(-n // self.world_size)

    @property
    def batches(self) -> int:
        """Batches per epoch on a rank (the same for any number of DataLoader workers)."""
        r = self.rank_rows
        return r // self.batch_size if self.drop_last else -(-r // self.batch_size)

    def threads(self, num_workers: int) -> int:
        """Reader threads per process: for local files never more than its share of the cores,
        even when asked (more only took turns on the cores and the GIL, and ran slower:
        docs/PERFORMANCE.md, Loader: reader threads); at a URL, as asked (they wait on the network)."""
        share = max(1, cores() // max(1, num_workers))
        if self.threads_asked is not None:
            asked = max(1, int(self.threads_asked))
            return asked if self.remote else min(asked, share)
        if self.remote:  # waiting on the network: more requests in flight
            return max(8, cores()) // max(1, num_workers)
        # Two reader threads locally: more only contend for the GIL with the consumer
        return min(LOCAL_THREADS, share)

    def layout(self, num_workers: int) -> Layout:
        """Budget per process -> threads, batches ahead, window rows.

        Raises:
            ValueError: the budget is too small for two windows of one batch (of what a window
                holds of a row) and the batches ahead.
        """
        budget = self.memory_budget // max(1, num_workers)
        threads = self.threads(num_workers)
        batch_bytes = self.batch_size * self.batch_row_nbytes
        reserve = self.reserved_batches(budget)
        ahead = min(reserve, 8 * threads)
        outside = self._outside(budget)
        window_bytes = self._window_bytes(budget)
        if window_bytes < self._window_least:
            padded = (f" (padded to the longest row, a batch may hold {self.padded_batch} bytes)"
                      if self.padded_batch else "")
            raise ValueError(f"{self.root}: memory_budget {self.memory_budget} bytes is too small for "
                             f"batches of {self.batch_size} rows x {self.batch_row_nbytes} bytes{padded} with "
                             f"{num_workers} worker(s); give at least "
                             f"{self._least_budget(budget) * max(1, num_workers)} bytes")
        rows = window_rows_for(window_bytes, self.row_nbytes, self.batch_size, self.rank_rows)
        if 0 < self.window_row_nbytes < self.row_nbytes:  # large columns read straight into the batches:
            # windows of up to DIRECT_WINDOW_FACTOR times the rows (their rows' bytes are then in the
            # page cache from the window's read-ahead hints until served, not in the budget)
            rows = min(DIRECT_WINDOW_FACTOR * rows, window_rows_for(window_bytes, self.window_row_nbytes,
                                                                    self.batch_size, self.rank_rows))
        if self.unit_nbytes_sd:  # a window's units vary in bytes: keep two windows fitting (WINDOW_SPREAD_SDS)
            sd = self.unit_nbytes_sd * math.sqrt(max(1.0, rows * self.n_units / max(1, self.rows)))
            rows = window_rows_for(max(batch_bytes, window_bytes - int(WINDOW_SPREAD_SDS * sd)), self.row_nbytes,
                                   self.batch_size, self.rank_rows)
        if self.window_row_nbytes and not self.device:  # what the windows no longer hold goes to batches ahead,
            # up to 8 a thread: each batch task reads its large rows too, so more in flight keep threads busy
            room = (budget - outside - 2 * rows * self.window_row_nbytes) // max(1, batch_bytes)
            ahead = max(ahead, min(8 * threads, room))
        lay = Layout(budget, threads, ahead, rows, self.piece_rows(rows), outside=outside)
        return device_layout(lay, reserve, self.root) if self.device else lay

    def _outside(self, budget: int) -> int:
        """Bytes of a process's ``budget`` kept for what it holds outside its accounting (ragged
        columns: ``OUTSIDE_MAX`` and the batch in the consumer's hands, at most a quarter)."""
        return min(budget // 4, OUTSIDE_MAX + self.batch_size * self.batch_row_nbytes) if self.ragged else 0

    def _window_bytes(self, budget: int) -> int:
        """Bytes each of the two windows gets of a process's ``budget``: what the outside room, the
        batches ahead and a padded batch holding the longest row (which must fit beside the
        windows, else it is refused mid-epoch) leave."""
        batch_bytes = self.batch_size * self.batch_row_nbytes
        return (budget - self._outside(budget) - self.reserved_batches(budget) * batch_bytes
                - self.padded_batch) // 2 - self.window_slack

    def _least_budget(self, budget: int) -> int:
        """The smallest process budget above ``budget`` whose windows hold a batch: what a refusal
        advises (the outside room and the batches ahead grow with the budget, so it is searched)."""
        least = self._window_least
        step = max(1, (self.batch_size * self.batch_row_nbytes + self.padded_batch + self.window_slack) // 8)
        hi = budget + step
        while self._window_bytes(hi) < least:
            budget, hi = hi, hi + step
        while hi - budget > 1:  # the smallest that fits within the last step (budget: refused, hi: fits)
            mid = (budget + hi) // 2
            budget, hi = (budget, mid) if self._window_bytes(mid) >= least else (mid, hi)
        return hi

    @property
    def _window_least(self) -> int:
        """The bytes of a window of one batch: of whole rows, or of what a window holds of a row
        where large columns are read straight into the batches (``window_row_nbytes``)."""
        return self.batch_size * (self.window_row_nbytes or self.batch_row_nbytes)

    def reserved_batches(self, budget: int) -> int:
        """Batches the budget keeps for assembling ahead: BATCHES_AHEAD_MAX, or a quarter of a
        small budget (at least 2), so that windows keep most of it (what mixes).  It depends on
        the budget only, never on the thread count, so neither does the plan."""
        batch_bytes = max(1, self.batch_size * self.batch_row_nbytes)
        return max(2, min(BATCHES_AHEAD_MAX, budget // (4 * batch_bytes)))

    def piece_rows(self, window_rows: int) -> int:
        return _piece_rows(self, window_rows)

    def _choose_piece_rows(self, window_rows: int) -> int:
        """Rows per shuffle piece for windows of ``window_rows``: 0 (whole units) where units are
        read whole or already mix well enough, else the largest piece predicted to reach
        ``TARGET_DEFF`` (single rows when even those do not)."""
        whole = self.unit_rows
        if self.piece_rows_asked is not None:
            return 0 if self.piece_rows_asked >= whole else int(self.piece_rows_asked)
        if not self.partial or self.remote or self.batch_size < 2 or whole < 2:
            return 0
        if self.epoch_deff(whole, window_rows) <= TARGET_DEFF:
            return 0
        lo, hi = 1, whole  # deff grows with the piece: the largest p with deff <= TARGET_DEFF (or 1 row)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.epoch_deff(mid, window_rows) <= TARGET_DEFF else (lo, mid)
        # Equal pieces: as many per unit as ``lo`` gives, shared out evenly (495 rows of a 496-row
        # unit would cut it 495 + 1, mixing like whole units while the prediction assumed halves).
        return -(-whole // -(-whole // lo))

    def pieces(self, piece_rows: int) -> tuple[int, float]:
        """(number, mean rows) of the pieces of ``piece_rows`` rows (0: whole units) that units
        are cut into; from the largest unit, so about: a unit's last piece may be shorter."""
        if piece_rows <= 0 or piece_rows >= self.unit_rows:
            return self.n_units, self.rows / max(1, self.n_units)
        n = min(self.rows, self.n_units * -(-self.unit_rows // piece_rows))
        return n, self.rows / n

    def epoch_deff(self, piece_rows: int, window_rows: int, batch: int | None = None) -> float:
        """Predicted design effect of an epoch of windows of ``window_rows`` mixing pieces of
        ``piece_rows`` rows (units cut into pieces), batch-weighted over the epoch's windows
        (the ramp's smaller ones too), for batches of ``batch`` rows (default: the batch size)."""
        n_pieces, mean_piece = self.pieces(piece_rows)
        b = min(self.batch_size if batch is None else batch, self.rank_rows)
        if b < 2:
            return 1.0
        bounds = window_bounds(self.rank_rows, window_rows, self.batch_size)
        sizes, counts = np.unique(np.diff(bounds), return_counts=True)
        total = weight = 0.0
        for size, count in zip(sizes.tolist(), counts.tolist()):
            batches = count * (size // self.batch_size if self.drop_last else -(-size // self.batch_size))
            d = predict_deff(mean_piece, max(1.0, size / mean_piece), n_pieces, b, icc=self.icc)
            total += batches * d
            weight += batches
        return total / weight if weight else float(b)

    def fits(self, window_rows: int, num_workers: int) -> bool:
        """Whether windows of ``window_rows`` (a saved state's) fit this budget with ``num_workers``."""
        lay = self.layout(num_workers)
        return (2 * (window_rows * self.held_row_nbytes + self.window_slack)
                + lay.held_batches * self.batch_size * self.batch_row_nbytes + lay.outside + self.padded_batch
                <= lay.budget)

    @property
    def held_row_nbytes(self) -> int:
        """Bytes a window holds a row: ``window_row_nbytes`` where large columns are read directly."""
        return self.window_row_nbytes or self.row_nbytes

    def peak_bytes(self, lay: Layout) -> int:
        """The most bytes one process holds: two windows and the batches ahead (or the device ring),
        and a batch padded to the longest row (``padded_batch``)."""
        return (2 * (lay.window_rows * self.held_row_nbytes + self.window_slack)
                + lay.held_batches * self.batch_size * self.batch_row_nbytes + lay.outside + self.padded_batch)


def device_layout(lay: Layout, reserve: int, root: Any) -> Layout:
    """``lay`` with the device path's ring of host batch buffers in the ``reserve`` batches.

    The ring holds the batches assembled ahead, the rest of the group the scheduler is serving
    (a group of ``ahead // 2`` batches leaves its task at once: Prefetcher) and the copy thread's
    ``copy_slots`` (2, or 1 in a small budget); fewer batches ahead make room for it.  The window
    rows do not change, so the order is the same as without a device.

    Raises:
        ValueError: the reserve cannot hold one batch ahead, one served and one being copied.
    """
    copy = 1 if reserve < 6 else 2
    ahead = max(1, min(lay.ahead, 2 * (reserve - copy) // 3))
    ring = ahead + max(1, ahead // 2) + copy
    if ring > reserve:
        raise ValueError(f"{root}: memory_budget {lay.budget} bytes per process is too small for device=: it "
                         f"keeps {reserve} batches besides the windows and the device path needs {ring}; give "
                         "a larger budget (about 16 batches' bytes more)")
    return dataclasses.replace(lay, ahead=ahead, ring=ring, copy_slots=copy)


def worker_layout(lay: Layout, reserve: int) -> Layout:
    """``lay`` in a DataLoader worker: the slots its batches cross to the main process in, within
    the ``reserve`` batches the budget keeps besides the windows (so the windows, and the plan,
    stay as they are).  Fewer slots than batches in flight only make some batches cross as torch
    sends them (a copy), never wait."""
    slots = max(lay.ahead, min(reserve, lay.ahead + max(1, lay.ahead // 2) + HANDOFF_IN_FLIGHT))
    return dataclasses.replace(lay, handoff=slots)


@functools.lru_cache(maxsize=256)
def _piece_rows(s: Sizing, window_rows: int) -> int:
    """``Sizing.piece_rows``, remembered: the search asks for a few dozen predictions, and an
    iteration asks for the layout several times (a Sizing is a frozen, hashable value)."""
    return s._choose_piece_rows(window_rows)


def _label_histogram(m: Manifest) -> dict[str, Any] | None:
    hist = m.stats.get(m.label, {}).get("histogram") if m.label else None
    return hist if isinstance(hist, dict) else None


def label_icc_of(m: Manifest) -> float:
    """The label's correlation within units, from the manifest; 1 (the worst case) when unknown."""
    hist = _label_histogram(m)
    return 1.0 if hist is None or hist.get("icc") is None else float(hist["icc"])


def describe(s: Sizing, m: Manifest, num_workers: int, *, shuffle: bool, rank: int) -> dict[str, Any]:
    """``StreamDataset.describe()``: sizes and predicted quality, computed before any data is read.

    Keys: window_rows, piece_rows (mean rows of the shuffle pieces the epoch is planned in,
    sized from the budget), piece_bytes, window_pieces (pieces mixed per window),
    pieces_split_units (whether pieces are smaller than the stored units), plan_bytes and
    plan_peak_bytes (the epoch plan's memory, held and while it is made, per process, outside
    the budget: about 34 and 151 bytes a piece), window_units (mean shuffle units' worth of rows
    per window), read_ahead_windows, read_ahead_units, threads, budget_bytes,
    predicted_peak_bytes, predicted_deff, predicted_kl (label-sorted KL, SHUFFLE.md M2),
    label_icc (from the manifest when a label was given, else the worst case 1), batches, units,
    unit_rows, worker_batch_slots and worker_batch_slot_bytes (with ``num_workers``: the slots of
    shared memory each worker's batches cross to the main process in, inside its budget).  With
    variable-length columns, byte figures use their mean row.
    """
    lay = s.layout(max(1, num_workers))
    if num_workers:
        lay = worker_layout(lay, s.reserved_batches(lay.budget))
    mean_unit = m.rows / m.n_units
    k = lay.window_rows / mean_unit
    piece = lay.piece_rows or s.unit_rows
    n_pieces, mean_piece = s.pieces(lay.piece_rows)
    hist = _label_histogram(m)
    # a batch holds at most the rank's rows; batches of one row have nothing to correlate
    b = min(s.batch_size, s.rank_rows)
    deff = 1.0 if b < 2 else s.epoch_deff(piece, lay.window_rows, b) if shuffle else float(b)
    n_labels = 10 if hist is None else max(2, len(hist.get("values", [])))
    # a one-row batch holds one label: its KL against balanced labels is ln(L) however it is shuffled
    kl = math.log(n_labels) if b < 2 else predict_kl(deff, b, n_labels)
    return {
        "batches": s.batches, "batch_size": s.batch_size, "units": m.n_units, "unit_rows": mean_unit,
        "window_rows": lay.window_rows, "window_units": k, "read_ahead_windows": 1, "read_ahead_units": k,
        "piece_rows": mean_piece, "piece_bytes": mean_piece * s.row_nbytes, "window_pieces": lay.window_rows / mean_piece,
        "pieces_split_units": bool(lay.piece_rows),
        # the epoch's plan, outside the budget: held while it runs, and the peak while it is made
        "plan_bytes": PLAN_BYTES_PER_PIECE * n_pieces, "plan_peak_bytes": PLAN_PEAK_BYTES_PER_PIECE * n_pieces,
        "threads": lay.threads, "threads_asked": s.threads_asked, "budget_bytes": s.memory_budget,
        "budget_bytes_per_process": lay.budget, "predicted_peak_bytes": s.peak_bytes(lay) * max(1, num_workers),
        # the device path's host batch buffers (pinned for CUDA), inside the budget: 0 without a device
        "device_buffers": lay.ring, "device_buffer_bytes": lay.ring * s.batch_size * s.batch_row_nbytes,
        # each DataLoader worker's slots of shared memory its batches cross in, inside its budget
        "worker_batch_slots": lay.handoff, "worker_batch_slot_bytes": lay.handoff * s.batch_size * s.batch_row_nbytes,
        "predicted_deff": deff, "predicted_kl": kl,
        "label_icc": s.icc, "rank": rank, "world_size": s.world_size,
    }
