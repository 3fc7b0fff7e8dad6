"""The device path: batches assembled into a ring of reused host buffers (pinned for CUDA) and
copied to the device by one thread, so that the copy of batch k+1 overlaps the step on batch k::

    pool threads (reader threads)    copy thread (THREAD_PREFIX<name>-copy)      consumer (iterating thread)
    -----------------------------    ----------------------------------------   ---------------------------
    gather a batch into a free   --> iterates the Prefetcher; one copy a     --> its current stream waits on
    ring buffer (Ring.take)          batch on its own CUDA stream, an event      the event; record_stream on the
                                     after it; the buffer goes back to the       device tensors (the caching
                                     ring once that event has passed            allocator's cross-stream rule);
                                                                                 on-device normalisation

A ring buffer is handed out again only after the copy that read it has finished (the event has
passed), and the copy thread holds at most ``copy_slots`` of them, so the ring never runs dry:
its size is what ``sizing.device_layout`` reserves in the budget.  A buffer requested when none
is free (never, by that sizing) comes from plain memory and is counted in ``Ring.spilled``.
With ``device="cpu"`` the same code runs with a plain copy, so the ring, the thread, recycling
and stopping are tested on every machine.  The consumer counts a batch when it hands it out,
so a resume state never counts a batch that was copied but not taken.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Iterator

import numpy as np
import torch

from .batches import Normalizers, batch_buffer_bytes
from .pool import POLL, THREAD_PREFIX, Flag, _leave_signals_to_the_main_thread
from .prefetch import Prefetcher
from .ring import Ring, ring_for
from .sizing import Layout

__all__ = ["DONE", "ON_DEVICE", "Target", "DeviceFeeder", "auto_device", "resolve_device", "check_on_device"]

ON_DEVICE = ("normalize",)  # steps that on_device= may move after the copy
READY = 2  # device batches the copy thread may have waiting for the consumer
JOIN_S = 5.0  # seconds close() waits for the copy thread
_log = logging.getLogger("streambatch")

CopyFn = Callable[[torch.Tensor, torch.Tensor], Any]


@dataclasses.dataclass(frozen=True)
class Target:
    """Where batches go: ``device``, and the ``copy`` that moves a batch's one host buffer there.

    ``copy(dst, src)`` runs on the copy thread (with the copy stream current for CUDA) and returns
    a handle with ``query()`` (copy finished?), ``synchronize()`` and ``wait(stream)`` (make the
    consumer's ``stream`` wait for it; ``stream`` is None off CUDA), as ``torch.cuda.Event`` has.
    None: a ``non_blocking`` copy and an event on the copy stream (CUDA), a plain copy (CPU).
    """

    device: torch.device
    copy: CopyFn | None = None


def auto_device(cuda_available: bool, local_rank: str | None, distributed: bool, current: int) -> str:
    """``device="auto"``: ``cuda:LOCAL_RANK`` (torchrun), the current CUDA device under an
    initialised ``torch.distributed``, else ``cuda:0``; ``cpu`` without CUDA."""
    if not cuda_available:
        return "cpu"
    if local_rank is not None and local_rank.strip().isdigit():
        return f"cuda:{int(local_rank)}"
    return f"cuda:{current}" if distributed else "cuda:0"


def resolve_device(spec: Any) -> Target | None:
    """``StreamDataset(device=...)``: None, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, a ``torch.device``,
    ``"auto"`` or a :class:`Target` -> the Target (None: batches stay where they are made).

    Raises:
        ValueError: not a device, a device type other than cpu and cuda, or CUDA not available.
    """
    if spec is None or isinstance(spec, Target):
        target = spec
    else:
        if spec == "auto":
            import torch.distributed as dist

            cuda = torch.cuda.is_available()
            spec = auto_device(cuda, os.environ.get("LOCAL_RANK"), dist.is_available() and dist.is_initialized(),
                               torch.cuda.current_device() if cuda else 0)
        try:
            target = Target(torch.device(spec))
        except (RuntimeError, TypeError, ValueError) as e:
            raise ValueError(f"device={spec!r} is not a device ({e})") from None
    if target is None:
        return None
    dev = target.device
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={str(dev)!r}: only cpu and cuda devices are supported")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(dev)!r}: CUDA is not available (torch.cuda.is_available() is False); "
                         "use device='auto' or 'cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device={str(dev)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return target


def check_on_device(on_device: Any, target: Target | None, normalize: Normalizers) -> tuple[str, ...]:
    """Validate ``on_device=`` (a tuple of :data:`ON_DEVICE` steps).

    Raises:
        ValueError: a string instead of a tuple, an unknown step, no ``device=``, or
            ``"normalize"`` without ``normalize=`` selecting a column.
    """
    if isinstance(on_device, str):
        raise ValueError(f"on_device must be a tuple such as ('normalize',), got the string {on_device!r}")
    steps = tuple(on_device)
    unknown = [s for s in steps if s not in ON_DEVICE]
    if unknown:
        raise ValueError(f"on_device: unknown step(s) {unknown}; choose from {list(ON_DEVICE)}")
    if steps and target is None:
        raise ValueError(f"on_device={steps} needs device= (the steps run after the copy to the device)")
    if "normalize" in steps and not normalize:
        raise ValueError("on_device=('normalize',) needs normalize=True or a list of columns that selects a column")
    return steps


@dataclasses.dataclass
class _Host:
    """A batch as the pool threads made it, with the one buffer its columns view."""

    flat: np.ndarray
    batch: Any


def host_batch(make: Callable[[np.ndarray, dict[str, np.ndarray]], Any] | None,
               transform: Callable[[Any], Any] | None, flat: np.ndarray, columns: dict[str, np.ndarray]) -> _Host:
    """``make_batch`` for the pool threads: the tensors (and the user's transform) as usual, tagged
    with their buffer so that the copy thread copies it in one piece and recycles it."""
    batch = make(flat, columns) if make is not None else columns
    return _Host(flat, transform(batch) if transform is not None else batch)


def _to_device(value: Any, base: int, end: int, dst: torch.Tensor, device: torch.device,
               allocs: list[torch.Tensor]) -> Any:
    """``value`` (tensors in dicts, lists, tuples) on the device: a tensor in the host buffer
    [``base``, ``end``) becomes a view of ``dst`` at the same offset; another is copied alone."""
    if isinstance(value, torch.Tensor):
        n = value.numel() * value.element_size()
        at = value.data_ptr() - base
        if value.device.type == "cpu" and value.is_contiguous() and 0 <= at and base + at + n <= end:
            return dst[at:at + n].view(value.dtype).view(value.shape)
        moved = value.to(device, non_blocking=True)
        if moved is not value:
            allocs.append(moved)
        return moved
    if isinstance(value, Mapping):
        return {k: _to_device(v, base, end, dst, device, allocs) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_to_device(v, base, end, dst, device, allocs) for v in value]
        return items if isinstance(value, list) else type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    return value


class _Done:
    """The handle of a copy that finished when it returned (the plain CPU copy)."""

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass

    def wait(self, stream: Any) -> None:
        pass


DONE = _Done()  # the handle of every plain CPU copy (also for a custom copy that finishes at once)


def _cpu_copy(dst: torch.Tensor, src: torch.Tensor) -> _Done:
    dst.copy_(src)
    return DONE


def _cuda_copy(stream: Any, dst: torch.Tensor, src: torch.Tensor) -> Any:
    dst.copy_(src, non_blocking=True)
    event = torch.cuda.Event()
    event.record(stream)
    return event


_END = object()


@dataclasses.dataclass
class _Failed:
    error: BaseException


class DeviceFeeder:
    """Serves a :class:`Prefetcher`'s batches on ``target``'s device, copied by one thread.

    Made before the prefetcher is iterated: it routes the prefetcher's batches into a ring of
    ``lay.ring`` host buffers (kept in ``keep`` across epochs), moves the transform into
    ``host_batch`` and, with ``"normalize"`` in ``on_device``, takes the normalisation from the
    host to the device.  Iterate it once in the consuming thread; ``close()`` (idempotent; also
    when the iteration ends, breaks or fails) stops the copy thread, which closes the prefetcher.
    An exception of the copy thread (a reader's ``DataError``, a ``TimeoutError``) is raised in
    the consumer with its type.

    Raises:
        ValueError: made inside a DataLoader worker process (see ``StreamDataset``'s ``device``).
    """

    def __init__(self, pf: Prefetcher, target: Target, on_device: tuple[str, ...], lay: Layout,
                 keep: list[Ring]) -> None:
        if torch.utils.data.get_worker_info() is not None:
            raise ValueError(f"device={str(target.device)!r} moves batches in the iterating process and cannot run "
                             "in a DataLoader worker: use DataLoader(num_workers=0) (the reader threads already "
                             "load in parallel), or device=None with pin_memory=True for worker processes")
        dev = target.device
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        self.device, self.cuda = dev, dev.type == "cuda"
        self.pf, self.copy_slots = pf, max(1, lay.copy_slots)
        self.stream: Any = torch.cuda.Stream(device=dev) if self.cuda else None
        self.copy: CopyFn = target.copy or (functools.partial(_cuda_copy, self.stream) if self.cuda else _cpu_copy)
        self.normalize: Normalizers = pf.normalize if "normalize" in on_device else {}
        if self.normalize:
            pf.normalize = {}
        self._stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        shapes = {c.name: (c.np_dtype, c.shape) for c in pf.columns}
        slot_bytes = batch_buffer_bytes(shapes, pf.plan.batch_size, pf.normalize, pf.index_key)
        self.ring = ring_for(keep, max(1, lay.ring), slot_bytes, pin=self.cuda)
        self._keep = keep
        pf.alloc = self.ring.take
        pf.make_batch = functools.partial(host_batch, pf.make_batch, pf.transform)
        pf.transform = None
        self._pending: deque[tuple[Any, int | None]] = deque()  # (copy handle, ring buffer), copy thread only
        self._ready: queue.SimpleQueue[Any] = queue.SimpleQueue()  # C-level: Ctrl-C safe in the consumer
        self._room: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(READY):
            self._room.put(None)
        self._stop = Flag()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"{THREAD_PREFIX}{pf.name}-copy", daemon=True)

    # -- the copy thread
    def _run(self) -> None:
        _leave_signals_to_the_main_thread()
        it = iter(self.pf)
        try:
            if self.cuda:
                torch.cuda.set_device(self.device)  # the current device is per thread
            for host in it:
                self._reclaim(self.copy_slots - 1)
                if not self._put(self._copy_one(host)):
                    return
            self._put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer with its type intact
            if not self._stop.is_set():
                self._put(_Failed(e))
        finally:
            it.close()  # closes the prefetcher: its pool threads stop
            self._reclaim(0)  # every copy finished: every buffer back in the ring

    def _copy_one(self, host: Any) -> tuple[Any, Any, list[torch.Tensor]]:
        if not isinstance(host, _Host):  # not made by host_batch: copy its tensors one by one
            host = _Host(np.empty(0, np.uint8), host)
        flat = host.flat
        slot = self.ring.slot_of(flat) if flat.nbytes else None
        with torch.cuda.stream(self.stream) if self.cuda else contextlib.nullcontext():
            dst = torch.empty(flat.nbytes, dtype=torch.uint8, device=self.device)
            allocs = [dst]
            base = flat.ctypes.data
            batch = _to_device(host.batch, base, base + flat.nbytes, dst, self.device, allocs)
            handle = self.copy(dst, self.ring.source(flat))  # after the others: its event covers them too
        self._pending.append((handle, slot))
        return batch, handle, allocs

    def _reclaim(self, keep: int) -> None:
        """Give back the buffers of finished copies, waiting for the oldest while more than ``keep`` run."""
        while self._pending and (len(self._pending) > keep or self._pending[0][0].query()):
            handle, slot = self._pending.popleft()
            handle.synchronize()
            if slot is not None:
                self.ring.give(slot)

    def _put(self, item: Any) -> bool:
        """Hand ``item`` to the consumer once it has room; False when stopped first."""
        while not self._stop.is_set():
            try:
                self._room.get(timeout=POLL)
            except queue.Empty:
                continue
            self._ready.put(item)
            return True
        return False

    # -- the consumer
    def __iter__(self) -> Iterator[Any]:
        self._thread.start()
        try:
            while True:
                item = self._take()
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.error
                yield self._deliver(*item)
        finally:
            self.close()

    def _take(self) -> Any:
        while True:
            try:
                item = self._ready.get(timeout=POLL)
            except queue.Empty:
                if not self._thread.is_alive() and self._ready.empty():
                    raise RuntimeError("streambatch: the copy thread stopped without a result") from None
                continue
            self._room.put(None)
            return item

    def _deliver(self, batch: Any, handle: Any, allocs: list[torch.Tensor]) -> Any:
        """The batch, ready for the consumer's current stream: it waits for the copy, and the
        caching allocator learns that the copy stream's tensors are used on it."""
        if self.cuda:
            stream = torch.cuda.current_stream(self.device)
            handle.wait(stream)
            for t in allocs:
                t.record_stream(stream)
        else:
            handle.wait(None)
        return self._normalized(batch) if self.normalize and isinstance(batch, dict) else batch

    def _normalized(self, batch: dict[str, Any]) -> dict[str, Any]:
        """(x as float32 - mean) * (1 / std) per feature, as the host does (batches.gather_batches)."""
        for name, (mean, inv_std) in self.normalize.items():
            if name not in batch:
                continue
            if name not in self._stats:
                self._stats[name] = (torch.from_numpy(mean).to(self.device), torch.from_numpy(inv_std).to(self.device))
            m, s = self._stats[name]
            batch[name] = (batch[name].to(torch.float32) - m) * s
        return batch

    def close(self) -> None:
        """Stop the copy thread (it closes the prefetcher) and keep the ring for the next epoch."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self.pf.cancel()
        t = self._thread
        if t.ident is not None and t is not threading.current_thread():
            t.join(JOIN_S)
        if t.is_alive():  # its copies may still read the ring: never reuse it
            _log.warning("streambatch: thread %s did not stop within %.1fs", t.name, JOIN_S)
            return
        while not self._ready.empty():
            self._ready.get()
        self._keep[:] = [self.ring]
