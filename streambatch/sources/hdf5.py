"""HDF5 input (h5py, an optional dependency): every dataset in the file a column, named by its
path with ``.`` for ``/``; read in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from .arrays import ArraySource
from .base import ReadOptions

__all__ = ["Hdf5Source"]


class Hdf5Source(ArraySource):
    """An HDF5 file's datasets, kept open until :meth:`close`."""

    name = "hdf5"
    extensions = (".h5", ".hdf5", ".hdf")
    _file: Any = None

    @classmethod
    def open(cls, path: Path, keep: tuple[str, ...] | None, opts: ReadOptions) -> Hdf5Source:
        try:
            import h5py
        except ImportError:
            raise InputError(f"{path}: reading HDF5 needs h5py: pip install 'streambatch[hdf5]'") from None
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise InputError(f"{path}: not a readable HDF5 file ({e})") from None
        arrays: dict[str, Any] = {}

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                arrays[name.replace("/", ".")] = obj

        f.visititems(visit)
        source = cls(path, arrays, lambda n: f"{path}:{n}", keep)
        source._file = f
        return source

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
