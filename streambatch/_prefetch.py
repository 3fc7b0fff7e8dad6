"""Every thread streambatch starts lives here: a small priority pool and the window prefetcher.

::

    consumer (iterating thread)                     pool threads (reader threads)
    ---------------------------                     -----------------------------
    window j+1 free?  --submit reads (prio 1)-->    _read_group: unit rows -> window buffer
    window j read?    --submit batches (prio 0)-->  _gather_batches: buffer[perm[b]] (+transform)
    take batch futures in order, yield              results carry the original exception
    last batch of window j taken: free its buffer

Batches outrank reads in the pool, so a batch never waits behind the next window's reads,
and a batch task is only submitted once its window is fully read, so no pool thread ever
blocks on another task.  Output order is the plan's, whatever the thread count or timing.

Tasks are about a megabyte of work each (several units per read task, several small
batches per batch task): every task costs lock and GIL hand-offs between the pool and the
consumer, and on 16 cores those, not the copies, limited small-row throughput.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import signal
import threading
import time
import weakref
from collections import deque
from typing import Any, Callable, Iterator

import numpy as np
from numpy.typing import NDArray

from .schema import Column
from .plan import EpochPlan

__all__ = ["Prefetcher", "THREAD_PREFIX"]

THREAD_PREFIX = "streambatch-"
_log = logging.getLogger("streambatch")
_POLL = 0.1  # seconds between re-checks of the stop flag while blocked
_TASK_BYTES = 1 << 20  # read tasks and batch tasks are grouped up to about this many bytes


class _Done:
    """A task's completion flag, set once by a pool thread, waited on by the consumer.

    A plain lock held until the task finishes: ``threading.Event`` waits through
    ``Condition.__enter__``, Python code that Ctrl-C can interrupt right after it took the
    event's lock, leaving that lock held by the consumer; the pool thread finishing the task
    then blocked on it forever (the SIGINT test saw ``close`` wait its full 5 s for such
    threads).  A C lock's acquire either takes the lock or raises without it.
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        self._lock.release()

    def is_set(self) -> bool:
        return not self._lock.locked()

    def wait(self, timeout: float) -> bool:
        if self._lock.acquire(True, timeout):
            self._lock.release()
            return True
        return False


class _Flag:
    """A flag set once (the pool's stop), checked without a lock and set with a C-level one:
    ``threading.Event.set`` goes through ``Condition.__enter__`` too (see _Done)."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def set(self) -> None:
        self._lock.acquire(False)

    def is_set(self) -> bool:
        return self._lock.locked()


class _Task:
    """A unit of pool work and its outcome: ok(value), failed(exception) or cancelled."""

    __slots__ = ("fn", "args", "done", "value", "error", "where")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], where: str | _Where) -> None:
        self.fn, self.args, self.where = fn, args, where
        self.done = _Done()
        self.value: Any = None
        self.error: BaseException | None = None


class _Pool:
    """Fixed threads taking the lowest (priority, sequence) task first."""

    def __init__(self, threads: int, name: str) -> None:
        self._heap: list[tuple[int, int, _Task]] = []
        # The consumer takes the plain lock in C (``with self._lock``), never through the
        # Condition's Python __enter__, where Ctrl-C could leave it held (see _Done)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stop = _Flag()
        self._seq = itertools.count()
        self.threads = [threading.Thread(target=_pool_worker, args=(self._heap, self._cond, self._stop),
                                         name=f"{THREAD_PREFIX}{name}-{i}", daemon=True)
                        for i in range(threads)]
        for t in self.threads:
            t.start()

    def submit(self, priority: int, fn: Callable[..., Any], args: tuple[Any, ...], where: str | _Where) -> _Task:
        task = _Task(fn, args, where)
        with self._lock:
            if self._stop.is_set():
                raise RuntimeError("streambatch loader is closed")
            heapq.heappush(self._heap, (priority, next(self._seq), task))
            self._cond.notify()
        return task

    def close(self, timeout: float = 5.0) -> None:
        _shutdown(self._heap, self._lock, self._cond, self._stop, self.threads, timeout)


# Signals the kernel raises in the thread that caused them (a fault, a write past a limit); a
# pool thread keeps these, and blocks every other (see _leave_signals_to_the_main_thread).
_THREAD_SIGNALS = {getattr(signal, n) for n in ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGABRT", "SIGTRAP",
                                                "SIGSYS", "SIGPIPE", "SIGXFSZ") if hasattr(signal, n)}


def _leave_signals_to_the_main_thread() -> None:
    """Block Ctrl-C, SIGTERM, SIGCHLD and the like in the calling (pool) thread.

    The kernel hands a signal sent to the process to any thread that does not block it, but
    Python runs handlers only in the main thread: a signal taken by a pool thread merely set
    Python's flag while the main thread slept on in its system call (a DataLoader worker waits
    up to 5 s for its next index), so Ctrl-C stopped that worker seconds late (strace: about 1
    run in 100 of test_sigint_mid_epoch_exits_promptly_leaving_nothing with 2 workers).
    """
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - _THREAD_SIGNALS)


def _pool_worker(heap: list[tuple[int, int, _Task]], cond: threading.Condition, stop: _Flag) -> None:
    _leave_signals_to_the_main_thread()
    while True:
        with cond:
            while not heap and not stop.is_set():
                cond.wait(_POLL)
            if stop.is_set():
                return
            _, _, task = heapq.heappop(heap)
        try:
            task.value = task.fn(*task.args)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer with its type intact
            e.add_note(str(task.where))
            task.error = e
        finally:
            task.args = ()
            task.done.set()


def _shutdown(heap: list[Any], lock: Any, cond: threading.Condition, stop: _Flag,
              threads: list[threading.Thread], timeout: float) -> None:
    with lock:
        stop.set()
        heap.clear()
        cond.notify_all()
    deadline = time.monotonic() + timeout
    for t in threads:
        if t is threading.current_thread():
            continue
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            _log.warning("streambatch: thread %s did not stop within %.1fs (stuck in a read?)", t.name, timeout)


def _read_rows(reader: Any, unit: int, lo: int, hi: int, rows: NDArray[np.int64],
               out: dict[str, np.ndarray]) -> None:
    """Rows ``lo + rows`` of a unit (a partly served window, after an elastic resume)."""
    tmp = {name: np.empty((hi - lo, *dst.shape[1:]), dst.dtype) for name, dst in out.items()}
    reader.read_into(unit, lo, hi, tmp)
    for name, dst in out.items():
        np.take(tmp[name], rows, axis=0, out=dst)


class _Where:
    """A task's "while ..." text, updated as a multi-piece task moves on (for notes and timeouts)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


