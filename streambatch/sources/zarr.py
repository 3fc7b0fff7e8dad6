"""Zarr input (v2 or v3): a store's arrays each a column (a lone array: named by the store's
stem); read in order.  A streambatch dataset in Zarr is read through its manifest (``dataset``)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ..errors import InputError
from .arrays import ArraySource
from .base import ReadOptions

__all__ = ["ZarrSource"]

_MARKERS = ("zarr.json", ".zgroup", ".zarray")


class ZarrSource(ArraySource):
    """A Zarr store (a folder with ``zarr.json``, ``.zgroup`` or ``.zarray``)."""

    name = "zarr"
    extensions = (".zarr",)
    detect_rank = 0  # its marker files name it whatever else the folder holds

    @classmethod
    def claims_folder(cls, path: Path, kinds: set[str]) -> bool:
        return any((path / m).exists() for m in _MARKERS)

    @classmethod
    def open(cls, path: Path, keep: tuple[str, ...] | None, opts: ReadOptions) -> ZarrSource:
        import zarr

        try:
            node = zarr.open(str(path), mode="r")
        except Exception as e:  # zarr raises several types for a broken store
            raise InputError(f"{path}: not a readable Zarr store ({e})") from None
        if isinstance(node, zarr.Array):
            arrays: dict[str, Any] = {path.stem or "x": node}
        else:
            with warnings.catch_warnings():  # files beside the arrays (a streambatch manifest) are not members
                warnings.filterwarnings("ignore", message="Object at .* is not recognized as a component")
                arrays = {name: a for name, a in node.arrays()}
        return cls(path, arrays, lambda n: f"{path}/{n}", keep)
