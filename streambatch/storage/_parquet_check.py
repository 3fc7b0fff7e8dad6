"""``streambatch verify`` for Parquet: every file whole.

The magic at both ends; the row groups lie back to back from byte 4 in order; the bytes after the
last one (FileMetaData, its length, the magic) have the size and CRC-32C recorded at conversion
(``layout.footer_size``, ``layout.footer_crc32c``), or, for older datasets, pyarrow parses them
and they agree with the manifest (row groups, their rows and byte ranges, the schema).
"""

from __future__ import annotations

import numpy as np

from ..io.remote import RangeFile
from ._arrow_schema import arrow_schema
from ._integrity import FileChecker, back_to_back, crc32c, runs

__all__ = ["check_parquet_files"]


def check_parquet_files(check: FileChecker) -> str:
    """Every Parquet file whole: magic, row groups back to back, footer."""
    lay = check.m.layout
    recorded = "footer_crc32c" in lay
    n = 0
    for units in runs(lay["file"]):
        fi = int(lay["file"][units[0]])
        rel = check.m.files[fi]
        offset, size = lay["offset"][units], lay["size"][units]
        if not np.array_equal(lay["row_group"][units], np.arange(len(units))) or not back_to_back(offset, size, 4):
            raise check.bad(rel, "row groups do not lie back to back from byte 4 in order: manifest inconsistent")
        if bytes(check.files.read(fi, 0, 4, check.where(fi))) != b"PAR1":
            raise check.bad(rel, "no Parquet magic at the start (damaged)")
        end = int(offset[-1] + size[-1])
        if recorded:
            footer = check.rest(fi, end, int(lay["footer_size"][fi]), f"{len(units)} row groups and the footer")
            if crc32c(footer) != int(lay["footer_crc32c"][fi]):
                raise check.bad(rel, "footer checksum mismatch (damaged)")
        else:
            _parquet_footer(check, fi, units, end)
        n += 1
    how = "size and CRC-32C" if recorded else "parsed and compared with the manifest: no checksum recorded"
    return f"{n} Parquet files whole (magic, row groups back to back, footer: {how})"

def _parquet_footer(check: FileChecker, fi: int, units: np.ndarray, end: int) -> None:
    """A footer without a recorded checksum: where it should be, and agreeing with the manifest."""
    import pyarrow.parquet as pq

    rel, lay = check.m.files[fi], check.m.layout
    size = check.files.fd(fi, check.where(fi))[1]
    tail = bytes(check.files.read(fi, max(end, size - 8), min(8, size - end), check.where(fi)))
    if len(tail) < 8 or tail[4:] != b"PAR1" or end + int.from_bytes(tail[:4], "little") + 8 != size:
        raise check.bad(rel, "the footer does not follow the last row group as its length says (damaged)")
    try:
        if check.remote is not None:
            md = pq.ParquetFile(RangeFile(check.remote, rel)).metadata
        else:
            md = pq.ParquetFile(check.m.root / rel).metadata
        schema = md.schema.to_arrow_schema()
    except Exception as e:  # noqa: BLE001 - pyarrow raises OSError/ArrowInvalid on a broken footer
        raise check.bad(rel, f"footer not readable: {e}") from None
    # field metadata too: a FixedSizeBinary tensor's dtype and shape are only there
    if not schema.equals(arrow_schema(check.m.columns, lay.get("tensors")), check_metadata=True) \
            or md.num_row_groups != len(units):
        raise check.bad(rel, "footer's schema or row group count disagrees with the manifest (damaged)")
    for i, u in enumerate(units):
        rg, lo = md.row_group(i), int(lay["offset"][u])
        for j in range(rg.num_columns):
            cc = rg.column(j)
            at = cc.dictionary_page_offset if cc.has_dictionary_page else cc.data_page_offset
            if rg.num_rows != check.m.unit_rows[u] or not lo <= at <= at + cc.total_compressed_size <= lo + int(
                    lay["size"][u]):
                raise check.bad(rel, f"footer's row group {i} disagrees with the manifest's unit {u} (damaged)")
