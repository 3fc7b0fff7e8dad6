"""Many small pieces of units read as byte ranges, for formats whose rows lie as plain bytes.

The loader's shuffle pieces (rows ``lo:hi`` of a unit) of uncompressed Zarr chunks and Arrow record
batches are byte ranges of their files: a window's pieces are read by ``ByteRanges.read_ranges``,
one C call per column for all of them (near ones as one span), and with ``crc`` each piece's
checksum is taken as it is read.  A reader provides ``manifest``, ``verify``, ``_files`` (its
``ByteRanges``) and ``_row_places(name)``: its format's ``StorageFormat.row_places`` (each unit's
file and the byte offset of its first row, or None where the column's rows do not lie so).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._kernels import native, pread_known
from ..errors import DataError
from ..io.files import GAP_BYTES, SPAN_BYTES

__all__ = ["PieceReads"]


class PieceReads:
    """``read_pieces`` and ``read_pieces_summed`` for a reader (module docstring)."""

    manifest: Any
    verify: bool
    _files: Any

    def _row_places(self, name: str) -> tuple[NDArray[np.int64], NDArray[np.int64]] | None:
        raise NotImplementedError

    def _places(self, name: str, units: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]] | None:
        """The file and first row's offset of each of ``units`` (``_row_places``), or None."""
        places = self._row_places(name)
        return None if places is None else (places[0][units], places[1][units])

    def read_pieces(self, pieces: np.ndarray, bufs: dict[str, np.ndarray], where: Any) -> bool:
        """Rows ``lo:hi`` of many units (rows ``(unit, lo, hi, buffer row)``, in storage order) into
        the window buffers ``bufs`` at their buffer rows, unchecked: the loader's small shuffle
        pieces, read as byte ranges (``ByteRanges.read_ranges``: near ones as one span).  False
        (nothing read) where that path does not apply (compressed, verify, remote, buffers not
        contiguous); ``where(unit, lo, hi)`` is called with the piece whose read fails, before it raises."""
        ranges = self._piece_ranges(pieces, bufs, where)
        for fis, starts, sizes, out, at, name_it in ranges or ():
            self._files.read_ranges(fis, starts, sizes, out, at, name_it)
        return ranges is not None

    def read_pieces_summed(self, pieces: np.ndarray, bufs: dict[str, np.ndarray], where: Any,
                           crc: tuple[Any, int]) -> dict[str, NDArray[np.uint32]] | None:
        """:meth:`read_pieces`, each piece read straight into place and its checksum (``crc``:
        ``checksum.native_crc32c``'s) taken as it is read: each column's sums, one a piece; None
        (nothing read) where that path does not apply."""
        ranges = self._piece_ranges(pieces, bufs, where)
        if ranges is None:
            return None
        return {name: self._files.read_ranges(fis, starts, sizes, out, at, name_it, crc=crc)
                for name, (fis, starts, sizes, out, at, name_it) in zip(bufs, ranges)}

    def read_known_pieces(self, pieces: np.ndarray, bufs: dict[str, np.ndarray], sums: Any) -> NDArray[np.bool_] | None:
        """The pieces (rows ``(unit, lo, hi, buffer row)``) that are whole parts of ``sums``
        (``loader.sums.PieceSums``) whose sums are all known, read into ``bufs`` and checked
        against them: all columns in one C call (``_kernels.pread_known``), each part summed as it
        is read.  Which pieces were (none from the first whose read or sum failed on: the caller
        reads them again by its careful path, which says what is wrong); None where this path
        does not apply (see ``_piece_ranges``, and files that do not open: their pieces name them)."""
        if not self._reads_ranges(bufs) or sums.crc is None or not native():
            return None
        cols = []
        for name, buf in bufs.items():
            places = self._unit_fds(name)
            if places is None:
                return None
            cols.append((*places, self.manifest.column(name).row_nbytes, buf.reshape(-1).view(np.uint8),
                         sums.sums[name]))
        return pread_known(pieces, sums.cut, self.manifest.unit_rows, sums.first, sums.known, cols, sums.crc[1],
                           GAP_BYTES, np.frombuffer(self._files.scratch(SPAN_BYTES), np.uint8))

    def _unit_fds(self, name: str) -> tuple[NDArray[np.int64], NDArray[np.int64]] | None:
        """Every unit's file descriptor and first row's offset in column ``name`` (``_places``, its
        files opened), kept for the reader's life; None where a unit's rows do not lie so or a file
        does not open."""
        cache = self.__dict__.setdefault("_unit_fds_cache", {})
        if name not in cache:
            places = self._places(name, np.arange(len(self.manifest.unit_rows)))
            try:
                cache[name] = None if places is None else tuple(np.ascontiguousarray(a, np.int64) for a in (
                    self._files.descriptors(places[0], lambda k: str(self.manifest.root))[0], places[1]))
            except (DataError, OSError):
                cache[name] = None
        return cache[name]

    def _reads_ranges(self, bufs: dict[str, np.ndarray]) -> bool:
        """Whether pieces into ``bufs`` are read as byte ranges: a plain reader (no unit checks) of
        local files, buffers contiguous."""
        return not self.verify and self._files.remote is None and all(b.flags.c_contiguous for b in bufs.values())

    def _piece_ranges(self, pieces: np.ndarray, bufs: dict[str, np.ndarray], where: Any) -> list[Any] | None:
        """Each column's byte ranges of the pieces: (files, starts, sizes, its buffer's bytes, where
        each range goes in them, a function naming the ``k``-th); None where that path does not apply."""
        if not self._reads_ranges(bufs):
            return None
        units, lo, hi, at = (pieces[:, i] for i in range(4))
        if (lo < 0).any() or (lo >= hi).any() or (hi > self.manifest.unit_rows[units]).any():
            raise ValueError(f"{self.manifest.root}: piece rows outside their units")
        out = []
        for name, buf in bufs.items():
            places = self._places(name, units)
            if places is None:
                return None  # read piece by piece, where what is wrong gets its name
            fis, first = places
            rb = self.manifest.column(name).row_nbytes

            def name_it(k: int, name: str = name, fis: np.ndarray = fis) -> str:
                where(int(units[k]), int(lo[k]), int(hi[k]))
                return (f"dataset {self.manifest.root}, column {name!r}, unit {int(units[k])}, "
                        f"file {self.manifest.files[int(fis[k])]}")

            out.append((fis, first + lo * rb, (hi - lo) * rb, buf.reshape(-1).view(np.uint8), at * rb, name_it))
        return out
