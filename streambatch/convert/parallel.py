"""Writing a dataset file by file (Zarr shards, Parquet files) on several threads at once.

Each :class:`~.parts.Part` is one file's units: its thread reads the part's rows from a
random-access source, summarises them into its own statistics and writes them with its own
writer.  The parts' statistics, histograms and layouts are joined in file order, so the result is
the sequential one (statistics to rounding).  Reading, statistics and writing then each use every
core (docs/PERFORMANCE.md, "Convert: parallel parts").
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

from ..sources import Source
from .parts import Abandoned, Part, PartOptions, PartResult, Summary

__all__ = ["ParallelParts"]


class ParallelParts:
    """Run ``parts`` on up to ``threads`` threads, merging finished parts in file order.

    A failing part stops the parts after it (the ones before it finish), and :meth:`run` raises
    the error of the first failing part with its original type: the first bad row in source
    order, as the sequential path names it.  An interrupt stops all of them.  A part starts
    only within 2 x threads of the first unmerged one: parts of wide rows hold statistics of
    ~32 bytes a value each until merged.
    """

    def __init__(self, parts: list[Part], opts: PartOptions, source: Source, folder: Path, target: Path,
                 threads: int) -> None:
        self.parts, self.opts, self.source, self.folder, self.target = parts, opts, source, folder, target
        self.threads = max(1, min(threads, len(parts)))
        self.done = [0] * len(parts)  # rows written per part (progress)
        self.summary = Summary(opts)
        self.errors: dict[int, BaseException] = {}
        self._finished: dict[int, PartResult] = {}  # parts done, not yet merged
        self._merged = 0
        self._stop_after = len(parts)  # parts after this one abandon their work
        self._next = 0
        self._lock = threading.Lock()

    def _take(self) -> int | None:
        """The next part to write, ``-1`` to wait for earlier parts, ``None`` when done."""
        with self._lock:
            i = self._next
            if i >= len(self.parts) or i > self._stop_after:
                return None
            if i >= self._merged + 2 * self.threads:
                return -1
            self._next += 1
            return i

    def _finish(self, i: int, result: PartResult) -> None:
        """Keep part ``i``'s result; merge every finished part that follows the merged ones."""
        with self._lock:
            self._finished[i] = result
            while self._merged in self._finished:
                self.summary.add(self._finished.pop(self._merged))
                self._merged += 1

    def _fail(self, i: int, e: BaseException) -> None:
        with self._lock:
            self.errors[i] = e
            self._stop_after = min(self._stop_after, i)

    def stop(self) -> None:
        """Abandon every part (each stops at its next piece)."""
        with self._lock:
            self._stop_after = -1

    def _progress(self, i: int) -> Callable[[int], None]:
        def count(n: int) -> None:
            self.done[i] += n

        return count

    def _work(self) -> None:
        while (i := self._take()) is not None:
            if i < 0:
                time.sleep(0.002)
                continue
            try:
                self._finish(i, self.parts[i].run(self.opts, self.folder, self.target, self.source,
                                                  abandon=lambda i=i: i > self._stop_after,
                                                  progress=self._progress(i)))
            except Abandoned:
                return
            except BaseException as e:  # handed to run(), which re-raises the first part's
                self._fail(i, e)
                return

    def run(self, progress: Callable[[int], None]) -> PartResult:
        """Write every part; return them joined as one part's result.  ``progress(rows)`` is told
        of the rows written, from this thread.  Raises the first failing part's error."""
        workers: list[threading.Thread] = []
        shown = 0
        try:
            for k in range(self.threads):
                workers.append(threading.Thread(target=self._work, name=f"streambatch-convert-{k}", daemon=True))
                workers[-1].start()
            for t in workers:
                while t.is_alive():
                    t.join(0.1)
                    done = sum(self.done)
                    progress(done - shown)
                    shown = done
        finally:
            self.stop()  # only matters when this thread was interrupted: workers stop at their next piece
            for t in workers:
                if t.ident is not None:  # started (an interrupt may come between creating and starting)
                    t.join()
        if self.errors:
            raise self.errors[min(self.errors)]
        assert self._merged == len(self.parts)
        return self.summary.result()
