"""NumPy ``.npy`` input: one file (one column) or a folder of them (a column each, by file name).
Read with plain file reads at any row: random access, from several threads at once."""

from __future__ import annotations

import math
import os
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ._columns import check_dtype, select
from .arrays import ArraySource
from .base import ReadOptions

__all__ = ["NpySource"]


class _NpyFile:
    """Rows of an .npy file read with plain file reads: unlike a memmap, the pages read are
    not mapped into the process, so the converter's RSS stays within its budget."""

    def __init__(self, path: Path) -> None:
        mm = np.load(path, mmap_mode="r", allow_pickle=False)
        self.path, self.shape, self.dtype = path, tuple(mm.shape), mm.dtype
        self.offset = int(mm.offset) if isinstance(mm, np.memmap) else 0
        fortran = mm.flags.f_contiguous and not mm.flags.c_contiguous and mm.ndim > 1
        del mm
        if fortran:
            raise ValueError("Fortran-ordered arrays are not supported")
        self.row_bytes = int(math.prod(self.shape[1:])) * self.dtype.itemsize
        self._fd: int | None = None
        self._closer: Any = None

    def __getitem__(self, rows: slice) -> np.ndarray:
        lo, hi, _ = rows.indices(self.shape[0])
        n = max(0, hi - lo)
        out = np.empty((n, *self.shape[1:]), self.dtype)
        if self._fd is None:  # opened once, closed with this object; preadv is safe from any thread
            fd = os.open(self.path, os.O_RDONLY)
            self._fd, self._closer = fd, weakref.finalize(self, os.close, fd)
        view = memoryview(out.reshape(-1).view(np.uint8))
        got = 0
        while got < len(view):
            k = os.preadv(self._fd, [view[got:]], self.offset + lo * self.row_bytes + got)
            if k == 0:
                raise InputError(f"{self.path}: file truncated at row {lo + got // max(1, self.row_bytes)}")
            got += k
        return out

    def close(self) -> None:
        if self._closer is not None:
            self._fd, closer, self._closer = None, self._closer, None
            closer()


def _npy_dtype(path: Path) -> np.dtype[Any] | None:
    """The dtype in an .npy header (``None`` if the header is unreadable)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            return np.dtype(read(f)[2])
    except (ValueError, OSError):
        return None


class NpySource(ArraySource):
    """An .npy file (column named by its stem, ``x`` if none) or a folder of .npy files."""

    name = "npy"
    extensions = (".npy",)

    @classmethod
    def claims_folder(cls, path: Path, kinds: set[str]) -> bool:
        return kinds == {"npy"}

    @classmethod
    def open(cls, path: Path, keep: tuple[str, ...] | None, opts: ReadOptions) -> NpySource:
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix.lower() == ".npy")
        if not files:
            raise InputError(f"{path}: folder holds no .npy files")
        if path.is_dir():  # only the selected files are opened (one may hold objects)
            chosen = set(select([f.stem for f in files], keep, str(path)))
            files = [f for f in files if f.stem in chosen]
        arrays: dict[str, Any] = {}
        for f in files:
            try:
                arrays[f.stem] = _NpyFile(f)
            except ValueError as e:
                dt = _npy_dtype(f)
                if dt is not None:
                    check_dtype(dt, f"{f}: column {f.stem!r}")  # names an object dtype as such
                raise InputError(f"{f}: cannot read as .npy without pickle ({e})") from None
            except OSError as e:
                raise InputError(f"{f}: cannot read: {e}") from None
        if path.is_file():
            arrays = {"x" if path.stem == "" else path.stem: arrays[path.stem]}
        # _NpyFile reads with preadv (no shared file position): ranges may be read from several threads
        return cls(path, arrays, lambda n: str(path / f"{n}.npy") if path.is_dir() else str(path), keep,
                   random_access=True)

    def close(self) -> None:
        for a in self._arrays.values():
            a.close()
