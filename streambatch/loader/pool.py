"""Every thread the loader starts lives here: a small pool of threads that takes the lowest
(priority, sequence) task first.

A task is a module-level function and its arguments; its outcome (value, or the exception with
a note saying what it was doing) waits in the :class:`Task` for the consumer.  Completion flags
and the stop flag are C-level locks, so that Ctrl-C in the consumer can never leave a lock held
that a pool thread then waits for (see :class:`Done`).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import signal
import threading
import time
from typing import Any, Callable

__all__ = ["THREAD_PREFIX", "POLL", "TASK_BYTES", "Done", "Flag", "Task", "Where", "Pool"]

THREAD_PREFIX = "streambatch-"
_log = logging.getLogger("streambatch")
POLL = 0.1  # seconds between re-checks of the stop flag while blocked
# Read tasks and batch tasks are grouped up to about this many bytes: every task costs lock and
# GIL hand-offs between the pool and the consumer (docs/PERFORMANCE.md, Loader: task size).  Read at
# call time, so benchmarks/bench_scaling.py --task-bytes can change it.
TASK_BYTES = 1 << 20


class Done:
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


class Flag:
    """A flag set once (the pool's stop), checked without a lock and set with a C-level one:
    ``threading.Event.set`` goes through ``Condition.__enter__`` too (see Done)."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def set(self) -> None:
        self._lock.acquire(False)

    def is_set(self) -> bool:
        return self._lock.locked()


class Where:
    """A task's "while ..." text, updated as a multi-piece task moves on (for notes and timeouts)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


class Task:
    """A unit of pool work and its outcome: ok(value), failed(exception) or cancelled."""

    __slots__ = ("fn", "args", "done", "value", "error", "where")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], where: str | Where) -> None:
        self.fn, self.args, self.where = fn, args, where
        self.done = Done()
        self.value: Any = None
        self.error: BaseException | None = None

    def result(self, check: Callable[[], None]) -> Any:
        """The value once done, or the exception with its type; ``check()`` runs every ``POLL``
        seconds while waiting and raises to stop the wait (closed, cancelled, timed out)."""
        while not self.done.wait(POLL):
            check()
        if self.error is not None:
            raise self.error
        return self.value


class Pool:
    """Fixed threads taking the lowest (priority, sequence) task first."""

    def __init__(self, threads: int, name: str) -> None:
        self._heap: list[tuple[int, int, Task]] = []
        # The consumer takes the plain lock in C (``with self._lock``), never through the
        # Condition's Python __enter__, where Ctrl-C could leave it held (see Done)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stop = Flag()
        self._seq = itertools.count()
        self.threads = [threading.Thread(target=_pool_worker, args=(self._heap, self._cond, self._stop),
                                         name=f"{THREAD_PREFIX}{name}-{i}", daemon=True)
                        for i in range(threads)]
        for t in self.threads:
            t.start()

    def submit(self, priority: int, fn: Callable[..., Any], args: tuple[Any, ...], where: str | Where) -> Task:
        task = Task(fn, args, where)
        with self._lock:
            if self._stop.is_set():
                raise RuntimeError("streambatch loader is closed")
            heapq.heappush(self._heap, (priority, next(self._seq), task))
            self._cond.notify()
        return task

    def wait(self, task: Task) -> Any:
        """``task``'s value once done, or its exception (with its type); ``RuntimeError`` once
        the pool is closed, so that a thread waiting here is never left waiting."""
        return task.result(self._check_open)

    def _check_open(self) -> None:
        if self._stop.is_set():
            raise RuntimeError("streambatch loader closed while waiting")

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
    run in 100 of the Ctrl-C test with 2 workers; benchmarks/bench_sigint.py measures it).
    """
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - _THREAD_SIGNALS)


def _pool_worker(heap: list[tuple[int, int, Task]], cond: threading.Condition, stop: Flag) -> None:
    _leave_signals_to_the_main_thread()
    while True:
        with cond:
            while not heap and not stop.is_set():
                cond.wait(POLL)
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
            del task  # not kept while this thread waits for the next: its value belongs to the consumer


def _shutdown(heap: list[Any], lock: Any, cond: threading.Condition, stop: Flag,
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
