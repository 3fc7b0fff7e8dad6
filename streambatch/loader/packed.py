"""Packed token batches: the documents a row stream serves, packed into sequences (``packing.Packer``).

The loader serves documents in batches of ``PACK_ROWS`` rows (windows, budget and shuffle as for
any ragged column); the consuming side feeds them, in order, to a ``Packer`` and serves its
batches, each one buffer (``tokens``, ``position_ids``, ``document_ids``).  The packer's state
after each batch is handed to ``on_state``: a resume restarts the row stream at that document
(``PACK_ROWS`` rows a batch, ``skip`` rows into the first) and the packer at that token.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from ..errors import StateError
from ..packing import OUTPUTS, Pack, Packer, batch_nbytes, batch_views
from ..plan import Phase
from .sizing import Sizing
from .state import Run, make_state, resolve

__all__ = ["PACK_ROWS", "packed_group", "serve_packed", "check_pack_state", "packed_position", "packed_state"]

PACK_ROWS = 256
"""Documents a row batch of a packed stream holds (the row stream's batch size)."""
GROUP_BYTES = 4 << 20
"""Bytes of small packed batches written at once (one buffer; a batch held keeps its group's)."""
MakeGroup = Callable[[dict[str, np.ndarray], int], list[Any]]
GROUP_BUFFERS = 3
"""Group buffers kept for reuse: the one being written, the one whose batch the consumer holds,
and one spare (a buffer given back to the system and asked for again is paid in page faults)."""


def serve_packed(row_batches: Iterator[dict[str, Any]], pack: Pack, batch_size: int, drop_last: bool, dtype: Any,
                 index_key: str, make_batch: Callable[[np.ndarray, dict[str, np.ndarray]], Any],
                 start: Mapping[str, Any] | None = None, skip: int = 0,
                 on_state: Callable[[dict[str, Any]], None] | None = None, group_bytes: int = 0,
                 make_group: MakeGroup | None = None) -> Iterator[Any]:
    """Pack the documents of ``row_batches`` (column ``pack.column`` and the row ids
    ``index_key``) into batches of ``batch_size`` sequences; ``make_batch(buffer, arrays)`` makes
    what is served, ``make_group(arrays, rows)`` the batches of a group at once (each ``rows`` rows
    of the arrays; None: ``make_batch`` for each).  ``start`` and ``skip``: a resume (the packer's
    state, and the rows of the first row batch already packed before it).  ``group_bytes``:
    :func:`packed_group`."""
    packer = pack.packer(batch_size, dtype, drop_last, start=start)
    recycled = Recycled(GROUP_BUFFERS) if group_bytes else None
    for b in row_batches:
        docs, rows = b[pack.column], b[index_key]
        if skip:
            docs, rows, skip = docs[min(skip, len(rows)):], rows[min(skip, len(rows)):], max(0, skip - len(rows))
        packer.feed(docs, rows)
        yield from _written(packer, make_batch, make_group, on_state, group_bytes, recycled)
        packer.detach()  # row batches are slices of a window: let go of it before the next is taken
    packer.finish()
    yield from _written(packer, make_batch, make_group, on_state, group_bytes, recycled)


class Recycled:
    """Buffers handed out again once nothing refers to what was made of them.  Each is handed
    out as a new array over a memoryview of it, which every view made from that array (the
    batches' tensors) keeps alive: a weak reference to the memoryview tells when the last of
    them is gone (no reference counting, whose figures vary between Python versions).  At most
    ``keep`` buffers are kept."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._bufs: list[tuple[np.ndarray, weakref.ref[Any] | None]] = []

    def take(self, nbytes: int) -> np.ndarray:
        """A uint8 array of ``nbytes``: over a kept buffer nothing refers to now, or a new one."""
        for k, (raw, handed) in enumerate(self._bufs):
            if raw.nbytes == nbytes and (handed is None or handed() is None):
                return self._hand(k, raw)
        raw = np.empty(nbytes, np.uint8)
        if len(self._bufs) >= self.keep:
            return raw
        self._bufs.append((raw, None))
        return self._hand(len(self._bufs) - 1, raw)

    def _hand(self, k: int, raw: np.ndarray) -> np.ndarray:
        out = np.frombuffer(memoryview(raw), np.uint8)
        self._bufs[k] = (raw, weakref.ref(out.base))
        return out


def packed_group(outside: int, in_process: bool) -> int:
    """Bytes of small batches to write at once: ``GROUP_BYTES``, at most an eighth of the room the
    budget keeps outside its accounting (``outside``: the consumer's batch pins its group while
    the next is written); 0 in a DataLoader worker, where a batch's buffer moves to shared memory
    whole."""
    return min(GROUP_BYTES, outside // 8) if in_process else 0


def _written(packer: Packer, make_batch: Callable[[np.ndarray, dict[str, np.ndarray]], Any],
             make_group: MakeGroup | None, on_state: Callable[[dict[str, Any]], None] | None, group_bytes: int,
             recycled: Recycled | None) -> Iterator[Any]:
    """Every batch the packer can write now.  Full batches are written up to ``group_bytes`` at a
    time into one buffer (``Packer.write_batches``, from ``recycled``) and served as row slices of
    it: the per-batch work of a small batch ([8, 2048] int32: 320 kB) done once for the group."""
    full = batch_nbytes(packer.batch_size, packer.seq_len, packer.dtype)
    while rows := packer.rows_ready():
        count = min(packer.full_batches(), max(1, group_bytes // full))
        if count > 1 and recycled is not None:
            flat = recycled.take(group_bytes // full * full)  # one size for all: each is reused for the next
            big = batch_views(flat, count * rows, packer.seq_len, packer.dtype)
            states = packer.write_batches(big, count)
            if make_group is not None:
                made = make_group(big, rows)
            else:
                made = [make_batch(flat, {k: big[k][i * rows:(i + 1) * rows] for k in OUTPUTS}) for i in range(count)]
            del flat, big  # the group's buffer is free again once the consumer lets go of its batches
            for st, batch in zip(states, made):
                if on_state is not None:
                    on_state(st)
                yield batch
            del made, batch
            continue
        flat = np.empty(batch_nbytes(rows, packer.seq_len, packer.dtype), np.uint8)
        out = batch_views(flat, rows, packer.seq_len, packer.dtype)
        packer.write_batch(out)
        if on_state is not None:
            on_state(packer.state())
        yield make_batch(flat, {k: out[k] for k in OUTPUTS})


def check_pack_state(state: Mapping[str, Any], pack: Pack | None, root: Any) -> dict[str, Any] | None:
    """The packer's part of a resume state (``pack_state``), checked; None when it has none.
    ``StateError`` for a malformed one, or one given to a dataset that does not pack."""
    got = state.get("pack_state")
    if got is None:
        return None
    ok = isinstance(got, dict) and all(type(got.get(k)) is int and got[k] >= 0 for k in ("index", "done", "batches",
                                                                                          "skip"))
    if pack is None or not ok or got["skip"] >= PACK_ROWS or not (got.get("row") is None or type(got["row"]) is int):
        raise StateError(f"{root}: resume state: malformed or unexpected pack_state {got!r:.120}")
    return dict(got)


def packed_position(packer_state: Mapping[str, Any] | None) -> tuple[int, dict[str, Any] | None]:
    """(row batches of the stream already packed, the state to resume the packer from) after a
    packed batch whose packer state is ``packer_state`` (None: nothing packed)."""
    if packer_state is None:
        return 0, None
    k = int(packer_state["index"])
    return k // PACK_ROWS, {**packer_state, "skip": k % PACK_ROWS}


def packed_state(run: Run | None, resume: list[Phase] | None, pack_resume: dict[str, Any] | None, sizing: Sizing,
                 world_size: int, identity: dict[str, Any], epoch: int) -> dict[str, Any]:
    """The state of a packed epoch served in this process (``run``; ``resume``, ``pack_resume``: a
    state loaded and not yet served from): the row stream's position at the document the last
    packed batch ended in, and the packer's state there (``pack_state``)."""
    if resume is not None or run is None:  # nothing served since the state was loaded
        history, window_rows, piece_rows, offset = resolve(resume, sizing, 1)
        at, st = offset, pack_resume
    else:
        history, window_rows, piece_rows = run.history, run.window_rows, run.piece_rows
        at, st = packed_position(run.pack_state) if run.pack_state is not None else (run.start, run.pack_start)
    phases = [*history, Phase(world_size, 1, window_rows, at, piece_rows)]
    return {**make_state(identity, epoch, phases), **({"pack_state": st} if st else {})}
