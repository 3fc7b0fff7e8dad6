"""Unit checksums: CRC-32C (hardware-accelerated, the default) or CRC-32 (older datasets).

The algorithm is named in the manifest's layout (``"checksum"``; absent means ``"crc32"``,
what datasets written before CRC-32C recorded).  CRC-32C is fast enough to check every unit on
every read by default; :func:`crc32` is zlib-ng's where installed (a dependency on CPython),
zlib's otherwise: the same values, faster (docs/PERFORMANCE.md, Checksums).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

try:
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover - PyPy, or an install without the wheel
    from zlib import crc32

__all__ = ["CHECKSUMS", "DEFAULT_CHECKSUM", "checksum_fn", "crc32", "extend_fn"]

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


def _crc32c(data: Any) -> int:
    import google_crc32c

    return int(google_crc32c.value(_readonly(data)))


def _crc32c_extend(crc: int, data: Any) -> int:
    import google_crc32c

    return int(google_crc32c.extend(crc, _readonly(data)))


def _crc32(data: Any) -> int:
    return int(crc32(data))


def checksum_fn(name: str) -> Callable[[Any], int]:
    """The function computing checksum ``name`` of a contiguous buffer."""
    return {"crc32": _crc32, "crc32c": _crc32c}[name]


def extend_fn(name: str) -> Callable[[int, Any], int]:
    """``f(crc, data)``: checksum ``name`` of the bytes seen so far followed by ``data``."""
    return {"crc32": lambda crc, data: int(crc32(data, crc)), "crc32c": _crc32c_extend}[name]
