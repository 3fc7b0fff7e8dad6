"""``streambatch verify``: every file of a dataset, every byte a reader depends on.

Unit checksums cover the bytes of each shuffle unit; these checks cover the rest of each file:

* Zarr shard files: the inner chunks lie back to back from byte 0 in unit order, and what
  follows them is exactly the shard index (offset, size per inner chunk) that the manifest's
  offsets and sizes imply, then its CRC-32C, and nothing more; each file is the one zarr reads
  for its units.  ``zarr.json`` (the group's and each array's): the size and CRC-32C recorded at
  conversion (``layout.metadata_crc32c``), or, for datasets written before that, parsed and
  compared with the documents streambatch writes.
* Parquet files: the magic at both ends; the row groups lie back to back from byte 4 in order;
  the bytes after the last one (FileMetaData, its length, the magic) have the size and CRC-32C
  recorded at conversion (``layout.footer_size``, ``layout.footer_crc32c``), or, for older
  datasets, pyarrow parses them and they agree with the manifest (row groups, their rows and
  byte ranges, the schema).
* Any other file recorded with a size and CRC-32C (:func:`recorded_files`, and ``extra``).
* The manifest: its own checksum is checked when it is loaded; here, that a manifest recording
  file checksums carries its own too (one with a damaged ``"checksum"`` key would otherwise load
  as a manifest written before manifests had one).

Every failure is a ``DataError`` naming the dataset and the file.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import DataError
from ..manifest import MANIFEST_NAME, Manifest
from ._checksum import checksum_fn
from ._files import ByteRanges

__all__ = ["recorded_files", "verify_dataset"]

_MAX_METADATA = 1 << 20  # a zarr.json streambatch writes is about 1 KB
_crc32c = checksum_fn("crc32c")


def recorded_files(manifest: Manifest) -> list[tuple[str, int, int]]:
    """Files checked whole: ``(path in the dataset, size, CRC-32C)`` recorded at conversion:
    Zarr's ``zarr.json`` files and the per-feature statistics files of wide columns (``_stats/``)."""
    meta = manifest.layout.get("metadata_crc32c", {})
    stats = [(e["path"], int(e["size"]), int(e["crc32c"])) for e in manifest.stats_files.values()]
    return [(rel, int(size), int(crc)) for rel, (size, crc) in meta.items()] + stats


def verify_dataset(manifest: Manifest, extra: Sequence[tuple[str, int, int]] = ()) -> str:
    """Check every file of the dataset, then every unit (checksum and decoding); return what
    was checked, in words.  ``extra``: more files to check whole, as ``(path, size, CRC-32C)``.

    Raises ``DataError`` naming the dataset and the file (and the column and unit for a unit's
    bytes) at the first damage found.
    """
    from ..remote import RemoteFiles, RemoteRoot
    from . import open_reader

    remote = RemoteFiles(manifest.root.url) if isinstance(manifest.root, RemoteRoot) else None
    check = _Checker(manifest, remote)
    reader = open_reader(manifest, verify=True, remote=remote)
    try:
        done = [check.manifest(), check.zarr() if manifest.storage == "zarr" else check.parquet(),
                check.whole([*recorded_files(manifest), *extra])]
        for u in range(manifest.n_units):
            reader.verify_unit(u)
    finally:
        check.close()
        reader.close()
    return "; ".join(["every unit's checksum and decoding", *(d for d in done if d)])


def _runs(file_of_unit: np.ndarray) -> Iterator[np.ndarray]:
    """The units of each file, ascending, file by file."""
    order = np.argsort(file_of_unit, kind="stable")
    yield from np.split(order, np.flatnonzero(np.diff(file_of_unit[order])) + 1)


def _back_to_back(offset: np.ndarray, size: np.ndarray, start: int) -> bool:
    return bool(offset[0] == start and np.array_equal(offset[1:], offset[:-1] + size[:-1]))


