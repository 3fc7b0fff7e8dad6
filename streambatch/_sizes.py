"""Byte sizes as users write them: ``"512MiB"``, ``"1.5GB"``, ``4096``; and the cores a process may use."""

from __future__ import annotations

import os
import re

__all__ = ["parse_size", "format_size", "cores"]

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | float | str, what: str = "size") -> int:
    """Return ``value`` in bytes; raise ``ValueError`` naming ``what`` if it is not a size."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a byte size, got {value!r}")
    if isinstance(value, (int, float)):
        n = int(value)
    else:
        m = _PATTERN.match(str(value))
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"{what}: {value!r} is not a byte size (examples: 4096, 256KiB, 1GiB)")
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n <= 0:
        raise ValueError(f"{what}: must be positive, got {value!r}")
    return n


def format_size(n: float) -> str:
    """Human-readable binary size, e.g. ``format_size(3 * 2**20) == '3.0 MiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def cores() -> int:
    """The cores this process may run on (its CPU affinity, where the system tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1
