"""Batches handed from a DataLoader worker to the main process through slots of shared memory.

torch sends a tensor out of a worker by moving its storage into a new block of shared memory,
passing that block's file descriptor over a socket (a connection per storage) and mapping it in
the main process: three system calls and fresh pages on both sides for every batch, which held a
pair of workers to ~400 ``tab`` batches a second whatever the loader did (docs/PERFORMANCE.md,
DataLoader workers).  Here a worker assembles its batches straight into the slots of one block of
shared memory (a ``memfd``) that it makes once; a batch crosses as a few numbers (ring, slot,
each column's offset, dtype and shape), and the main process maps the block once and serves
views of the slot::

    worker: Prefetcher -> gather_batches(alloc=ring.take) -> SlotBatch (columns view slot i)
            pickled by the DataLoader's queue: (ring token, slot i, layout[, the fd, until mapped])
    main:   _rebuild -> the block mapped once (cached by token) -> dict of views of slot i;
            when the last of them is gone, slot i is marked free in the block's header (in C;
            without the C module, by the next batch to arrive)

Each slot has one owner at a time: the worker takes a free slot (state 0 -> 1); once a batch in
it has been pickled, only the main process frees it (when its views are garbage); a batch never
pickled this way (a transform that returned something else) frees its slot when the worker's
views of it are gone.  No Python code frees a slot as its views die: Python code run then (a
``weakref.finalize``) can take a Ctrl-C, and CPython prints and drops an exception raised there,
so a worker, or the training loop, that took its ``KeyboardInterrupt`` inside one served on
(docs/FAULTS.md).  In the main process the views hang on a buffer of the C module
(``_kernels.slot_view``) that marks the slot free in C as it dies; the worker (and the main
process without the C module) keeps a weak reference to the array its views hang on and looks
at it later: the worker when it takes a slot, the main process when a batch arrives.
Taking never blocks: with no slot free, or a batch larger than a slot, the batch gets plain
memory and crosses as torch sends it (counted in ``spilled``).  Columns a transform replaced,
and columns not in the slot (ragged ones), cross as torch sends them, beside the slot's.

Linux only (``os.memfd_create``); elsewhere batches cross as torch sends them.

Batches served in this process, from ``PRIVATE_MIN_BATCH_BYTES`` up, are assembled in the same
kind of ring in private memory (plain dicts, freed as above): fresh buffers of a few MiB cost a
page fault per 4 KiB every batch, as glibc trims its heap after each.
"""

from __future__ import annotations

import copy
import mmap
import os
import threading
import weakref
from multiprocessing import util as mp_util
from multiprocessing.reduction import DupFd
from typing import Any

import numpy as np
import torch

from .._kernels import slot_view
from .batches import Normalizers, batch_buffer_bytes
from .sizing import Layout, Sizing, worker_layout
from .tensors import make_batch, make_shared_batch

__all__ = ["SlotBatch", "BatchRing", "available", "forget_done", "batch_ring", "keep_ring", "mapped_rings"]

_PAGE = 4096
_MAPPED, _CLOSED = 0, 1  # header bytes: the main process has mapped the block; the worker closed it
_STATES = 64  # the slots' states start here (0 free, 1 taken)
_FREE, _TAKEN = 0, 1
PRIVATE_MIN_BATCH_BYTES = 1 << 20
"""Batches served in this process are assembled in a private ring from this size: smaller ones
come from glibc's heap without page faults (``tab``'s 135 KB batches: a few hundred faults an
epoch), larger ones (``img``'s 3 MB) faulted in ~30k pages an epoch (docs/PERFORMANCE.md)."""


def available() -> bool:
    """Whether this system has anonymous shared memory files (Linux)."""
    return hasattr(os, "memfd_create")