def _read_group(reader: Any, pieces: list[tuple[int, int, int, NDArray[np.int64] | None, dict[str, np.ndarray]]],
                root: Any, where: _Where) -> None:
    """Read several pieces ``(unit, lo, hi, keep, out)`` into the window buffer, in order."""
    for u, lo, hi, keep, out in pieces:
        where.text = f"while reading unit {u} (rows {lo}:{hi}) of {root}"
        if keep is None:
            reader.read_into(u, lo, hi, out)
        else:
            _read_rows(reader, u, lo, hi, keep - lo, out)


def _touch_tail(bufs: dict[str, np.ndarray], start: int) -> None:
    for b in bufs.values():
        b[start:] = 0


def _gather_batches(buffers: dict[str, np.ndarray], idx_list: list[NDArray[np.int64]],
                    row_ids: NDArray[np.int64] | None, index_key: str | None,
                    normalize: dict[str, tuple[np.ndarray, np.ndarray]],
                    to_tensor: Callable[[np.ndarray], Any] | None, transform: Callable[[Any], Any] | None
                    ) -> list[Any]:
    """Assemble a group of batches (one task for several batches keeps thread hand-offs rare)."""
    out_list = []
    for idx in idx_list:
        out: dict[str, Any] = {}
        for name, buf in buffers.items():
            arr = np.take(buf, idx, axis=0)
            if name in normalize:
                mean, inv_std = normalize[name]
                arr = (arr.astype(np.float32) - mean) * inv_std
            out[name] = arr
        if index_key is not None and row_ids is not None:
            out[index_key] = row_ids[idx]
        if to_tensor is not None:
            out = {k: to_tensor(v) for k, v in out.items()}
        if transform is not None:
            out = transform(out)
        out_list.append(out)
    return out_list


class _Window:
    """One window in flight: its buffer, its read tasks and the global row id of each position."""

    __slots__ = ("j", "rows", "buffers", "reads", "row_ids", "perm", "nbytes", "next_b", "n_batches", "in_flight",
                 "reads_done", "touch")

    def __init__(self, j: int, rows: int, buffers: dict[str, np.ndarray], nbytes: int) -> None:
        self.j, self.rows, self.buffers, self.nbytes = j, rows, buffers, nbytes
        self.reads: list[_Task] = []
        self.touch: _Task | None = None  # zero-fills the rows a fresh buffer's first window leaves unused
        self.row_ids: NDArray[np.int64] | None = None
        self.perm: _Task | None = None  # the serving order of the buffer's rows, computed on a pool thread
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


