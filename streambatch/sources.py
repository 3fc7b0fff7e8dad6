"""Input formats for ``streambatch convert``: each read in pieces, never whole.

A ``Source`` knows its columns and row count before any data is read and yields
``pieces(max_rows)``: dicts of numpy arrays, at most ``max_rows`` rows each, in row order.
A source with ``random_access`` (.npy, Parquet) reads any row range without reading what
comes before it, and its ranges may be read from several threads at once.
Detection is by path (``detect_format``) or forced with ``--from``.  Every problem is an
``InputError`` naming the file and the column (or row) and what is wrong.
"""

from __future__ import annotations

import json
import math
import os
import warnings
import weakref
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ._mapped import (Categories, Nulls, hive_layout, is_hive, null_rows, numpy_time_meta, own_columns, time_meta,
                      with_partitions)
from .errors import InputError
from .schema import Column
from .storage._arrow_schema import binary_tensor, binary_values

__all__ = ["Source", "SOURCE_FORMATS", "detect_format", "open_source"]

_EXT = {
    ".npy": "npy", ".npz": "npz", ".parquet": "parquet", ".pq": "parquet", ".csv": "csv",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow",
    ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5", ".zarr": "zarr",
}
SOURCE_FORMATS = ("npy", "npz", "parquet", "csv", "jsonl", "arrow", "hdf5", "zarr")


