"""Every thread the loader starts lives here: a small pool of threads that takes the lowest
(priority, sequence) task first, and in a DataLoader worker a thread that makes sure Ctrl-C ends
the worker (:func:`end_worker_on_ctrl_c`).

A task is a module-level function and its arguments; its outcome (value, or the exception with
a note saying what it was doing) waits in the :class:`Task` for the consumer.  Completion flags
and the stop flag are C-level locks, so that Ctrl-C in the consumer can never leave a lock held
that a pool thread then waits for (see :class:`Done`).
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from typing import Any, Callable

__all__ = ["THREAD_PREFIX", "POLL", "TASK_BYTES", "CTRL_C_GRACE", "CTRL_C_RETRY", "Done", "Flag", "Task", "Where",
           "Pool", "end_worker_on_ctrl_c", "fragile"]

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


# ---------------------------------------------------------------- Ctrl-C in a DataLoader worker
CTRL_C_GRACE = 3.0
"""Seconds a DataLoader worker has, after its Ctrl-C, to end by itself (ending takes 0.0-0.1 s:
docs/FAULTS.md) before :func:`end_worker_on_ctrl_c`'s watch ends it."""
CTRL_C_RETRY = 0.01
"""Seconds until a Ctrl-C put off (taken inside code that cannot take it) is raised again."""
_watched_pid: int | None = None
_raised = False  # this worker's handler has raised its KeyboardInterrupt
# Code that Python's KeyboardInterrupt breaks when raised there: a lock taken but not yet inside
# its ``with``, a waiter woken but not yet forgotten, an exception dropped by a finaliser.
_FRAGILE_FILES = tuple(os.path.join(*p) for p in (("threading.py",), ("multiprocessing", "synchronize.py"),
                                                    ("multiprocessing", "queues.py"), ("multiprocessing", "util.py"),
                                                    ("weakref.py",)))
_FINALISERS = {("weakref.py", "__call__"), ("util.py", "__call__"), ("util.py", "_run_finalizers")}


def end_worker_on_ctrl_c() -> None:
    """In a DataLoader worker's main thread (once per process, and only where SIGINT has
    Python's own handler): make sure Ctrl-C ends the worker.

    Ctrl-C sends SIGINT to every process of the terminal's group, and PyTorch's worker loop ends
    on the ``KeyboardInterrupt`` it raises there.  Python raises it at whatever bytecode the
    worker's main thread runs next, and some places lose it or hang on it (benchmarks/bench_sigint.py
    under load, 5 runs in 60 with 2 workers): a finaliser (CPython prints and drops an exception
    raised there: the worker serves on); ``Condition.notify`` of the worker's result queue, between
    waking the queue's thread and forgetting it (the queue's last wake-up at exit goes to that stale
    waiter, and the exit waits for the thread forever); ``Condition.__enter__`` of PyTorch's
    ``done_event`` right after it took the event's lock, which the worker then never releases: it
    waits on it itself, and the main process waits on it when it shuts the DataLoader down.

    A Ctrl-C that a thread other than the main one takes (PyTorch's queue thread, say) waited until
    the main thread's system call returned: up to 5 s in PyTorch's wait for the next index.

    So the worker's SIGINT handler looks at where the main thread is: inside such code (the
    innermost frame in ``threading``, ``multiprocessing``'s locks, queues or finalisers, or
    ``weakref``; any frame of a finaliser or ``__del__``) it puts the interrupt off, and a watching
    thread sends SIGINT to the main thread again ``CTRL_C_RETRY`` seconds later; elsewhere it raises
    ``KeyboardInterrupt`` as Python's handler does.  The watching thread also learns of a Ctrl-C
    from Python's wakeup descriptor (``signal.set_wakeup_fd``, unless something else has it),
    whichever thread took it, and sends SIGINT to the main thread until its handler has run.  A
    worker still running ``CTRL_C_GRACE`` seconds after its first Ctrl-C (a user's code that
    caught it, say) says so on stderr and ends with ``os._exit(0)``, as its loop would have (after
    removing the folder of Python's multiprocessing, which an exit that skips its finalisers would
    leave behind).
    """
    global _watched_pid
    if (_watched_pid == os.getpid() or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        return
    r, w = os.pipe()
    os.set_blocking(w, False)
    # Python's C handler writes the signal's number here from whichever thread took it: the watch
    # learns of a Ctrl-C that a thread other than the main one took (the main thread runs the
    # handler only once its system call returns: up to 5 s in PyTorch's wait for the next index)
    before = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    if before != -1:  # someone else's (an event loop's): leave it
        signal.set_wakeup_fd(before)
    threading.Thread(target=_watch, args=(r, threading.get_ident()), name=f"{THREAD_PREFIX}ctrl-c",
                     daemon=True).start()
    signal.signal(signal.SIGINT, functools.partial(_on_ctrl_c, w))
    _watched_pid = os.getpid()


def fragile(frame: Any) -> bool:
    """Whether a ``KeyboardInterrupt`` raised in ``frame`` (the innermost frame of the main
    thread) could be lost or leave a lock held (see :func:`end_worker_on_ctrl_c`)."""
    if frame is not None and frame.f_code.co_filename.endswith(_FRAGILE_FILES):
        return True
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or (os.path.basename(code.co_filename), code.co_name) in _FINALISERS:
            return True
        frame = frame.f_back
    return False


def _on_ctrl_c(w: int, signum: int, frame: Any) -> None:
    global _raised
    if _raised:  # raised once already: a second one (the watch's, or a second Ctrl-C) would only
        return   # break the worker's clean-up, and the watch ends a worker that outlives the first
    try:
        os.write(w, bytes([signal.SIGINT]))  # wakes the watch where the wakeup descriptor is not ours
    except OSError:  # the pipe is full: the watch has plenty to read already
        pass
    if not fragile(frame):
        _raised = True
        signal.default_int_handler(signum, frame)


def _watch(r: int, main: int) -> None:
    """Waits for a SIGINT's number on ``r`` (from Python's C handler, whichever thread took it,
    or from the main thread's handler).  Until the handler has raised (``_raised``), SIGINT goes
    to the main thread again every ``CTRL_C_RETRY`` seconds (it interrupts a system call the main
    thread sleeps in); one sent just as the handler raised finds it raised and is ignored (a
    second ``KeyboardInterrupt`` would break the worker's own clean-up)."""
    _leave_signals_to_the_main_thread()
    while signal.SIGINT not in os.read(r, 4096):  # other signals' numbers: not ours
        pass
    deadline = time.monotonic() + CTRL_C_GRACE
    while time.monotonic() < deadline:
        time.sleep(0.1 if _raised else CTRL_C_RETRY)
        if not _raised:
            signal.pthread_kill(main, signal.SIGINT)
    # not while the main thread is inside a lock's own code: a lock it holds (PyTorch's done_event's
    # is shared with the main process) would stay taken, and the main process would wait on it
    while fragile(sys._current_frames().get(main)) and time.monotonic() < deadline + 1.0:
        time.sleep(CTRL_C_RETRY)
    os.write(2, f"streambatch: DataLoader worker {os.getpid()} still running {CTRL_C_GRACE:g} s after Ctrl-C "
                "(its KeyboardInterrupt was caught or lost): ending it\n".encode())
    try:
        tempdir = multiprocessing.current_process()._config.get("tempdir")  # noqa: SLF001 - util.get_temp_dir's
        if tempdir:
            shutil.rmtree(tempdir, ignore_errors=True)
    finally:
        os._exit(0)
