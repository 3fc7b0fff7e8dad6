"""Packed token batches: the documents a row stream serves, packed into sequences (``packing.Packer``).

The loader serves documents in batches of ``PACK_ROWS`` rows (windows, budget and shuffle as for
any ragged column); the consuming side feeds them, in order, to a ``Packer``, takes its batches
(which spans of which documents each holds) and has the pool threads write them, each into one
buffer (``tokens``, ``position_ids``, ``document_ids``), served in order.  The budget's batches
ahead are shared between row batches and packed ones (:func:`pack_ahead`).  The packer's state
after each batch is handed to ``on_state``: a resume restarts the row stream at that document
(``PACK_ROWS`` rows a batch, ``skip`` rows into the first) and the packer at that token.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from ..errors import StateError
from ..packing import OUTPUTS, Pack, Packer, Planned, batch_nbytes, batch_views
from ..plan import Phase
from .sizing import Sizing
from .state import Run, make_state, resolve

__all__ = ["PACK_ROWS", "pack_ahead", "serve_packed", "write_packed", "check_pack_state", "packed_position",
           "packed_state"]

PACK_ROWS = 64
"""Documents a row batch of a packed stream holds (the row stream's batch size)."""
PACK_GROUP = 4
"""Packed batches a pool task writes (fewer when few batches may be ahead)."""


def serve_packed(row_batches: Any, pack: Pack, batch_size: int, drop_last: bool, dtype: Any,
                 index_key: str, make_batch: Callable[[np.ndarray, dict[str, np.ndarray]], Any],
                 start: Mapping[str, Any] | None = None, skip: int = 0,
                 on_state: Callable[[dict[str, Any]], None] | None = None, ahead: int = 1) -> Iterator[Any]:
    """Pack the documents of ``row_batches`` (a ``Prefetcher``: column ``pack.column`` and the row
    ids ``index_key``) into batches of ``batch_size`` sequences; ``make_batch(buffer, arrays)``
    makes what is served.  ``start`` and ``skip``: a resume (the packer's state, and the rows of
    the first row batch already packed before it).

    The packer takes each batch on this thread (cheap: which chunk spans it holds); the tokens are
    written by the prefetcher's pool threads, up to ``ahead`` batches ahead, in tasks of a few
    batches, and served in order.  ``on_state`` gets the packer's state after each batch as that
    batch is served."""
    packer = pack.packer(batch_size, dtype, drop_last, start=start)
    out = _Written(row_batches, make_batch, on_state, ahead)
    for b in row_batches.open_batches():
        docs, rows = b[pack.column], b[index_key]
        if skip:
            docs, rows, skip = docs[min(skip, len(rows)):], rows[min(skip, len(rows)):], max(0, skip - len(rows))
        packer.feed(docs, rows)
        yield from out.take(packer)
    packer.finish()
    yield from out.take(packer, final=True)


class _Written:
    """Packed batches taken and handed to the pool to write, served in order."""

    def __init__(self, pool: Any, make_batch: Callable[[np.ndarray, dict[str, np.ndarray]], Any],
                 on_state: Callable[[dict[str, Any]], None] | None, ahead: int) -> None:
        self.pool, self.make_batch, self.on_state = pool, make_batch, on_state
        self.ahead = max(1, ahead)
        self.group = max(1, min(PACK_GROUP, self.ahead // 2))
        self.taken: list[tuple[Planned, dict[str, Any]]] = []  # not yet submitted
        self.pending: deque[tuple[Any, list[dict[str, Any]]]] = deque()  # (task, the states of its batches)
        self.in_flight = 0  # batches taken and not yet served

    def take(self, packer: Packer, final: bool = False) -> Iterator[Any]:
        """Take every batch ready in ``packer``; serve those beyond ``ahead`` (all when ``final``)."""
        while (planned := packer.take_batch()) is not None:
            self.taken.append((planned, packer.state()))
            self.in_flight += 1
            if len(self.taken) >= self.group:
                self._submit()
            yield from self._serve(self.ahead)
        if final:
            self._submit()
            yield from self._serve(0)

    def _submit(self) -> None:
        if self.taken:
            planned = [p for p, _ in self.taken]
            task = self.pool.submit(write_packed, (planned, self.make_batch),
                                    f"while packing {len(planned)} batches of {planned[0].rows} sequences")
            self.pending.append((task, [st for _, st in self.taken]))
            self.taken = []

    def _serve(self, keep: int) -> Iterator[Any]:
        while self.pending and self.in_flight > keep:
            task, states = self.pending.popleft()
            batches = self.pool.wait(task)[::-1]  # popped as served: no batch held here once served
            for st in states:
                self.in_flight -= 1
                if self.on_state is not None:
                    self.on_state(st)
                yield batches.pop()


def write_packed(planned: list[Planned], make_batch: Callable[[np.ndarray, dict[str, np.ndarray]], Any]) -> list[Any]:
    """Write each taken batch into a buffer of its own (a pool task); what ``make_batch`` makes of each."""
    out = []
    for p in planned:
        flat = np.empty(batch_nbytes(p.rows, p.seq_len, p.dtype), np.uint8)
        views = batch_views(flat, p.rows, p.seq_len, p.dtype)
        p.write(*(views[k].reshape(-1) for k in OUTPUTS))
        out.append(make_batch(flat, {k: views[k] for k in OUTPUTS}))
    return out


def pack_ahead(ahead: int, threads: int, row_batch_bytes: int, packed_bytes: int) -> tuple[int, int]:
    """(row batches, packed batches) ahead of the consumer, from the ``ahead`` row batches the
    budget keeps: packed batches take up to half of those bytes (at most 8 a thread, at least one),
    and the row batches what is left (at least one)."""
    packed = max(1, min(8 * threads, ahead * row_batch_bytes // 2 // max(1, packed_bytes)))
    return max(1, ahead - -(-packed * packed_bytes // max(1, row_batch_bytes))), packed


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
