"""Reader wrappers for pieces smaller than units: checksums checked once a unit and epoch
(``VerifyOnce``), and units that must be read whole read once for all their parts
(``WholeUnits``).  Both claim a unit the first time a thread asks for it; other threads asking
for the same unit wait for that read, so a unit is checked (or decoded) once, whatever the timing.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable

import numpy as np
from numpy.typing import NDArray

from .._kernels import crc_chunks, crc_ranges
from ..errors import DataError
from ..io.checksum import native_crc32c

__all__ = ["PieceSums", "VerifyOnce", "WholeUnits", "epoch_reader", "piece_sums"]

Bufs = dict[str, np.ndarray]
Table = NDArray[np.int64]  # rows (unit, lo, hi, buffer row): pieces of a window


def _advise(reader: Any, pieces: list[Any], names: list[str]) -> None:
    """The wrapped reader's read-ahead hints, where it gives them."""
    advise = getattr(reader, "advise", None)
    if advise is not None:
        advise(pieces, names)


class _Claim:
    """One unit's read (a check, a decode) in an epoch, made by the thread that claimed the unit."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.value: Any = None

    def settle(self, read: Any) -> Any:
        """Run ``read()`` as the claiming thread: its value or error is what the waiters get."""
        try:
            self.value = read()
            return self.value
        except BaseException as e:
            self.error = e
            raise
        finally:
            self.done.set()

    def wait(self) -> Any:
        """The claiming thread's value once it has one; a copy of its error if it failed."""
        self.done.wait()
        if self.error is not None:
            raise type(self.error)(str(self.error))
        return self.value


class _Claims:
    """Units claimed by the first thread that asks for each; the others get the same claim to wait
    on.  ``keep``: remember at most that many (the least recently asked for are forgotten)."""

    def __init__(self, keep: int | None = None) -> None:
        self._claims: OrderedDict[int, _Claim] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def claim(self, unit: int) -> tuple[_Claim, bool]:
        """The unit's claim, and whether this thread made it (and must ``settle`` it)."""
        with self._lock:
            claim = self._claims.get(unit)
            if claim is not None:
                if self._keep is not None:
                    self._claims.move_to_end(unit)
                return claim, False
            claim = self._claims[unit] = _Claim()
            while self._keep is not None and len(self._claims) > self._keep:
                self._claims.popitem(last=False)
            return claim, True

    def passed(self, unit: int) -> bool:
        """Whether the unit's read is done and did not fail."""
        claim = self._claims.get(unit)
        return claim is not None and claim.done.is_set() and claim.error is None

    def clear(self) -> None:
        self._claims.clear()


