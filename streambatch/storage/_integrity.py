"""``streambatch verify``: every file of a dataset, every byte a reader depends on.

Unit checksums cover the bytes of each shuffle unit; these checks cover the rest of each file
(each format's ``check_files``, e.g. ``_zarr_check`` and ``_parquet_check``, with the
:class:`FileChecker` here):

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

import os
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import DataError
from ..io.checksum import checksum_fn
from ..io.files import ByteRanges
from ..manifest import MANIFEST_NAME, Manifest

__all__ = ["FileChecker", "recorded_files", "runs", "back_to_back", "crc32c"]

_MAX_METADATA = 1 << 20  # a zarr.json streambatch writes is about 1 KB
crc32c = checksum_fn("crc32c")


def recorded_files(manifest: Manifest) -> list[tuple[str, int, int]]:
    """Files checked whole: ``(path in the dataset, size, CRC-32C)`` recorded at conversion:
    Zarr's ``zarr.json`` files and the per-feature statistics files of wide columns (``_stats/``)."""
    meta = manifest.layout.get("metadata_crc32c", {})
    stats = [(e["path"], int(e["size"]), int(e["crc32c"])) for e in manifest.stats_files.values()]
    return [(rel, int(size), int(crc)) for rel, (size, crc) in meta.items()] + stats


def runs(file_of_unit: np.ndarray) -> Iterator[np.ndarray]:
    """The units of each file, ascending, file by file."""
    order = np.argsort(file_of_unit, kind="stable")
    yield from np.split(order, np.flatnonzero(np.diff(file_of_unit[order])) + 1)


def back_to_back(offset: np.ndarray, size: np.ndarray, start: int) -> bool:
    """Whether the byte ranges ``offset[i] : offset[i] + size[i]`` follow each other from ``start``."""
    return bool(offset[0] == start and np.array_equal(offset[1:], offset[:-1] + size[:-1]))


class FileChecker:
    """The whole-file checks of one dataset; each raises ``DataError`` naming the file."""

    def __init__(self, manifest: Manifest, remote: Any) -> None:
        self.m = manifest
        self.remote = remote
        self.files = ByteRanges(manifest, remote)

    def close(self) -> None:
        self.files.close()

    def bad(self, rel: str, what: str) -> DataError:
        return DataError(f"dataset {self.m.root}, file {rel}: {what}")

    def where(self, fi: int) -> Any:
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

    def read_whole(self, rel: str, size: int | None) -> bytes:
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

    def rest(self, fi: int, start: int, size: int, what: str) -> bytes:
        """Bytes ``start..`` of file ``fi``, after checking that the file ends ``size`` bytes later."""
        actual = self.files.fd(fi, self.where(fi))[1]
        if actual != start + size:
            raise self.bad(self.m.files[fi], f"{actual} bytes, expected {start + size} ({what}): "
                                             "truncated, extended or damaged")
        return bytes(self.files.read(fi, start, size, self.where(fi)))

    def whole(self, entries: Sequence[tuple[str, int, int]]) -> str:
        for rel, size, crc in entries:
            if crc32c(self.read_whole(rel, size)) != crc:
                raise self.bad(rel, "checksum mismatch (damaged)")
        return f"{len(entries)} metadata file(s) whole (size and CRC-32C)" if entries else ""