@dataclass
class Source:
    """A readable input: its path, columns, row count and a piece iterator."""

    path: Path
    format: str
    columns: tuple[Column, ...]
    rows: int
    _pieces: Callable[[int, tuple[str, ...]], Iterator[dict[str, np.ndarray]]] = field(repr=False)
    nbytes: int = 0
    _range: Callable[[int, tuple[str, ...], int, int], Iterator[dict[str, np.ndarray]]] | None = \
        field(default=None, repr=False)
    block_rows: int = 1
    """The most rows a range may have to read for one row (a Parquet row group, a dataset's unit):
    ranges that share such a block each read it."""
    nulls: Nulls = field(default_factory=Nulls)
    """The null options and, after a pass over ``pieces``, the values filled and rows dropped."""

    @property
    def random_access(self) -> bool:
        """Whether ``pieces(start=...)`` skips to its rows and is safe to call from several threads."""
        return self._range is not None

    def pieces(self, max_rows: int, names: tuple[str, ...] | None = None, start: int = 0,
               stop: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Yield rows ``start`` to ``stop`` (all by default) in order, ``max_rows`` at most per
        piece, for columns ``names``.  Without ``random_access`` a range reads past the rows before it."""
        names = names or tuple(c.name for c in self.columns)
        max_rows = max(1, max_rows)
        stop = self.rows if stop is None else min(stop, self.rows)
        if start <= 0 and stop == self.rows:
            yield from self._pieces(max_rows, names)
        elif self._range is not None:
            yield from self._range(max_rows, names, start, stop)
        else:
            yield from _trim(self._pieces(max_rows, names), names[0], 0, start, stop)


def _trim(pieces: Iterator[Any], first: str, row: int, start: int, stop: int) -> Iterator[Any]:
    """The rows ``start`` to ``stop`` of ``pieces``, whose first row is ``row``: a piece is a dict
    of arrays or ``(row, dict)`` for pieces that say where they start."""
    for p in pieces:
        if isinstance(p, tuple):
            row, p = p
        n = len(p[first])
        lo, hi = max(0, start - row), min(n, stop - row)
        if hi > lo:
            yield p if (lo, hi) == (0, n) else {k: v[lo:hi] for k, v in p.items()}
        row += n
        if row >= stop:
            return


def detect_format(path: Path) -> str:
    """The input format of ``path`` by its extension or folder contents; ``InputError`` if unknown."""
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    ext = path.suffix.lower()
    if path.is_dir():
        if (path / "zarr.json").exists() or (path / ".zgroup").exists() or (path / ".zarray").exists():
            return "zarr"
        kinds = {_EXT.get(p.suffix.lower()) for p in path.iterdir() if p.is_file() and not p.name.startswith(".")}
        kinds.discard(None)
        if kinds == {"npy"}:
            return "npy"
        if kinds == {"parquet"} or (not kinds and is_hive(path)):
            return "parquet"
        if kinds == {"arrow"}:  # a streambatch dataset of Arrow files (read through its manifest)
            return "arrow"
        raise InputError(f"{path}: cannot tell the input format of this folder (expected .npy files, "
                         "Parquet files, key=value partition folders, a Zarr store or a streambatch "
                         "dataset); pass --from")
    if ext in _EXT:
        return _EXT[ext]
    raise InputError(f"{path}: unknown file extension {ext!r}; pass --from with one of {', '.join(SOURCE_FORMATS)}")


def _check_dtype(dt: np.dtype[Any], where: str) -> str:
    if dt.kind in "biuf" and dt.itemsize <= 8 and dt.fields is None:
        return np.dtype(dt).newbyteorder("=").name
    what = {"O": "object", "c": "complex", "U": "string", "S": "bytes", "M": "datetime", "m": "timedelta",
            "V": "structured/void"}.get(dt.kind, str(dt))
    raise InputError(f"{where}: unsupported dtype {dt} ({what}); streambatch stores numeric and bool columns")


def _numpy_column(name: str, dt: np.dtype[Any], shape: tuple[int, ...], where: str) -> Column:
    """A column of numpy dtype ``dt``: datetime64 / timedelta64 stored as int64 with their unit."""
    meta = numpy_time_meta(dt, where)
    return Column(name, "int64", shape, meta=meta) if meta else Column(name, _check_dtype(dt, where), shape)


def _as_stored(a: np.ndarray) -> np.ndarray:
    """``a`` as its column stores it: datetime64 / timedelta64 viewed as int64."""
    return a.view(np.dtype(np.int64).newbyteorder(a.dtype.byteorder)) if a.dtype.kind in "Mm" else a


def _check_names(names: list[str], where: str) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise InputError(f"{where}: duplicate column name {n!r}")
        if not n or "/" in n or "\\" in n or n.startswith(".") or "\x00" in n:
            raise InputError(f"{where}: column name {n!r} cannot be stored (empty, or has '/' or a leading '.')")
        seen.add(n)


def _select(names: list[str], keep: tuple[str, ...] | None, where: str) -> list[str]:
    """The input's column names to read, in the input's order: all of them, or those in
    ``keep`` (``--columns``; each must exist).  Columns left out are never validated, so an
    input with, say, a string column converts with ``--columns`` naming the numeric ones."""
    if keep is None:
        return names
    unknown = [n for n in keep if n not in names]
    if unknown:
        raise InputError(f"{where}: no column(s) {unknown}; columns are {names}")
    wanted = set(keep)
    return [n for n in names if n in wanted]


def _equal_lengths(lengths: dict[str, int], where: str) -> int:
    if not lengths:
        raise InputError(f"{where}: no columns found")
    vals = set(lengths.values())
    if len(vals) > 1:
        desc = ", ".join(f"{k}={v}" for k, v in lengths.items())
        raise InputError(f"{where}: columns have different lengths ({desc})")
    rows = vals.pop()
    if rows == 0:
        raise InputError(f"{where}: input is empty (0 rows)")
    return rows


# --------------------------------------------------------------------------- numpy-like arrays


def _array_source(path: Path, fmt: str, arrays: dict[str, Any], where_of: Callable[[str], str],
                  keep: tuple[str, ...] | None, random_access: bool = False) -> Source:
    """A source over named array-likes supporting ``shape``, ``dtype`` and slicing (memmap, h5py, zarr)."""
    arrays = {n: arrays[n] for n in _select(list(arrays), keep, str(path))}
    _check_names(list(arrays), str(path))
    cols = []
    for name, a in arrays.items():
        if len(a.shape) == 0:
            raise InputError(f"{where_of(name)}: column {name!r} is a scalar, expected rows along axis 0")
        cols.append(_numpy_column(name, np.dtype(a.dtype), tuple(int(d) for d in a.shape[1:]),
                                  f"{where_of(name)}: column {name!r}"))
    rows = _equal_lengths({n: int(a.shape[0]) for n, a in arrays.items()}, str(path))
    for c in cols:
        if c.shape and c.row_items == 0:
            raise InputError(f"{where_of(c.name)}: column {c.name!r} has empty rows (shape {c.shape})")

    def ranged(max_rows: int, names: tuple[str, ...], start: int, stop: int) -> Iterator[dict[str, np.ndarray]]:
        for lo in range(start, stop, max_rows):
            hi = min(stop, lo + max_rows)
            yield {n: _as_stored(np.asarray(arrays[n][lo:hi])) for n in names}

    def pieces(max_rows: int, names: tuple[str, ...]) -> Iterator[dict[str, np.ndarray]]:
        return ranged(max_rows, names, 0, rows)

    nbytes = sum(c.row_nbytes for c in cols) * rows
    return Source(path, fmt, tuple(cols), rows, pieces, nbytes, ranged if random_access else None)


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


def _npy_dtype(path: Path) -> np.dtype[Any] | None:
    """The dtype in an .npy header (``None`` if the header is unreadable)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            return np.dtype(read(f)[2])
    except (ValueError, OSError):
        return None


def _open_npy(path: Path, keep: tuple[str, ...] | None) -> Source:
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix.lower() == ".npy")
    if not files:
        raise InputError(f"{path}: folder holds no .npy files")
    if path.is_dir():  # only the selected files are opened (one may hold objects)
        chosen = set(_select([f.stem for f in files], keep, str(path)))
        files = [f for f in files if f.stem in chosen]
    arrays: dict[str, Any] = {}
    for f in files:
        try:
            arrays[f.stem] = _NpyFile(f)
        except ValueError as e:
            dt = _npy_dtype(f)
            if dt is not None:
                _check_dtype(dt, f"{f}: column {f.stem!r}")  # names an object dtype as such
            raise InputError(f"{f}: cannot read as .npy without pickle ({e})") from None
        except OSError as e:
            raise InputError(f"{f}: cannot read: {e}") from None
    if path.is_file():
        arrays = {"x" if path.stem == "" else path.stem: arrays[path.stem]}
    # _NpyFile reads with preadv (no shared file position): ranges may be read from several threads
    return _array_source(path, "npy", arrays, lambda n: str(path / f"{n}.npy") if path.is_dir() else str(path),
                         keep, random_access=True)


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


