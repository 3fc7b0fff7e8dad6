"""Token packing: documents (rows of a ``list`` column) concatenated into sequences of ``seq_len``.

Numpy only, no torch, no threads: the loader feeds documents in stream order and takes batches.

What a batch holds (``B`` sequences of ``L = seq_len``; the last batch may have fewer rows)::

    tokens        [B, L]  the column's dtype: the documents' tokens, one after another
    position_ids  [B, L]  int64: 0 at a document's first token, counting up within the document
    document_ids  [B, L]  int64: the source row id of each token, -1 for padding

Documents are concatenated in the order they are fed; a document longer than the space left in
a sequence continues in the next sequence (and batch), as many sequences as it needs.  Its
``position_ids`` keep counting across that boundary: they are the token's true position in its
document, so they can exceed ``L - 1`` (a model with learned absolute positions of size ``L``
must clamp them or take them modulo ``L``).  A sequence that begins inside a document has no 0
in its first column: where documents start is where ``document_ids`` changes, plus column 0.

End of the stream (:meth:`Packer.finish`): without ``drop_last`` the tokens left make one last,
shorter batch (``ceil(left / L)`` rows) whose last sequence is padded with ``pad_id``
(``document_ids`` -1, ``position_ids`` 0), so every token is delivered exactly once.  With
``drop_last`` every batch is full and holds no padding: the tokens after the last full batch
(fewer than ``B * L``) are not delivered.  Padding is only ever at the end of the last sequence;
``pad_id`` may also be a real token (tell them apart by ``document_ids``).

Resume contract.  :meth:`Packer.state` is a small JSON dict describing the stream position just
after the last batch written::

    {"index": k, "row": r, "done": t, "batches": n}

``k`` is a position in the document stream (0 = the epoch's first document): the document the
last batch ended inside (``t`` of its tokens delivered, ``r`` its row id) or, where the batch
ended at a document's end, the next document (``t`` 0, ``r`` null); ``n`` counts the batches
written since the epoch began.  The state depends only on the batches written, not on how the
stream was chunked or how far ahead it was fed.
Documents fed but not yet written are not in the state: to resume, the loader restarts its row
stream at position ``k`` of the same epoch's order (exactly as it skips rows it served today)
and builds ``Packer(..., start=state)``; the packer checks that the first document fed is row
``r`` (where ``t`` > 0), skips its first ``t`` tokens and yields exactly the remaining batches.  So the dataset's
state for a packed epoch is "rows: k" (instead of batches * batch_size) plus this dict.  With
prefetching, take the state right after writing each batch and carry it with that batch: it
belongs to the batch the consumer took, not to how far the packer has run ahead.

Memory: :meth:`Packer.feed` keeps views of the arrays it is given (no copy); :meth:`Packer.detach`
(also run when :meth:`Packer.batches` is exhausted) copies what is left, so the caller may reuse them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ._kernels import pack as pack_tokens
from .errors import StateError
from .ragged import Ragged, RowSlices, concat_slices

__all__ = ["OUTPUTS", "Pack", "Packer", "batch_nbytes", "batch_views"]

OUTPUTS = ("tokens", "position_ids", "document_ids")
"""The arrays of a packed batch, by name."""


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


@dataclass(frozen=True)
class Pack:
    """Pack the documents of ``column`` into sequences of ``seq_len`` tokens, padded with ``pad_id``.

    Raises:
        TypeError: ``column`` is not a string, ``seq_len`` or ``pad_id`` not an integer.
        ValueError: ``column`` is empty or ``seq_len`` below 1.
    """

    column: str
    seq_len: int
    pad_id: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.column, str):
            raise TypeError(f"Pack: column must be a column name (str), got {type(self.column).__name__}")
        if not self.column:
            raise ValueError("Pack: column is empty; name the list column that holds the tokens")
        if not _is_int(self.seq_len):
            raise TypeError(f"Pack: seq_len must be an integer, got {self.seq_len!r}")
        if self.seq_len < 1:
            raise ValueError(f"Pack: seq_len must be >= 1, got {self.seq_len}")
        if not _is_int(self.pad_id):
            raise TypeError(f"Pack: pad_id must be an integer, got {self.pad_id!r}")
        object.__setattr__(self, "seq_len", int(self.seq_len))
        object.__setattr__(self, "pad_id", int(self.pad_id))

    def check_dtype(self, dtype: DTypeLike) -> np.dtype:
        """The column's dtype, checked: a number type that can hold ``pad_id``.

        Raises:
            ValueError: the dtype is not an integer or float type, or ``pad_id`` is out of its range.
        """
        dt = np.dtype(dtype)
        if dt.kind not in "iuf":
            raise ValueError(f"Pack: column {self.column!r} holds {dt}, not numbers: it cannot be packed as tokens")
        if dt.kind in "iu" and not np.iinfo(dt).min <= self.pad_id <= np.iinfo(dt).max:
            raise ValueError(f"Pack: pad_id {self.pad_id} does not fit column {self.column!r} of dtype {dt}")
        return dt

    def packer(self, batch_size: int, dtype: DTypeLike, drop_last: bool = False,
               start: Mapping[str, Any] | None = None) -> Packer:
        """A :class:`Packer` with this configuration (see there for what it raises)."""
        return Packer(self.seq_len, batch_size, pad_id=self.pad_id, dtype=self.check_dtype(dtype),
                      drop_last=drop_last, start=start)


def batch_nbytes(rows: int, seq_len: int, dtype: DTypeLike) -> int:
    """Bytes of one packed batch of ``rows`` sequences: the buffer :func:`batch_views` carves."""
    return rows * seq_len * (16 + np.dtype(dtype).itemsize)


def batch_views(buffer: NDArray[np.uint8], rows: int, seq_len: int, dtype: DTypeLike) -> dict[str, np.ndarray]:
    """``tokens``, ``position_ids`` and ``document_ids`` [rows, seq_len] as views of one buffer.

    The int64 arrays come first, so an 8-byte aligned buffer gives aligned arrays.

    Raises:
        ValueError: the buffer is smaller than :func:`batch_nbytes`.
    """
    n = rows * seq_len
    need = batch_nbytes(rows, seq_len, dtype)
    if buffer.nbytes < need:
        raise ValueError(f"a packed batch of {rows} x {seq_len} needs {need} bytes, the buffer has {buffer.nbytes}")
    flat = buffer.reshape(-1)
    return {"position_ids": flat[:8 * n].view(np.int64).reshape(rows, seq_len),
            "document_ids": flat[8 * n:16 * n].view(np.int64).reshape(rows, seq_len),
            "tokens": flat[16 * n:need].view(dtype).reshape(rows, seq_len)}


class _Chunk:
    """Fed documents not yet wholly written: document ``j`` is ``values[starts[j]:starts[j] +
    cum[j + 1] - cum[j]]`` (anywhere in ``values``: a window's buffer, or a copy), its tokens are
    ``cum[j]:cum[j + 1]`` of the chunk (``cum`` from 0); row ids, a token cursor."""

    __slots__ = ("values", "starts", "cum", "rows", "pos", "owned")

    def __init__(self, values: np.ndarray, starts: NDArray[np.int64], cum: NDArray[np.int64],
                 rows: NDArray[np.int64], pos: int, owned: bool) -> None:
        self.values, self.starts, self.cum, self.rows, self.pos, self.owned = values, starts, cum, rows, pos, owned

    @property
    def left(self) -> int:
        return int(self.cum[-1]) - self.pos

    def doc(self) -> int:
        """The document the cursor is in (past any empty documents at the cursor)."""
        return int(np.searchsorted(self.cum, self.pos, "right")) - 1

    def write(self, k: int, tok: np.ndarray, pos: np.ndarray, doc: np.ndarray, ramp: np.ndarray) -> None:
        """Write the next ``k`` tokens into flat ``tok``, ``pos``, ``doc`` and move the cursor
        (``ramp``: ``arange`` of at least ``k`` int64, kept by the packer)."""
        pack_tokens(self.values, self.starts, self.cum, self.rows, self.pos, k, tok, pos, doc, ramp)
        self.pos += k

    def after(self, base: int, at: NDArray[np.int64]) -> list[tuple[int, int | None, int]]:
        """(stream position, row, tokens done) just after each cursor position ``at`` of this chunk,
        its first document at stream position ``base``: a finished document counts as the next
        one, not done."""
        i = np.searchsorted(self.cum, at, "left")
        prev = np.maximum(i - 1, 0)
        ends, rows, done = (self.cum[i] == at).tolist(), self.rows[prev].tolist(), (at - self.cum[prev]).tolist()
        return [(base + k, None, 0) if e else (base + k - 1, r, d) for k, e, r, d in zip(i.tolist(), ends, rows, done)]

    def own(self, first: bool) -> tuple[_Chunk, int]:
        """The documents not yet wholly written, in arrays of their own (copies), and how many
        documents before them were left out (only from the ``first`` chunk held: the stream
        positions of the others follow from the documents before them)."""
        if self.owned:
            return self, 0
        j = self.doc() if first else 0
        cum = self.cum[j:] - self.cum[j]
        values = concat_slices(self.values, self.starts[j:], self.starts[j:] + np.diff(cum)).values
        return _Chunk(values, cum[:-1].copy(), cum, self.rows[j:].copy(), self.pos - int(self.cum[j]), True), j


class Packer:
    """Packs a stream of documents into batches of ``batch_size`` sequences of ``seq_len`` tokens.

    Use::

        p = Packer(seq_len, batch_size, pad_id=0, dtype=np.int32)
        for docs, row_ids in stream:        # Ragged chunks in stream order, int64 row ids
            p.feed(docs, row_ids)
            yield from p.batches()          # every full batch available now
        p.finish()
        yield from p.batches()              # the last, shorter batch (none with drop_last)

    How chunks are cut does not change the output.  See the module docstring for the outputs,
    ``drop_last`` and the resume contract (``state()`` and ``start``).

    Raises:
        ValueError: ``seq_len`` or ``batch_size`` below 1.
        StateError: ``start`` is not a state :meth:`state` made.
    """

    def __init__(self, seq_len: int, batch_size: int, *, pad_id: int = 0, dtype: DTypeLike = np.int32,
                 drop_last: bool = False, start: Mapping[str, Any] | None = None) -> None:
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"Packer: seq_len and batch_size must be >= 1, got {seq_len} and {batch_size}")
        self.seq_len, self.batch_size, self.pad_id = int(seq_len), int(batch_size), pad_id
        self.dtype, self.drop_last = np.dtype(dtype), bool(drop_last)
        self._chunks: deque[_Chunk] = deque()
        self._ramp = np.arange(self.batch_size * self.seq_len, dtype=np.int64)
        self._left = 0  # tokens fed and not yet written
        self._finished = False
        index, self._expect, self._skip, self._batches = _parse_start(start)
        self._at: tuple[int, int | None, int] = (index, self._expect, self._skip)  # see state()
        self._base = index  # stream position of the first document of the first chunk held
        self._fed = index  # stream position of the next document to be fed

    def feed(self, docs: Ragged | RowSlices, row_ids: NDArray[np.int64]) -> None:
        """Append ``docs`` (the next documents of the stream) with their row ids; keeps views
        (:meth:`detach` copies what is left of them).

        Raises:
            TypeError: ``docs`` is not a ``Ragged`` (or ``RowSlices``) of 1-D rows of the packer's dtype.
            ValueError: ``row_ids`` does not hold one int64 id per document, or after ``finish()``.
            StateError: resuming, and the first document is not the state's row, or is too short.
        """
        rows = np.asarray(row_ids)
        _check_feed(self, docs, rows)
        if len(docs) == 0:
            return
        if isinstance(docs, RowSlices):
            starts = np.ascontiguousarray(docs.starts, np.int64)
            cum = np.zeros(len(docs) + 1, np.int64)
            np.cumsum(docs.lengths, out=cum[1:])
        else:
            starts, cum = docs.offsets[:-1], docs.offsets - docs.offsets[0]
        pos = 0
        if self._fed == self._base and not self._chunks and (self._expect is not None or self._skip):
            pos = self._check_start(cum, rows)
        chunk = _Chunk(docs.values, starts, cum, np.ascontiguousarray(rows, np.int64), pos, False)
        self._chunks.append(chunk)
        self._left += chunk.left
        self._fed += len(docs)
        self._drop_spent()

    def _check_start(self, cum: NDArray[np.int64], rows: NDArray[np.int64]) -> int:
        row, length = int(rows[0]), int(cum[1])
        if self._expect is not None and row != self._expect:
            raise StateError(f"resume state: expected row {self._expect} at position {self._base} of the stream, "
                             f"the loader fed row {row}")
        if self._skip and self._skip >= length:
            raise StateError(f"resume state: row {row} has {length} tokens, the state says {self._skip} were delivered")
        skip, self._expect, self._skip = self._skip, None, 0
        return skip

    def finish(self) -> None:
        """Mark the end of the stream: :meth:`batches` then writes the tokens left (unless ``drop_last``)."""
        self._finished = True

    def rows_ready(self) -> int:
        """Rows the next :meth:`write_batch` writes: ``batch_size``, a last short batch's, or 0."""
        full = self.batch_size * self.seq_len
        if self._left >= full:
            return self.batch_size
        if self._finished and not self.drop_last:
            return -(-self._left // self.seq_len)
        return 0

    def write_batch(self, out: Mapping[str, np.ndarray]) -> int:
        """Write the next batch into ``out`` (``tokens``, ``position_ids``, ``document_ids``, each
        C-contiguous with at least :meth:`rows_ready` rows of ``seq_len``); return its rows (0: none ready).

        Raises:
            ValueError: an output array is missing, too small or of the wrong dtype.
        """
        rows = self.rows_ready()
        if rows == 0:
            return 0
        flat = _flat_outputs(self, out, rows)
        n = min(self._left, rows * self.seq_len)
        self._at = self._take(n, *flat, np.array([n]))[-1]
        if n < rows * self.seq_len:
            flat[0][n:] = self.pad_id
            flat[1][n:] = 0
            flat[2][n:] = -1
        self._batches += 1
        return rows

    def write_batches(self, out: Mapping[str, np.ndarray], count: int) -> list[dict[str, Any]]:
        """Write the next ``count`` full batches into ``out`` at once (batch ``i`` in rows ``i * B``
        to ``(i + 1) * B`` of each array); the :meth:`state` after each.  What ``count`` calls of
        :meth:`write_batch` write, with the per-call work done once.  ``ValueError``: fewer than
        ``count`` full batches fed (:meth:`full_batches`), or ``out`` too small."""
        per = self.batch_size * self.seq_len
        if count < 1 or self._left < count * per:
            raise ValueError(f"Packer.write_batches(): {count} full batches asked, {self._left // per} fed")
        ats = self._take(count * per, *_flat_outputs(self, out, count * self.batch_size),
                         np.arange(1, count + 1, dtype=np.int64) * per)
        self._at = ats[-1]
        states = [{"index": k, "row": r, "done": d, "batches": self._batches + j + 1}
                  for j, (k, r, d) in enumerate(ats)]
        self._batches += count
        return states

    def full_batches(self) -> int:
        """Full batches fed and not yet written."""
        return self._left // (self.batch_size * self.seq_len)

    def _take(self, n: int, tok: np.ndarray, pos: np.ndarray, doc: np.ndarray,
              ends: NDArray[np.int64]) -> list[tuple[int, int | None, int]]:
        """Write the next ``n`` tokens; the stream position after each of ``ends`` (ascending, in (0, n])."""
        if len(self._ramp) < n:
            self._ramp = np.arange(n, dtype=np.int64)
        o, ats = 0, []
        while o < n:
            c, base, a = self._chunks[0], self._base, self._chunks[0].pos
            k = min(n - o, c.left)
            c.write(k, tok[o:o + k], pos[o:o + k], doc[o:o + k], self._ramp)
            inside = ends[(ends > o) & (ends <= o + k)]
            if len(inside):
                ats += c.after(base, a + inside - o)
            o += k
            self._drop_spent()
        self._left -= n
        return ats

    def _drop_spent(self) -> None:
        """Forget the chunks at the front whose tokens were all written (or that had none)."""
        while self._chunks and self._chunks[0].left == 0:
            self._base += len(self._chunks.popleft().rows)

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        """Every batch ready now, each in one new buffer (see :func:`batch_views`); when exhausted,
        the packer holds copies of what is left, so the caller's buffers are free again."""
        while rows := self.rows_ready():
            out = batch_views(np.empty(batch_nbytes(rows, self.seq_len, self.dtype), np.uint8), rows,
                              self.seq_len, self.dtype)
            self.write_batch(out)
            yield {k: out[k] for k in OUTPUTS}
        self.detach()

    def detach(self) -> None:
        """Copy what is left of the documents fed, so that the arrays fed may be reused or freed."""
        owned = [c.own(k == 0) for k, c in enumerate(self._chunks)]
        self._chunks = deque(c for c, _ in owned)
        if owned:
            self._base += owned[0][1]  # only the first chunk has documents written

    def state(self) -> dict[str, Any]:
        """Where the stream stands after the last batch written (small JSON; see the module docstring).

        The same whatever the chunking of the stream and however far ahead it was fed."""
        index, row, done = self._at
        return {"index": index, "row": row, "done": done, "batches": self._batches}


def _parse_start(start: Mapping[str, Any] | None) -> tuple[int, int | None, int, int]:
    """(index, expected row, tokens to skip, batches) of a resume state; zeros for a fresh epoch."""
    if start is None:
        return 0, None, 0, 0
    try:
        index, row, done, batches = (start[k] for k in ("index", "row", "done", "batches"))
    except (KeyError, TypeError) as e:
        raise StateError(f"packing resume state {start!r} lacks {e}; it must come from Packer.state()") from None
    if not all(_is_int(x) and x >= 0 for x in (index, done, batches)) or not (row is None or _is_int(row)):
        raise StateError(f"packing resume state {dict(start)!r}: index, done and batches must be integers >= 0, "
                         "row an integer or null")
    if row is None and done:
        raise StateError(f"packing resume state {dict(start)!r}: done > 0 needs the row it counts")
    return int(index), None if row is None else int(row), int(done), int(batches)


def _check_feed(p: Packer, docs: Ragged, rows: np.ndarray) -> None:
    if p._finished:
        raise ValueError("Packer.feed() after finish(): the stream has ended")
    if not isinstance(docs, (Ragged, RowSlices)) or docs.values.ndim != 1:
        raise TypeError(f"Packer.feed() takes a Ragged of 1-D rows (a list column), got {type(docs).__name__}")
    if docs.values.dtype != p.dtype:
        raise TypeError(f"Packer.feed(): documents of dtype {docs.values.dtype}, the packer packs {p.dtype}")
    if rows.shape != (len(docs),) or rows.dtype.kind not in "iu":
        raise ValueError(f"Packer.feed(): {len(docs)} documents need {len(docs)} integer row ids, "
                         f"got an array of shape {rows.shape} and dtype {rows.dtype}")


def _flat_outputs(p: Packer, out: Mapping[str, np.ndarray], rows: int) -> tuple[np.ndarray, ...]:
    """``out``'s three arrays as flat views of their first ``rows * seq_len`` items, checked."""
    flat = []
    for name, dt in zip(OUTPUTS, (p.dtype, np.dtype(np.int64), np.dtype(np.int64))):
        a = out.get(name)
        if a is None:
            raise ValueError(f"Packer.write_batch(): the output lacks {name!r}")
        if a.dtype != dt or not a.flags.c_contiguous or a.size < rows * p.seq_len:
            raise ValueError(f"Packer.write_batch(): {name!r} must be a C-contiguous {dt} array of at least "
                             f"{rows} x {p.seq_len} items, got {a.dtype} {a.shape}")
        flat.append(a.reshape(-1)[:rows * p.seq_len])
    return tuple(flat)
