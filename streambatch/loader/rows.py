"""Windows of datasets with variable-length columns: reads that decode rows, ragged window buffers,
and the gather of a batch's ragged rows.

A ragged column's window buffer is one values array and, per window position, where its row
starts and ends in it (``RaggedBuf``).  Each piece of the window gets a slice of the values
array as large as its unit's values (the manifest's ``layout.ragged_nbytes``), so read tasks
fill the window in parallel without knowing the other pieces' lengths; a piece that is part of
its unit leaves the rest of its slice unused (at most the two pieces a window cuts).  The window
holds exactly the bytes it reserved: its rows' fixed columns plus its units' values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from numpy.typing import NDArray

from ..manifest import Manifest
from ..ragged import Ragged, RowSlices, concat_slices, row_items
from ..schema import Column
from .pool import Where

__all__ = ["RaggedBuf", "ragged_buffers", "window_nbytes", "read_rows_group", "gather_ragged", "slice_ragged",
           "ragged_slack", "ragged_sizing", "batch_values_nbytes", "group_read_bytes", "naming_pieces"]

Table = NDArray[np.int64]  # rows (unit, lo, hi, buffer row)
GROUP_READ_BYTES = 4 << 20
"""At most this many bytes of stored chunks held by a reader thread reading a group of ragged
pieces: a read task's (about 4 MiB) in one native call (packed tokens: 1.40 s an epoch against
1.60 s with 1 MiB, each buffer's Python and hand-over of the GIL paid a quarter as often)."""


@dataclass
class RaggedBuf:
    """One ragged column's window buffer: its values, and each window position's row as
    ``values[starts[i]:ends[i]]``; ``first[k]``: where piece ``k``'s slice of ``values`` begins."""

    values: np.ndarray
    starts: NDArray[np.int64]
    ends: NDArray[np.int64]
    first: NDArray[np.int64]

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.starts.nbytes + self.ends.nbytes


def ragged_buffers(manifest: Manifest, columns: tuple[Column, ...], table: Table,
                   window_rows: int) -> dict[str, RaggedBuf]:
    """Fresh buffers for the ragged ``columns`` of a window of pieces ``table``."""
    out = {}
    units = table[:, 0]
    for c in columns:
        if not c.ragged:
            continue
        counts = manifest.layout["ragged_nbytes"][c.name][units] // c.item_nbytes
        first = np.zeros(len(units) + 1, np.int64)
        np.cumsum(counts, out=first[1:])
        out[c.name] = RaggedBuf(np.empty((int(first[-1]), *c.shape), c.np_dtype), np.zeros(window_rows, np.int64),
                                np.zeros(window_rows, np.int64), first)
    return out


def window_nbytes(manifest: Manifest, columns: tuple[Column, ...], table: Table, window_rows: int) -> int:
    """The bytes ``ragged_buffers`` and the fixed columns' buffers of a window of pieces ``table`` hold."""
    units = table[:, 0]
    fixed = window_rows * sum(c.row_nbytes for c in columns if not c.ragged)
    return fixed + sum(int(manifest.layout["ragged_nbytes"][c.name][units].sum()) + 16 * window_rows
                       for c in columns if c.ragged)


