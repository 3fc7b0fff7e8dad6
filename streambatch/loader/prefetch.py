"""The scheduler: serves the batches of one ``EpochPlan`` in order, reading windows ahead on the pool.

::

    consumer (iterating thread)                     pool threads (reader threads)
    ---------------------------                     -----------------------------
    window j+1 free?  --submit reads (prio 1)-->    windows.read_group: unit rows -> window buffer
    window j read?    --submit batches (prio 0)-->  batches.gather_batches: buffer[perm[b]] (+transform)
    take batch futures in order, yield              results carry the original exception
    last batch of window j taken: free its buffer

Batches outrank reads in the pool, so a batch never waits behind the next window's reads,
and a batch task is only submitted once its window is fully read, so no pool thread ever
blocks on another task.  Output order is the plan's, whatever the thread count or timing.
Tasks are about ``pool.TASK_BYTES`` of work each (several units per read task, several small
batches per batch task).
"""

from __future__ import annotations

import time
import weakref
from collections import deque
from typing import Any, Callable, Iterator

import numpy as np
from numpy.typing import NDArray

from ..plan import EpochPlan
from ..schema import Column
from . import pool
from .batches import Normalizers, gather_batches
from .direct import DirectRows
from .malloc import cap_mmap_threshold
from .pool import Flag, Pool, Task
from .rows import batch_values_nbytes, ragged_slack, window_nbytes
from .windows import Buffers, Window, start_window

__all__ = ["Prefetcher"]

_Pending = tuple[Task, Window, int, int]  # (batch task, its window, bytes, batches)


def _windows_to_serve(plan: EpochPlan, start_batch: int) -> tuple[deque[int], int]:
    """The windows left after ``start_batch`` batches (a resume) and the batch to start the first at.

    Windows already served are skipped arithmetically: nothing is read for them.
    """
    skip = start_batch
    todo: deque[int] = deque()
    first_offset = 0
    for j in plan.windows.tolist():
        nb = plan.window_batches(j)
        if skip >= nb:
            skip -= nb
            continue
        if not todo:
            first_offset, skip = skip, 0
        todo.append(j)
    return todo, first_offset