class PieceSums:
    """The CRC-32C of every piece (a unit's rows ``k * cut`` to ``(k + 1) * cut``) of each column
    read, taken from a read of its unit whose checksums were checked; kept across epochs (the
    dataset's), so that a later epoch checks a piece's bytes as it reads them, without reading
    its unit again.  4 bytes a piece and column, and a flag a piece, outside the budget."""

    def __init__(self, unit_rows: NDArray[np.int64], cut: int, names: tuple[str, ...]) -> None:
        self.cut, self.names = cut, names
        self.unit_rows = np.asarray(unit_rows, np.int64)
        self.first = np.zeros(len(self.unit_rows) + 1, np.int64)
        np.cumsum(-(-self.unit_rows // cut), out=self.first[1:])
        self.sums = {n: np.zeros(int(self.first[-1]), np.uint32) for n in names}
        self.known = np.zeros(int(self.first[-1]), bool)
        self.crc = native_crc32c()  # (function, its C address); None: not found, nothing is kept

    def fits(self, unit_rows: NDArray[np.int64], cut: int, names: tuple[str, ...]) -> bool:
        return (cut, names) == (self.cut, self.names) and np.array_equal(unit_rows, self.unit_rows)

    def record(self, unit: int, bufs: Bufs) -> None:
        """The sums of ``unit``'s pieces, from ``bufs`` (its rows, just checked)."""
        if self.crc is None or bufs.keys() != set(self.names):
            return
        a, b = int(self.first[unit]), int(self.first[unit + 1])
        for name, arr in bufs.items():
            flat = arr.reshape(-1).view(np.uint8)
            self.sums[name][a:b] = crc_chunks(*self.crc, flat, self.cut * arr[0].nbytes)
        self.known[a:b] = True

    def _expand(self, pieces: Table) -> tuple[NDArray[np.int64], ...]:
        """Each range of ``pieces`` (unit, lo, hi, buffer row) cut at multiples of ``cut`` (a window
        reads a unit's pieces that fall in it side by side as one range): for every part, its range's
        row in ``pieces``, its place in the sums, its buffer row and its rows."""
        u, lo, hi, at = (pieces[:, i] for i in range(4))
        k0 = lo // self.cut
        n = -(-hi // self.cut) - k0
        rep = np.repeat(np.arange(len(pieces)), n)
        j = np.arange(len(rep)) - np.repeat(np.cumsum(n) - n, n)
        row = lo[rep] + j * self.cut
        return rep, self.first[u[rep]] + k0[rep] + j, at[rep] + j * self.cut, np.minimum(self.cut, hi[rep] - row)

    def covered(self, pieces: Table) -> NDArray[np.bool_]:
        """Whether each range of ``pieces`` is whole pieces whose sums are all known (not one cut
        otherwise, by a window boundary, nor one of a unit not checked yet)."""
        u, lo, hi = pieces[:, 0], pieces[:, 1], pieces[:, 2]
        ok = (lo % self.cut == 0) & ((hi % self.cut == 0) | (hi == self.unit_rows[u])) & (hi > lo)
        if ok.any():
            rep, at, _, _ = self._expand(pieces[ok])
            missing = np.bincount(rep, weights=~self.known[at], minlength=int(ok.sum()))
            ok[np.flatnonzero(ok)[missing > 0]] = False
        return ok

    def differing(self, pieces: Table, bufs: Bufs) -> tuple[int, str] | None:
        """The first range of ``pieces`` (its row) and column whose bytes, read into ``bufs`` at the
        ranges' buffer rows, differ from their pieces' sums; None if none does."""
        assert self.crc is not None
        rep, at, row, rows = self._expand(pieces)
        for name, arr in bufs.items():
            size = arr[0].nbytes
            got = crc_ranges(*self.crc, arr.reshape(-1).view(np.uint8), row * size, rows * size)
            bad = np.flatnonzero(got != self.sums[name][at])
            if bad.size:
                return int(rep[bad[0]]), name
        return None


class VerifyOnce:
    """A reader of pieces smaller than units that checks each unit's checksums once an epoch, or
    each piece's own bytes once their sums are known (``sums``).

    A checksum covers a whole unit, so a piece cannot be checked alone.  The first piece of a
    unit read in an epoch claims the unit, reads all of it through ``checked`` (a reader with
    ``verify``) into this thread's scratch buffer and copies its rows from there; the unit's
    other pieces wait for that check, then read only their rows through ``plain``.  A damaged
    unit is an error at every piece of it, so no row of it is served.  Each pool thread holds
    one unit of scratch (the unit's bytes of the columns read).

    With ``sums`` (:class:`PieceSums`, kept across epochs), a checked unit also leaves each of
    its pieces' CRC-32C, and a piece whose sum is known is read alone and its bytes checked
    against it: from the second epoch on, no unit is read twice.
    """

    def __init__(self, checked: Any, plain: Any, sums: PieceSums | None = None) -> None:
        self.manifest = checked.manifest
        self._checked, self._plain = checked, plain
        self._checks = _Claims()
        self._local = threading.local()
        self._sums = sums if sums is not None and sums.crc is not None else None
        self.whole_reads = 0  # units read whole to check them (tests: none once every piece's sum is known)

    def _scratch(self, rows: int, out: Bufs) -> Bufs:
        have = getattr(self._local, "bufs", None)
        if have is None or have.keys() != out.keys() or any(
                have[k].shape[0] < rows or have[k].shape[1:] != v.shape[1:] or have[k].dtype != v.dtype
                for k, v in out.items()):
            have = self._local.bufs = {k: np.empty((int(self.manifest.unit_rows.max()), *v.shape[1:]), v.dtype)
                                       for k, v in out.items()}
        return {k: v[:rows] for k, v in have.items()}

    def read_pieces(self, pieces: Table, bufs: Bufs, where: Any) -> bool:
        """Many pieces: those of units that passed their check this epoch in one ``plain.read_pieces``."""
        fast = getattr(self._plain, "read_pieces", None)
        if fast is None:
            return False
        summed = self._sums.covered(pieces) if self._sums is not None and bufs.keys() == set(self._sums.names) \
            else np.zeros(len(pieces), bool)
        later = []
        for (u, lo, hi, at), known in zip(pieces.tolist(), summed.tolist()):
            if known or self._checks.passed(u):
                later.append((u, lo, hi, at))
                continue
            where(u, lo, hi)  # named while it runs: a check that hangs names its unit
            self.read_into(u, lo, hi, {n: b[at:at + hi - lo] for n, b in bufs.items()})
        if later and not fast(np.asarray(later, np.int64), bufs, where):
            for u, lo, hi, at in later:
                where(u, lo, hi)
                self._plain.read_into(u, lo, hi, {n: b[at:at + hi - lo] for n, b in bufs.items()})
        self._check_summed(pieces[summed], bufs)
        return True

    def _check_summed(self, pieces: Table, bufs: Bufs) -> None:
        """The pieces read without their unit, checked against their sums.  A piece that differs:
        its unit is read whole and checked again, which names what is wrong; if that passes, the
        piece's rows changed since its unit was checked."""
        if self._sums is None or not len(pieces):
            return
        bad = self._sums.differing(pieces, bufs)
        if bad is None:
            return
        u, lo, hi = (int(v) for v in pieces[bad[0], :3])
        rows = int(self.manifest.unit_rows[u])
        self._checked.read_into(u, 0, rows, self._scratch(rows, bufs))
        raise DataError(f"dataset {self.manifest.root}, column {bad[1]!r}, unit {u}: rows {lo}:{hi} differ from "
                        "what the unit held when its checksums were checked (data corrupt or changed)")

    def read_into(self, unit: int, lo: int, hi: int, out: Bufs) -> None:
        check, mine = self._checks.claim(unit)
        if mine:
            check.settle(lambda: self._read_checked(unit, lo, hi, out))
        else:  # another thread checks this unit: wait for its verdict
            check.wait()
            self._plain.read_into(unit, lo, hi, out)

    def _read_checked(self, unit: int, lo: int, hi: int, out: Bufs) -> None:
        """Rows ``lo:hi`` of ``unit``, from a read of all of it that checks its checksums."""
        rows = int(self.manifest.unit_rows[unit])
        if lo == 0 and hi == rows:
            self._checked.read_into(unit, lo, hi, out)
            if self._sums is not None:
                self._sums.record(unit, out)
            return
        tmp = self._scratch(rows, out)
        self._checked.read_into(unit, 0, rows, tmp)
        self.whole_reads += 1
        if self._sums is not None:
            self._sums.record(unit, tmp)
        for name, dst in out.items():
            dst[...] = tmp[name][lo:hi]

    def advise(self, pieces: list[Any], names: list[str]) -> None:
        _advise(self._plain, pieces, names)

    def close(self) -> None:
        self._checked.close()
        self._plain.close()


class WholeUnits:
    """A reader for storage that reads a unit whole (compressed units): a read of part of a unit
    reads the whole unit once, copies the part, and keeps the unit for its other parts (the
    last ``keep`` units so read), so a unit cut by a window boundary is decoded once, not once
    per part.  Whole-unit reads pass straight through.  Holds at most ``keep`` units' bytes of
    the columns read (the loader keeps two per reader thread).
    """

    def __init__(self, reader: Any, keep: int) -> None:
        self.manifest = reader.manifest
        self._reader = reader
        self._units = _Claims(keep=max(1, keep))

    def read_into(self, unit: int, lo: int, hi: int, out: Bufs) -> None:
        rows = int(self.manifest.unit_rows[unit])
        if lo == 0 and hi == rows:
            self._reader.read_into(unit, lo, hi, out)
            return
        claim, mine = self._units.claim(unit)
        bufs = claim.settle(lambda: self._read_whole(unit, rows, out)) if mine else claim.wait()
        if not all(n in bufs for n in out):  # another column set: read it alone
            self._reader.read_into(unit, lo, hi, out)
            return
        for name, dst in out.items():
            dst[...] = bufs[name][lo:hi]

    def _read_whole(self, unit: int, rows: int, out: Bufs) -> Bufs:
        bufs = {n: np.empty((rows, *d.shape[1:]), d.dtype) for n, d in out.items()}
        self._reader.read_into(unit, 0, rows, bufs)
        return bufs

    def advise(self, pieces: list[Any], names: list[str]) -> None:
        _advise(self._reader, pieces, names)

    def close(self) -> None:
        self._units.clear()
        self._reader.close()


def epoch_reader(open_reader: Callable[[bool], Any], *, ragged: bool, partial: bool, verify: bool, pieces: bool,
                 threads: int, sums: PieceSums | None = None) -> Any:
    """The reader an epoch's windows are read with (``open_reader(verify)`` opens the storage's).

    With ragged columns each piece's unit is decoded whole by ``rows.read_rows`` and checked as
    read; storage that reads units whole reads a unit cut by a window once (``WholeUnits``); and
    pieces smaller than units (``pieces``) check each unit once an epoch (``VerifyOnce``), or
    their own bytes once ``sums`` knows them."""
    reader = open_reader(verify)
    if ragged:
        return reader
    if not partial:
        return WholeUnits(reader, keep=2 * threads)
    return VerifyOnce(reader, open_reader(False), sums) if verify and pieces else reader


def piece_sums(keep: list[PieceSums], unit_rows: NDArray[np.int64], cut: int, names: tuple[str, ...]) -> PieceSums:
    """The pieces' sums from ``keep`` (the dataset's, across epochs) when they are for these
    pieces and columns, else new ones (kept in their place)."""
    if not (keep and keep[0].fits(unit_rows, cut, names)):
        keep[:] = [PieceSums(unit_rows, cut, names)]
    return keep[0]
