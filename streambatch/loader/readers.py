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

from ..errors import DataError
from .sums import PieceSums

__all__ = ["VerifyOnce", "WholeUnits", "epoch_reader"]

Bufs = dict[str, np.ndarray]
Table = NDArray[np.int64]  # rows (unit, lo, hi, buffer row): pieces of a window


def _advise(reader: Any, pieces: list[Any], names: list[str]) -> None:
    """The wrapped reader's read-ahead hints, where it gives them."""
    advise = getattr(reader, "advise", None)
    if advise is not None:
        advise(pieces, names)


def whole_units(unit_rows: NDArray[np.int64], units: NDArray[np.int64]) -> Table:
    """``units`` as pieces of all their rows: rows ``(unit, 0, its rows, 0)``."""
    zero = np.zeros_like(units)
    return np.stack([units, zero, unit_rows[units], zero], axis=1)


def _raise(error: BaseException) -> None:
    raise error


def settle_claims(claims: list[tuple[int, _Claim]], batch: Callable[[], bool | None], one: Callable[[int], None],
                  name: Callable[[int], None]) -> bool:
    """Check the units of ``claims`` (each claimed by this thread, which must settle it): all at
    once by ``batch()`` (True: they passed), else each alone by ``one(unit)``, which raises for a
    unit that fails, named by ``name(unit)`` first.  Every claim is settled whatever happens (a
    thread waiting for one gets its error); the first unit's error is raised once all are.
    Whether ``batch`` checked them."""
    try:
        done = batch()
    except BaseException as e:
        for _, claim in claims:
            try:
                claim.settle(lambda e=e: _raise(e))  # noqa: B023
            except BaseException:  # noqa: BLE001 - the error itself is raised below
                pass
        raise
    if done:
        for _, claim in claims:
            claim.settle(lambda: None)
        return True
    first: tuple[int, BaseException] | None = None
    for u, claim in claims:  # one by one: the failing unit's error names it
        try:
            name(u)
            claim.settle(lambda u=u: one(u))
        except BaseException as e:  # noqa: BLE001 - raised below, once every claim is settled
            first = first or (u, e)
    if first is not None:
        name(first[0])
        raise first[1]
    return False


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)))


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
    against it: from the second epoch on, no unit is read twice.  A reader with
    ``read_known_pieces`` reads and checks all such pieces of a read task, every column, in one C
    call; what it leaves (pieces a window boundary cut, or from one whose read or sum failed on)
    goes the way above, which says what is wrong.
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
        known = getattr(self._plain, "read_known_pieces", None)
        if known is not None and self._sums is not None and bufs.keys() == set(self._sums.names):
            done = known(pieces, bufs, self._sums)  # pieces whose sums are known: one C call, all columns
            if done is not None:
                if done.all():
                    return True
                pieces = pieces[~done]  # the others (pieces cut by the window, or a failed read): below
        summed, parts = self._sums.covered_parts(pieces) if self._sums is not None \
            and bufs.keys() == set(self._sums.names) else (np.zeros(len(pieces), bool), None)
        read = None  # the summed pieces' sums, taken as they are read, where the reader does that
        read_summed = getattr(self._plain, "read_pieces_summed", None)
        if parts is not None and read_summed is not None:
            read = read_summed(self._sums.part_table(pieces[summed], parts), bufs, where, self._sums.crc)
        alone = summed.copy() if read is None else np.zeros_like(summed)  # read alone: summed (unless
        todo = self._check_units(pieces, np.flatnonzero(~summed), bufs, where)  # read just now), or of a unit
        for k in todo.tolist():  # checked this epoch
            u, lo, hi, at = pieces[k].tolist()
            if self._checks.passed(u):
                alone[k] = True
                continue
            where(u, lo, hi)  # named while it runs: a check that hangs names its unit
            self.read_into(u, lo, hi, {n: b[at:at + hi - lo] for n, b in bufs.items()})
        later = pieces[alone]
        if len(later) and not fast(later, bufs, where):
            for u, lo, hi, at in later.tolist():
                where(u, lo, hi)
                self._plain.read_into(u, lo, hi, {n: b[at:at + hi - lo] for n, b in bufs.items()})
        self._check_summed(pieces[summed], bufs, parts, read)
        return True

    def _check_units(self, pieces: Table, todo: NDArray[np.int64], bufs: Bufs, where: Any) -> NDArray[np.int64]:
        """The units of pieces ``todo`` that no thread has claimed yet, claimed, checked and their
        pieces read by the checked reader's ``check_units`` (one C call per column for several
        units: their checksums, the pieces' rows, the part sums); the pieces still to read, one by
        one.  Where a unit fails there, each claimed unit is checked alone (``settle_claims``),
        which says what is wrong; then their pieces are read as those of checked units."""
        batch = getattr(self._checked, "check_units", None)
        if batch is None or self._sums is None or todo.size < 2 or bufs.keys() != set(self._sums.names):
            return todo
        claims = []
        for u in np.unique(pieces[todo, 0]).tolist():
            if not self._checks.passed(u):
                claim, mine = self._checks.claim(u)
                if mine:
                    claims.append((u, claim))
        if not claims:
            return todo
        units = np.array([u for u, _ in claims], np.int64)
        taken = np.isin(pieces[todo, 0], units)
        if settle_claims(claims, lambda: batch(units, pieces[todo[taken]], bufs, self._sums),
                         lambda u: self._check_whole(u, bufs),
                         lambda u: where(u, 0, int(self.manifest.unit_rows[u]))):
            self.whole_reads += len(claims)
            return todo[~taken]
        return todo  # their units passed one by one: each piece is read alone

    def _check_whole(self, unit: int, bufs: Bufs) -> Bufs:
        """Read ``unit`` whole with the checked reader (raises for a damaged unit) into this thread's
        scratch (columns as ``bufs``) and record its sums; the scratch's rows."""
        rows = int(self.manifest.unit_rows[unit])
        tmp = self._scratch(rows, bufs)
        self._checked.read_into(unit, 0, rows, tmp)
        self.whole_reads += 1
        if self._sums is not None:
            self._sums.record(unit, tmp)
        return tmp

    def _check_summed(self, pieces: Table, bufs: Bufs, parts: Any = None,
                      read: dict[str, NDArray[np.uint32]] | None = None) -> None:
        """The pieces read without their unit, checked against their sums.  A range that differs:
        its unit is read whole and checked again, which names what is wrong; if that passes, the
        range's rows are compared with the unit's.  Rows equal to them are right (their sum was
        not there yet: another process was writing it, or the sums were freed), and the unit's
        sums are taken again; rows that differ changed since their unit was checked: an error."""
        if self._sums is None or not len(pieces):
            return
        retaken: set[int] = set()
        while (bad := self._sums.differing(pieces, bufs, parts, read)) is not None:
            read = None  # from here on, the sums are taken from what bufs hold
            u, lo, hi, at = (int(v) for v in pieces[bad[0]])
            rows = int(self.manifest.unit_rows[u])
            unit = self._scratch(rows, bufs)
            self._checked.read_into(u, 0, rows, unit)
            if u in retaken or not all(_same_bytes(b[at:at + hi - lo], unit[n][lo:hi]) for n, b in bufs.items()):
                raise DataError(f"dataset {self.manifest.root}, column {bad[1]!r}, unit {u}: rows {lo}:{hi} differ "
                                "from what the unit held when its checksums were checked (data corrupt or changed)")
            self._sums.record(u, unit)
            retaken.add(u)

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
        tmp = self._check_whole(unit, out)
        for name, dst in out.items():
            dst[...] = tmp[name][lo:hi]

    def advise(self, pieces: Any, names: list[str]) -> None:
        """The pieces' read-ahead hints; a piece whose unit will be read whole to check it (a unit
        whose sums are not known yet, or not checked this epoch where no sums are kept) hints the
        whole unit: a cold disk then reads such units in large requests, not the pieces first and
        the rest of the unit at its check."""
        table = np.array(pieces, np.int64).reshape(-1, 4)
        if self._sums is not None and set(names) >= set(self._sums.names):  # units whose sums are not known
            whole = np.flatnonzero(~self._sums.known[self._sums.first[table[:, 0]]])
        else:
            whole = np.array([k for k, u in enumerate(table[:, 0].tolist()) if not self._checks.passed(u)], np.int64)
        if whole.size:
            table = np.concatenate([np.delete(table, whole, axis=0),
                                    whole_units(self.manifest.unit_rows, np.unique(table[whole, 0]))])
            table = table[np.lexsort((table[:, 1], table[:, 0]))]
        _advise(self._plain, table, names)

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
    storage that reads a unit's rows alone, verified (``pieces``: pieces smaller than units, or
    whole units a piece each), checks each unit once an epoch (``VerifyOnce``), or the pieces'
    own bytes once ``sums`` knows them."""
    reader = open_reader(verify)
    if ragged:
        return reader
    if not partial:
        return WholeUnits(reader, keep=2 * threads)
    return VerifyOnce(reader, open_reader(False), sums) if verify and pieces else reader