def ragged_slack(manifest: Manifest, columns: tuple[Column, ...]) -> int:
    """Bytes a window is expected to hold beyond its rows' share: the values of the two units it
    may cut, of mean size (the prefetcher admits each window by its real bytes: ``window_nbytes``)."""
    sizes = [manifest.layout["ragged_nbytes"][c.name] for c in columns if c.ragged]
    return 2 * -(-int(np.sum(sizes)) // manifest.n_units) if sizes else 0


def ragged_sizing(manifest: Manifest, columns: tuple[Column, ...]) -> dict[str, Any]:
    """What ``Sizing`` needs to know of the ragged ``columns``' windows: ``window_slack``
    (:func:`ragged_slack`) and ``unit_nbytes_sd``, the standard deviation of a unit's bytes (0
    without ragged columns): how much the bytes of a window, a sum of units, vary."""
    sizes = [np.asarray(manifest.layout["ragged_nbytes"][c.name], np.float64) for c in columns if c.ragged]
    return {"window_slack": ragged_slack(manifest, columns),
            "unit_nbytes_sd": float(np.sum(sizes, axis=0).std()) if sizes else 0.0}


def group_read_bytes(outside: int, threads: int) -> int:
    """Bytes of stored chunks a reader thread may hold while it reads and checks a group of
    ragged pieces (``read_ragged_pieces``): ``GROUP_READ_BYTES``, at most a quarter of the room
    the budget keeps outside its accounting (``outside``), shared among the ``threads``."""
    return min(GROUP_READ_BYTES, outside // (4 * max(1, threads)))


def read_rows_group(reader: Any, pieces: Table, first: int, keeps: Any, bufs: dict[str, np.ndarray],
                    rbufs: dict[str, RaggedBuf], root: Any, where: Where, scratch: int = 0) -> None:
    """Read pieces (rows ``(unit, lo, hi, buffer row)``, the window's pieces ``first`` on) with the
    reader's ``read_rows``: fixed columns into ``bufs``, ragged ones into their slice of ``rbufs``.
    ``keeps``: each piece's kept rows (an elastic resume), or None; ``scratch``: ``group_read_bytes``."""
    names = [*bufs, *rbufs]
    todo = _read_group_at_once(reader, pieces, first, keeps, bufs, rbufs, root, where, scratch)
    for k, (u, lo, hi, at) in zip(todo, pieces[todo].tolist()):
        where.text = f"while reading unit {u} (rows {lo}:{hi}) of {root}"
        got = reader.read_rows(u, lo, hi, names)
        keep = None if keeps is None or keeps[k] is None else keeps[k] - lo  # None: all of the piece
        n = hi - lo if keep is None else keep.size
        for name, dst in bufs.items():
            src = got[name]
            dst[at:at + n] = src if keep is None else src[keep]
        for name, rb in rbufs.items():
            r = got[name] if keep is None else got[name].take(keep)
            a, b = int(r.offsets[0]), int(r.offsets[-1])
            v0 = int(rb.first[first + k])
            rb.values[v0:v0 + b - a] = r.values[a:b]
            rb.starts[at:at + n] = r.offsets[:-1] + (v0 - a)
            rb.ends[at:at + n] = r.offsets[1:] + (v0 - a)
    release = getattr(reader, "release_unused", None)
    if release is not None:  # memory its decoder no longer uses (pyarrow's allocator keeps it otherwise)
        release()


def naming_pieces(where: Where, pieces: Table, root: Any) -> Callable[[int, int, int], None]:
    """``say(unit, lo, hi)``, which names in ``where`` the piece a read task of several ``pieces``
    reads (called before a failure, or as a piece is read alone); until then ``where`` names the
    task's pieces."""
    def say(u: int, lo: int, hi: int) -> None:
        where.text = f"while reading unit {u} (rows {lo}:{hi}) of {root}"

    if len(pieces) > 1:
        where.text = (f"while reading {len(pieces)} pieces of units {int(pieces[:, 0].min())}.."
                      f"{int(pieces[:, 0].max())} of {root}")
    return say


def _read_group_at_once(reader: Any, pieces: Table, first: int, keeps: Any, bufs: dict[str, np.ndarray],
                        rbufs: dict[str, RaggedBuf], root: Any, where: Where, scratch: int) -> list[int]:
    """The pieces the reader reads as one group (``read_ragged_pieces``: the Python of a read paid
    once a group, not once a unit), read; the others' indices, to read one by one."""
    fast = getattr(reader, "read_ragged_pieces", None)
    if fast is None or keeps is not None or not rbufs:
        return list(range(len(pieces)))
    say = naming_pieces(where, pieces, root)

    def name(k: int) -> None:
        say(*pieces[k, :3].tolist())

    n = len(pieces)
    done = fast(pieces, {c: (rb.values, rb.starts, rb.ends, rb.first[first:first + n]) for c, rb in rbufs.items()},
                name, scratch)
    if bufs and done.any():
        fixed = pieces[done]
        if not reader.read_pieces(fixed, bufs, say):
            for u, lo, hi, at in fixed.tolist():
                say(u, lo, hi)
                reader.read_into(u, lo, hi, {c: b[at:at + hi - lo] for c, b in bufs.items()})
    return np.flatnonzero(~done).tolist()


def gather_ragged(rbufs: dict[str, RaggedBuf], idx: NDArray[np.int64]) -> dict[str, Ragged]:
    """The rows at window positions ``idx`` of each ragged column, as one compact ``Ragged`` each."""
    return {name: concat_slices(rb.values, rb.starts[idx], rb.ends[idx]) for name, rb in rbufs.items()}


def slice_ragged(rbufs: dict[str, RaggedBuf], idx: NDArray[np.int64]) -> dict[str, RowSlices]:
    """The rows at window positions ``idx`` of each ragged column, as slices of the window's
    buffer (no copy: a packed stream's, which the packer copies once)."""
    return {name: RowSlices(rb.values, rb.starts[idx], rb.ends[idx]) for name, rb in rbufs.items()}


def batch_values_nbytes(rbufs: dict[str, RaggedBuf], idx: NDArray[np.int64],
                        padded: frozenset[str] = frozenset()) -> int:
    """Bytes of the ragged rows at window positions ``idx`` (their values and offsets); a column in
    ``padded`` (``collate="pad"``) also holds its ``[rows, longest]`` padded copy (and, while it is
    made, a boolean mask of that shape)."""
    total = 0
    for name, rb in rbufs.items():
        lengths = rb.ends[idx] - rb.starts[idx]
        row = rb.values.itemsize * row_items(rb.values)
        total += int(lengths.sum()) * row + 8 * (idx.size + 1)
        if name in padded and idx.size:
            total += idx.size * int(lengths.max()) * (row + 1)
    return total