class Prefetcher:
    """Serves the batches of one ``EpochPlan`` in order, reading windows ahead with threads.

    Memory invariant: ``accounted_bytes`` = bytes of window buffers in use + bytes of batches
    submitted and not yet taken, and it never exceeds ``budget_bytes``: a window buffer is
    acquired before its reads are submitted and released when its last batch is taken.
    At most two windows are held: the one being served and the one being read.

    Window buffers are reused from ``buffers`` (a list the caller keeps across epochs) when their
    shapes fit, and returned to it at close.  Use as a context manager or call ``close()``
    (idempotent); iteration stops the threads when it ends, breaks or fails, and garbage
    collection is the safety net.

    Raises:
        ValueError: two windows and the batches ahead do not fit ``budget_bytes``.
    """

    def __init__(self, reader: Any, plan: EpochPlan, columns: tuple[Column, ...], unit_start: NDArray[np.int64], *,
                 threads: int, budget_bytes: int, batches_ahead: int, group: int | None = None, start_batch: int = 0,
                 index_key: str | None = None, normalize: Normalizers | None = None,
                 make_batch: Callable[[np.ndarray, dict[str, np.ndarray]], Any] | None = None,
                 transform: Callable[[Any], Any] | None = None, timeout: float | None = None,
                 name: str = "reader", buffers: list[dict[str, np.ndarray]] | None = None,
                 finish_ragged: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 alloc: Callable[[int], np.ndarray] | None = None, read_scratch: int = 0,
                 ragged_views: bool = False, direct: DirectRows | None = None) -> None:
        self.reader, self.plan, self.columns = reader, plan, columns
        self.read_scratch = read_scratch  # ragged pieces: bytes a read task holds beside the window (rows.py)
        # ragged columns served as slices of the window (a packed stream: the packer copies them
        # once, and lets go of them before the next batch is taken, when the window may be freed)
        self.ragged_views = ragged_views
        self.name = name
        self.unit_start = unit_start
        self.ragged = tuple(c for c in columns if c.ragged)
        self.finish_ragged = finish_ragged
        # padded columns: a batch also holds its [rows, longest] copy (counted by batch_values_nbytes)
        self._padded = frozenset(n for n, how in getattr(finish_ragged, "collate", {}).items() if how == "pad")
        self.row_nbytes = sum(c.row_nbytes for c in columns)
        self.direct = direct  # columns read row by row into the batches: a window holds their places (direct.py)
        self.window_row_nbytes = self.row_nbytes if direct is None else direct.window_row_nbytes(self.row_nbytes)
        # ragged columns: a window may also hold the unused part of the two units it cuts (rows.py)
        self.window_nbytes = plan.window_rows * self.window_row_nbytes + (ragged_slack(reader.manifest, columns)
                                                                          if self.ragged else 0)
        self.batch_nbytes = plan.batch_size * (self.row_nbytes + getattr(finish_ragged, "extra_row_nbytes", 0))
        self.budget_bytes = budget_bytes
        self.batches_ahead = max(1, batches_ahead)
        if group is None:  # batches per task: at least 4, up to about TASK_BYTES of small batches
            group = max(4, pool.TASK_BYTES // max(1, self.batch_nbytes))
        self.group = max(1, min(group, self.batches_ahead // 2 or 1))
        if 2 * self.window_nbytes + self.batches_ahead * self.batch_nbytes > budget_bytes:
            raise ValueError(f"window of {self.window_nbytes} bytes and {self.batches_ahead} batches ahead "
                             f"do not fit the budget of {budget_bytes} bytes")
        self.start_batch = start_batch
        self.index_key = index_key
        self.normalize = normalize or {}
        self.make_batch, self.transform, self.timeout = make_batch, transform, timeout
        self.alloc = alloc  # a batch's buffer (gather_batches); None: a new one each batch
        self._window_need: dict[int, int] = {}  # ragged columns: each window's bytes (_window_fits)
        self.accounted_bytes = 0
        self.peak_accounted_bytes = 0
        far = direct.names if direct is not None else ()
        self._buffers = Buffers(tuple(c for c in columns if not c.ragged and c.name not in far), plan.window_rows,
                                buffers)
        cap_mmap_threshold()  # freed buffers of a few MiB go back to the system (malloc.py)
        self._pool = Pool(max(1, threads), name)
        # decoded columns: as many threads again decode parts of a batch (loader/tensors.py, _decode_parts)
        decoding = getattr(finish_ragged, "decoders", None)
        self._pools = [self._pool, *([Pool(max(1, threads), f"{name}-decode")] if decoding else [])]
        if decoding:
            finish_ragged.pool = self._pools[1]
        self._closed = False
        self._cancelled = Flag()  # cancel(): asked from another thread to stop
        self._stuck = False  # a wait timed out: a pool thread may be stuck in a read
        self._finalizer = weakref.finalize(self, _close_pools, self._pools)

    # -- accounting
    def _acquire(self, n: int) -> None:
        self.accounted_bytes += n
        self.peak_accounted_bytes = max(self.peak_accounted_bytes, self.accounted_bytes)
        assert self.accounted_bytes <= self.budget_bytes, "streambatch: byte budget exceeded"

    def _release(self, n: int) -> None:
        self.accounted_bytes -= n

    def _start_window(self, j: int) -> Window:
        bufs, fresh = self._buffers.take()
        needs = self.index_key is not None or getattr(self.finish_ragged, "needs_ids", False)
        ids = self.unit_start if needs else None
        if not self.ragged:
            self._acquire(self.window_nbytes)
        w = start_window(self._pool, self.reader, self.plan, j, bufs, fresh, self.window_row_nbytes, ids, self.ragged,
                         self.read_scratch, self.direct, tuple(c.name for c in self.columns if not c.ragged))
        if self.ragged:  # the bytes of its buffers, at most window_nbytes
            self._acquire(w.nbytes)
        return w

    def _wait(self, task: Task, take: bool = False) -> Any:
        t0 = time.monotonic()

        def check() -> None:
            if self._closed or self._cancelled.is_set():
                raise RuntimeError("streambatch loader closed while waiting")
            if self.timeout is not None and time.monotonic() - t0 > self.timeout:
                self._stuck = True  # close() then waits briefly for the stuck thread, not 5 s
                raise TimeoutError(f"streambatch: no progress for {self.timeout:.1f}s {task.where}")

        value = task.result(check)
        if take:  # the consumer's now: not held by whoever still holds the task
            task.value = None
        return value

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self._serve()
        finally:
            self.close()

    def _serve(self) -> Iterator[Any]:
        todo, first_offset = _windows_to_serve(self.plan, self.start_batch)
        held: deque[Window] = deque()
        pending: deque[_Pending] = deque()
        in_flight = 0  # batches submitted and not yet taken
        started = 0
        head: Window | None = None
        cur: Window | None = None
        while True:
            while todo and len(held) < 2 and (not self.ragged or self._window_fits(todo[0], held)):
                w = self._start_window(todo.popleft())
                w.next_b = first_offset if started == 0 else 0
                started += 1
                held.append(w)
            head = held[0] if held else None
            if head is not None and head.next_b >= head.n_batches and head.in_flight == 0:
                self._finish_window(held.popleft())
                head = cur = None  # its buffers go now, before the next window's are allocated
                continue
            cur = next((w for w in held if w.next_b < w.n_batches), None)
            if cur is not None and in_flight + self.group <= self.batches_ahead and (not pending or cur.ready()) \
                    and (not self.ragged or self._fits_next(cur, bool(pending))):
                pending.append(self._submit_batches(cur))
                in_flight += pending[-1][3]
                continue
            if not pending:
                assert not held and not todo, "streambatch: prefetcher stalled"
                return
            task, w, nbytes, count = pending.popleft()
            batches = self._wait(task, take=True)
            in_flight -= count
            w.in_flight -= 1
            del w  # a suspended generator keeps its locals: a finished window's buffers must not outlive its bytes
            yield from batches
            del batches  # the group's batches count until the last is taken (the consumer holds that one)
            self._release(nbytes)

    def _submit_batches(self, cur: Window) -> _Pending:
        """Submit the next group of ``cur``'s batches, once its reads are done."""
        while not cur.ready():
            self._wait(cur.reads[cur.reads_done])
        b0 = cur.next_b
        b1, nbytes = cur.next_group if cur.next_group is not None else (min(cur.n_batches, b0 + self.group), None)
        cur.next_group = None
        assert cur.perm is not None
        perm = self._wait(cur.perm)
        bs = self.plan.batch_size
        idx_list = [perm[b * bs:(b + 1) * bs] for b in range(b0, b1)]
        if nbytes is None:
            nbytes = self._batches_nbytes(cur, idx_list)
        self._acquire(nbytes)
        task = self._pool.submit(0, gather_batches, (
            cur.buffers, idx_list, cur.row_ids, self.index_key, self.normalize, self.make_batch,
            self.transform, cur.ragged, self.finish_ragged, self.alloc, self.ragged_views),
            f"while assembling batches {b0}..{b1 - 1} of window {cur.j}")
        cur.next_b = b1
        cur.in_flight += 1
        return task, cur, nbytes, b1 - b0

    def _batches_nbytes(self, cur: Window, idx_list: list[NDArray[np.int64]]) -> int:
        """Bytes of the batches at ``idx_list``: rows times the row bytes; ragged columns' exact bytes."""
        if not self.ragged:
            return sum(len(i) for i in idx_list) * self.row_nbytes
        fixed = sum(b[:1].nbytes for b in cur.buffers.values()) + getattr(self.finish_ragged, "extra_row_nbytes", 0)
        return sum(len(i) * fixed + batch_values_nbytes(cur.ragged, i, self._padded) for i in idx_list)

    def _window_fits(self, j: int, held: deque[Window]) -> bool:
        """Ragged columns: whether window ``j``'s real bytes fit the budget now, beside the batches
        ahead when another window is ``held`` (else it starts when that one is done).  The batches
        already assembled count towards that share: they are in ``accounted_bytes`` too (counted
        twice, a window was read later than it could be and the consumer waited for its reads:
        docs/PERFORMANCE.md, "Packed tokens").  ``ValueError`` for a window that never fits."""
        need = self._window_need.get(j)
        if need is None:  # asked on every pass of the scheduler while the window waits: once is enough
            table = self.plan.window_table(j)[0]
            need = self._window_need[j] = window_nbytes(self.reader.manifest, self.columns, table,
                                                        self.plan.window_rows)
        # a window read ahead leaves the batches ahead their share of the budget
        batches = self.accounted_bytes - sum(w.nbytes for w in held)
        room = self.budget_bytes - (max(0, self.batches_ahead * self.batch_nbytes - batches) if held else 0)
        if self.accounted_bytes + need <= room or held:
            return self.accounted_bytes + need <= room
        raise ValueError(f"{self.reader.manifest.root}: window {j} holds {need} bytes, more than the memory budget "
                         f"of {self.budget_bytes} bytes: give a larger memory_budget")

    def _fits_next(self, cur: Window, waiting: bool) -> bool:
        """Ragged columns: whether the next group of ``cur``'s batches, or else its next batch
        alone, fits the budget now (the group is cut to fit); with batches ``waiting``, False waits
        for them.  ``ValueError`` for a batch that never fits."""
        while not cur.ready():
            self._wait(cur.reads[cur.reads_done])
        assert cur.perm is not None
        perm, bs, b0 = self._wait(cur.perm), self.plan.batch_size, cur.next_b
        free = self.budget_bytes - self.accounted_bytes
        b1 = min(cur.n_batches, b0 + self.group)
        while b1 > b0:
            need = self._batches_nbytes(cur, [perm[b * bs:(b + 1) * bs] for b in range(b0, b1)])
            if need <= free:
                cur.next_group = (b1, need)  # what _submit_batches submits and acquires
                return True
            b1 = b0 + 1 if b1 > b0 + 1 else b0
        if waiting:
            return False
        raise ValueError(f"{self.reader.manifest.root}: batch {b0} of window {cur.j} holds "
                         f"{need} bytes, more than the memory "
                         f"budget leaves beside the windows ({free} of {self.budget_bytes} bytes): give a larger "
                         "memory_budget or a smaller batch_size")

    def _finish_window(self, w: Window) -> None:
        if w.touch is not None:  # before the buffer is reused for another window's reads
            self._wait(w.touch)
        for t in w.reads:  # reads done; drop references
            if t.error is not None:
                raise t.error
        self._release(w.nbytes)
        self._buffers.give(w.own)

    def cancel(self) -> None:
        """Ask a prefetcher iterated by another thread (the device path's copy thread) to stop: its
        waits raise within ``POLL`` seconds, and that thread's iteration then closes it."""
        self._cancelled.set()

    def close(self) -> None:
        """Stop every thread and drop buffers; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self._stuck and self._finalizer.detach() is not None:
            _close_pools(self._pools, timeout=0.2)  # logs the stuck thread; it exits when its read returns
        else:
            self._finalizer()
        self._buffers.close()


def _close_pools(pools: list[Pool], timeout: float = 5.0) -> None:
    """Close the decoding pool first: a batch task of the reader pool may be waiting for it."""
    for p in reversed(pools):
        p.close(timeout=timeout)
