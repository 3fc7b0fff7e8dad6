"""Reading ahead: an iterator run in a background thread, a few items ahead of its consumer."""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterator

__all__ = ["ReadAhead"]


class ReadAhead:
    """Iterate ``it`` in a background thread, up to ``depth`` items ahead of the consumer.

    The converter reads and computes statistics here while the main thread writes, so the
    two cores overlap reading with writing.  An exception of ``it`` is raised to the consumer
    with its original type, in order; :meth:`close` stops the thread (also mid-way).
    """

    _END = object()

    def __init__(self, it: Iterator[Any], depth: int = 2) -> None:
        self._it = it
        # C-level queues: queue.Queue's Python-level locking can be interrupted by Ctrl-C in the
        # consumer right after taking its mutex, which the reader's next put then waits for
        # forever (see loader.pool.Done).  Free slots bound the items ahead (``depth``).
        self._items: queue.SimpleQueue[tuple[Any, BaseException | None]] = queue.SimpleQueue()
        self._slots: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(depth):
            self._slots.put(None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="streambatch-convert-read", daemon=True)
        self._thread.start()

    def _put(self, item: Any, err: BaseException | None = None) -> bool:
        while not self._stop.is_set():
            try:
                self._slots.get(timeout=0.05)
            except queue.Empty:
                continue
            self._items.put((item, err))
            return True
        return False

    def _run(self) -> None:
        try:
            for item in self._it:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._put(None, e)
        finally:
            close = getattr(self._it, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[Any]:
        while True:
            item, err = self._items.get()
            self._slots.put(None)
            if err is not None:
                raise err
            if item is self._END:
                return
            yield item

    def close(self) -> None:
        """Stop the thread (mid-way too) and wait for it; it closes ``it``."""
        self._stop.set()
        self._thread.join()
