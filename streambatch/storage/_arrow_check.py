"""``streambatch verify`` for Arrow IPC files: every file whole.

The magic at both ends; the bytes before the first record batch (magic, padding, schema message)
and after the last (end-of-stream marker, footer, its length, magic) have the size and CRC-32C
recorded at conversion (``layout.head_size``/``head_crc32c``, ``layout.footer_size``/``footer_crc32c``);
the record batches lie back to back between them, in order (each checked by its unit's checksum).
"""

from __future__ import annotations

import numpy as np

from ._arrow_write import MAGIC
from ._integrity import FileChecker, back_to_back, crc32c, runs

__all__ = ["check_arrow_files"]


def check_arrow_files(check: FileChecker) -> str:
    """Every Arrow file whole: magic, schema message, record batches back to back, footer."""
    lay = check.m.layout
    n = 0
    for units in runs(lay["file"]):
        fi = int(lay["file"][units[0]])
        rel = check.m.files[fi]
        offset, size, head = lay["offset"][units], lay["size"][units], int(lay["head_size"][fi])
        if not np.array_equal(lay["batch"][units], np.arange(len(units))) or not back_to_back(offset, size, head):
            raise check.bad(rel, "record batches do not lie back to back after the schema message in order: "
                                 "manifest inconsistent")
        start = bytes(check.files.read(fi, 0, head, check.where(fi)))
        if start[:6] != MAGIC:
            raise check.bad(rel, "no Arrow magic at the start (damaged)")
        if crc32c(start) != int(lay["head_crc32c"][fi]):
            raise check.bad(rel, "schema message checksum mismatch (damaged)")
        end = int(offset[-1] + size[-1])
        footer = check.rest(fi, end, int(lay["footer_size"][fi]), f"{len(units)} record batches and the footer")
        if footer[-6:] != MAGIC:
            raise check.bad(rel, "no Arrow magic at the end (damaged)")
        if crc32c(footer) != int(lay["footer_crc32c"][fi]):
            raise check.bad(rel, "footer checksum mismatch (damaged)")
        n += 1
    return f"{n} Arrow files whole (magic, schema message, record batches back to back, footer: size and CRC-32C)"
