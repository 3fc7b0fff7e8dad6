"""Keeping the C allocator from holding freed buffers: glibc's dynamic mmap threshold, capped.

glibc serves an allocation of at least ``M_MMAP_THRESHOLD`` bytes (128 KiB at start) with its own
memory map, returned to the system when freed.  But each time such a buffer is freed, glibc raises
the threshold to its size (up to 32 MiB), so after the loader frees its first window buffer, the
buffers of a few MiB it allocates and frees all the time (row batches, packed batches, a heavy
document) come from the heap instead, and the heap keeps what they leave: measured on 1 GB of
heavy-tailed token documents under a 64 MiB budget, resident memory stood 49-61 MiB above the bytes
the loader held (p50), against 9-11 MiB with the threshold fixed at 4 MiB, at the same speed
(docs/PERFORMANCE.md, "Memory: the allocator").

:func:`cap_mmap_threshold` fixes it at :data:`MMAP_THRESHOLD` (``mallopt``; fixing it also stops
glibc's adjusting) the first time a process starts a loader (``Prefetcher``).  An
``MALLOC_MMAP_THRESHOLD_`` set in the environment is the user's choice and is left alone; other C
libraries are left alone.

Fixing the mmap threshold also freezes the heap's trim threshold at glibc's initial 128 KiB, and
then every buffer of 128 KiB to 4 MiB freed at the heap's top gave its pages back, to be faulted in
again by the next: the whole process paid for it, the user's code too (an in-RAM gather of
``img``'s 3 MB batches ran 173-210k samples/s after the cap, against 331-393k before it).  So the
trim threshold is set with it to :data:`TRIM_THRESHOLD`, twice the mmap threshold, the pair glibc
itself sets when it raises the mmap threshold (411-433k); the heap keeps at most that much free at
its top.  An ``MALLOC_TRIM_THRESHOLD_`` set in the environment is left alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "cap_mmap_threshold"]

MMAP_THRESHOLD = 4 << 20
"""Allocations of at least this many bytes get memory maps of their own (returned when freed)."""
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
"""Free bytes the heap may keep at its top before giving them back (glibc's pairing: twice the
mmap threshold)."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_done: bool | None = None  # None: not tried in this process; else whether the cap is set


def cap_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD` and its trim threshold at
    :data:`TRIM_THRESHOLD`, once per process; whether the mmap threshold is set (False: not glibc,
    or ``MALLOC_MMAP_THRESHOLD_`` set by the user)."""
    global _done
    if _done is None:
        _done = False
        if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
            try:
                libc = ctypes.CDLL(None)  # the symbols the process has loaded, the C library's among them
                _done = hasattr(libc, "gnu_get_libc_version") and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                if _done and "MALLOC_TRIM_THRESHOLD_" not in os.environ:
                    libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
            except OSError:  # no dynamic loading: leave the allocator as it is
                pass
    return _done
