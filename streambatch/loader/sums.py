"""Each piece's CRC-32C, kept across epochs, so that a verified epoch after the first reads each
byte once (``readers.VerifyOnce``); and the shared memory that lets DataLoader workers keep them.

A worker process of a plain ``DataLoader`` lives for one epoch: sums that it kept in its own
memory would be lost with it, and the next epoch's workers would read every unit whole again
to check it.  So a dataset (in the process that makes it) holds one anonymous shared-memory
file (``SharedSums``, a ``memfd``): a forked worker inherits it, a spawned one gets it through
multiprocessing when the DataLoader starts it, and all of them, and the epochs after them, read
and write the same sums.  The file holds a directory page, then one region per piece layout
(cut and columns: each worker count cuts its own pieces), appended, never moved or shrunk, so
no process ever sees the region it maps change its meaning:

    page 0: magic, count, entries (key, offset, bytes)
    region: known[pieces] (a flag a piece) | sums of column 0 | sums of column 1 | ...

A sum is written before its flag; a reader that finds a flag without its sum (another process
writing, or a region freed by ``release_buffers``: all zeros, nothing known) finds a mismatch,
reads the unit whole and checks it, and takes its sums again (``VerifyOnce``).  Linux only;
elsewhere each process keeps its own sums.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
import weakref
from multiprocessing.context import get_spawning_popen
from multiprocessing.reduction import DupFd
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._kernels import crc_chunks, crc_ranges
from ..io.checksum import native_crc32c

try:
    import fcntl
except ImportError:  # not POSIX: no shared sums (SharedSums.available)
    fcntl = None  # type: ignore[assignment]

__all__ = ["PieceSums", "SharedSums", "piece_sums"]

Bufs = dict[str, np.ndarray]
Table = NDArray[np.int64]  # rows (unit, lo, hi, buffer row): pieces of a window

_PAGE = mmap.ALLOCATIONGRANULARITY
_MAGIC = b"sbsums01"
_ENTRIES_AT, _ENTRY = 64, 32  # an entry: key (16 bytes), offset, bytes (int64 each)
_MAX_ENTRIES = (_PAGE - _ENTRIES_AT) // _ENTRY


def _round(n: int, to: int) -> int:
    return -(-n // to) * to


class SharedSums:
    """One anonymous shared-memory file of piece sums for a dataset and its DataLoader workers
    (module docstring).  ``region(key, nbytes)`` maps the region for one piece layout, making it
    (zeros: nothing known) the first time any process asks; None when the directory is full."""

    def __init__(self, fd: int | None = None) -> None:
        self.fd = os.memfd_create("streambatch-sums", os.MFD_CLOEXEC) if fd is None else fd
        self._lock, self._pid = threading.Lock(), os.getpid()  # lockf excludes other processes, not threads
        self._closer = weakref.finalize(self, os.close, self.fd)

    @staticmethod
    def available() -> bool:
        return hasattr(os, "memfd_create") and fcntl is not None

    def region(self, key: bytes, nbytes: int) -> mmap.mmap | None:
        if self._pid != os.getpid():  # a forked child: the parent's lock may have been held at the fork
            self._lock, self._pid = threading.Lock(), os.getpid()
        with self._lock:
            fcntl.lockf(self.fd, fcntl.LOCK_EX)
            try:
                at, size = self._find_or_add(key, _round(max(nbytes, 1), _PAGE))
            finally:
                fcntl.lockf(self.fd, fcntl.LOCK_UN)
        return None if at < 0 else mmap.mmap(self.fd, size, offset=at)

    def _find_or_add(self, key: bytes, size: int) -> tuple[int, int]:
        if os.fstat(self.fd).st_size == 0:
            os.ftruncate(self.fd, _PAGE)
            os.pwrite(self.fd, _MAGIC, 0)
        page = os.pread(self.fd, _PAGE, 0)
        if page[:8] != _MAGIC:
            raise RuntimeError("streambatch: the shared piece sums' directory is not streambatch's")
        count = int.from_bytes(page[8:16], "little")
        for i in range(count):
            e = page[_ENTRIES_AT + i * _ENTRY:_ENTRIES_AT + (i + 1) * _ENTRY]
            if e[:16] == key:
                return int.from_bytes(e[16:24], "little"), int.from_bytes(e[24:32], "little")
        if count == _MAX_ENTRIES:
            return -1, 0
        at = _round(os.fstat(self.fd).st_size, _PAGE)
        os.ftruncate(self.fd, at + size)  # grows only: regions that others map stay where they are
        entry = key + at.to_bytes(8, "little") + size.to_bytes(8, "little")
        os.pwrite(self.fd, entry, _ENTRIES_AT + count * _ENTRY)
        os.pwrite(self.fd, (count + 1).to_bytes(8, "little"), 8)
        return at, size

    def forget(self) -> None:
        """Every sum unknown again, their memory given back (regions stay where they are)."""
        size = os.fstat(self.fd).st_size
        if size > _PAGE:
            mm = mmap.mmap(self.fd, size)
            mm.madvise(mmap.MADV_REMOVE, _PAGE, size - _PAGE)
            mm.close()

    def __getstate__(self) -> dict[str, Any]:
        # a worker being started (spawn, forkserver) gets the file; any other copy has its own
        return {"fd": DupFd(self.fd) if get_spawning_popen() is not None else None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(None if state["fd"] is None else state["fd"].detach())  # type: ignore[misc]


class PieceSums:
    """The CRC-32C of every piece (a unit's rows ``k * cut`` to ``(k + 1) * cut``) of each column
    read, taken from a read of its unit whose checksums were checked; kept across epochs (the
    dataset's), so that a later epoch checks a piece's bytes as it reads them, without reading
    its unit again.  4 bytes a piece and column, and a flag a piece, outside the budget; in
    ``shared`` memory (``SharedSums``) where given."""

    def __init__(self, unit_rows: NDArray[np.int64], cut: int, names: tuple[str, ...],
                 shared: SharedSums | None = None) -> None:
        self.cut, self.names = cut, names
        self.unit_rows = np.asarray(unit_rows, np.int64)
        self.first = np.zeros(len(self.unit_rows) + 1, np.int64)
        np.cumsum(-(-self.unit_rows // cut), out=self.first[1:])
        n = int(self.first[-1])
        self.crc = native_crc32c()  # (function, its C address); None: not found, nothing is kept
        flags = _round(n, 8)
        mm = None if shared is None or self.crc is None else shared.region(self._key(), flags + 4 * n * len(names))
        if mm is None:
            self.known = np.zeros(n, bool)
            self.sums = {name: np.zeros(n, np.uint32) for name in names}
        else:
            self.known = np.frombuffer(mm, np.bool_, n)
            self.sums = {name: np.frombuffer(mm, np.uint32, n, flags + 4 * n * i) for i, name in enumerate(names)}

    def _key(self) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        h.update(repr((self.cut, self.names)).encode())
        h.update(self.unit_rows.tobytes())
        return h.digest()

    def fits(self, unit_rows: NDArray[np.int64], cut: int, names: tuple[str, ...]) -> bool:
        return (cut, names) == (self.cut, self.names) and np.array_equal(unit_rows, self.unit_rows)

    def record(self, unit: int, bufs: Bufs) -> None:
        """The sums of ``unit``'s pieces, from ``bufs`` (its rows, just checked); each sum before its flag."""
        if self.crc is None or bufs.keys() != set(self.names):
            return
        a, b = int(self.first[unit]), int(self.first[unit + 1])
        for name, arr in bufs.items():
            flat = arr.reshape(-1).view(np.uint8)
            self.sums[name][a:b] = crc_chunks(*self.crc, flat, self.cut * arr[0].nbytes)
        self.known[a:b] = True

    def _expand(self, pieces: Table) -> tuple[NDArray[np.int64], ...]:
        """Each range of ``pieces`` (unit, lo, hi, buffer row) cut at multiples of ``cut`` (a window
        reads a unit's pieces that fall in it side by side as one range): for every part, its range's
        row in ``pieces``, its place in the sums, its buffer row and its rows."""
        u, lo, hi, at = (pieces[:, i] for i in range(4))
        k0 = lo // self.cut
        n = -(-hi // self.cut) - k0
        rep = np.repeat(np.arange(len(pieces)), n)
        j = np.arange(len(rep)) - np.repeat(np.cumsum(n) - n, n)
        row = lo[rep] + j * self.cut
        return rep, self.first[u[rep]] + k0[rep] + j, at[rep] + j * self.cut, np.minimum(self.cut, hi[rep] - row)

    @staticmethod
    def part_table(pieces: Table, parts: Any) -> Table:
        """The parts (``_expand``'s, of ``pieces``) as pieces of their own: rows ``(unit, lo, hi, buffer row)``."""
        rep, _, row, rows = parts
        lo = pieces[rep, 1] + (row - pieces[rep, 3])
        return np.stack([pieces[rep, 0], lo, lo + rows, row], axis=1)

    def covered_parts(self, pieces: Table) -> tuple[NDArray[np.bool_], Any]:
        """Whether each range of ``pieces`` is whole pieces whose sums are all known (not one cut
        otherwise, by a window boundary, nor one of a unit not checked yet); and the parts
        (``_expand``) of the covered ranges for :meth:`differing` when they are all of the
        whole-piece ranges, else None."""
        u, lo, hi = pieces[:, 0], pieces[:, 1], pieces[:, 2]
        ok = (lo % self.cut == 0) & ((hi % self.cut == 0) | (hi == self.unit_rows[u])) & (hi > lo)
        if not ok.any():
            return ok, None
        parts = self._expand(pieces[ok])
        missing = np.bincount(parts[0], weights=~self.known[parts[1]], minlength=int(ok.sum()))
        if not missing.any():
            return ok, parts
        ok[np.flatnonzero(ok)[missing > 0]] = False
        return ok, None

    def differing(self, pieces: Table, bufs: Bufs, parts: Any = None,
                  read: dict[str, NDArray[np.uint32]] | None = None) -> tuple[int, str] | None:
        """The first range of ``pieces`` (its row) and column whose bytes, read into ``bufs`` at the
        ranges' buffer rows, differ from their pieces' sums; None if none does.  ``parts``: the
        ranges' ``_expand``, where :meth:`covered_parts` gave it; ``read``: each column's sums of
        those parts, taken as they were read (else they are taken from ``bufs`` here)."""
        assert self.crc is not None
        rep, at, row, rows = self._expand(pieces) if parts is None else parts
        for name, arr in bufs.items():
            size = arr[0].nbytes
            got = read[name] if read is not None else crc_ranges(*self.crc, arr.reshape(-1).view(np.uint8),
                                                                  row * size, rows * size)
            bad = np.flatnonzero(got != self.sums[name][at])
            if bad.size:
                return int(rep[bad[0]]), name
        return None


def piece_sums(keep: list[PieceSums], unit_rows: NDArray[np.int64], cut: int, names: tuple[str, ...],
               shared: SharedSums | None = None) -> PieceSums:
    """The pieces' sums from ``keep`` (the dataset's, across epochs) when they are for these
    pieces and columns, else new ones (kept in their place), in ``shared`` memory where given."""
    if not (keep and keep[0].fits(unit_rows, cut, names)):
        keep[:] = [PieceSums(unit_rows, cut, names, shared)]
    return keep[0]
