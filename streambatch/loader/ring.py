"""The device path's ring of host batch buffers: one block of equal buffers, pinned for CUDA,
reused across epochs (pinning is slow: it is done once).  Pool threads take a buffer to assemble
a batch into; the copy thread gives it back once the copy that read it has finished
(``loader/device.py``).  Taking never blocks: with no buffer free (the budget's sizing,
``sizing.device_layout``, leaves none short) a batch gets plain memory, counted in ``spilled``.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any

import numpy as np
import torch

__all__ = ["Ring", "ring_for"]

_PAGE = 4096


class Ring:
    """``slots`` host buffers of ``slot_bytes`` (rounded to pages) in one block, pinned when ``pin``
    (``cudaHostRegister`` of exactly those bytes; torch's pinned allocator, which rounds up to a
    power of two, if registering fails).  Pool threads :meth:`take` one; the copy thread
    :meth:`give` s it back once its copy has finished."""

    def __init__(self, slots: int, slot_bytes: int, pin: bool) -> None:
        self.slots, self.slot_bytes, self.pin = slots, -(-slot_bytes // _PAGE) * _PAGE, pin
        total = slots * self.slot_bytes
        self.pinned_by = ""
        raw = np.empty(total + _PAGE, np.uint8)
        self.block = raw[-raw.ctypes.data % _PAGE:][:total]
        if pin:
            self.pinned_by = _register(self)
            if not self.pinned_by:
                self.block = torch.empty(total, dtype=torch.uint8, pin_memory=True).numpy()
                self.pinned_by = "torch"
        self.tensor = torch.from_numpy(self.block)
        self.base = self.block.ctypes.data
        self._lock = threading.Lock()  # a C lock: taken by pool threads and the copy thread only
        self._free = list(range(slots))
        self.spilled = 0  # buffers asked for when none was free (plain memory)

    @property
    def nbytes(self) -> int:
        return self.slots * self.slot_bytes

    def fits(self, slots: int, slot_bytes: int, pin: bool) -> bool:
        return (slots, -(-slot_bytes // _PAGE) * _PAGE, pin) == (self.slots, self.slot_bytes, self.pin)

    def take(self, nbytes: int) -> np.ndarray:
        """A free buffer's first ``nbytes`` (never blocks: plain memory when none is free)."""
        with self._lock:
            i = self._free.pop() if self._free and nbytes <= self.slot_bytes else None
            if i is None:
                self.spilled += 1
        if i is None:
            return np.empty(nbytes, np.uint8)
        return self.block[i * self.slot_bytes:i * self.slot_bytes + nbytes]

    def slot_of(self, arr: np.ndarray) -> int | None:
        """The buffer ``arr`` lies in; None for memory outside the ring."""
        at = arr.ctypes.data - self.base
        return at // self.slot_bytes if 0 <= at < self.nbytes else None

    def source(self, arr: np.ndarray) -> torch.Tensor:
        """The host tensor a copy reads ``arr`` from: the ring's own (pinned) tensor where it lies in it."""
        at = arr.ctypes.data - self.base
        return self.tensor[at:at + arr.nbytes] if 0 <= at < self.nbytes else torch.from_numpy(arr)

    def give(self, i: int) -> None:
        with self._lock:
            self._free.append(i)

    def free(self) -> int:
        return len(self._free)

    def reset(self) -> None:
        """Every buffer free (a new iteration: no copy of an earlier one is running)."""
        with self._lock:
            self._free = list(range(self.slots))


def _register(ring: Ring) -> str:
    """Pin ``ring.block`` in place (cudaHostRegister); its finaliser unregisters it. '' if that fails."""
    try:
        cudart = torch.cuda.cudart()
        ptr, size = ring.block.ctypes.data, ring.block.nbytes
        if int(cudart.cudaHostRegister(ptr, size, 0)) != 0:
            return ""
    except (AttributeError, RuntimeError, TypeError):
        return ""
    weakref.finalize(ring, _unregister, cudart, ptr, ring.block)
    return "cudaHostRegister"


def _unregister(cudart: Any, ptr: int, block: np.ndarray) -> None:
    with contextlib.suppress(Exception):  # at interpreter exit CUDA may already be gone
        cudart.cudaHostUnregister(ptr)
    del block


def ring_for(keep: list[Ring], slots: int, slot_bytes: int, pin: bool) -> Ring:
    """A ring from ``keep`` (the dataset's, kept across epochs: pinned once) when it fits, else a new one."""
    ring = keep.pop() if keep else None
    keep.clear()  # an iteration holds its ring; a concurrent one makes its own
    if ring is not None and ring.fits(slots, slot_bytes, pin):
        ring.reset()
        return ring
    return Ring(slots, slot_bytes, pin)
