"""A write-only file object that counts and checksums the bytes pyarrow's writers write through
it (Parquet row groups and footers, Arrow record batches), so that the converter knows each
unit's byte range and CRC-32C without reading the file back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io.checksum import DEFAULT_CHECKSUM, extend_fn

__all__ = ["TrackingSink"]


class TrackingSink:
    """A write-only file object that counts bytes and checksums them as they pass."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "wb")
        self.pos = 0
        self.crc = 0
        self.mark = 0
        self.closed = False
        self._extend = extend_fn(DEFAULT_CHECKSUM)

    def write(self, data: Any) -> int:
        n = self._f.write(data)
        self.crc = self._extend(self.crc, data)
        self.pos += len(memoryview(data).cast("B"))
        return n

    def take_crc(self) -> int:
        """The checksum of the bytes written since the last call (from ``mark`` on), restarted."""
        c, self.crc, self.mark = self.crc, 0, self.pos
        return c

    def flush(self) -> None:
        self._f.flush()

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        if not self.closed:
            self._f.close()
            self.closed = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False
