"""Group reads of ragged columns in Zarr v3: a window's pieces of many units read at once.

``RaggedReader.read`` reads one unit's rows: its offsets chunk, then its values chunks, each a
system call and a checksum call with their Python around them, about 70 us a unit.  Units of
heavy-tailed token documents hold ten rows (70 kB), so a 1 GB epoch has 15,000 of them and that
Python, under the GIL, was most of what the reader threads held it for.  :func:`read_pieces`
reads the pieces of a read task (a few MiB of a window) as one group: every offsets chunk with
one pass of reads and one checksum call, the same checks done on all of them at once, then the
values: with ``verify``, the whole chunks they lie in read into a buffer of bounded size (runs of
chunks that follow each other in a file as one read), checked with one call and copied into the
window; without, straight into the window.  Compressed columns and the last unit (whose offsets
may end in the next chunk) are left to ``RaggedReader.read`` (:func:`pieces_ok`).
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import numpy as np
from numpy.typing import NDArray

from .._kernels import copy_ranges, read_checked
from ..errors import DataError
from ..io.checksum import chunk_checksums, native_crc32c
from ..ragged import runs
from ..schema import Column
from ._zarr_ragged import RaggedReader

__all__ = ["pieces_ok", "read_pieces"]


def pieces_ok(r: RaggedReader, col: Column, units: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Which of ``units`` :func:`read_pieces` reads: uncompressed, full units, the last excepted
    (whose offsets chunk may end in the next one)."""
    if r._values_dec[col.name] is not None or r._offsets_dec is not None or sys.byteorder != "little":
        return np.zeros(units.shape, bool)
    ur = int(r.m.layout["unit_rows"])
    return (units < r.m.n_units - 1) & (r.m.unit_rows[units] == ur)


def read_pieces(r: RaggedReader, col: Column, pieces: NDArray[np.int64], first: NDArray[np.int64], values: np.ndarray,
                starts: NDArray[np.int64], ends: NDArray[np.int64], name: Callable[[int], None],
                scratch: int = 0) -> None:
    """Pieces (rows ``(unit, lo, hi, window position)``, units that :func:`pieces_ok`) of ``col``
    into a window's buffer: piece ``k``'s values into ``values`` from element ``first[k]`` on,
    each of its rows' start and end there into ``starts`` and ``ends`` at its positions.

    What ``RaggedReader.read`` does a piece at a time, a group at a time: the offsets chunks in one
    pass of reads and one checksum call, the same checks, then the values (whole chunks
    into a buffer of at most ``scratch`` bytes, or one piece's, and checked, with ``verify``;
    straight into place without), so the Python of a read is paid per group, not per unit.
    ``name(k)`` is called before raising about piece ``k``."""
    loc = r.m.layout["columns"][col.name]
    ur = int(r.m.layout["unit_rows"])
    units, lo, hi, at = (pieces[:, i] for i in range(4))
    n = units.shape[0]
    if n == 0:
        return
    oloc = loc["offsets"]

    def where(k: int, fi: int) -> str:
        name(k)
        return r._where(col, int(units[k]), fi)

    raw = np.empty(n * ur * 8, np.uint8)
    r.files.read_ranges(oloc["file"][units], oloc["offset"][units], np.full(n, ur * 8, np.int64), raw,
                        np.arange(n, dtype=np.int64) * (ur * 8), lambda k: where(k, int(oloc["file"][units[k]])),
                        gap=-1)
    if r.verify:
        _check_group(r, raw, ur * 8, oloc["crc32"][units], lambda k: where(k, int(oloc["file"][units[k]])))
    s0, s1 = loc["start"][units], loc["start"][units + 1]
    offs = np.empty((n, ur + 1), np.int64)
    offs[:, :ur] = raw.view("<i8").reshape(n, ur)
    offs[:, ur] = s1
    bad = np.flatnonzero((offs[:, 0] != s0) | (offs[:, 1:] < offs[:, :-1]).any(axis=1))
    if bad.size:
        k = int(bad[0])
        raise DataError(f"{where(k, int(oloc['file'][units[k]]))}: offsets do not lie within the unit's values "
                        f"{int(s0[k])}:{int(s1[k])} (data corrupt)")
    rows = hi - lo
    a = offs[np.arange(n), lo]
    b = offs[np.arange(n), hi]
    cells = runs(np.arange(n, dtype=np.int64) * (ur + 1) + lo, rows)  # each row's cell of offs
    shift = np.repeat(first - a, rows)
    flat_offs = offs.reshape(-1)
    pos = runs(at, rows)
    starts[pos] = flat_offs[cells] + shift
    ends[pos] = flat_offs[cells + 1] + shift
    out = values.reshape(-1).view(np.uint8)
    if r.verify:
        _values_checked(r, col, loc["values"], a, b, first, out, where, scratch)
    else:
        _values_plain(r, col, loc["values"], a, b, first, out, where)


