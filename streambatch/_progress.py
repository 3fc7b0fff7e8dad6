"""A small progress bar on stderr (rows, MB/s, time left), silent when stderr is not a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """``with Progress(total, "convert", row_bytes) as bar: bar.update(n)``."""

    def __init__(self, total: int, desc: str, row_bytes: int = 0, enabled: bool | None = None,
                 stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total, self.desc, self.row_bytes = max(1, total), desc, row_bytes
        self.done = 0
        self.t0 = time.monotonic()
        self._last = 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.2 or self.done >= self.total):
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        dt = max(now - self.t0, 1e-9)
        frac = min(1.0, self.done / self.total)
        rate = self.done / dt
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        bar = "#" * int(frac * 24)
        mbs = f" {rate * self.row_bytes / 1e6:7.1f} MB/s" if self.row_bytes else ""
        self.stream.write(f"\r{self.desc} [{bar:<24}] {self.done:,}/{self.total:,} rows{mbs} "
                          f"{left:5.0f}s left ")
        self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
