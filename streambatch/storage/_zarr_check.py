"""``streambatch verify`` for Zarr: every shard file whole, and the ``zarr.json`` documents.

A shard file is its inner chunks back to back from byte 0 in unit order, then exactly the shard
index (offset, size per inner chunk) that the manifest's offsets and sizes imply, then its
CRC-32C, and nothing more; each file is the one zarr reads for its units.  A ragged column's two
arrays (``_zarr_ragged``) are checked the same way, chunk by chunk.  ``zarr.json`` files
recorded with a size and CRC-32C are checked whole by the caller; older ones are parsed and
compared with the documents streambatch writes.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ._integrity import FileChecker, back_to_back, recorded_files, runs
from ._zarr_meta import chunk_key, metadata_documents, shard_index

__all__ = ["check_zarr_files"]


def check_zarr_files(check: FileChecker) -> str:
    """Every shard file whole, and the ``zarr.json`` files not recorded with a checksum."""
    lay = check.m.layout
    per_shard = lay.get("units_per_shard")
    if per_shard is None:  # written before it was recorded (no ragged columns then)
        first = lay["columns"][check.m.columns[0].name]["file"]
        per_shard = np.count_nonzero(first == first[0])
    per_shard = int(per_shard)
    shards = 0
    for col in check.m.columns:
        loc = lay["columns"][col.name]
        arrays = [(None, per_shard, loc)] if not col.ragged else [
            ("offsets", per_shard, loc["offsets"]), ("values", int(loc["values"]["per_shard"]), loc["values"])]
        for part, k, chunks in arrays:
            for units in runs(chunks["file"]) if len(chunks["file"]) else ():  # no values: no files
                _shard(check, col, part, k, units, chunks)
                shards += 1
    legacy = _zarr_documents(check, per_shard, {rel for rel, _, _ in recorded_files(check.m)})
    return (f"{shards} shard files whole (inner chunks back to back, shard index and its CRC-32C)"
            + (f"; {legacy} zarr.json file(s) against the documents streambatch writes "
               "(no checksum recorded)" if legacy else ""))

def _shard(check: FileChecker, col: Any, part: str | None, per_shard: int, units: np.ndarray,
           loc: dict[str, np.ndarray]) -> None:
    """The shard file of inner chunks ``units`` of ``col``'s array (``part`` of a ragged column)."""
    fi = int(loc["file"][units[0]])
    rel = check.m.files[fi]
    shard = int(units[0]) // per_shard
    key = chunk_key(col, shard, part)
    if rel != key or units[0] % per_shard or units[-1] - units[0] != len(units) - 1 or len(units) > per_shard:
        what = f"inner chunks {units[0]}..{units[-1]} of column {col.name!r}'s {part}" if part else \
            f"units {units[0]}..{units[-1]} of column {col.name!r}"
        raise check.bad(rel, f"holds {what}, which zarr reads from {key} ({per_shard} "
                             f"{'chunks' if part else 'units'} per shard): manifest inconsistent")
    offset, size = loc["offset"][units], loc["size"][units]
    if not back_to_back(offset, size, 0):
        raise check.bad(rel, "inner chunks do not lie back to back from byte 0: manifest inconsistent")
    want = shard_index(list(zip(offset.tolist(), size.tolist())), per_shard)
    got = check.rest(fi, int(offset[-1] + size[-1]), len(want),
                     f"{len(units)} inner chunks, a shard index of {per_shard} entries and its CRC-32C")
    if got[:-4] != want[:-4]:
        raise check.bad(rel, "shard index does not match the chunk offsets and sizes in the manifest (damaged)")
    if got != want:
        raise check.bad(rel, "shard index checksum mismatch (damaged)")

def _zarr_documents(check: FileChecker, per_shard: int, recorded: set[str]) -> int:
    """Check the ``zarr.json`` files without a recorded checksum against what streambatch
    writes for this dataset; return how many."""
    m = check.m
    rows = m.layout["unit_rows"]
    n = 0
    for rel, doc in metadata_documents(m.columns, m.rows, rows, per_shard * rows, m.codec):
        if rel in recorded:
            continue
        try:
            got = json.loads(check.read_whole(rel, None))
        except (ValueError, UnicodeDecodeError) as e:
            raise check.bad(rel, f"not valid JSON ({e})") from None
        if got != doc:
            raise check.bad(rel, "Zarr metadata differs from what streambatch writes for this dataset "
                                "(damaged or edited)")
        n += 1
    return n
