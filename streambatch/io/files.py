"""A dataset's files read by byte range, shared by the Zarr and Parquet readers.

Local files are opened once per reader (descriptors cached, thread-safe) and read with
``os.preadv``; a dataset at a URL goes through ``RemoteFiles`` (ranged requests).  Every
failure is a ``DataError`` that starts with the caller's description of what it was reading.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from typing import Any, Callable, Protocol

import numpy as np
from numpy.typing import NDArray

from .._kernels import copy_ranges, native, pread_ranges, pread_summed
from ..errors import DataError
from ..ragged import runs

__all__ = ["ByteRanges", "Files"]

Where = Callable[[], str]  # "dataset D, column C, unit U, file F", built only when there is an error
_PROBES = 8  # ranges of a window probed for being cached before it is advised
# read_ranges: ranges closer than GAP_BYTES are read as one span (a pread costs about what copying
# 16 KiB does: docs/PERFORMANCE.md, Loader: pieces), spans of at most SPAN_BYTES (scratch memory).
GAP_BYTES = 16 << 10
SPAN_BYTES = 1 << 20
SPAN_RANGES = 8  # fewer ranges than this are read one by one (a scatter's fixed cost is ~8 reads')


def _resident(fd: int, offset: int) -> bool:
    """``mincore`` of the page at ``offset``, mapped (never touched) for the question: unlike a
    read with ``RWF_NOWAIT``, asking does not start reading a page that is not cached, and a
    fast disk cannot turn the miss into a hit before the answer.  False where it fails."""
    global _mincore
    if _mincore is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            _mincore = libc.mincore
            _mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
        except (OSError, AttributeError, TypeError):  # no libc to load (Windows) or no mincore in it
            _mincore = False
    if not _mincore:
        return False
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    try:
        with mmap.mmap(fd, offset - start + 1, access=mmap.ACCESS_COPY, offset=start) as mm:
            vec = (ctypes.c_ubyte * (-(-len(mm) // mmap.PAGESIZE)))()
            view = ctypes.c_char.from_buffer(mm)
            try:
                if _mincore(ctypes.addressof(view), len(mm), vec) != 0:
                    return False
            finally:
                del view  # the export ends before the mapping closes
            return bool(vec[-1] & 1)
    except (OSError, ValueError):
        return False


_mincore: Any = None  # libc's mincore, looked up on first use (False: not available)


class Files(Protocol):
    """What :class:`ByteRanges` needs of a dataset (a ``Manifest`` is one): its root, its
    files' paths relative to it, and the local path of file ``i``."""

    root: Any
    files: tuple[str, ...]

    def path_of(self, file_index: int) -> Any: ...


