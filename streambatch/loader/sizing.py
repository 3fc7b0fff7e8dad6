"""Sizing: one memory budget -> reader threads, batches ahead and window rows, and what
``StreamDataset.describe()`` predicts from them (peak bytes, shuffle quality), before any data is read.

A process holds at most two windows (the one being served and the next being read) plus the
batches assembled ahead::

    budget per process = memory_budget / DataLoader workers
    window rows        = whole batches in (budget - BATCHES_AHEAD_MAX batches) / 2
    peak bytes         = (2 window rows + batches ahead x batch size) x row bytes
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..manifest import Manifest
from ..plan import window_bounds, window_rows_for
from ..quality import predict_deff, predict_kl

__all__ = ["BATCHES_AHEAD_MAX", "LOCAL_THREADS", "Layout", "Sizing", "describe"]

# Batches assembled ahead of the consumer: 8 per thread (two groups of 4), at most this many.  The
# budget always reserves room for the maximum, so the plan (and every batch) does not depend on
# the thread count.
BATCHES_AHEAD_MAX = 16
LOCAL_THREADS = 2  # default reader threads per process for local files (see Sizing.threads)


@dataclass(frozen=True)
class Layout:
    """One process's share of the budget and what it holds."""

    budget: int  # bytes for this process
    threads: int  # reader threads
    ahead: int  # batches assembled ahead of the consumer
    window_rows: int


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
        """Reader threads per process."""
        if self.threads_asked is not None:
            return max(1, int(self.threads_asked))
        if self.remote:  # waiting on the network: more requests in flight
            return max(8, (os.cpu_count() or 1)) // max(1, num_workers)
        # Two reader threads locally: more only contend for the GIL with the consumer
        # (docs/PERFORMANCE.md, Loader: reader threads).
        return max(1, min(LOCAL_THREADS, (os.cpu_count() or 1) // max(1, num_workers)))

    def layout(self, num_workers: int) -> Layout:
        """Budget per process -> threads, batches ahead, window rows.

        Raises:
            ValueError: the budget is too small for two windows of one batch and the batches ahead.
        """
        budget = self.memory_budget // max(1, num_workers)
        threads = self.threads(num_workers)
        ahead = min(BATCHES_AHEAD_MAX, 8 * threads)
        batch_bytes = self.batch_size * self.row_nbytes
        window_bytes = (budget - BATCHES_AHEAD_MAX * batch_bytes) // 2
        if window_bytes < batch_bytes:
            need = (2 + BATCHES_AHEAD_MAX) * batch_bytes
            raise ValueError(f"{self.root}: memory_budget {self.memory_budget} bytes is too small for "
                             f"batches of {self.batch_size} rows x {self.row_nbytes} bytes with {num_workers} "
                             f"worker(s); give at least {need * max(1, num_workers)} bytes")
        rows = window_rows_for(window_bytes, self.row_nbytes, self.batch_size, self.rank_rows)
        return Layout(budget, threads, ahead, rows)

    def fits(self, window_rows: int, num_workers: int) -> bool:
        """Whether windows of ``window_rows`` (a saved state's) fit this budget with ``num_workers``."""
        lay = self.layout(num_workers)
        return 2 * window_rows * self.row_nbytes + lay.ahead * self.batch_size * self.row_nbytes <= lay.budget

    def peak_bytes(self, lay: Layout) -> int:
        """The most bytes one process holds: two windows and the batches ahead."""
        return (2 * lay.window_rows + lay.ahead * self.batch_size) * self.row_nbytes


def _label_histogram(m: Manifest) -> dict[str, Any] | None:
    hist = m.stats.get(m.label, {}).get("histogram") if m.label else None
    return hist if isinstance(hist, dict) else None


def describe(s: Sizing, m: Manifest, num_workers: int, *, shuffle: bool, rank: int) -> dict[str, Any]:
    """``StreamDataset.describe()``: sizes and predicted quality (see its docstring for the keys)."""
    lay = s.layout(max(1, num_workers))
    mean_unit = m.rows / m.n_units
    k = lay.window_rows / mean_unit
    hist = _label_histogram(m)
    icc = 1.0 if hist is None or hist.get("icc") is None else float(hist["icc"])
    # a batch holds at most the rank's rows; batches of one row have nothing to correlate
    b = min(s.batch_size, s.rank_rows)
    deff = 1.0 if b < 2 else _predicted_deff(s, m, lay.window_rows, icc, b) if shuffle else float(b)
    n_labels = 10 if hist is None else max(2, len(hist.get("values", [])))
    # a one-row batch holds one label: its KL against balanced labels is ln(L) however it is shuffled
    kl = math.log(n_labels) if b < 2 else predict_kl(deff, b, n_labels)
    return {
        "batches": s.batches, "batch_size": s.batch_size, "units": m.n_units, "unit_rows": mean_unit,
        "window_rows": lay.window_rows, "window_units": k, "read_ahead_windows": 1, "read_ahead_units": k,
        "threads": lay.threads, "budget_bytes": s.memory_budget,
        "budget_bytes_per_process": lay.budget, "predicted_peak_bytes": s.peak_bytes(lay) * max(1, num_workers),
        "predicted_deff": deff, "predicted_kl": kl,
        "label_icc": icc, "rank": rank, "world_size": s.world_size,
    }


def _predicted_deff(s: Sizing, m: Manifest, window_rows: int, icc: float, batch: int) -> float:
    """Batch-weighted mean of the tumbling-window prediction over the epoch's windows, for
    batches of ``batch`` rows (the batch size, or the rank's rows where it holds fewer)."""
    mean_unit = m.rows / m.n_units
    bounds = window_bounds(s.rank_rows, window_rows, s.batch_size)
    sizes, counts = np.unique(np.diff(bounds), return_counts=True)
    total = weight = 0.0
    for size, count in zip(sizes.tolist(), counts.tolist()):
        batches = count * (size // s.batch_size if s.drop_last else -(-size // s.batch_size))
        d = predict_deff(mean_unit, max(1.0, size / mean_unit), m.n_units, batch, icc=icc)
        total += batches * d
        weight += batches
    return total / weight if weight else float(batch)