class _Checker:
    """The whole-file checks of one dataset; each raises ``DataError`` naming the file."""

    def __init__(self, manifest: Manifest, remote: Any) -> None:
        self.m = manifest
        self.remote = remote
        self.files = ByteRanges(manifest, remote)

    def close(self) -> None:
        self.files.close()

    def bad(self, rel: str, what: str) -> DataError:
        return DataError(f"dataset {self.m.root}, file {rel}: {what}")

    def _where(self, fi: int) -> Any:
        return lambda: f"dataset {self.m.root}, file {self.m.files[fi]}"

    def manifest(self) -> str:
        lay = self.m.layout
        if self.m.checksum:
            return "the manifest's own checksum"
        if "metadata_crc32c" in lay or "footer_crc32c" in lay:
            raise DataError(f"{self.m.root / MANIFEST_NAME}: no 'checksum' field, though the manifest records "
                            "its files' checksums (damaged or edited)")
        return "(the manifest has no checksum of its own: written by an older streambatch)"

    # ------------------------------------------------------------------ reading

    def _read_whole(self, rel: str, size: int | None) -> bytes:
        """File ``rel``, after checking that it has ``size`` bytes (when given; at most 1 MiB otherwise)."""
        try:
            actual = self.remote.size(rel) if self.remote is not None else os.stat(self.m.root / rel).st_size
        except OSError as e:  # a DataError from RemoteFiles too
            raise self.bad(rel, f"cannot read: {e.strerror or e}") from None
        if actual != size and (size is not None or actual > _MAX_METADATA):
            want = size if size is not None else f"at most {_MAX_METADATA}"
            raise self.bad(rel, f"{actual} bytes, expected {want} (truncated, extended or damaged)")
        try:
            if self.remote is not None:
                return bytes(self.remote.cat(rel))
            with open(self.m.root / rel, "rb") as f:
                return f.read(actual + 1)
        except OSError as e:
            raise self.bad(rel, f"cannot read: {e.strerror or e}") from None

    def _rest(self, fi: int, start: int, size: int, what: str) -> bytes:
        """Bytes ``start..`` of file ``fi``, after checking that the file ends ``size`` bytes later."""
        actual = self.files.fd(fi, self._where(fi))[1]
        if actual != start + size:
            raise self.bad(self.m.files[fi], f"{actual} bytes, expected {start + size} ({what}): "
                                             "truncated, extended or damaged")
        return bytes(self.files.read(fi, start, size, self._where(fi)))

    def whole(self, entries: Sequence[tuple[str, int, int]]) -> str:
        for rel, size, crc in entries:
            if _crc32c(self._read_whole(rel, size)) != crc:
                raise self.bad(rel, "checksum mismatch (damaged)")
        return f"{len(entries)} metadata file(s) whole (size and CRC-32C)" if entries else ""

    # ------------------------------------------------------------------ Zarr

    def zarr(self) -> str:
        """Every shard file whole, and the ``zarr.json`` files not recorded with a checksum."""
        lay = self.m.layout
        first = lay["columns"][self.m.columns[0].name]["file"]
        per_shard = int(lay.get("units_per_shard") or np.count_nonzero(first == first[0]))
        shards = 0
        for col in self.m.columns:
            loc = lay["columns"][col.name]
            for units in _runs(loc["file"]):
                self._shard(col, per_shard, units, loc)
                shards += 1
        legacy = self._zarr_documents(per_shard, {rel for rel, _, _ in recorded_files(self.m)})
        return (f"{shards} shard files whole (inner chunks back to back, shard index and its CRC-32C)"
                + (f"; {legacy} zarr.json file(s) against the documents streambatch writes "
                   "(no checksum recorded)" if legacy else ""))

    def _shard(self, col: Any, per_shard: int, units: np.ndarray, loc: dict[str, np.ndarray]) -> None:
        from .zarr_store import _EMPTY, _chunk_key

        fi = int(loc["file"][units[0]])
        rel = self.m.files[fi]
        shard = int(units[0]) // per_shard
        key = _chunk_key(col, shard)
        if rel != key or units[0] % per_shard or units[-1] - units[0] != len(units) - 1 or len(units) > per_shard:
            raise self.bad(rel, f"holds units {units[0]}..{units[-1]} of column {col.name!r}, which zarr reads "
                                f"from {key} ({per_shard} units per shard): manifest inconsistent")
        offset, size = loc["offset"][units], loc["size"][units]
        if not _back_to_back(offset, size, 0):
            raise self.bad(rel, "inner chunks do not lie back to back from byte 0: manifest inconsistent")
        index = np.full((per_shard, 2), _EMPTY, dtype="<u8")
        index[: len(units), 0], index[: len(units), 1] = offset, size
        want = index.tobytes()
        want += _crc32c(want).to_bytes(4, "little")
        got = self._rest(fi, int(offset[-1] + size[-1]), len(want),
                         f"{len(units)} inner chunks, a shard index of {per_shard} entries and its CRC-32C")
        if got[:-4] != want[:-4]:
            raise self.bad(rel, "shard index does not match the chunk offsets and sizes in the manifest (damaged)")
        if got != want:
            raise self.bad(rel, "shard index checksum mismatch (damaged)")

    def _zarr_documents(self, per_shard: int, recorded: set[str]) -> int:
        """Check the ``zarr.json`` files without a recorded checksum against what streambatch
        writes for this dataset; return how many."""
        from .zarr_store import metadata_documents

        m = self.m
        rows = m.layout["unit_rows"]
        n = 0
        for rel, doc in metadata_documents(m.columns, m.rows, rows, per_shard * rows, m.codec):
            if rel in recorded:
                continue
            try:
                got = json.loads(self._read_whole(rel, None))
            except (ValueError, UnicodeDecodeError) as e:
                raise self.bad(rel, f"not valid JSON ({e})") from None
            if got != doc:
                raise self.bad(rel, "Zarr metadata differs from what streambatch writes for this dataset "
                                    "(damaged or edited)")
            n += 1
        return n

    # ------------------------------------------------------------------ Parquet

    def parquet(self) -> str:
        """Every Parquet file whole: magic, row groups back to back, footer."""
        lay = self.m.layout
        recorded = "footer_crc32c" in lay
        n = 0
        for units in _runs(lay["file"]):
            fi = int(lay["file"][units[0]])
            rel = self.m.files[fi]
            offset, size = lay["offset"][units], lay["size"][units]
            if not np.array_equal(lay["row_group"][units], np.arange(len(units))) or not _back_to_back(offset, size, 4):
                raise self.bad(rel, "row groups do not lie back to back from byte 4 in order: manifest inconsistent")
            if bytes(self.files.read(fi, 0, 4, self._where(fi))) != b"PAR1":
                raise self.bad(rel, "no Parquet magic at the start (damaged)")
            end = int(offset[-1] + size[-1])
            if recorded:
                footer = self._rest(fi, end, int(lay["footer_size"][fi]), f"{len(units)} row groups and the footer")
                if _crc32c(footer) != int(lay["footer_crc32c"][fi]):
                    raise self.bad(rel, "footer checksum mismatch (damaged)")
            else:
                self._parquet_footer(fi, units, end)
            n += 1
        how = "size and CRC-32C" if recorded else "parsed and compared with the manifest: no checksum recorded"
        return f"{n} Parquet files whole (magic, row groups back to back, footer: {how})"

    def _parquet_footer(self, fi: int, units: np.ndarray, end: int) -> None:
        """A footer without a recorded checksum: where it should be, and agreeing with the manifest."""
        import pyarrow.parquet as pq

        from .parquet_store import arrow_schema

        rel, lay = self.m.files[fi], self.m.layout
        size = self.files.fd(fi, self._where(fi))[1]
        tail = bytes(self.files.read(fi, max(end, size - 8), min(8, size - end), self._where(fi)))
        if len(tail) < 8 or tail[4:] != b"PAR1" or end + int.from_bytes(tail[:4], "little") + 8 != size:
            raise self.bad(rel, "the footer does not follow the last row group as its length says (damaged)")
        try:
            if self.remote is not None:
                from ..remote import RangeFile

                md = pq.ParquetFile(RangeFile(self.remote, rel)).metadata
            else:
                md = pq.ParquetFile(self.m.root / rel).metadata
            schema = md.schema.to_arrow_schema()
        except Exception as e:  # noqa: BLE001 - pyarrow raises OSError/ArrowInvalid on a broken footer
            raise self.bad(rel, f"footer not readable: {e}") from None
        if not schema.equals(arrow_schema(self.m.columns)) or md.num_row_groups != len(units):
            raise self.bad(rel, "footer's schema or row group count disagrees with the manifest (damaged)")
        for i, u in enumerate(units):
            rg, lo = md.row_group(i), int(lay["offset"][u])
            for j in range(rg.num_columns):
                cc = rg.column(j)
                at = cc.dictionary_page_offset if cc.has_dictionary_page else cc.data_page_offset
                if rg.num_rows != self.m.unit_rows[u] or not lo <= at <= at + cc.total_compressed_size <= lo + int(
                        lay["size"][u]):
                    raise self.bad(rel, f"footer's row group {i} disagrees with the manifest's unit {u} (damaged)")