def _open_npz(path: Path, keep: tuple[str, ...] | None) -> Source:
    try:
        with zipfile.ZipFile(path) as z:
            members = [m for m in z.namelist() if m.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"{path}: not a readable .npz archive ({e})") from None
    if not members:
        raise InputError(f"{path}: archive holds no arrays")
    chosen = _select([m[:-4] for m in members], keep, str(path))
    parts = {n: _NpzMember(path, f"{n}.npy") for n in chosen}
    _check_names(list(parts), str(path))
    cols = []
    for name, p in parts.items():
        if len(p.shape) == 0:
            raise InputError(f"{path}: column {name!r} is a scalar, expected rows along axis 0")
        cols.append(_numpy_column(name, p.dtype, p.shape[1:], f"{path}: column {name!r}"))
    rows = _equal_lengths({n: p.shape[0] for n, p in parts.items()}, str(path))

    def pieces(max_rows: int, names: tuple[str, ...]) -> Iterator[dict[str, np.ndarray]]:
        its = {n: parts[n].blocks(max_rows) for n in names}
        for _ in range(0, rows, max_rows):
            yield {n: _as_stored(next(it)) for n, it in its.items()}

    return Source(path, "npz", tuple(cols), rows, pieces, sum(c.row_nbytes for c in cols) * rows)


def _open_hdf5(path: Path, keep: tuple[str, ...] | None) -> Source:
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
    return _array_source(path, "hdf5", arrays, lambda n: f"{path}:{n}", keep)


def _open_zarr(path: Path, keep: tuple[str, ...] | None) -> Source:
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
    return _array_source(path, "zarr", arrays, lambda n: f"{path}/{n}", keep)


# --------------------------------------------------------------------------- Arrow-based


def _arrow_column(field: Any, where: str) -> Column:
    import pyarrow as pa

    t = field.type
    try:  # a tensor of a streambatch Parquet file: its rows' bytes, dtype and shape in field metadata
        tensor = binary_tensor(field)
    except ValueError as e:
        raise InputError(f"{where}: column {field.name!r}: {e}") from None
    if tensor is not None:
        return Column(field.name, tensor[0], tensor[1])
    shape: list[int] = []
    meta_shape = None
    if field.metadata and b"streambatch.shape" in field.metadata:
        meta_shape = json.loads(field.metadata[b"streambatch.shape"])
    if isinstance(t, pa.FixedShapeTensorType):
        # ``shape`` is the physical shape; rows come out of ``to_numpy_ndarray`` permuted
        perm = t.permutation if t.permutation is not None else range(len(t.shape))
        shape = [int(t.shape[p]) for p in perm]
        t = t.value_type
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        shape.append(t.list_size if pa.types.is_fixed_size_list(t) else -1)
        t = t.value_type
    cw = f"{where}: column {field.name!r}"
    meta = None
    if pa.types.is_dictionary(t) and not shape:  # codes; the categories are read by _batch_source
        v = t.value_type
        if not (pa.types.is_string(v) or pa.types.is_large_string(v) or pa.types.is_integer(v)
                or pa.types.is_floating(v)):
            raise InputError(f"{cw}: unsupported categories of type {v}; streambatch keeps string or number categories")
        return Column(field.name, "int8", (), meta={"type": "category", "categories": [], "ordered": t.ordered})
    if pa.types.is_boolean(t):
        dtype = "bool"
    elif pa.types.is_integer(t) or pa.types.is_floating(t):
        dtype = _check_dtype(np.dtype(t.to_pandas_dtype()), cw)
    elif pa.types.is_timestamp(t) or pa.types.is_duration(t):
        dtype, meta = "int64", time_meta("timestamp" if pa.types.is_timestamp(t) else "duration", t.unit,
                                         getattr(t, "tz", None))
    else:
        raise InputError(f"{cw}: unsupported type {field.type}; streambatch stores numeric and bool columns")
    if meta_shape is not None and shape and all(s > 0 for s in shape) and math.prod(meta_shape) == math.prod(shape):
        shape = [int(s) for s in meta_shape]
    return Column(field.name, dtype, tuple(shape), meta=meta)


