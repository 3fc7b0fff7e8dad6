"""A streambatch dataset as input: a folder with a manifest, in any storage format of the
registry (``storage.FORMATS``), read through that format's own unit reader.

The reader puts each unit's bytes straight into place and checks every unit's checksum:
re-chunking, changing format or pre-shuffling a dataset runs at the loader's speed
(docs/PERFORMANCE.md, "A streambatch dataset as input").  A damaged unit is a ``DataError``
naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import ManifestError
from ..manifest import MANIFEST_NAME, Manifest
from ..storage import load_manifest, open_reader
from ._columns import select
from .base import ReadOptions, Source

__all__ = ["DatasetSource"]


class DatasetSource(Source):
    """The units of a dataset, any row range read without the rows before it, from any thread."""

    def __init__(self, path: Path, manifest: Manifest, keep: tuple[str, ...] | None) -> None:
        by_name = {c.name: c for c in manifest.columns}
        cols = tuple(by_name[n] for n in select(list(by_name), keep, str(path)))
        super().__init__(path, cols, manifest.rows, int(manifest.unit_rows.max()))
        self.format = manifest.storage
        self._manifest, self._by_name = manifest, by_name
        self._ends = manifest.unit_start + manifest.unit_rows

    @classmethod
    def open(cls, path: Path, keep: tuple[str, ...] | None, opts: ReadOptions | None = None) -> DatasetSource:
        """The dataset at ``path``; ``ManifestError`` if its manifest does not load."""
        return cls(path, load_manifest(path), keep)

    @property
    def random_access(self) -> bool:
        return True

    def _read(self, max_rows: int, names: tuple[str, ...]) -> Iterator[dict[str, np.ndarray]]:
        return self._read_range(max_rows, names, 0, self.rows)

    def _read_range(self, max_rows: int, names: tuple[str, ...], start: int,
                    stop: int) -> Iterator[dict[str, np.ndarray]]:
        m, by_name = self._manifest, self._by_name
        starts, ends = m.unit_start, self._ends
        reader = open_reader(m, verify=True)  # one per call: ranges are read from several threads
        try:
            u = int(np.searchsorted(ends, start, side="right"))
            for lo in range(start, stop, max_rows):
                hi = min(stop, lo + max_rows)
                piece = {n: np.empty((hi - lo, *by_name[n].shape), by_name[n].np_dtype) for n in names}
                at = lo
                while at < hi:
                    s, e = int(starts[u]), int(ends[u])
                    take = min(hi, e) - at
                    reader.read_into(u, at - s, at - s + take, {n: v[at - lo:at - lo + take] for n, v in piece.items()})
                    at += take
                    if at == e:
                        u += 1
                yield piece
        finally:
            reader.close()


def _open_dataset(path: Path, fmt: str, keep: tuple[str, ...] | None) -> Source | None:
    """Folder ``path`` as a streambatch dataset of storage format ``fmt``, or ``None`` where it has
    no valid manifest of that format (its files are then read as plain files of ``fmt``)."""
    if not (path / MANIFEST_NAME).is_file():
        return None
    try:
        manifest = load_manifest(path)
    except ManifestError:
        return None
    return DatasetSource(path, manifest, keep) if manifest.storage == fmt else None