def _check_group(r: RaggedReader, raw: np.ndarray, size: int, want: NDArray[np.int64],
                 where: Callable[[int], str]) -> None:
    """``DataError`` naming the first of the ``size``-byte chunks of ``raw`` whose checksum is not ``want``'s."""
    got = np.array(chunk_checksums(r._checksum_name, raw, size), np.int64)
    bad = np.flatnonzero(got != want)
    if bad.size:
        raise DataError(f"{where(int(bad[0]))}: checksum mismatch (data corrupt)")


def _values_plain(r: RaggedReader, col: Column, vloc: dict[str, Any], a: NDArray[np.int64], b: NDArray[np.int64],
                  first: NDArray[np.int64], out: np.ndarray, where: Callable[[int, int], str]) -> None:
    """Values ``a[k]:b[k]`` straight into ``out`` (bytes) at element ``first[k]``: a range per
    piece and shard file it lies in."""
    chunk, isz = int(vloc["chunk"]), col.item_nbytes
    k0, k1 = a // chunk, np.where(b > a, -(-b // chunk), a // chunk)
    count = k1 - k0
    piece = np.repeat(np.arange(a.shape[0]), count)
    ids = runs(k0, count)
    lo = np.maximum(ids * chunk, a[piece])
    hi = np.minimum((ids + 1) * chunk, b[piece])
    fis, offs = vloc["file"][ids], vloc["offset"][ids] + (lo - ids * chunk) * isz
    dst, size = (first[piece] + lo - a[piece]) * isz, (hi - lo) * isz
    _read_runs(r, fis, offs, size, dst, out, lambda j: where(int(piece[j]), int(fis[j])))


def _values_checked(r: RaggedReader, col: Column, vloc: dict[str, Any], a: NDArray[np.int64], b: NDArray[np.int64],
                    first: NDArray[np.int64], out: np.ndarray, where: Callable[[int, int], str],
                    scratch: int) -> None:
    """Values ``a[k]:b[k]`` into ``out`` at element ``first[k]``, through whole chunks read into
    a buffer (at most ``scratch`` bytes, or one piece's) and checked there."""
    chunk, isz = int(vloc["chunk"]), col.item_nbytes
    cb = chunk * isz
    k0, k1 = a // chunk, np.where(b > a, -(-b // chunk), a // chunk)
    count = k1 - k0
    ends = np.cumsum(count) * cb
    # the reads, checks and copies of a buffer in one native call (local files, CRC-32C;
    # _kernels' Python where the C module was not built); anything wrong, and the steps below
    # read it again one by one and say what
    native = native_crc32c() if r._checksum_name == "crc32c" and r.files.remote is None else None
    p = 0
    while p < a.shape[0]:
        q = max(p + 1, int(np.searchsorted(ends, ends[p] - count[p] * cb + scratch, "right")))
        ids = runs(k0[p:q], count[p:q])
        fis = vloc["file"][ids]
        buf = np.frombuffer(r.files.scratch(ids.shape[0] * cb), np.uint8)  # this thread's, reused
        at = np.cumsum(count[p:q]) * cb - count[p:q] * cb  # each piece's first chunk in buf
        src, size, dst = at + (a[p:q] - k0[p:q] * chunk) * isz, (b[p:q] - a[p:q]) * isz, first[p:q] * isz

        def piece(j: int, p: int = p, q: int = q) -> int:  # the piece chunk j of the buffer belongs to
            return p + int(np.searchsorted(np.cumsum(count[p:q]), j, "right"))

        if native is not None:
            fds = r.files.descriptors(fis, lambda j: where(piece(j), int(fis[j])))[0]
            if read_checked(*native, fds, vloc["offset"][ids], cb, vloc["crc32"][ids], buf, src, size, out, dst) < 0:
                p = q
                continue
        _read_runs(r, fis, vloc["offset"][ids], np.full(ids.shape[0], cb, np.int64),
                   np.arange(ids.shape[0], dtype=np.int64) * cb, buf, lambda j: where(piece(j), int(fis[j])))
        _check_group(r, buf, cb, vloc["crc32"][ids], lambda j: where(piece(j), int(fis[j])))
        copy_ranges(buf, src, size, out, dst)
        p = q


def _read_runs(r: RaggedReader, fis: NDArray[np.int64], offs: NDArray[np.int64], sizes: NDArray[np.int64],
               dst: NDArray[np.int64], out: np.ndarray, where: Callable[[int], str]) -> None:
    """Byte ranges ``(fis, offs, sizes)`` into ``out`` at ``dst``, those that continue each other
    in the file and in ``out`` merged into one read (the chunks of a unit: one ``pread``)."""
    if fis.shape[0] == 0:
        return
    new = np.ones(fis.shape[0], bool)
    new[1:] = (fis[1:] != fis[:-1]) | (offs[1:] != offs[:-1] + sizes[:-1]) | (dst[1:] != dst[:-1] + sizes[:-1])
    head = np.flatnonzero(new)
    size = np.add.reduceat(sizes, head)
    r.files.read_ranges(fis[head], offs[head], size, out, dst[head], lambda k: where(int(head[k])), gap=-1)