def _at(row0: int | np.ndarray, i: int) -> int:
    """The input row of row ``i`` of a piece: ``row0`` is its first row, or (after rows were
    dropped) every row's."""
    return int(row0[i]) if isinstance(row0, np.ndarray) else row0 + i


def _arrow_to_numpy(arr: Any, col: Column, where: str, row0: int | np.ndarray, nulls: Nulls | None = None,
                    cats: Categories | None = None) -> np.ndarray:
    """One Arrow column chunk to numpy, checking nulls (filling them with ``nulls.fill``) and
    (for lists) that rows are not ragged; a dictionary column gives its codes into ``cats``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cw = f"{where}: column {col.name!r}"
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if cats is not None:
        arr = cats.codes(arr)
    tensor = None
    if isinstance(arr.type, pa.FixedShapeTensorType):
        tensor, arr = arr, arr.storage
    hint = f"; pass --fill {col.name}=VALUE or --drop-nulls" if not col.shape else "; pass --drop-nulls"
    if arr.null_count:
        fill = nulls.fill.get(col.name) if nulls is not None else None
        if fill is None:  # list columns have none (Nulls.check)
            bad = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
            raise InputError(f"{cw}: missing value at row {_at(row0, bad)}{hint}")
        assert nulls is not None
        nulls.filled[col.name] += arr.null_count
        arr = pc.fill_null(arr, pa.scalar(fill.item(), arr.type))
    n = len(arr)
    if pa.types.is_fixed_size_binary(arr.type) and col.shape:  # rows of a tensor's bytes (binary_tensor)
        return binary_values(arr, col.np_dtype, col.shape)
    if tensor is not None:  # the type fixes every row's shape: rows cannot be ragged
        if arr.flatten().null_count:
            raise InputError(f"{cw}: missing value inside a tensor near row {_at(row0, 0)}{hint}")
        if n == 0:
            return np.empty((0, *col.shape), col.np_dtype)
        return np.asarray(tensor.to_numpy_ndarray()).reshape(n, *col.shape).astype(col.np_dtype, copy=False)
    dims: list[int] = []
    level = 0
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        if pa.types.is_fixed_size_list(arr.type):  # its size, also when metadata reshapes the column
            expect = arr.type.list_size
        else:
            expect = col.shape[level] if col.shape[level] > 0 else (int(lengths[0]) if len(lengths) else 0)
        bad = np.flatnonzero(lengths != expect)
        if bad.size:
            raise InputError(f"{cw}: ragged rows: row {_at(row0, int(bad[0]) // math.prod(dims))} "
                             f"has {int(lengths[bad[0]])} values where {expect} were expected")
        dims.append(expect)
        arr = arr.flatten()
        if arr.null_count:
            raise InputError(f"{cw}: missing value inside a list near row {_at(row0, 0)}{hint}")
        level += 1
    values = arr.to_numpy(zero_copy_only=False)
    shape = col.shape if all(d > 0 for d in col.shape) else dims  # col.shape: the streambatch.shape metadata
    out = values.reshape(n, *shape).astype(col.np_dtype, copy=False)
    return out


def _infer_list_shapes(cols: list[Column], first: Any, where: str) -> list[Column]:
    """Fill in the shape of variable-size list columns from the first batch."""
    out = []
    for c in cols:
        if any(s < 0 for s in c.shape):
            full = np.flatnonzero(~null_rows(first.column(c.name))) if first is not None else []
            if len(full) == 0:
                raise InputError(f"{where}: column {c.name!r}: cannot tell the row shape of a list column from "
                                 "its first rows (empty, or each with a null)")
            arr = _arrow_to_numpy(first.column(c.name).slice(int(full[0]), 1), c, where, int(full[0]))
            c = replace(c, shape=tuple(int(d) for d in arr.shape[1:]))
        out.append(c)
    return out


@dataclass
class _Opts:
    """How to read an input beyond its columns: its nulls, and a CSV's delimiter."""

    nulls: Nulls = field(default_factory=Nulls)
    delimiter: str | None = None


def _null_mask(batch: Any, names: tuple[str, ...]) -> np.ndarray:
    """Rows of an Arrow batch with a null in any of ``names``."""
    mask = np.zeros(batch.num_rows, bool)
    for n in names:
        mask |= null_rows(batch.column(n))
    return mask