def _spans(fis: NDArray[np.int64], starts: NDArray[np.int64], ends: NDArray[np.int64], gap: int
           ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """First and last range of each span: at least SPAN_RANGES ranges of one file, in order, at
    most ``gap`` apart, a span at most SPAN_BYTES long; or one range."""
    n = fis.shape[0]
    new = np.ones(n, bool)
    new[1:] = (fis[1:] != fis[:-1]) | (starts[1:] < ends[:-1]) | (starts[1:] - ends[:-1] > gap)
    first = np.flatnonzero(new)
    last = np.append(first[1:], n) - 1
    few = (last - first + 1) < SPAN_RANGES
    if few.any():  # a span of a few ranges costs more to scatter than their reads: read them alone
        alone = np.zeros(n, bool)
        alone[first] = True
        cover = np.repeat(few, last - first + 1)
        alone |= cover
        first = np.flatnonzero(alone)
        last = np.append(first[1:], n) - 1
    long = np.flatnonzero(ends[last] - starts[first] > SPAN_BYTES)
    if long.size:  # cut long spans where they pass SPAN_BYTES
        cuts = []
        for i in long.tolist():
            a, b = int(first[i]), int(last[i])
            s0 = int(starts[a])
            for k in range(a + 1, b + 1):
                if int(ends[k]) - s0 > SPAN_BYTES:
                    cuts.append(k)
                    s0 = int(starts[k])
        first = np.union1d(first, np.asarray(cuts, np.int64))
        last = np.append(first[1:], n) - 1
    return first, last


def _scatter(src: NDArray[np.uint8], offs: NDArray[np.int64], sizes: NDArray[np.int64], out: NDArray[np.uint8],
             dst: NDArray[np.int64]) -> None:
    """``out[dst[k]:dst[k] + sizes[k]] = src[offs[k]:offs[k] + sizes[k]]`` for every ``k``: one C
    call with the GIL released; without the C module, one vectorised copy of granules (the largest
    power of two dividing every offset and size, up to 4 KiB), or a copy per range where the bytes
    are not aligned."""
    if native():
        copy_ranges(src, offs, sizes, out, dst)
        return
    common = int(np.gcd.reduce(np.concatenate([offs, sizes, dst])))
    g = min(4096, common & -common) if common else 4096
    if g < 4:
        for o, n, d in zip(offs.tolist(), sizes.tolist(), dst.tolist()):
            out[d:d + n] = src[o:o + n]
        return
    whole = src[:src.shape[0] // g * g].reshape(-1, g)
    target = out[:out.shape[0] // g * g].reshape(-1, g)
    target[runs(dst // g, sizes // g)] = whole[runs(offs // g, sizes // g)]  # granule numbers of the ranges


class ByteRanges:
    """Reads ``size`` bytes at ``offset`` of the manifest's file ``fi``, exactly, or raises."""

    def __init__(self, manifest: Files, remote: Any = None) -> None:
        self.manifest = manifest
        self.remote = remote  # RemoteFiles for a dataset at a URL
        self._fds: dict[int, tuple[int, int]] = {}  # file index -> (descriptor or -1 for remote, size)
        # the same for local files as an array (row: descriptor, size; -1 until opened), so that
        # :meth:`descriptors` looks up a read buffer's files at once, on every group read
        self._table = np.full((len(manifest.files), 2), -1, np.int64)
        self._lock = threading.Lock()
        self._closed = False
        self._local = threading.local()  # per thread: its scratch buffer
        self._probe_ok: dict[int, bool] = {}  # file index -> whether mincore can be trusted for it

    def fd(self, fi: int, where: Where) -> tuple[int, int]:
        """``(descriptor, file size)`` of file ``fi`` (descriptor -1 for a remote file)."""
        entry = self._fds.get(fi)
        if entry is not None:
            return entry
        with self._lock:
            if self._closed:
                raise ValueError(f"{self.manifest.root}: reader is closed")
            entry = self._fds.get(fi)
            if entry is None and self.remote is not None:
                entry = self._fds[fi] = (-1, self.remote.size(self.manifest.files[fi]))
            if entry is None:
                path = self.manifest.path_of(fi)
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError as e:
                    raise DataError(f"{where()}: cannot open {path}: {e.strerror or e}") from None
                entry = self._fds[fi] = (fd, os.fstat(fd).st_size)
            return entry

    def check(self, fi: int, offset: int, size: int, where: Where) -> int:
        """The descriptor of file ``fi``, after checking that it holds bytes ``offset..offset + size``."""
        fd, fsize = self.fd(fi, where)
        if offset + size > fsize:
            raise DataError(f"{where()}: file truncated (needed bytes {offset}..{offset + size}, file has {fsize})")
        return fd

    def read_into(self, buf: memoryview, fi: int, offset: int, where: Where) -> None:
        """Fill ``buf`` with the bytes at ``offset`` of file ``fi``."""
        self.read_vector([buf], fi, offset, where)

    def read_vector(self, bufs: list[memoryview], fi: int, offset: int, where: Where) -> None:
        """Fill ``bufs`` (byte views), in order, with the bytes from ``offset`` of file ``fi``
        on: one scattering ``preadv`` for local files (more on a short read)."""
        total = sum(len(b) for b in bufs)
        fd = self.check(fi, offset, total, where)
        if self.remote is not None:
            data = memoryview(self.remote.read(self.manifest.files[fi], offset, total))
            for b in bufs:
                b[:] = data[:len(b)]
                data = data[len(b):]
            return
        views = [b for b in bufs if len(b)]
        start, end = offset, offset + total
        while views:
            try:
                n = os.preadv(fd, views[:1024], offset)  # IOV_MAX
            except OSError as e:
                raise DataError(f"{where()}: read failed: {e.strerror or e}") from None
            if n == 0:
                raise DataError(f"{where()}: file truncated (needed bytes {start}..{end})")
            offset += n
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if n:
                views[0] = views[0][n:]

    def read_ranges(self, fis: NDArray[np.int64], starts: NDArray[np.int64], sizes: NDArray[np.int64],
                    dst: NDArray[np.uint8], at: NDArray[np.int64], where: Any, gap: int = GAP_BYTES,
                    crc: tuple[Any, int] | None = None) -> NDArray[np.uint32] | None:
        """Read the byte ranges ``(fis[k], starts[k], sizes[k])`` into ``dst[at[k]:at[k] + sizes[k]]``
        (``dst`` a flat uint8 array): the loader's many small shuffle pieces, in storage order.

        Ranges of one file that follow each other with at most ``gap`` bytes between them are
        read as one span into this thread's scratch buffer and copied from there (a system call
        costs about what copying ``gap`` bytes does; ``gap`` -1: never); a range alone is read
        straight into place.  Local files: one call of the C module for all of them, and with
        ``crc`` (a checksum's function and its C address, ``checksum.native_crc32c``) each range's
        checksum taken as it is read, while its bytes are in cache: the ranges' sums are returned
        (else None).  A failure raises as ``read_into`` would, ``where(k)`` naming the ``k``-th range.
        """
        if self.remote is None:
            return self._read_local(fis, starts, sizes, dst, at, where, gap, crc)
        if crc is not None:
            raise ValueError("read_ranges: checksums as read are for local files")
        n = int(fis.shape[0])
        if n == 0:
            return None
        ends = starts + sizes
        first, last = _spans(fis, starts, ends, gap)
        flat = memoryview(dst)
        for a, b, e in zip(first.tolist(), last.tolist(), np.maximum.reduceat(ends, first).tolist()):
            fi, s0 = int(fis[a]), int(starts[a])
            if a == b:
                self.read_into(flat[int(at[a]):int(at[a] + sizes[a])], fi, s0, lambda: where(a))
                continue
            try:
                span = np.frombuffer(self.read_scratch(fi, s0, e - s0, lambda: where(a)), np.uint8)
            except DataError as err:  # name the first range of the span that lies past the file's end
                k = a + int(np.argmax(ends[a:b + 1] > self.fd(fi, lambda: where(a))[1]))
                raise DataError(f"{where(k)}: {str(err).split(': ', 1)[-1]}") from None
            _scatter(span, starts[a:b + 1] - s0, sizes[a:b + 1], dst, at[a:b + 1])
        return None

    def _read_local(self, fis: NDArray[np.int64], starts: NDArray[np.int64], sizes: NDArray[np.int64],
                    dst: NDArray[np.uint8], at: NDArray[np.int64], where: Any, gap: int,
                    crc: tuple[Any, int] | None) -> NDArray[np.uint32] | None:
        """:meth:`read_ranges` of local files: one native call (``pread_ranges``, or ``pread_summed``
        with ``crc``) up to the first range that cannot be read whole; that one read again by the
        careful path, which raises naming it (or reads it, should the failure have passed), and
        on from the next."""
        n = int(fis.shape[0])
        sums = None if crc is None else np.zeros(n, np.uint32)
        if n == 0:
            return sums
        fds, fsize = self.descriptors(fis, where)
        past = np.flatnonzero(starts + sizes > fsize)  # past the file's end: the careful read names them
        scratch = np.frombuffer(self.scratch(SPAN_BYTES), np.uint8) if gap >= 0 else None
        k = 0
        while k < n:
            stop = int(past[np.searchsorted(past, k)]) if past.size and past[-1] >= k else n
            got, part = -1, slice(k, stop)
            if stop > k and sums is None:
                got = pread_ranges(fds[part], starts[part], sizes[part], dst, at[part], gap, scratch)
            elif stop > k:
                got, sums[part] = pread_summed(*crc, fds[part], starts[part], sizes[part], dst, at[part], gap, scratch)
            bad = stop if got < 0 else k + got
            if bad >= n:
                break
            view = memoryview(dst)[int(at[bad]):int(at[bad] + sizes[bad])]
            self.read_into(view, int(fis[bad]), int(starts[bad]), lambda: where(bad))
            if sums is not None and len(view):
                sums[bad] = crc[0](0, np.frombuffer(view, np.uint8).ctypes.data, len(view))
            k = bad + 1
        return sums

    def descriptors(self, fis: NDArray[np.int64], where: Callable[[int], str]
                    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """The descriptor and size of local file ``fis[k]`` for each ``k`` (files opened as
        :meth:`fd` opens them; ``where(k)`` names the ``k``-th should one fail to open)."""
        got = self._table[fis]
        missing = got[:, 0] < 0
        if missing.any():
            for f in np.unique(fis[missing]).tolist():
                self._table[f] = self.fd(f, lambda f=f: where(int(np.argmax(fis == f))))
            got = self._table[fis]
        return got[:, 0], got[:, 1]

    def cached(self, fi: int, offset: int) -> bool:
        """Whether the page holding byte ``offset`` of local file ``fi`` is in the page cache
        (``_resident``); False where that cannot be told."""
        entry = self._fds.get(fi)
        return (entry is not None and entry[0] >= 0 and offset < entry[1] and self._probeable(fi, entry[0])
                and _resident(entry[0], offset))

    def _probeable(self, fi: int, fd: int) -> bool:
        """Whether ``mincore`` tells the truth about file ``fi``: since Linux 5.0 it reports every
        page of a file as resident unless the caller owns the file or may write it (a shared
        dataset owned by someone else would always look cached and never get its hints)."""
        ok = self._probe_ok.get(fi)
        if ok is None:
            try:
                euid = os.geteuid()
                ok = euid in (0, os.fstat(fd).st_uid) or os.access(self.manifest.path_of(fi), os.W_OK)
            except (OSError, AttributeError):
                ok = False
            self._probe_ok[fi] = ok
        return ok

    def advise(self, fis: NDArray[np.int64], starts: NDArray[np.int64], sizes: NDArray[np.int64],
               where: Where) -> None:
        """Ask the kernel to start reading the ranges ``(fis[k], starts[k], sizes[k])`` now
        (``POSIX_FADV_WILLNEED``), so that a cold disk sees a whole window's requests at once, not
        one per reader thread.

        Skipped when a sample of the ranges is already cached: on a warm page cache the hint buys
        nothing and its thousand system calls per window cost throughput (docs/PERFORMANCE.md,
        Read-ahead hints).  Only a hint: every error is left to the reads (the loader runs this as a
        pool task nobody waits for).  A no-op for remote datasets.
        """
        if self.remote is not None or not len(fis) or not hasattr(os, "posix_fadvise"):
            return
        try:
            fds = {fi: self.fd(fi, where)[0] for fi in np.unique(fis).tolist()}
            step = max(1, len(fis) // _PROBES)
            if all(self.cached(fi, off) for fi, off in zip(fis[::step].tolist(), starts[::step].tolist())):
                return
            for fi, off, size in zip(fis.tolist(), starts.tolist(), sizes.tolist()):
                os.posix_fadvise(fds[fi], off, size, os.POSIX_FADV_WILLNEED)
        except Exception:  # noqa: BLE001 - a hint; a closed reader or a failed probe only loses it
            return

    def advise_ranges(self, ranges: list[tuple[int, int, int]], where: Where) -> None:
        """:meth:`advise` of ``(file, offset, size)`` tuples."""
        arr = np.asarray(ranges, np.int64).reshape(-1, 3)
        self.advise(arr[:, 0], arr[:, 1], arr[:, 2], where)

    def scratch(self, size: int) -> memoryview:
        """``size`` bytes of this thread's scratch buffer, valid until the thread's next call: a
        fresh buffer per unit costs a zero-fill and page faults each time (docs/PERFORMANCE.md,
        Read-ahead hints)."""
        buf = getattr(self._local, "scratch", None)
        if buf is None or len(buf) < size:
            buf = self._local.scratch = bytearray(size)
        return memoryview(buf)[:size]

    def read_scratch(self, fi: int, offset: int, size: int, where: Where) -> memoryview:
        """``size`` bytes at ``offset`` of file ``fi``, in this thread's scratch buffer (``scratch``)."""
        self.check(fi, offset, size, where)  # before allocating what the manifest claims
        view = self.scratch(size)
        self.read_into(view, fi, offset, where)
        return view

    def read_small(self, fi: int, offset: int, size: int, where: Where) -> bytes:
        """``size`` bytes at ``offset`` of file ``fi`` as ``bytes``: one ``pread`` where the file
        is local, open and long enough (the short path for the many small chunks of a ragged
        column's offsets), otherwise ``read``'s careful path, which names what is wrong."""
        entry = self._fds.get(fi)
        if entry is not None and entry[0] >= 0 and self.remote is None and offset + size <= entry[1]:
            try:
                data = os.pread(entry[0], size, offset)
            except OSError as e:
                raise DataError(f"{where()}: read failed: {e.strerror or e}") from None
            if len(data) == size:
                return data
        return bytes(self.read(fi, offset, size, where))

    def read(self, fi: int, offset: int, size: int, where: Where) -> bytearray:
        """``size`` bytes at ``offset`` of file ``fi``."""
        self.check(fi, offset, size, where)  # before allocating what the manifest claims
        raw = bytearray(size)
        self.read_into(memoryview(raw), fi, offset, where)
        return raw

    def close(self) -> None:
        with self._lock:
            self._closed = True
            fds, self._fds = self._fds, {}
            self._table[:] = -1
        for fd, _ in fds.values():
            if fd >= 0:
                os.close(fd)
