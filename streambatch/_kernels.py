"""The loader's byte loops: one call each, the C module's (``_native.c``, the GIL released) where it
was built, else numpy's, with the same results.

Numpy does these loops with one call per chunk, per slice or per document, each taking the
interpreter lock back; with the reader threads and the consuming thread all doing such loops,
they take turns on the lock more than they run (docs/PERFORMANCE.md, "Native loops").

* :func:`crc_chunks`: the checksum of each fixed-size chunk of a buffer, by a C checksum function;
  :func:`crc_ranges`: of each of some byte ranges of a buffer;
* :func:`copy_ranges`: byte ranges of one buffer into places of another (:func:`gather`: slices
  of an array, one after another, into a new one);
* :func:`copy_from`: byte ranges of several buffers (memory-mapped files) into places of another,
  where a file cut short since it was mapped stops the copy, not the process (the C module's);
* :func:`pread_ranges`: byte ranges of files read into places of a buffer; :func:`pread_summed`:
  the same, each range's checksum taken as it is read;
* :func:`read_checked`: chunks of files read, checked and copied on in one go;
* :func:`take_rows`: rows of several arrays gathered into several batches' arrays at once;
* :func:`pack`: the next tokens of a stream of documents, with their positions and row ids.

``NATIVE`` tells which is used; ``numpy_*`` and ``python_*`` are the versions without it (the
tests compare both).
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import numpy as np
from numpy.typing import NDArray

try:
    from ._native import copy_ranges as _c_copy_ranges
    from ._native import crc_chunks as _c_crc_chunks
    from ._native import crc_ranges as _c_crc_ranges
    from ._native import pack as _c_pack
    from ._native import pread_ranges as _c_pread_ranges
    from ._native import read_checked as _c_read_checked
except ImportError:  # not compiled (no C compiler at install): numpy does the same
    _c_copy_ranges = _c_crc_chunks = _c_crc_ranges = _c_pack = _c_pread_ranges = _c_read_checked = None
try:
    from ._native import copy_from as _c_copy_from
except ImportError:  # not compiled, or built before it
    _c_copy_from = None
try:
    from ._native import crc32c_addresses as _c_crc32c_addresses
    from ._native import pread_known as _c_pread_known
except ImportError:  # not compiled, or built before it
    _c_crc32c_addresses = _c_pread_known = None
try:
    from ._native import take_rows as _c_take_rows
except ImportError:  # not compiled, or built before it
    _c_take_rows = None
try:
    from ._native import SlotView as _c_SlotView
except ImportError:  # not compiled, or built before it: the slots are looked at instead (loader/handoff.py)
    _c_SlotView = None

__all__ = ["NATIVE", "copy_from", "copy_ranges", "crc32c_addresses", "crc_chunks", "crc_ranges", "gather", "native",
           "pack", "pread_known", "pread_ranges", "read_checked", "slot_view", "take_rows", "numpy_take_rows",
           "numpy_copy_from", "numpy_copy_ranges", "numpy_crc_chunks", "numpy_crc_ranges", "numpy_pack",
           "pread_summed", "python_pread_ranges", "python_pread_summed", "python_read_checked"]

NATIVE = _c_pack is not None
"""Whether the C module is used."""


def crc32c_addresses() -> tuple[int, ...]:
    """The C module's CRC-32C functions' addresses (``crc32c_extend``'s signature), the fastest
    first, 0 for one this CPU cannot run; none where the module was not built."""
    return tuple(_c_crc32c_addresses()) if _c_crc32c_addresses is not None else ()


def numpy_crc_chunks(fn: Callable[[int, int, int], int], data: np.ndarray, chunk_bytes: int) -> NDArray[np.uint32]:
    """Checksum of each ``chunk_bytes`` of the contiguous uint8 array ``data`` in turn (a shorter
    last one as it is): ``fn(0, address, size)`` for each, from Python."""
    base, n = data.ctypes.data, data.nbytes
    return np.array([fn(0, base + i, min(chunk_bytes, n - i)) for i in range(0, n, chunk_bytes)], np.uint32)


def crc_chunks(fn: Callable[[int, int, int], int], address: int, data: np.ndarray,
               chunk_bytes: int) -> NDArray[np.uint32]:
    """:func:`numpy_crc_chunks` in one C call, ``fn`` called at ``address`` (its C function's)."""
    if not NATIVE:
        return numpy_crc_chunks(fn, data, chunk_bytes)
    out = np.empty(-(-data.nbytes // chunk_bytes), np.uint32)
    _c_crc_chunks(address, data, chunk_bytes, out)
    return out


def numpy_crc_ranges(fn: Callable[[int, int, int], int], data: np.ndarray, starts: NDArray[np.int64],
                     sizes: NDArray[np.int64]) -> NDArray[np.uint32]:
    """``fn(0, address, n)`` of each range ``data[starts[i]:starts[i] + sizes[i]]`` (flat uint8; 0 for an
    empty one), as a uint32 array."""
    base = data.ctypes.data
    return np.array([fn(0, base + a, n) if n > 0 else 0 for a, n in zip(starts.tolist(), sizes.tolist())], np.uint32)


def crc_ranges(fn: Callable[[int, int, int], int], address: int, data: np.ndarray, starts: NDArray[np.int64],
               sizes: NDArray[np.int64]) -> NDArray[np.uint32]:
    """:func:`numpy_crc_ranges` in one C call, ``fn`` called at ``address`` (its C function's)."""
    starts, sizes = (np.ascontiguousarray(x, np.int64) for x in (starts, sizes))
    if not NATIVE:
        if len(starts) and (starts.min() < 0 or sizes.min() < 0 or (starts + sizes).max() > data.nbytes):
            raise IndexError(f"crc_ranges: a range outside {data.nbytes} bytes")
        return numpy_crc_ranges(fn, data, starts, sizes)
    out = np.empty(len(starts), np.uint32)
    _c_crc_ranges(address, data, starts, sizes, out)
    return out


def native() -> bool:
    """Whether the byte loops run in the C module (read at call time: the tests switch it off)."""
    return NATIVE


def slot_view(owner: object, offset: int, length: int, flag_at: int) -> object | None:
    """A writable buffer of ``length`` bytes at ``offset`` of ``owner``'s whose death sets byte
    ``flag_at`` of ``owner`` to 0, in C: no Python code runs as it dies.  None where the C module
    is not used (the caller then looks at a weak reference instead)."""
    if not NATIVE or _c_SlotView is None:
        return None
    return _c_SlotView(owner, offset, length, flag_at)


def numpy_copy_ranges(src: np.ndarray, src_at: NDArray[np.int64], sizes: NDArray[np.int64], dst: np.ndarray,
                      dst_at: NDArray[np.int64]) -> None:
    """``dst[dst_at[i]:dst_at[i] + sizes[i]] = src[src_at[i]:...]`` for each ``i`` (flat uint8 arrays)."""
    for s, n, d in zip(src_at.tolist(), sizes.tolist(), dst_at.tolist()):
        dst[d:d + n] = src[s:s + n]


def copy_ranges(src: np.ndarray, src_at: NDArray[np.int64], sizes: NDArray[np.int64], dst: np.ndarray,
                dst_at: NDArray[np.int64]) -> None:
    """:func:`numpy_copy_ranges` in one C call."""
    if not NATIVE:
        numpy_copy_ranges(src, src_at, sizes, dst, dst_at)
        return
    _c_copy_ranges(src, *(np.ascontiguousarray(x, np.int64) for x in (src_at, sizes)), dst,
                        np.ascontiguousarray(dst_at, np.int64))


def numpy_copy_from(srcs: list[object], which: NDArray[np.int64], src_at: NDArray[np.int64], sizes: NDArray[np.int64],
                    dst: np.ndarray, dst_at: NDArray[np.int64]) -> int:
    """``dst[dst_at[i]:dst_at[i] + sizes[i]] = srcs[which[i]][src_at[i]:...]`` for each ``i`` (``dst`` flat
    uint8, ``srcs`` buffers); -1.  A SIGBUS here ends the process: only the C module catches it."""
    views = [np.frombuffer(s, np.uint8) for s in srcs]  # type: ignore[call-overload]
    for w, s, n, d in zip(which.tolist(), src_at.tolist(), sizes.tolist(), dst_at.tolist()):
        if n and not (0 <= w < len(views) and 0 <= s and s + n <= views[w].size and 0 <= d and d + n <= dst.size):
            raise IndexError(f"copy_from: {n} bytes from {s} of source {w} to {d}: outside the buffers")
        dst[d:d + n] = views[w][s:s + n]
    return -1


def copy_from(srcs: list[object], which: NDArray[np.int64], src_at: NDArray[np.int64], sizes: NDArray[np.int64],
              dst: np.ndarray, dst_at: NDArray[np.int64]) -> int:
    """:func:`numpy_copy_from` in one C call, the GIL released; -1, or the range at which a SIGBUS
    stopped it (a memory-mapped file shorter than when it was mapped: the caller names it)."""
    if not NATIVE or _c_copy_from is None:
        return numpy_copy_from(srcs, which, src_at, sizes, dst, dst_at)
    return int(_c_copy_from(srcs, *(np.ascontiguousarray(x, np.int64) for x in (which, src_at, sizes)), dst,
                            np.ascontiguousarray(dst_at, np.int64)))


def numpy_take_rows(srcs: list[np.ndarray], idx_list: list[NDArray[np.int64]], dsts: list[list[np.ndarray]]) -> None:
    """``dsts[b][c][:] = srcs[c][idx_list[b]]`` for each batch ``b`` and array ``c`` (C-contiguous arrays;
    ``dsts[b][c]`` of ``srcs[c]``'s dtype and row shape, ``len(idx_list[b])`` rows)."""
    for idx, outs in zip(idx_list, dsts):
        for src, dst in zip(srcs, outs):
            src.take(idx, 0, dst, "clip")  # "clip": with out, the default buffers the result to check first


def take_rows(srcs: list[np.ndarray], idx_list: list[NDArray[np.int64]], dsts: list[list[np.ndarray]]) -> None:
    """:func:`numpy_take_rows` in one C call, the GIL released (an ``IndexError`` for an index
    outside any of ``srcs``, where numpy's "clip" would take the last row)."""
    if _c_take_rows is None or not srcs or not idx_list or \
            any(s.dtype.hasobject or not s.flags.c_contiguous for s in srcs):
        numpy_take_rows(srcs, idx_list, dsts)
        return
    row_nbytes = np.array([s.dtype.itemsize * math.prod(s.shape[1:]) for s in srcs], np.int64)
    bounds = np.zeros(len(idx_list) + 1, np.int64)
    np.cumsum([len(i) for i in idx_list], out=bounds[1:])
    idx = np.concatenate(idx_list).astype(np.int64, copy=False) if len(idx_list) > 1 else \
        np.ascontiguousarray(idx_list[0], np.int64)
    _c_take_rows(srcs, row_nbytes, idx, bounds, [d for outs in dsts for d in outs])


def gather(values: np.ndarray, starts: NDArray[np.int64], stops: NDArray[np.int64], total: int) -> np.ndarray:
    """``values[starts[i]:stops[i]]`` for each ``i``, one after another along the first axis, in a
    new array (``total``: the rows that makes, ``sum(stops - starts)``)."""
    out = np.empty((total, *values.shape[1:]), values.dtype)
    if not values.flags.c_contiguous:
        if starts.size:
            np.concatenate([values[a:b] for a, b in zip(starts.tolist(), stops.tolist())], out=out)
        return out
    item = values.itemsize * (int(np.prod(values.shape[1:], dtype=np.int64)) if values.ndim > 1 else 1)
    sizes = (stops - starts) * item
    at = np.cumsum(sizes) - sizes
    copy_ranges(values.reshape(-1).view(np.uint8), starts * item, sizes, out.reshape(-1).view(np.uint8), at)
    return out


def python_pread_ranges(fds: NDArray[np.int64], offsets: NDArray[np.int64], sizes: NDArray[np.int64],
                        dst: np.ndarray, dst_at: NDArray[np.int64]) -> int:
    """``sizes[i]`` bytes at ``offsets[i]`` of descriptor ``fds[i]`` into the flat uint8 ``dst`` at
    ``dst_at[i]``, for each ``i``; -1, or the first ``i`` that could not be read whole (an error or
    the file's end: the caller reads it again to say which)."""
    view = memoryview(dst)
    for i, (fd, off, n, d) in enumerate(zip(fds.tolist(), offsets.tolist(), sizes.tolist(), dst_at.tolist())):
        got = 0
        while got < n:
            try:
                k = os.preadv(fd, [view[d + got:d + n]], off + got)
            except OSError:
                return i
            if k <= 0:
                return i
            got += k
    return -1


_NO_SUMS = np.zeros(0, np.uint32)


def pread_ranges(fds: NDArray[np.int64], offsets: NDArray[np.int64], sizes: NDArray[np.int64], dst: np.ndarray,
                 dst_at: NDArray[np.int64], gap: int = 0, scratch: np.ndarray | None = None) -> int:
    """:func:`python_pread_ranges` in one C call (no Python between the reads).  With ``scratch``
    (a uint8 buffer), ranges of a file in order at most ``gap`` bytes apart are read as one span
    into it and copied from there (the C module's; the same result either way)."""
    if not NATIVE or not hasattr(os, "pread"):
        return python_pread_ranges(fds, offsets, sizes, dst, dst_at)
    i64 = [np.ascontiguousarray(x, np.int64) for x in (fds, offsets, sizes, dst_at)]
    if scratch is None:
        return int(_c_pread_ranges(*i64[:3], dst, i64[3]))
    return int(_c_pread_ranges(*i64[:3], dst, i64[3], 0, _NO_SUMS, gap, scratch))


def python_pread_summed(fn: Callable[[int, int, int], int], fds: NDArray[np.int64], offsets: NDArray[np.int64],
                        sizes: NDArray[np.int64], dst: np.ndarray, dst_at: NDArray[np.int64]
                        ) -> tuple[int, NDArray[np.uint32]]:
    """:func:`python_pread_ranges`, then each range's ``fn(0, address, size)`` (0 for an empty one):
    -1 or the first range not read whole, and the sums (those from that range on are 0)."""
    failed = python_pread_ranges(fds, offsets, sizes, dst, dst_at)
    done = len(sizes) if failed < 0 else failed
    sums = np.zeros(len(sizes), np.uint32)
    sums[:done] = numpy_crc_ranges(fn, dst.reshape(-1).view(np.uint8), dst_at[:done], sizes[:done])
    return failed, sums


def pread_summed(fn: Callable[[int, int, int], int], address: int, fds: NDArray[np.int64], offsets: NDArray[np.int64],
                 sizes: NDArray[np.int64], dst: np.ndarray, dst_at: NDArray[np.int64], gap: int = 0,
                 scratch: np.ndarray | None = None) -> tuple[int, NDArray[np.uint32]]:
    """:func:`python_pread_summed` in one C call, each range summed right after its read (its bytes
    still in cache), ``fn`` called at ``address`` (its C function's); ``gap``, ``scratch``: as
    :func:`pread_ranges`."""
    if not NATIVE or not hasattr(os, "pread"):
        return python_pread_summed(fn, fds, offsets, sizes, dst, dst_at)
    sums = np.zeros(len(sizes), np.uint32)
    args = (address, sums) if scratch is None else (address, sums, gap, scratch)
    failed = _c_pread_ranges(*(np.ascontiguousarray(x, np.int64) for x in (fds, offsets, sizes)), dst,
                             np.ascontiguousarray(dst_at, np.int64), *args)
    return int(failed), sums


def pread_known(pieces: NDArray[np.int64], cut: int, unit_rows: NDArray[np.int64], first: NDArray[np.int64],
                known: NDArray[np.bool_], cols: list[tuple[Any, ...]], address: int, gap: int,
                scratch: np.ndarray) -> NDArray[np.bool_] | None:
    """The pieces (int64 rows ``(unit, lo, hi, buffer row)``) of a read task whose every part (``cut``
    rows of a unit, numbered from ``first[unit]``) has a ``known`` checksum, read and checked in
    one C call for all ``cols`` (``(fds, offsets, row_bytes, window buffer, sums)`` each: every
    unit's descriptor and first row's offset, each part's CRC-32C), each part summed by the C
    function at ``address`` as it arrives; ``gap``, ``scratch``: as :func:`pread_ranges`.  Which
    pieces were read and matched their sums: none from the first whose read came short or whose
    sum differs on (the caller's careful path reads those again and says what is wrong); None where
    the C module was not built."""
    if not NATIVE or _c_pread_known is None:
        return None
    done = np.zeros(len(pieces), np.uint8)
    _c_pread_known(np.ascontiguousarray(pieces, np.int64), int(cut), unit_rows, first, known.view(np.uint8), cols,
                   address, gap, scratch, done)
    return done.view(np.bool_)


def python_read_checked(fn: Callable[[int, int, int], int], fds: NDArray[np.int64], offsets: NDArray[np.int64],
                        chunk_bytes: int, want: NDArray[np.int64], buf: np.ndarray, src_at: NDArray[np.int64],
                        sizes: NDArray[np.int64], out: np.ndarray, dst_at: NDArray[np.int64]) -> int:
    """Chunk ``i`` (``chunk_bytes`` at ``offsets[i]`` of descriptor ``fds[i]``) into the flat uint8
    ``buf`` at ``i * chunk_bytes``, its checksum by ``fn`` checked against ``want[i]``; then
    :func:`numpy_copy_ranges` from ``buf`` into ``out``.  -1, or the first chunk that could not be
    read whole or whose checksum differs (nothing copied then)."""
    n = fds.shape[0]
    got = python_pread_ranges(fds, offsets, np.full(n, chunk_bytes, np.int64), buf,
                              np.arange(n, dtype=np.int64) * chunk_bytes)
    if got >= 0:
        return got
    bad = np.flatnonzero(numpy_crc_chunks(fn, buf[:n * chunk_bytes], chunk_bytes) != want)
    if bad.size:
        return int(bad[0])
    numpy_copy_ranges(buf, src_at, sizes, out, dst_at)
    return -1


def read_checked(fn: Callable[[int, int, int], int], address: int, fds: NDArray[np.int64], offsets: NDArray[np.int64],
                 chunk_bytes: int, want: NDArray[np.int64], buf: np.ndarray, src_at: NDArray[np.int64],
                 sizes: NDArray[np.int64], out: np.ndarray, dst_at: NDArray[np.int64]) -> int:
    """:func:`python_read_checked` in one C call (``fn`` called at ``address``), chunks that follow
    each other in one file read with one ``pread``."""
    if not NATIVE or not hasattr(os, "pread"):
        return python_read_checked(fn, fds, offsets, chunk_bytes, want, buf, src_at, sizes, out, dst_at)
    i64 = [np.ascontiguousarray(x, np.int64) for x in (fds, offsets, want, src_at, sizes, dst_at)]
    return int(_c_read_checked(address, i64[0], i64[1], chunk_bytes, i64[2], buf, i64[3], i64[4], out, i64[5]))


def numpy_pack(values: np.ndarray, starts: NDArray[np.int64], cum: NDArray[np.int64], rows: NDArray[np.int64],
               at: int, count: int, tok: np.ndarray, pos: NDArray[np.int64], doc: NDArray[np.int64],
               ramp: NDArray[np.int64]) -> None:
    """Tokens ``[at, at + count)`` of a stream of documents into ``tok``, each one's place in its
    document into ``pos`` and its row id into ``doc``.  Document ``j`` is
    ``values[starts[j]:starts[j] + cum[j + 1] - cum[j]]`` and tokens ``cum[j]:cum[j + 1]`` of the
    stream (``cum`` from 0; the documents may lie anywhere in ``values``, a window's buffer);
    ``ramp``: ``arange`` of at least ``count`` int64."""
    if count == 0:
        return
    a, b = at, at + count
    j0 = int(np.searchsorted(cum, a, "right")) - 1
    j1 = int(np.searchsorted(cum, b, "left"))
    spans = np.diff(cum[j0:j1 + 1])  # each document's tokens in [a, b)
    spans[0] -= a - cum[j0]
    spans[-1] -= cum[j1] - b
    src = starts[j0:j1] + np.maximum(a - cum[j0:j1], 0)  # where each document's part begins in values
    if j1 - j0 == 1:  # one document: a slice and fills, no repeat
        tok[...] = values[int(src[0]):int(src[0]) + count]
        doc.fill(rows[j0])
        np.add(ramp[:count], a - cum[j0], out=pos)
        return
    np.concatenate([values[x:x + n] for x, n in zip(src.tolist(), spans.tolist())], out=tok)
    doc[...] = np.repeat(rows[j0:j1], spans)
    np.subtract(ramp[:count], np.repeat(cum[j0:j1] - a, spans), out=pos)


def pack(values: np.ndarray, starts: NDArray[np.int64], cum: NDArray[np.int64], rows: NDArray[np.int64], at: int,
         count: int, tok: np.ndarray, pos: NDArray[np.int64], doc: NDArray[np.int64],
         ramp: NDArray[np.int64]) -> None:
    """:func:`numpy_pack` in one C call (flat contiguous arrays; ``tok`` of ``values``' dtype)."""
    if not NATIVE or not (values.flags.c_contiguous and tok.flags.c_contiguous):
        numpy_pack(values, starts, cum, rows, at, count, tok, pos, doc, ramp)
        return
    _c_pack(values.view(np.uint8), values.itemsize, starts, cum, rows, at, count, tok.view(np.uint8), pos, doc)