class BatchRing:
    """``slots`` batch buffers of ``slot_bytes`` (rounded to pages) in one block, for an
    iteration and those after it (``keep_ring``), each free again once nothing refers to what
    was made of it: batches assembled into reused, already-faulted pages instead of fresh
    allocations (which cost glibc's heap trims and a page fault per 4 KiB every batch).  ``shared``: a shared-memory block of a
    DataLoader worker, whose batches are :class:`SlotBatch` es (``make_batch``), closed when the
    worker ends (or by :meth:`close`); the main process unmaps it once no batch of it is on its
    way or alive there.  Else private memory, for batches served in this process."""

    def __init__(self, slots: int, slot_bytes: int, shared: bool = True) -> None:
        self.slots, self.slot_bytes, self.shared = slots, -(-slot_bytes // _PAGE) * _PAGE, shared
        self.data_at = -(-(_STATES + slots) // _PAGE) * _PAGE
        self.nbytes = self.data_at + slots * self.slot_bytes
        self.fd = os.memfd_create("streambatch-batches", os.MFD_CLOEXEC) if shared else -1
        try:
            if shared:
                os.ftruncate(self.fd, self.nbytes)
            self.mm = (mmap.mmap(self.fd, self.nbytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                       if shared else mmap.mmap(-1, self.nbytes, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))
        except BaseException:
            if shared:
                os.close(self.fd)
            raise
        self.block = np.frombuffer(self.mm, np.uint8)
        self.header = self.block[:_STATES]
        self.state = self.block[_STATES:_STATES + slots]
        self.base = self.block.ctypes.data + self.data_at
        self.token = os.urandom(16)
        self.pid = os.getpid()
        self.gen = [0] * slots  # taken how many times (a batch of an earlier take is not sent as the slot's)
        self.shipped = [False] * slots  # pickled for the main process, which frees it
        self.spilled = 0  # batches that got plain memory (no slot free, or larger than a slot)
        self._held: list[weakref.ref[np.ndarray] | None] = [None] * slots  # what this process's views hang on
        self._lock = threading.Lock()  # pool threads take slots, the queue's thread sends them
        self._closer = mp_util.Finalize(self, _close, (self.header, self.mm, self.fd), exitpriority=10)

    @property
    def closed(self) -> bool:
        return not self._closer.still_active()

    def close(self) -> None:
        """No more batches go out in slots (a batch pickled later crosses as torch sends it)."""
        with self._lock:
            self._closer()

    def free_slots(self) -> int:
        """Slots free now, as this process sees them (after freeing those whose views are gone)."""
        with self._lock:
            self._sweep()
        return int(np.count_nonzero(self.state == _FREE))

    def take(self, nbytes: int) -> np.ndarray:
        """A free slot's first ``nbytes`` (never blocks: plain memory when none is free)."""
        arr = None
        if nbytes <= self.slot_bytes and not self.closed:
            with self._lock:
                self._sweep()
                free = np.flatnonzero(self.state == _FREE)
                if free.size:
                    i = int(free[0])
                    self.state[i] = _TAKEN
                    self.gen[i] += 1
                    self.shipped[i] = False
                    # an array of its own over the block (not a view of ``block``: numpy points views
                    # of a view at the first array, so its weak reference would outlive the batch)
                    arr = np.frombuffer(self.mm, np.uint8, nbytes, self.data_at + i * self.slot_bytes)
                    self._held[i] = weakref.ref(arr)
        if arr is None:
            self.spilled += 1
            return np.empty(nbytes, np.uint8)
        return arr

    def _sweep(self) -> None:
        """Free the slots whose views here are gone, unless the main process has them (it frees
        those).  Under ``_lock``."""
        for i, held in enumerate(self._held):
            if held is not None and held() is None:
                self._held[i] = None
                if not self.shipped[i]:
                    self.state[i] = _FREE

    def slot_of(self, arr: np.ndarray) -> int | None:
        at = arr.ctypes.data - self.base
        return at // self.slot_bytes if 0 <= at < self.slots * self.slot_bytes else None

    def make_batch(self, flat: np.ndarray, columns: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """The batch's tensors (``torch.from_numpy`` of each column, the cheapest), as a
        :class:`SlotBatch` where ``flat`` lies in a slot; ``make_shared_batch``'s otherwise."""
        i = self.slot_of(flat)
        if i is None or not self.shared:
            return make_shared_batch(flat, columns) if self.shared else make_batch(flat, columns)
        start = self.base + i * self.slot_bytes
        layout = tuple((name, view.ctypes.data - start, view.dtype.str, view.shape, view.nbytes)
                       for name, view in columns.items())
        return SlotBatch({name: torch.from_numpy(view) for name, view in columns.items()}, self, i, self.gen[i],
                         layout)

    def ship(self, i: int, gen: int) -> tuple[Any, ...] | None:
        """What the main process needs to map slot ``i`` (taken as ``gen``), or None if it cannot
        cross as a slot (taken again since, or already sent)."""
        with self._lock:
            if self.closed or self.gen[i] != gen or self.shipped[i]:
                return None
            self.shipped[i] = True
            fd = None if self.header[_MAPPED] else DupFd(self.fd)  # until the main process has mapped it
        return (self.token, self.pid, fd, self.nbytes, self.slots, self.data_at + i * self.slot_bytes,
                self.slot_bytes, i)


def _close(header: np.ndarray, mm: mmap.mmap, fd: int) -> None:
    """The worker is done with the block (the main process unmaps it once its batches are gone)."""
    header[_CLOSED] = 1
    if fd >= 0:
        os.close(fd)
    try:
        mm.close()
    except BufferError:  # views still exported (slots a batch holds): unmapped when they go
        pass


class SlotBatch(dict):
    """A batch (column name -> tensor) whose columns view one slot of a :class:`BatchRing`.
    Pickled, it crosses as the slot's place and its columns' layout; columns that are no longer
    the slot's views (replaced by a transform) or were never in it cross as torch sends them."""

    def __init__(self, batch: dict[str, Any], ring: BatchRing, slot: int, gen: int,
                 layout: tuple[tuple[str, int, str, tuple[int, ...], int], ...]) -> None:
        super().__init__(batch)
        self._ring, self._slot, self._gen, self._layout = ring, slot, gen, layout
        self._views = dict(batch)  # the slot's tensors, to see which a transform replaced

    def __copy__(self) -> SlotBatch:  # default_convert copies mappings: the copy keeps the slot
        out = SlotBatch.__new__(SlotBatch)
        dict.update(out, self)
        out._ring, out._slot, out._gen, out._layout, out._views = (self._ring, self._slot, self._gen, self._layout,
                                                                    self._views)
        return out

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:  # a copy of its own, not views of the slot
        return copy.deepcopy(dict(self), memo)

    def __reduce__(self) -> tuple[Any, ...]:
        kept = {name for name, t in self.items() if self._views.get(name) is t}
        place = self._ring.ship(self._slot, self._gen) if kept else None
        if place is None:
            return (dict, (dict(self),))
        layout = tuple(c for c in self._layout if c[0] in kept)
        others = {name: t for name, t in self.items() if name not in kept}
        return (_rebuild, (place, layout, others, tuple(self)))


class _Mapped:
    """A worker's block as the main process maps it."""

    def __init__(self, pid: int, fd: int, nbytes: int, slots: int) -> None:
        self.pid = pid
        self.mm = mmap.mmap(fd, nbytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.block = np.frombuffer(self.mm, np.uint8)
        self.state = self.block[_STATES:_STATES + slots]
        self.block[_MAPPED] = 1

    @property
    def drained(self) -> bool:
        """The worker closed its block and every slot is free: no batch of it is on its way
        here (a slot sent is taken until its batch here is gone)."""
        return bool(self.block[_CLOSED]) and not self.state.any()

    @property
    def done(self) -> bool:
        """Drained, or the worker is gone."""
        if self.drained:
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


_mapped: dict[bytes, _Mapped] = {}  # the main process's maps of workers' blocks, by token
# the slots whose batches arrived here: what their views hang on, the block, the slot
_received: list[tuple[weakref.ref[np.ndarray], bytes, _Mapped, int]] = []
_mapped_lock = threading.Lock()  # rebuilt by the DataLoader's thread or its pin_memory thread


def _forget_received() -> None:
    """A forked child does not own the slots its parent received (it must never free them)."""
    global _received
    _received = []


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_received)


def mapped_rings() -> int:
    """Workers' blocks this process holds mapped (tests: none once their workers are done)."""
    with _mapped_lock:
        _sweep_received()
        return len(_mapped)


def forget_done() -> None:
    """Free the slots whose batches here are gone and drop this process's maps of blocks whose
    workers are done (each is unmapped once no batch views it); the first is also done whenever
    a batch arrives, the second whenever a new block is mapped."""
    with _mapped_lock:
        _sweep_received()
        _forget_done()


def _forget_done() -> None:
    for token in [t for t, m in _mapped.items() if m.done]:
        del _mapped[token]  # unmapped when the last batch viewing it is gone


def _sweep_received() -> None:
    """The slots whose views here are gone are free for their worker again; a block its worker
    closed with no slot taken any more is let go.  Under ``_mapped_lock``."""
    if not _received:
        return
    gone = [r for r in _received if r[0]() is None]
    if not gone:
        return
    _received[:] = [r for r in _received if r[0]() is not None]
    for _, token, m, i in gone:
        m.state[i] = _FREE
        if m.drained and _mapped.get(token) is m:
            del _mapped[token]


def _rebuild(place: tuple[Any, ...], layout: tuple[tuple[str, int, str, tuple[int, ...], int], ...],
             others: dict[str, Any], order: tuple[str, ...]) -> dict[str, Any]:
    """The batch in the main process: views of its slot (and the columns that crossed apart)."""
    token, pid, df, nbytes, slots, start, slot_bytes, i = place
    fd = df.detach() if df is not None else None
    try:
        with _mapped_lock:
            _sweep_received()
            m = _mapped.get(token)
            if m is None:
                if fd is None:
                    raise RuntimeError("streambatch: a batch from a DataLoader worker arrived before its shared "
                                       "memory did (an earlier batch of that worker was lost)")
                _forget_done()
                m = _mapped[token] = _Mapped(pid, fd, nbytes, slots)
            # an array of its own over the slot (see take), which every column's array keeps alive;
            # with the C module, the buffer under it frees the slot as it dies, else the next
            # arrival looks at a weak reference to it
            held = slot_view(m.mm, start, slot_bytes, _STATES + i)
            if held is not None:
                base = np.frombuffer(held, np.uint8)
            else:
                base = np.frombuffer(m.mm, np.uint8, slot_bytes, start)
                _received.append((weakref.ref(base), token, m, i))
    finally:
        if fd is not None:
            os.close(fd)
    views = {name: torch.from_numpy(base[at:at + n].view(dt).reshape(shape)) for name, at, dt, shape, n in layout}
    return {name: views[name] if name in views else others[name] for name in order}



def batch_ring(sizing: Sizing, lay: Layout, columns: Any, normalize: Normalizers, index_key: str | None,
               in_worker: bool, keep: list[BatchRing] | None = None) -> tuple[Layout, BatchRing | None]:
    """The layout with the slots an iteration's batches are assembled in (``sizing.worker_layout``),
    and those slots: in a DataLoader worker shared memory its batches cross to the main process in
    (None where there is none to make: the batches then cross as torch sends them), else private
    memory for batches of at least ``PRIVATE_MIN_BATCH_BYTES`` (None for smaller ones).  The ring
    is taken from ``keep`` (the dataset's, across epochs: :func:`keep_ring` puts it back) where
    the one there is this process's, of this kind and these slots, so that its pages are faulted
    in once, not every epoch (a persistent DataLoader worker's too, and the main process's map of
    it); an iteration running beside another makes its own."""
    fixed = {c.name: (c.np_dtype, c.shape) for c in columns if not c.ragged}
    nbytes = batch_buffer_bytes(fixed, sizing.batch_size, normalize, index_key)
    if not available() if in_worker else nbytes < PRIVATE_MIN_BATCH_BYTES:
        return lay, None
    lay = worker_layout(lay, sizing.reserved_batches(lay.budget))
    kept = keep.pop() if keep else None  # (a forked worker's copy of its parent's ring is not its own)
    if kept is not None and (kept.pid, kept.shared, kept.closed, kept.slots, kept.slot_bytes) == (
            os.getpid(), in_worker, False, lay.handoff, -(-nbytes // _PAGE) * _PAGE):
        return lay, kept
    return lay, BatchRing(lay.handoff, nbytes, shared=in_worker)


def keep_ring(ring: BatchRing, keep: list[BatchRing]) -> None:
    """An iteration's ring when it ends, kept for the next (``keep``: the dataset's; slots a
    batch still holds stay taken until it goes).  A worker's shared ring is closed when the
    worker ends (its finaliser), and the main process then unmaps it once drained."""
    keep[:] = [ring]
