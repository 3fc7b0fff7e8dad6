"""Unit checksums: CRC-32C (hardware-accelerated, the default) or CRC-32 (older datasets).

The algorithm is named in the manifest's layout (``"checksum"``; absent means ``"crc32"``,
what datasets written before CRC-32C recorded).  CRC-32C is fast enough to check every unit on
every read by default; :func:`crc32` is zlib-ng's where installed (a dependency on CPython),
zlib's otherwise: the same values, faster (docs/PERFORMANCE.md, Checksums).

google_crc32c's extension holds the GIL while it sums, so reader threads checksumming units
took turns (two threads: 9.0 GB/s in all, one: 9.3).  A buffer of ``NATIVE_MIN`` bytes or more
is summed by a C function called through ctypes, which releases the GIL for the call, and the C
module's loops call the same function (:func:`native_crc32c`): streambatch's own where the CPU
runs it (``_native.crc32c_addresses``: folding with VPCLMULQDQ, about 3x google-crc32c's speed
on rows in cache, or the crc32 instruction, the same speed), else the ``crc32c_extend`` of the
library inside google_crc32c's wheel; where neither is found (another packaging of
google_crc32c, another CPU), the extension is used.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
from typing import Any, Callable, Iterator

import numpy as np

from .._kernels import crc32c_addresses, crc_chunks

try:
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover - PyPy, or an install without the wheel
    from zlib import crc32

__all__ = ["CHECKSUMS", "DEFAULT_CHECKSUM", "checksum_fn", "chunk_checksums", "crc32", "extend_fn", "native_crc32c"]

CHECKSUMS = ("crc32", "crc32c")
DEFAULT_CHECKSUM = "crc32c"


def _readonly(data: Any) -> Any:
    """A read-only uint8 view of any contiguous buffer (google_crc32c takes read-only buffers only)."""
    if type(data) is bytes:  # already read-only
        return data
    view = np.frombuffer(data, dtype=np.uint8)
    if view.flags.writeable:
        view = view.view()
        view.flags.writeable = False
    return view


NATIVE_MIN = 1 << 16
"""Bytes from which CRC-32C is summed with the GIL released (a ctypes call costs a few us)."""


def _crc32c(data: Any) -> int:
    return _crc32c_extend(0, data)


def _crc32c_extend(crc: int, data: Any) -> int:
    view = _readonly(data)
    native = _native_crc32c() if len(view) >= NATIVE_MIN else None
    if native is not None:
        arr = view if isinstance(view, np.ndarray) else np.frombuffer(view, np.uint8)
        return int(native(crc, arr.ctypes.data, arr.nbytes))
    import google_crc32c

    return int(google_crc32c.extend(crc, view))


_EXTEND = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t)


@functools.cache
def _native_crc32c() -> Callable[[int, int, int], int] | None:
    """``crc32c_extend(crc, address, size)`` in C, called through ctypes (which releases the GIL):
    the first of :func:`crc32c_functions` that gives CRC-32C's check value; None where none does."""
    probe = np.frombuffer(b"123456789", np.uint8)
    return next((fn for fn in crc32c_functions() if fn(0, probe.ctypes.data, probe.nbytes) == 0xE3069283), None)


def crc32c_functions() -> Iterator[Callable[[int, int, int], int]]:
    """The C functions ``crc32c_extend(crc, address, size)`` found, the fastest first: streambatch's
    own that this CPU runs (``_native.crc32c_addresses``), then google_crc32c's library's (loaded
    only when asked for)."""
    yield from (_EXTEND(a) for a in crc32c_addresses() if a)
    import google_crc32c

    here = os.path.dirname(os.path.abspath(google_crc32c.__file__))
    for path in sorted(glob.glob(os.path.join(here, os.pardir, "google_crc32c.libs", "libcrc32c*"))
                       + glob.glob(os.path.join(here, os.pardir, "google_crc32c", ".dylibs", "libcrc32c*"))):
        try:
            fn = ctypes.CDLL(path).crc32c_extend
        except (OSError, AttributeError):
            continue
        fn.restype, fn.argtypes = ctypes.c_uint32, (ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t)
        yield fn


def _crc32(data: Any) -> int:
    return int(crc32(data))


def chunk_checksums(name: str, data: Any, chunk_bytes: int) -> list[int]:
    """Checksum ``name`` of each ``chunk_bytes`` of the contiguous buffer ``data`` in turn (a last
    shorter piece summed as it is): the stored inner chunks of an array, read with one call.
    CRC-32C goes to the native library, all chunks in one call of streambatch's C module with
    the GIL released (``crc_chunks``; without it, a ctypes call of about 1 us a chunk)."""
    view = np.frombuffer(data, np.uint8)
    native = native_crc32c() if name == "crc32c" and view.nbytes else None
    if native is not None:
        return crc_chunks(*native, view, chunk_bytes).tolist()
    one = checksum_fn(name)
    return [one(view[i:i + chunk_bytes]) for i in range(0, view.nbytes, chunk_bytes)]


@functools.cache
def native_crc32c() -> tuple[Callable[[int, int, int], int], int] | None:
    """The native CRC-32C (:func:`chunk_checksums`' ``crc32c_extend``) and its C address, for
    streambatch's C module to call; None where it is not found."""
    fn = _native_crc32c()
    return None if fn is None else (fn, ctypes.cast(fn, ctypes.c_void_p).value or 0)


def checksum_fn(name: str) -> Callable[[Any], int]:
    """The function computing checksum ``name`` of a contiguous buffer."""
    return {"crc32": _crc32, "crc32c": _crc32c}[name]


def extend_fn(name: str) -> Callable[[int, Any], int]:
    """``f(crc, data)``: checksum ``name`` of the bytes seen so far followed by ``data``."""
    return {"crc32": lambda crc, data: int(crc32(data, crc)), "crc32c": _crc32c_extend}[name]