def _scan(batches: Callable[[int, tuple[str, ...]], Iterator[Any]], cats: dict[str, Categories],
          drop: tuple[str, ...], row_nbytes: int) -> int:
    """One pass over the columns that need it before any row is written: the categories of
    dictionary columns (``cats`` take them in) and the rows ``drop`` leaves out (returned).
    ``row_nbytes``: the decoded bytes of a row of these columns (batches of about 8 MiB)."""
    import pyarrow as pa

    dropped = 0
    for b in batches(max(1, (8 << 20) // max(1, row_nbytes)), tuple(dict.fromkeys([*cats, *drop]))):
        if isinstance(b, dict):  # decoded in place: REQUIRED numbers, neither nulls nor dictionaries
            continue
        for n, c in cats.items():
            col = b.column(n)
            for chunk in col.chunks if isinstance(col, pa.ChunkedArray) else [col]:
                c.add(chunk)
        dropped += int(_null_mask(b, drop).sum()) if drop else 0
    return dropped


def _batch_source(path: Path, fmt: str, schema: Any, rows: int,
                  batches: Callable[[int, tuple[str, ...]], Iterator[Any]],
                  first_batch: Callable[[], Any] | None, keep: tuple[str, ...] | None,
                  batches_from: Callable[[int, tuple[str, ...], int], Iterator[tuple[int, Any]]] | None = None,
                  block_rows: int = 1, opts: _Opts | None = None, given: dict[str, Column] | None = None) -> Source:
    """A source over Arrow record batches (or dicts of arrays already decoded).  ``batches_from``
    (max_rows, names, start) yields ``(first row, batch)`` from the batch holding row ``start``
    on: with it, the source has random access, unless ``opts`` asks to fill or drop nulls (the
    rows of a range then depend on the rows before it).  ``given`` holds columns the schema
    cannot describe (Hive partition keys)."""
    import pyarrow as pa

    where = str(path)
    nulls = opts.nulls if opts is not None else Nulls()
    chosen = _select(list(schema.names), keep, where)
    fields = [f for f in schema if keep is None or f.name in chosen]
    _check_names([f.name for f in fields], where)
    if rows == 0:  # before the types: an empty CSV or JSON file has only null-typed columns
        raise InputError(f"{where}: input is empty (0 rows)")
    cols = [(given or {}).get(f.name) or _arrow_column(f, where) for f in fields]
    if any(s < 0 for c in cols for s in c.shape):
        cols = _infer_list_shapes(cols, first_batch() if first_batch else None, where)
    cats = {c.name: Categories(c, where) for c in cols
            if c.meta and c.meta["type"] == "category" and c.name not in (given or {})}
    drop = nulls.drop_names(c.name for c in cols)
    if cats or drop:
        scanned = {c.name: c for c in cols if c.name in cats or c.name in drop}
        nulls.dropped = _scan(batches, cats, drop, sum(c.row_nbytes for c in scanned.values()))
        cols = [cats[c.name].column() if c.name in cats else c for c in cols]
        if nulls.dropped == rows:
            raise InputError(f"{where}: every one of the {rows} rows has a null; --drop-nulls leaves nothing")
        rows -= nulls.dropped
    by_name = {c.name: c for c in cols}

    def decoded(numbered: Iterator[tuple[int, Any]], max_rows: int,
                names: tuple[str, ...]) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        for row0, b in numbered:
            if isinstance(b, dict):  # already decoded (a Parquet row group read in place), at most max_rows
                yield row0, b if len(b) == len(names) else {n: b[n] for n in names}
                continue
            for lo in range(0, b.num_rows, max_rows):
                part = b.slice(lo, max_rows)
                at: int | np.ndarray = row0 + lo
                gone = _null_mask(part, drop) if drop else None
                if gone is not None and gone.any():  # rows dropped: errors name each row's input row
                    nulls.dropped += int(gone.sum())
                    part, at = part.filter(pa.array(~gone)), row0 + lo + np.flatnonzero(~gone)
                    if part.num_rows == 0:
                        continue
                yield row0 + lo, {n: _arrow_to_numpy(part.column(n), by_name[n], where, at, nulls, cats.get(n))
                                  for n in names}

    def pieces(max_rows: int, names: tuple[str, ...]) -> Iterator[dict[str, np.ndarray]]:
        nulls.restart()
        read = tuple(dict.fromkeys([*names, *drop]))  # a row's nulls drop it whatever columns are asked for
        for _, piece in decoded(_numbered(batches(max_rows, read), 0, read[0]), max_rows, names):
            yield piece

    def near(max_rows: int, names: tuple[str, ...], start: int, stop: int) -> Iterator[tuple[int, Any]]:
        """The batches holding rows ``start`` to ``stop``, Arrow ones cut to them before decoding."""
        assert batches_from is not None
        for row0, b in batches_from(max_rows, names, start):
            n = len(b[names[0]]) if isinstance(b, dict) else b.num_rows
            if row0 >= stop:
                return
            if row0 + n <= start:
                continue
            if not isinstance(b, dict) and (row0 < start or row0 + n > stop):
                lo = max(0, start - row0)
                b = b.slice(lo, min(n, stop - row0) - lo)
                row0 += lo
            yield row0, b

    def ranged(max_rows: int, names: tuple[str, ...], start: int, stop: int) -> Iterator[dict[str, np.ndarray]]:
        return _trim(decoded(near(max_rows, names, start, stop), max_rows, names), names[0], 0, start, stop)

    return Source(path, fmt, tuple(cols), rows, pieces, sum(c.row_nbytes for c in cols) * rows,
                  ranged if batches_from is not None and not nulls.active else None, block_rows, nulls)


def _open_parquet(path: Path, keep: tuple[str, ...] | None, opts: _Opts) -> Source:
    import pyarrow as pa
    import pyarrow.parquet as pq

    hive = hive_layout(path) if path.is_dir() else None
    files = hive.files if hive else [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.suffix.lower() in (".parquet", ".pq"))
    if not files:
        raise InputError(f"{path}: folder holds no Parquet files")
    handles = []
    for f in files:
        try:
            handles.append(pq.ParquetFile(f))
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError
            raise InputError(f"{f}: not a readable Parquet file ({e})") from None
    schema = handles[0].schema_arrow
    for f, h in zip(files[1:], handles[1:]):
        if h.schema_arrow.names != schema.names:
            raise InputError(f"{f}: columns {h.schema_arrow.names} differ from {files[0].name}'s {schema.names}")
        for a, b in zip(schema, h.schema_arrow):
            # categoricals: files with more categories have wider codes; the values must agree
            if a.type != b.type and not (pa.types.is_dictionary(a.type) and pa.types.is_dictionary(b.type)
                                         and a.type.value_type == b.type.value_type):
                raise InputError(f"{f}: column {b.name!r} is {b.type}, {files[0].name} has {a.type}")
    if hive:
        both = [k for k in hive.columns if k in schema.names]
        if both:
            raise InputError(f"{files[0]}: column {both[0]!r} is also a partition key of {path}")
        schema = pa.schema([*schema, *(pa.field(k, pa.from_numpy_dtype(c.np_dtype)) for k, c in hive.columns.items())])
    rows = sum(h.metadata.num_rows for h in handles)

    file_rows = [h.metadata.num_rows for h in handles]

    def read_groups(fi: int, h: Any, group: list[int], names: tuple[str, ...]) -> Iterator[Any]:
        """Row groups ``group`` of file ``fi``, with its partition keys among ``names``."""
        own = own_columns(hive, names)
        for b in _named(files[fi], group, lambda: h.read_row_groups(group, columns=list(own),
                                                                    use_threads=False).to_batches()):
            yield with_partitions(b, hive, fi, names)

    def streamed(fi: int, h: Any, i: int, max_rows: int, names: tuple[str, ...]) -> Iterator[Any]:
        """Row group ``i`` of file ``fi`` in batches of ``max_rows``, with its partition keys."""
        for b in _named(files[fi], [i], lambda: h.iter_batches(batch_size=max_rows, row_groups=[i], use_threads=False,
                                                               columns=list(own_columns(hive, names)))):
            yield with_partitions(b, hive, fi, names)

    def batches_from(max_rows: int, names: tuple[str, ...], start: int) -> Iterator[tuple[int, Any]]:
        """(first row, batch) from the row group holding row ``start`` on.  Each call opens the
        files it reads (ranges are read from several threads); files before ``start`` are skipped
        by their row counts."""
        row = 0
        for fi, (f, n_file) in enumerate(zip(files, file_rows)):
            if row + n_file <= start:
                row += n_file
                continue
            h = pq.ParquetFile(f)
            meta = h.metadata
            # Whole row groups, as many as fit in max_rows at a time: iter_batches over many small
            # row groups (such as streambatch's own) ran 9x slower.
            group: list[int] = []
            group_row = row
            taken = 0
            for i in range(meta.num_row_groups):
                n = meta.row_group(i).num_rows
                if row + n <= start:
                    row += n
                    group_row = row
                    continue
                if group and taken + n > max_rows:
                    yield from _numbered(read_groups(fi, h, group, names), group_row, names[0])
                    group, taken, group_row = [], 0, row
                if n > max_rows:  # one big row group: stream it in pieces
                    yield from _numbered(streamed(fi, h, i, max_rows, names), row, names[0])
                    row += n
                    group_row = row
                    continue
                group.append(i)
                taken += n
                row += n
            if group:
                yield from _numbered(read_groups(fi, h, group, names), group_row, names[0])

    def batches(max_rows: int, names: tuple[str, ...]) -> Iterator[Any]:
        for _, b in batches_from(max_rows, names, 0):
            yield b

    def first() -> Any:
        return next(handles[0].iter_batches(batch_size=1), None)

    biggest = max((h.metadata.row_group(i).num_rows for h in handles for i in range(h.metadata.num_row_groups)),
                  default=1)
    return _batch_source(path, "parquet", schema, rows, batches, first, keep, batches_from, max(1, biggest), opts,
                         hive.columns if hive else None)


def _named(path: Path, groups: list[int], read: Callable[[], Any]) -> Iterator[Any]:
    """The batches ``read()`` gives, pyarrow's errors for a damaged file (several lines, no file
    name) as one-line ``InputError``s naming the file and the row groups."""
    try:
        yield from read()
    except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError, ArrowIOError an OSError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = f"row group {groups[0]}" if len(groups) == 1 else f"row groups {groups[0]}-{groups[-1]}"
        raise InputError(f"{path}: cannot read {where}: {first}") from None


def _numbered(batches: Iterator[Any], row: int, first: str) -> Iterator[tuple[int, Any]]:
    """``(first row, batch)`` for consecutive batches (Arrow record batches or dicts of arrays)."""
    for b in batches:
        yield row, b
        row += len(b[first]) if isinstance(b, dict) else b.num_rows


def _open_arrow(path: Path, keep: tuple[str, ...] | None, opts: _Opts) -> Source:
    import pyarrow as pa

    try:
        source = pa.memory_map(str(path), "r")
        try:
            reader = pa.ipc.open_file(source)
        except pa.ArrowInvalid:
            source = pa.memory_map(str(path), "r")
            reader = pa.ipc.open_stream(source).read_all()
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError
        raise InputError(f"{path}: not a readable Arrow IPC / Feather file ({e})") from None
    if isinstance(reader, pa.Table):
        table = reader
        schema, rows = table.schema, table.num_rows

        def batches(max_rows: int, names: tuple[str, ...]) -> Iterator[Any]:
            yield from table.select(list(names)).to_batches(max_chunksize=max_rows)

        return _batch_source(path, "arrow", schema, rows, batches, lambda: table.slice(0, 1), keep, opts=opts)

    def batches_file(max_rows: int, names: tuple[str, ...]) -> Iterator[Any]:
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i).select(list(names))

    rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    return _batch_source(path, "arrow", reader.schema, rows, batches_file,
                         lambda: reader.get_batch(0) if reader.num_record_batches else None, keep, opts=opts)


def _text_source(path: Path, fmt: str, open_reader: Callable[[], Any], keep: tuple[str, ...] | None,
                 opts: _Opts) -> Source:
    try:
        r = open_reader()
        schema = r.schema
        rows = sum(b.num_rows for b in r)  # a counting pass: text formats do not know their length
    except Exception as e:  # pyarrow raises ArrowInvalid with the line number
        if isinstance(e, InputError):
            raise
        raise InputError(f"{path}: cannot parse {fmt.upper()}: {str(e).splitlines()[0]}") from None

    def batches(max_rows: int, names: tuple[str, ...]) -> Iterator[Any]:
        for b in open_reader():
            yield b.select(list(names))

    def first() -> Any:
        return next(iter(open_reader()), None)

    return _batch_source(path, fmt, schema, rows, batches, first, keep, opts=opts)


_DELIMITERS = {"\t": "tab", ";": "semicolon", "|": "pipe"}


def _check_header(path: Path) -> None:
    """``InputError`` suggesting ``--delimiter`` when the first line has no comma but tabs,
    semicolons or pipes: read with commas, it would be one column."""
    try:
        with open(path, "rb") as f:
            line = f.readline(1 << 16).decode("utf-8", "replace").rstrip("\r\n")
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    found = [d for d in _DELIMITERS if d in line]
    if found and "," not in line:
        d = max(found, key=line.count)
        raise InputError(f"{path}: the header {line[:60]!r} looks {_DELIMITERS[d]}-separated but would be read as "
                         f"one column; pass --delimiter {d!r} (or --delimiter ',' if it is one column)")


def _open_csv(path: Path, keep: tuple[str, ...] | None, opts: _Opts) -> Source:
    import pyarrow.csv as pcsv

    if opts.delimiter is None:
        _check_header(path)
    parse = pcsv.ParseOptions(delimiter=opts.delimiter or ",")
    return _text_source(path, "csv", lambda: pcsv.open_csv(
        str(path), read_options=pcsv.ReadOptions(block_size=8 << 20), parse_options=parse), keep, opts)


def _open_jsonl(path: Path, keep: tuple[str, ...] | None, opts: _Opts) -> Source:
    import pyarrow.json as pjson

    return _text_source(path, "jsonl", lambda: pjson.open_json(
        str(path), read_options=pjson.ReadOptions(block_size=8 << 20)), keep, opts)


# --------------------------------------------------------------------------- streambatch datasets


def _open_dataset(path: Path, fmt: str, keep: tuple[str, ...] | None) -> Source | None:
    """A streambatch dataset (a folder with a manifest of storage format ``fmt``, any in the
    registry ``streambatch.storage.FORMATS``) read through its own reader, or ``None`` where the
    folder has no valid manifest of that format (its files are then read as plain Zarr or Parquet).

    The reader puts each unit's bytes straight into place and checks every unit's checksum:
    re-chunking, changing format or pre-shuffling a dataset runs at the loader's speed, where
    decoding Parquet pages of small row groups in Python took most of a conversion's time
    (and zarr-python reads chunks ~10x slower, ../shared/STORAGE.md).  A damaged unit is a
    ``DataError`` naming it.
    """
    from .errors import ManifestError
    from .manifest import MANIFEST_NAME
    from .storage import load_manifest, open_reader

    if not (path / MANIFEST_NAME).is_file():
        return None
    try:
        manifest = load_manifest(path)
    except ManifestError:
        return None
    if manifest.storage != fmt:
        return None
    by_name = {c.name: c for c in manifest.columns}
    cols = tuple(by_name[n] for n in _select(list(by_name), keep, str(path)))
    starts = manifest.unit_start
    ends = starts + manifest.unit_rows

    def ranged(max_rows: int, names: tuple[str, ...], start: int, stop: int) -> Iterator[dict[str, np.ndarray]]:
        reader = open_reader(manifest, verify=True)  # one per call: ranges are read from several threads
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

    def pieces(max_rows: int, names: tuple[str, ...]) -> Iterator[dict[str, np.ndarray]]:
        return ranged(max_rows, names, 0, manifest.rows)

    return Source(path, fmt, cols, manifest.rows, pieces, sum(c.row_nbytes for c in cols) * manifest.rows, ranged,
                  int(manifest.unit_rows.max()))


_OPENERS: dict[str, Callable[[Path, tuple[str, ...] | None], Source]] = {
    "npy": _open_npy, "npz": _open_npz, "hdf5": _open_hdf5, "zarr": _open_zarr,
}
# Arrow-based inputs: they may hold nulls and categoricals (and CSV has a delimiter)
_ARROW_OPENERS: dict[str, Callable[[Path, tuple[str, ...] | None, _Opts], Source]] = {
    "parquet": _open_parquet, "csv": _open_csv, "jsonl": _open_jsonl, "arrow": _open_arrow,
}


def open_source(path: str | Path, fmt: str | None = None, columns: tuple[str, ...] | None = None, *,
                fill: dict[str, Any] | None = None, drop_nulls: bool = False, delimiter: str | None = None) -> Source:
    """Open ``path`` as an input of format ``fmt`` (detected when ``None``); only ``columns``
    (all when ``None``) are checked and read.  ``fill`` (column -> value) and ``drop_nulls``
    say what becomes of nulls (only Arrow-based inputs have them: see ``_mapped.Nulls``);
    ``delimiter`` is a CSV's field separator (default ``,``).  Raises ``InputError``."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    fmt = fmt or detect_format(p)
    if fmt not in _OPENERS and fmt not in _ARROW_OPENERS:
        raise InputError(f"{p}: unknown input format {fmt!r}; choose one of {', '.join(SOURCE_FORMATS)}")
    if delimiter is not None and (fmt != "csv" or len(delimiter) != 1 or delimiter in "\r\n\""):
        raise InputError(f"{p}: --delimiter {delimiter!r}: " + ("one character other than a quote or line break"
                                                              if fmt == "csv" else f"applies to CSV input, not {fmt}"))
    keep = tuple(columns) if columns is not None else None
    opts = _Opts(Nulls(dict(fill or {}), drop_nulls), delimiter)
    source = _open_dataset(p, fmt, keep) if p.is_dir() else None
    if source is None and p.is_dir() and fmt == "arrow":
        raise InputError(f"{p}: a folder of Arrow files is read only as a streambatch dataset, and it has no "
                         "valid manifest; convert one Arrow file at a time")
    if source is None:
        source = _ARROW_OPENERS[fmt](p, keep, opts) if fmt in _ARROW_OPENERS else _OPENERS[fmt](p, keep)
    opts.nulls.check(source.columns, str(p))
    source.nulls = opts.nulls
    return source