class Prefetcher:
    """Serves the batches of one ``EpochPlan`` in order, reading windows ahead with threads.

    Memory invariant: ``accounted_bytes`` = bytes of window buffers in use + bytes of batches
    submitted and not yet taken, and it never exceeds ``budget_bytes``: a window buffer is
    acquired before its reads are submitted and released when its last batch is taken.
    At most two windows are held: the one being served and the one being read.

    Use as a context manager or call ``close()`` (idempotent); iteration stops the threads
    when it ends, breaks or fails, and garbage collection is the safety net.
    """

    def __init__(self, reader: Any, plan: EpochPlan, columns: tuple[Column, ...], unit_start: NDArray[np.int64], *,
                 threads: int, budget_bytes: int, batches_ahead: int, group: int | None = None, start_batch: int = 0,
                 index_key: str | None = None, normalize: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                 to_tensor: Callable[[np.ndarray], Any] | None = None,
                 transform: Callable[[Any], Any] | None = None, timeout: float | None = None,
                 name: str = "reader", buffers: list[dict[str, np.ndarray]] | None = None) -> None:
        self.reader, self.plan, self.columns = reader, plan, columns
        self.unit_start = unit_start
        self.row_nbytes = sum(c.row_nbytes for c in columns)
        self.window_nbytes = plan.window_rows * self.row_nbytes
        self.batch_nbytes = plan.batch_size * self.row_nbytes
        self.budget_bytes = budget_bytes
        self.batches_ahead = max(1, batches_ahead)
        if group is None:  # batches per task: at least 4, up to about _TASK_BYTES of small batches
            group = max(4, _TASK_BYTES // max(1, self.batch_nbytes))
        self.group = max(1, min(group, self.batches_ahead // 2 or 1))
        if 2 * self.window_nbytes + self.batches_ahead * self.batch_nbytes > budget_bytes:
            raise ValueError(f"window of {self.window_nbytes} bytes and {self.batches_ahead} batches ahead "
                             f"do not fit the budget of {budget_bytes} bytes")
        self.start_batch = start_batch
        self.index_key = index_key
        self.normalize = normalize or {}
        self.to_tensor, self.transform, self.timeout = to_tensor, transform, timeout
        self.accounted_bytes = 0
        self.peak_accounted_bytes = 0
        # Window buffers: reused from ``buffers`` (a list the caller keeps across epochs, so
        # page faults on fresh memory are paid once) when their shapes fit, returned at close.
        self._shapes = {c.name: ((plan.window_rows, *c.shape), c.np_dtype) for c in columns}
        self._pool_out = buffers
        self._free: list[dict[str, np.ndarray]] = [b for b in (buffers or []) if self._fits(b)][:2]
        if buffers is not None:
            buffers.clear()
        self._pool = _Pool(max(1, threads), name)
        self._closed = False
        self._stuck = False  # a wait timed out: a pool thread may be stuck in a read
        self._finalizer = weakref.finalize(self, _Pool.close, self._pool)

    def _fits(self, bufs: dict[str, np.ndarray]) -> bool:
        return bufs.keys() == self._shapes.keys() and all(
            bufs[k].shape == shape and bufs[k].dtype == dt for k, (shape, dt) in self._shapes.items())

    # -- accounting
    def _acquire(self, n: int) -> None:
        self.accounted_bytes += n
        self.peak_accounted_bytes = max(self.peak_accounted_bytes, self.accounted_bytes)
        assert self.accounted_bytes <= self.budget_bytes, "streambatch: byte budget exceeded"

    def _release(self, n: int) -> None:
        self.accounted_bytes -= n

    def _start_window(self, j: int) -> _Window:
        plan = self.plan
        rows = plan.window_size(j)
        fresh = not self._free
        if self._free:
            bufs = self._free.pop()
        else:
            bufs = {c.name: np.empty((plan.window_rows, *c.shape), dtype=c.np_dtype) for c in self.columns}
        self._acquire(self.window_nbytes)
        w = _Window(j, rows, bufs, self.window_nbytes)
        off = 0
        root = getattr(getattr(self.reader, "manifest", None), "root", "")
        advise = getattr(self.reader, "advise", None)
        if advise is not None:  # let a cold disk work on the whole window at once (a pool task, ahead
            # of the reads: a window's hints are a thousand system calls, off the consuming thread)
            self._pool.submit(1, advise, (list(plan.window_pieces(j)), list(bufs)),
                              f"while hinting the reads of window {j}")
        # The window's row permutation (milliseconds for a large window) on a pool thread, ahead
        # of its reads: on the consuming thread it took 4% of a warm tab epoch (py-spy samples).
        w.perm = self._pool.submit(1, plan.window_perm, (j,), f"while shuffling window {j}")
        group: list[Any] = []
        group_bytes = 0
        for u, lo, hi, keep in plan.window_pieces(j):
            n = hi - lo if keep is None else keep.size
            group.append((u, lo, hi, keep, {name: b[off:off + n] for name, b in bufs.items()}))
            group_bytes += n * self.row_nbytes
            off += n
            if group_bytes >= _TASK_BYTES:
                w.reads.append(self._submit_reads(group, root))
                group, group_bytes = [], 0
        if group:
            w.reads.append(self._submit_reads(group, root))
        if fresh and rows < plan.window_rows:
            # A short first window (the ramp, a small dataset) would leave the rest of a fresh
            # buffer untouched, so peak RSS would depend on the dataset's length; touching it
            # here, after this window's reads, makes it the budget's from the first epoch on.
            w.touch = self._pool.submit(1, _touch_tail, (bufs, rows), f"while preparing the buffer of window {j}")
        ids = plan.window_row_ids(j, self.unit_start) if self.index_key is not None else None
        w.row_ids = ids
        w.n_batches = plan.window_batches(j)
        return w

    def _submit_reads(self, pieces: list[Any], root: Any) -> _Task:
        u, lo, hi = pieces[0][:3]
        where = _Where(f"while reading unit {u} (rows {lo}:{hi}) of {root}")
        return self._pool.submit(1, _read_group, (self.reader, pieces, root, where), where)

    def _wait(self, task: _Task) -> Any:
        t0 = time.monotonic()
        while not task.done.wait(_POLL):
            if self._closed:
                raise RuntimeError("streambatch loader closed while waiting")
            if self.timeout is not None and time.monotonic() - t0 > self.timeout:
                self._stuck = True  # close() then waits briefly for the stuck thread, not 5 s
                raise TimeoutError(f"streambatch: no progress for {self.timeout:.1f}s {task.where}")
        if task.error is not None:
            raise task.error
        return task.value

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self._serve()
        finally:
            self.close()

    def _serve(self) -> Iterator[Any]:
        plan = self.plan
        # Skip windows already served (resume), arithmetically: nothing is read for them.
        skip = self.start_batch
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
        held: deque[_Window] = deque()
        pending: deque[tuple[_Task, _Window, int, int]] = deque()
        in_flight = 0  # batches submitted and not yet taken
        started = 0
        while True:
            while todo and len(held) < 2:
                w = self._start_window(todo.popleft())
                w.next_b = first_offset if started == 0 else 0
                started += 1
                held.append(w)
            head = held[0] if held else None
            if head is not None and head.next_b >= head.n_batches and head.in_flight == 0:
                self._finish_window(held.popleft())
                continue
            cur = next((w for w in held if w.next_b < w.n_batches), None)
            if cur is not None and in_flight + self.group <= self.batches_ahead and (not pending or cur.ready()):
                while not cur.ready():
                    self._wait(cur.reads[cur.reads_done])
                b0 = cur.next_b
                b1 = min(cur.n_batches, b0 + self.group)
                assert cur.perm is not None
                perm = self._wait(cur.perm)
                bs = plan.batch_size
                idx_list = [perm[b * bs:(b + 1) * bs] for b in range(b0, b1)]
                nbytes = sum(len(i) for i in idx_list) * self.row_nbytes
                self._acquire(nbytes)
                task = self._pool.submit(0, _gather_batches, (
                    cur.buffers, idx_list, cur.row_ids, self.index_key, self.normalize, self.to_tensor,
                    self.transform), f"while assembling batches {b0}..{b1 - 1} of window {cur.j}")
                pending.append((task, cur, nbytes, b1 - b0))
                in_flight += b1 - b0
                cur.next_b = b1
                cur.in_flight += 1
                continue
            if not pending:
                assert not held and not todo, "streambatch: prefetcher stalled"
                return
            task, w, nbytes, count = pending.popleft()
            batches = self._wait(task)
            self._release(nbytes)
            in_flight -= count
            w.in_flight -= 1
            yield from batches

    def _finish_window(self, w: _Window) -> None:
        if w.touch is not None:  # before the buffer is reused for another window's reads
            self._wait(w.touch)
        for t in w.reads:  # reads done; drop references
            if t.error is not None:
                raise t.error
        self._release(w.nbytes)
        self._free.append(w.buffers)

    def close(self) -> None:
        """Stop every thread and drop buffers; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self._stuck and self._finalizer.detach() is not None:
            self._pool.close(timeout=0.2)  # logs the stuck thread; it exits when its read returns
        else:
            self._finalizer()
        if self._pool_out is not None:
            self._pool_out[:] = self._free[:2]
        self._free = []
