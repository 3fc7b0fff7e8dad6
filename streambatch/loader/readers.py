"""Reader wrappers for pieces smaller than units: checksums checked once a unit and epoch
(``VerifyOnce``), and units that must be read whole read once for all their parts
(``WholeUnits``).  Both claim a unit the first time a thread asks for it; other threads asking
for the same unit wait for that read, so a unit is checked (or decoded) once, whatever the timing.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["VerifyOnce", "WholeUnits"]

Bufs = dict[str, np.ndarray]
Table = NDArray[np.int64]  # rows (unit, lo, hi, buffer row): pieces of a window


def _advise(reader: Any, pieces: list[Any], names: list[str]) -> None:
    """The wrapped reader's read-ahead hints, where it gives them."""
    advise = getattr(reader, "advise", None)
    if advise is not None:
        advise(pieces, names)


class _Check:
    """One unit's checksum check in an epoch: done once the claiming thread has finished it."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None


class VerifyOnce:
    """A reader of pieces smaller than units that checks each unit's checksums once an epoch.

    A checksum covers a whole unit, so a piece cannot be checked alone.  The first piece of a
    unit read in an epoch claims the unit, reads all of it through ``checked`` (a reader with
    ``verify``) into this thread's scratch buffer and copies its rows from there; the unit's
    other pieces wait for that check, then read only their rows through ``plain``.  A damaged
    unit is an error at every piece of it, so no row of it is served.  Each pool thread holds
    one unit of scratch (the unit's bytes of the columns read).
    """

    def __init__(self, checked: Any, plain: Any) -> None:
        self.manifest = checked.manifest
        self._checked, self._plain = checked, plain
        self._checks: dict[int, _Check] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    def _scratch(self, rows: int, out: Bufs) -> Bufs:
        have = getattr(self._local, "bufs", None)
        if have is None or have.keys() != out.keys() or any(
                have[k].shape[0] < rows or have[k].shape[1:] != v.shape[1:] or have[k].dtype != v.dtype
                for k, v in out.items()):
            have = self._local.bufs = {k: np.empty((int(self.manifest.unit_rows.max()), *v.shape[1:]), v.dtype)
                                       for k, v in out.items()}
        return {k: v[:rows] for k, v in have.items()}

    def _passed(self, unit: int) -> bool:
        c = self._checks.get(unit)
        return c is not None and c.done.is_set() and c.error is None

    def read_pieces(self, pieces: Table, bufs: Bufs, where: Any) -> bool:
        """Many pieces: those of units that passed their check this epoch in one ``plain.read_pieces``."""
        fast = getattr(self._plain, "read_pieces", None)
        if fast is None:
            return False
        later = []
        for u, lo, hi, at in pieces.tolist():
            if self._passed(u):
                later.append((u, lo, hi, at))
                continue
            where(u, lo, hi)  # named while it runs: a check that hangs names its unit
            self.read_into(u, lo, hi, {n: b[at:at + hi - lo] for n, b in bufs.items()})
        if later and not fast(np.asarray(later, np.int64), bufs, where):
            for u, lo, hi, at in later:
                where(u, lo, hi)
                self._plain.read_into(u, lo, hi, {n: b[at:at + hi - lo] for n, b in bufs.items()})
        return True

    def read_into(self, unit: int, lo: int, hi: int, out: Bufs) -> None:
        with self._lock:
            check = self._checks.get(unit)
            mine = check is None
            if mine:
                check = self._checks[unit] = _Check()
        assert check is not None
        if not mine:  # another thread checks this unit: wait for its verdict
            check.done.wait()
            if check.error is not None:
                raise type(check.error)(str(check.error))
            self._plain.read_into(unit, lo, hi, out)
            return
        try:
            rows = int(self.manifest.unit_rows[unit])
            if lo == 0 and hi == rows:
                self._checked.read_into(unit, lo, hi, out)
            else:
                tmp = self._scratch(rows, out)
                self._checked.read_into(unit, 0, rows, tmp)
                for name, dst in out.items():
                    dst[...] = tmp[name][lo:hi]
        except BaseException as e:
            check.error = e
            raise
        finally:
            check.done.set()

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
        self._keep = max(1, keep)
        self._units: OrderedDict[int, tuple[threading.Event, list[Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def read_into(self, unit: int, lo: int, hi: int, out: Bufs) -> None:
        rows = int(self.manifest.unit_rows[unit])
        if lo == 0 and hi == rows:
            self._reader.read_into(unit, lo, hi, out)
            return
        with self._lock:
            entry = self._units.get(unit)
            mine = entry is None
            if mine:
                entry = self._units[unit] = (threading.Event(), [None, None])  # [buffers, error]
                while len(self._units) > self._keep:
                    self._units.popitem(last=False)
            else:
                self._units.move_to_end(unit)
        assert entry is not None
        done, slot = entry
        if mine:
            try:
                bufs = {n: np.empty((rows, *d.shape[1:]), d.dtype) for n, d in out.items()}
                self._reader.read_into(unit, 0, rows, bufs)
                slot[0] = bufs
            except BaseException as e:
                slot[1] = e
                raise
            finally:
                done.set()
        else:
            done.wait()
            if slot[1] is not None:
                raise type(slot[1])(str(slot[1]))
        bufs = slot[0]
        if bufs is None or not all(n in bufs for n in out):  # another column set: read it alone
            self._reader.read_into(unit, lo, hi, out)
            return
        for name, dst in out.items():
            dst[...] = bufs[name][lo:hi]

    def advise(self, pieces: list[Any], names: list[str]) -> None:
        _advise(self._reader, pieces, names)

    def close(self) -> None:
        self._units.clear()
        self._reader.close()
