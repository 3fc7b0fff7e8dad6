"""Large rows read straight into the batches: one copy, and a window that holds only small columns.

A column whose rows are at least ``DIRECT_ROW_BYTES`` long, stored as plain bytes at a known
place (local uncompressed Zarr or Arrow IPC: ``StorageFormat.row_places``), is not read into the
window buffer.  A batch task reads each of its rows with a ``pread`` straight into the batch's
buffer, all of a group's rows in one C call with the GIL released (``_kernels.pread_ranges``), so
reader threads read in parallel and the bytes go from the page cache to the batch once.  The
window keeps, per row of such a column, its file and offset (``sizing.PLACE_BYTES`` a row), so the
sizing gives windows of up to ``sizing.DIRECT_WINDOW_FACTOR`` times the rows (better mixing, fewer
windows); a window's read-ahead hints cover its direct rows, which wait in the page cache, outside
the budget, until served.  Memory mapping was measured and ruled out: the kernel's fault-around
maps most of the files (docs/PERFORMANCE.md, "One copy, measured again").

With ``verify``, each row is checked against its own CRC-32C (``PieceSums`` with pieces of one
row, 4 bytes a row and column, kept across epochs and shared with DataLoader workers): a unit is
read whole and its stored checksum checked the first time a window of the epoch needs a row of it
whose sum is not known, which leaves the sums of all its rows; a batch's rows are summed as they
are read (``_kernels.pread_summed``: each row's sum taken right after its read) and compared.  A
row whose sum differs has its unit read and checked again: a damaged unit is that check's
``DataError``; rows that differ from a unit that passes changed since it was checked, also a
``DataError``.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np
from numpy.typing import NDArray

from .._kernels import crc_ranges, native, pread_ranges, pread_summed
from ..errors import DataError
from ..io.checksum import native_crc32c
from ..io.files import ByteRanges
from ..manifest import Manifest
from ..schema import Column
from ..storage import FORMATS
from .readers import _Claims, settle_claims
from .sizing import PLACE_BYTES
from .sums import PieceSums, SharedSums, piece_sums

__all__ = ["DIRECT_ROW_BYTES", "DirectColumn", "DirectRows", "direct_columns", "epoch_direct", "window_row_nbytes"]

DIRECT_ROW_BYTES = 4096  # a pread per row costs about what gathering the row from RAM does from ~4-16 KiB up


def direct_columns(manifest: Manifest, columns: tuple[Column, ...], *, remote: bool, verify: bool) -> tuple[str, ...]:
    """The columns read row by row into the batches: rows of at least ``DIRECT_ROW_BYTES``, stored as
    plain bytes in local files (``StorageFormat.row_places``: uncompressed Zarr, Arrow IPC), read by
    the C module (and, with ``verify``, summed by it)."""
    fmt = FORMATS.get(manifest.storage)
    if (remote or fmt is None or not native() or any(c.ragged for c in columns)
            or (verify and native_crc32c() is None)):
        return ()
    return tuple(c.name for c in columns
                 if c.row_nbytes >= DIRECT_ROW_BYTES and fmt.row_places(manifest, c.name) is not None)


def window_row_nbytes(row_nbytes: int, direct: list[Column]) -> int:
    """Bytes a window holds a row (``row_nbytes``: every column's): the ``direct`` columns' places
    instead of their rows; 0 where there is no direct column (for ``sizing.Sizing``)."""
    return row_nbytes - sum(c.row_nbytes for c in direct) + PLACE_BYTES * len(direct) if direct else 0


def epoch_direct(manifest: Manifest, names: tuple[str, ...], *, verify: bool, open_reader: Callable[[bool], Any],
                 keep: list[PieceSums], shared: SharedSums | None) -> DirectRows | None:
    """An epoch's direct columns ``names`` (``direct_columns``; None where there are none): rows
    read with ``open_reader(True)`` to check a unit, and, with ``verify``, each row's sum from
    ``keep`` (the dataset's, across epochs), in ``shared`` memory where given."""
    if not names:
        return None
    sums = piece_sums(keep, manifest.unit_rows, 1, names, shared) if verify else None
    return DirectRows(manifest, names, lambda: open_reader(True), sums)


class DirectColumn:
    """One direct column of a window: each window row's file descriptor and byte offset.  Stands in
    for the column's window buffer in ``batches.gather_batches`` (``np.take(column, idx, axis=0,
    out=...)`` calls :meth:`take`, which reads the rows)."""

    __slots__ = ("name", "dtype", "shape", "rows", "fds", "offsets", "files", "owner")

    def __init__(self, owner: DirectRows, name: str, rows: NDArray[np.int64], fds: NDArray[np.int64],
                 offsets: NDArray[np.int64], files: NDArray[np.int64], dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.owner, self.name, self.rows = owner, name, rows  # rows: each window row's global row number
        self.fds, self.offsets, self.files = fds, offsets, files
        self.dtype, self.shape = dtype, (len(rows), *shape)

    def take(self, idx: NDArray[np.int64], axis: int = 0, out: np.ndarray | None = None,
             mode: str = "raise") -> np.ndarray:
        """Rows ``idx`` of the window, read from their files into ``out`` (or a new array)."""
        if axis != 0:
            raise ValueError("a direct column is taken along its rows only")
        if out is None:
            out = np.empty((len(idx), *self.shape[1:]), self.dtype)
        self.owner.read(self, np.asarray(idx, np.int64), out)
        return out


class DirectRows:
    """An epoch's direct columns: their windows' row places, reads and checks (module docstring)."""

    def __init__(self, manifest: Manifest, names: tuple[str, ...], open_checked: Callable[[], Any],
                 sums: PieceSums | None) -> None:
        self.manifest, self.names = manifest, names
        self.columns = {n: manifest.column(n) for n in names}
        places = {n: FORMATS[manifest.storage].row_places(manifest, n) for n in names}  # (direct_columns':
        self._file = {n: p[0] for n, p in places.items()}  # never None) each unit's file and first row
        self._offset = {n: p[1] for n, p in places.items()}
        self._files = ByteRanges(manifest)
        self._open_checked = open_checked  # a reader that checks a unit's stored checksum as it reads it
        self._checked: Any = None
        self._sums = sums if sums is not None and sums.crc is not None else None
        self._claims = _Claims()
        self._lock = threading.Lock()
        self._local = threading.local()

    def window_row_nbytes(self, row_nbytes: int) -> int:
        """A window's bytes a row: the other columns' rows (``row_nbytes`` less the direct ones) and
        the direct columns' places."""
        return window_row_nbytes(row_nbytes, list(self.columns.values()))

    def _units_of(self, rows: NDArray[np.int64]) -> NDArray[np.int64]:
        """The unit of each of ``rows`` (global row numbers)."""
        return np.searchsorted(self.manifest.unit_start, rows, side="right") - 1

    def window(self, rows: NDArray[np.int64]) -> dict[str, DirectColumn]:
        """The direct columns of a window whose buffer rows are the global rows ``rows``."""
        unit = self._units_of(rows)
        within = rows - self.manifest.unit_start[unit]
        out = {}
        for name, col in self.columns.items():
            files = self._file[name][unit]
            fds, _ = self._files.descriptors(files, lambda k, name=name: self._where(name, int(unit[k]), int(files[k])))
            out[name] = DirectColumn(self, name, rows, fds, self._offset[name][unit] + within * col.row_nbytes,
                                     files, col.np_dtype, col.shape)
        return out

    def units_to_check(self, rows: NDArray[np.int64]) -> NDArray[np.int64]:
        """The units of ``rows`` (global row numbers) that hold a row whose sum is not known."""
        if self._sums is None:
            return np.zeros(0, np.int64)
        unknown = rows[~self._sums.known[rows]]
        return np.unique(self._units_of(unknown))

    def check_units(self, units: NDArray[np.int64]) -> None:
        """Read each unit whole, check its stored checksum and take its rows' sums, once an epoch
        (another thread asking for a unit being checked waits for that check).  The units this
        thread claims are checked together where the reader can (``check_units``: a C call per
        column for several units), else one by one, which names a unit that fails."""
        mine, others = [], []
        for u in units.tolist():
            claim, own = self._claims.claim(u)
            (mine if own else others).append((u, claim))
        if mine:
            checked = self._checked_reader()
            batch = getattr(checked, "check_units", None)
            ids = np.array([u for u, _ in mine], np.int64)
            none = np.zeros((0, 4), np.int64)
            row = {n: np.empty((1, *c.shape), c.np_dtype) for n, c in self.columns.items()}  # no rows copied
            settle_claims(mine, lambda: None if batch is None or self._sums is None else batch(
                ids, none, row, self._sums), self._check_unit, lambda u: None)
        for _, claim in others:
            claim.wait()

    def _checked_reader(self) -> Any:
        with self._lock:
            if self._checked is None:
                self._checked = self._open_checked()
        return self._checked

    def _check_unit(self, unit: int) -> None:
        assert self._sums is not None
        rows = int(self.manifest.unit_rows[unit])
        bufs = self._scratch(rows)
        self._checked_reader().read_into(unit, 0, rows, bufs)  # raises DataError for a damaged unit
        self._sums.record(unit, bufs)

    def _scratch(self, rows: int) -> dict[str, np.ndarray]:
        """This thread's buffer of one unit of the direct columns."""
        have = getattr(self._local, "bufs", None)
        if have is None:
            most = int(self.manifest.unit_rows.max())
            have = self._local.bufs = {n: np.empty((most, *c.shape), c.np_dtype) for n, c in self.columns.items()}
        return {n: b[:rows] for n, b in have.items()}

    def read(self, col: DirectColumn, idx: NDArray[np.int64], out: np.ndarray) -> None:
        """Rows ``idx`` of a window's direct column into ``out`` (contiguous), checked where verifying."""
        n, rb = len(idx), self.columns[col.name].row_nbytes
        flat = out.reshape(-1).view(np.uint8)
        sizes = np.full(n, rb, np.int64)
        at = np.arange(0, n * rb, rb, dtype=np.int64)
        if self._sums is None:
            failed = pread_ranges(col.fds[idx], col.offsets[idx], sizes, flat, at)
        else:  # each row summed as it is read, its bytes still in cache
            failed, got = pread_summed(*self._sums.crc, col.fds[idx], col.offsets[idx], sizes, flat, at)
        if failed >= 0:
            self._failed_read(col, int(idx[failed]))
        if self._sums is None:
            return
        rows = col.rows[idx]
        bad = np.flatnonzero((got != self._sums.sums[col.name][rows]) | ~self._sums.known[rows])
        if bad.size:
            self._recheck(col.name, rows[bad], flat, at[bad], sizes[bad])

    def _recheck(self, name: str, rows: NDArray[np.int64], flat: np.ndarray, at: NDArray[np.int64],
                 sizes: NDArray[np.int64]) -> None:
        """Rows (read into ``flat`` at ``at``) whose sums were not known or differ: their units are
        read and checked again (a damaged unit raises there), which retakes the sums; then each row
        must match its sum."""
        assert self._sums is not None
        units = self._units_of(rows)
        for u in np.unique(units).tolist():
            self._check_unit(u)
        wrong = np.flatnonzero(crc_ranges(*self._sums.crc, flat, at, sizes) != self._sums.sums[name][rows])
        if wrong.size:
            u, row = int(units[wrong[0]]), int(rows[wrong[0]])
            raise DataError(f"{self._where(name, u, int(self._file[name][u]))}: row "
                            f"{row - int(self.manifest.unit_start[u])} differs from what the unit held when its "
                            "checksums were checked (data corrupt or changed)")

    def _failed_read(self, col: DirectColumn, k: int) -> None:
        """Name why row ``k`` of the window could not be read (the file's end, an error)."""
        row = int(col.rows[k])
        unit = int(self._units_of(col.rows[k:k + 1])[0])
        rb = self.columns[col.name].row_nbytes
        where = lambda: self._where(col.name, unit, int(col.files[k]))  # noqa: E731
        self._files.read_into(memoryview(bytearray(rb)), int(col.files[k]), int(col.offsets[k]), where)
        raise DataError(f"{where()}: row {row - int(self.manifest.unit_start[unit])} could not be read")

    def _where(self, name: str, unit: int, file_index: int) -> str:
        return (f"dataset {self.manifest.root}, column {name!r}, unit {unit}, "
                f"file {self.manifest.files[file_index]}")

    def close(self) -> None:
        self._files.close()
        if self._checked is not None:
            self._checked.close()
        self._claims.clear()
