"""NumPy ``.npz`` input: each array of the archive (stored or deflated) a column, streamed out of
it in order without loading it whole."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputError
from ._columns import as_stored, check_names, equal_lengths, numpy_column, select
from .base import ReadOptions, Source

__all__ = ["NpzSource"]


class _NpzMember:
    """Streams one array out of an .npz archive (stored or deflated) without loading it whole."""

    def __init__(self, path: Path, member: str) -> None:
        self.path, self.member = path, member
        with zipfile.ZipFile(path) as z, z.open(member) as f:
            version = np.lib.format.read_magic(f)
            reader = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if reader is None:
                raise InputError(f"{path}: member {member}: unsupported .npy version {version}")
            shape, fortran, dtype = reader(f)
            self.header_len = f.tell()
        if fortran and len(shape) > 1:
            raise InputError(f"{path}: member {member}: Fortran-ordered arrays are not supported")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)

    def blocks(self, max_rows: int) -> Iterator[np.ndarray]:
        row_bytes = int(math.prod(self.shape[1:])) * self.dtype.itemsize
        rows = self.shape[0]
        with zipfile.ZipFile(self.path) as z, z.open(self.member) as f:
            f.read(self.header_len)
            for lo in range(0, rows, max_rows):
                n = min(max_rows, rows - lo)
                buf = f.read(n * row_bytes)
                if len(buf) != n * row_bytes:
                    raise InputError(f"{self.path}: member {self.member} is truncated at row {lo}")
                yield np.frombuffer(buf, dtype=self.dtype).reshape(n, *self.shape[1:])


class NpzSource(Source):
    """An .npz archive; read in order only (a deflated member cannot skip ahead)."""

    name = "npz"
    extensions = (".npz",)

    def __init__(self, path: Path, parts: dict[str, _NpzMember]) -> None:
        check_names(list(parts), str(path))
        cols = []
        for name, p in parts.items():
            if len(p.shape) == 0:
                raise InputError(f"{path}: column {name!r} is a scalar, expected rows along axis 0")
            cols.append(numpy_column(name, p.dtype, p.shape[1:], f"{path}: column {name!r}"))
        super().__init__(path, tuple(cols), equal_lengths({n: p.shape[0] for n, p in parts.items()}, str(path)))
        self._parts = parts

    @classmethod
    def open(cls, path: Path, keep: tuple[str, ...] | None, opts: ReadOptions) -> NpzSource:
        try:
            with zipfile.ZipFile(path) as z:
                members = [m for m in z.namelist() if m.endswith(".npy")]
        except (zipfile.BadZipFile, OSError) as e:
            raise InputError(f"{path}: not a readable .npz archive ({e})") from None
        if not members:
            raise InputError(f"{path}: archive holds no arrays")
        chosen = select([m[:-4] for m in members], keep, str(path))
        return cls(path, {n: _NpzMember(path, f"{n}.npy") for n in chosen})

    def _read(self, max_rows: int, names: tuple[str, ...]) -> Iterator[dict[str, np.ndarray]]:
        its = {n: self._parts[n].blocks(max_rows) for n in names}
        for _ in range(0, self.rows, max_rows):
            yield {n: as_stored(next(it)) for n, it in its.items()}
