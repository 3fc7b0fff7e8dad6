"""Unit checksums: CRC-32C (hardware-accelerated, the default) or zlib's CRC-32 (older datasets).

The algorithm is named in the manifest's layout (``"checksum"``; absent means ``"crc32"``,
what datasets written before CRC-32C recorded).  CRC-32C runs at about 9 GB/s on one core
against about 2 GB/s for zlib's CRC-32, which is what makes checking every unit on every read
cheap enough to be the loader's default (benchmarks/bench_faults.py).
"""

from __future__ import annotations

import zlib
from typing import Any, Callable

import numpy as np

__all__ = ["CHECKSUMS", "DEFAULT_CHECKSUM", "checksum_fn", "extend_fn"]

CHECKSUMS = ("crc32", "crc32c")
DEFAULT_CHECKSUM = "crc32c"


def _readonly(data: Any) -> np.ndarray:
    """A read-only uint8 view of any contiguous buffer (google_crc32c takes read-only buffers only)."""
    view = np.frombuffer(data, dtype=np.uint8)
    if view.flags.writeable:
        view = view.view()
        view.flags.writeable = False
    return view


def _crc32c(data: Any) -> int:
    import google_crc32c

    return int(google_crc32c.value(_readonly(data)))


def _crc32c_extend(crc: int, data: Any) -> int:
    import google_crc32c

    return int(google_crc32c.extend(crc, _readonly(data)))


def _crc32(data: Any) -> int:
    return zlib.crc32(data)


def checksum_fn(name: str) -> Callable[[Any], int]:
    """The function computing checksum ``name`` of a contiguous buffer."""
    return {"crc32": _crc32, "crc32c": _crc32c}[name]


def extend_fn(name: str) -> Callable[[int, Any], int]:
    """``f(crc, data)``: checksum ``name`` of the bytes seen so far followed by ``data``."""
    return {"crc32": lambda crc, data: zlib.crc32(data, crc), "crc32c": _crc32c_extend}[name]
