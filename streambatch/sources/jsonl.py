"""JSON Lines input: one JSON object a line, its keys the columns.

A plain file has random access by row range.  A raw line break cannot occur inside a JSON string,
so the file is cut after line breaks into chunks of about 1 MiB of whole lines (more in a file
over 4 GiB, up to 8 MiB: about 4,096 chunks up to 32 GiB), and the pass at open parses each
chunk on its own with the schema pyarrow infers from the file's first 8 MiB, as its streaming
read of the whole file would: every chunk gives the types the whole file gives, and the rows
pyarrow finds (a blank line is none, two objects on a line are two).  Where each chunk starts
(byte, row and line) is kept in memory (:class:`JsonlIndex`); a row range parses the chunks
holding it.  The index goes with the source's ``SourceSpec``, so a conversion's part that opens
the file again (in another process) reads only its own chunks.  A compressed file (``.gz``,
``.bz2``, ``.lz4``, ``.zst``: pyarrow decompresses it) is read in order, as a whole.
"""

from __future__ import annotations

import os
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np

from ..errors import InputError
from ._batches import numbered
from ._text import BLOCK_BYTES, TextSource
from .base import ReadOptions

__all__ = ["JsonlSource", "JsonlIndex"]

CHUNK_BYTES = 1 << 20
"""The least bytes of text a chunk holds (its last one aside)."""
COMPRESSED = (".bz2", ".gz", ".lz4", ".zst")
"""The extensions by which pyarrow reads a file decompressed."""
MAX_CHUNKS = 4096
"""Chunks grow beyond ``CHUNK_BYTES`` (up to ``BLOCK_BYTES``) to keep the index this small."""


@dataclass(frozen=True, eq=False)
class JsonlIndex:
    """Where the chunks of a JSON Lines file start, found by the pass at open; plain values, so
    that it travels to another process with the ``SourceSpec``.  ``size`` and ``mtime_ns`` are
    the file's when it was indexed: a later open refuses a file that changed."""

    size: int
    mtime_ns: int
    schema: bytes
    """The Arrow schema every chunk is parsed with (serialised)."""
    offsets: np.ndarray
    """int64, chunks + 1: each chunk's first byte, then the end of the file."""
    rows: np.ndarray
    """int64, chunks + 1: each chunk's first row, then the row count."""
    lines: np.ndarray
    """int64, chunks: each chunk's first line (from 0), for errors."""

    def __repr__(self) -> str:
        return f"JsonlIndex({len(self.lines)} chunks, {int(self.rows[-1])} rows, {self.size} bytes)"


class JsonlSource(TextSource):
    """A JSON Lines file (``.jsonl`` or ``.ndjson``): by chunks (:class:`JsonlIndex`), or, when
    compressed, in order."""

    name = "jsonl"
    extensions = (".jsonl", ".ndjson")
    ranged = True

    def __init__(self, path: Path, opts: ReadOptions) -> None:
        super().__init__(path, opts)
        self._schema: Any = None  # with an index: the schema its chunks are parsed with

    @classmethod
    def open(cls, path: Path, keep: tuple[str, ...] | None, opts: ReadOptions) -> TextSource:
        import pyarrow as pa

        if _compressed(path):
            return super().open(path, keep, opts)
        out = cls(path, opts)
        index = opts.index if opts.index is not None else _build(path, out._first_schema())
        _check_unchanged(path, index)
        out.index, out._schema = index, pa.ipc.read_schema(pa.py_buffer(index.schema))
        out._setup(out._schema, int(index.rows[-1]), keep, opts, block_rows=max(1, int(np.diff(index.rows).max())))
        return out

    @property
    def random_access(self) -> bool:
        return self.index is not None and super().random_access

    @property
    def in_order(self) -> str:
        return "a compressed JSON Lines file is read in order" if self.index is None else super().in_order

    def _reader(self) -> Any:
        import pyarrow.json as pjson

        return pjson.open_json(str(self.path), read_options=pjson.ReadOptions(block_size=BLOCK_BYTES))

    def _first_schema(self) -> Any:
        """The schema pyarrow infers from the file's first ``BLOCK_BYTES`` (what a streaming read
        of the whole file takes); ``InputError`` where that block does not parse or is empty."""
        try:
            return self._reader().schema
        except Exception as e:  # pyarrow raises ArrowInvalid with the row
            raise InputError(f"{self.path}: cannot parse JSONL: {str(e).splitlines()[0]}") from None

    def _chunks(self, first: int, names: tuple[str, ...]) -> Iterator[tuple[int, Any]]:
        """``(first row, table)`` of the chunks from chunk ``first`` on, columns ``names``.  Each
        call opens the file (ranges are read from several threads)."""
        index = self.index
        ends = index.offsets
        try:
            with open(self.path, "rb") as f:
                f.seek(int(ends[first]))
                for i in range(first, len(index.lines)):
                    data = f.read(int(ends[i + 1] - ends[i]))
                    if len(data) != ends[i + 1] - ends[i]:
                        raise InputError(f"{self.path}: ended at byte {ends[i] + len(data)}, expected {ends[-1]} "
                                         "bytes (changed since it was opened?)")
                    yield int(index.rows[i]), _parse(self.path, data, self._schema, int(index.lines[i])).select(
                        list(names))
        except OSError as e:
            raise InputError(f"{self.path}: cannot read: {e.strerror or e}") from None

    def _batches(self, max_rows: int, names: tuple[str, ...]) -> Iterator[Any]:
        if self.index is None:
            yield from super()._batches(max_rows, names)
            return
        for _, table in self._chunks(0, names):
            yield from table.to_batches()

    def _batches_from(self, max_rows: int, names: tuple[str, ...], start: int) -> Iterator[tuple[int, Any]]:
        first = int(np.searchsorted(self.index.rows, start, side="right")) - 1
        for row, table in self._chunks(min(max(0, first), len(self.index.lines) - 1), names):
            yield from numbered(iter(table.to_batches()), row, names[0])

    def _first_batch(self, names: tuple[str, ...]) -> Any:
        if self.index is None:
            return super()._first_batch(names)
        return next((b for b in self._batches(0, names) if b.num_rows), None)


def _threads() -> int:
    """The threads of the pass at open: one a core, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def _compressed(path: Path) -> bool:
    """Whether pyarrow reads ``path`` decompressed: by its extension, as ``pyarrow.input_stream`` tells."""
    return str(path).endswith(COMPRESSED)


def _build(path: Path, schema: Any) -> JsonlIndex:
    """The pass at open: every chunk of ``path`` parsed with ``schema`` (on up to ``_threads()``
    threads, as pyarrow's own reader would), its start kept.  Raises ``InputError`` naming the
    first line that does not parse."""
    from concurrent.futures import ThreadPoolExecutor

    starts: list[tuple[int, int]] = []  # (byte, line) of each chunk
    rows, line, end = [0], 0, 0
    workers = _threads()
    try:
        stat = path.stat()
        step = min(BLOCK_BYTES, max(CHUNK_BYTES, stat.st_size // MAX_CHUNKS))
        with open(path, "rb") as f, ThreadPoolExecutor(workers, "streambatch-jsonl-index") as pool:
            pending: deque[Any] = deque()  # each chunk's row count, in order
            for at, data in _cut(f, step):
                pending.append(pool.submit(_count, path, data, schema, line))
                starts.append((at, line))
                line, end = line + data.count(b"\n"), at + len(data)
                while pending and (len(pending) > 2 * workers or pending[0].done()):
                    rows.append(rows[-1] + pending.popleft().result())
            rows.extend(rows[-1] + np.cumsum([p.result() for p in pending], dtype=np.int64))
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    return JsonlIndex(stat.st_size, stat.st_mtime_ns, schema.serialize().to_pybytes(),
                      np.asarray([a for a, _ in starts] + [end], np.int64), np.asarray(rows, np.int64),
                      np.asarray([n for _, n in starts], np.int64))


def _count(path: Path, data: bytes, schema: Any, line: int) -> int:
    """The rows of a chunk (``_parse``)."""
    return int(_parse(path, data, schema, line).num_rows)


def _cut(f: BinaryIO, step: int) -> Iterator[tuple[int, bytes]]:
    """``(first byte, bytes)`` of consecutive chunks of ``f``: ``step`` bytes read at a time,
    each chunk ending after the last line break read, the last one at the end of the file."""
    at, rest = 0, b""
    while True:
        block = f.read(step)
        data = rest + block
        if len(block) < step:  # the end of the file
            if data:
                yield at, data
            return
        cut = data.rfind(b"\n") + 1
        if cut == 0:  # a line longer than a step: it goes on
            rest = data
            continue
        yield at, data[:cut]
        at, rest = at + cut, data[cut:]


def _check_unchanged(path: Path, index: JsonlIndex) -> None:
    """``InputError`` where ``path`` differs in size or time from when ``index`` was made."""
    try:
        stat = path.stat()
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    if (stat.st_size, stat.st_mtime_ns) != (index.size, index.mtime_ns):
        raise InputError(f"{path}: changed since it was opened ({index.size} bytes then, {stat.st_size} now, or "
                         "modified); convert it again")


def _parse(path: Path, data: bytes, schema: Any, line: int) -> Any:
    """The Arrow table of ``data``, a chunk of whole lines starting at line ``line`` (from 0),
    parsed with ``schema``; ``InputError`` naming the first line that does not parse alone
    (or, failing that, the chunk's lines)."""
    import pyarrow as pa

    try:
        return _read_json(data, schema)
    except pa.ArrowInvalid as e:
        error = e
    for k, text in enumerate(data.split(b"\n")):
        try:
            if text.strip():
                _read_json(text, schema)
        except pa.ArrowInvalid as e:
            raise InputError(f"{path}: line {line + k + 1}: cannot parse JSONL: {_first_line(e)}") from None
    last = line + data.count(b"\n") + (not data.endswith(b"\n"))
    raise InputError(f"{path}: lines {line + 1}-{last}: cannot parse JSONL: {_first_line(error)}") from None


def _read_json(data: bytes, schema: Any) -> Any:
    """``data`` parsed by pyarrow in one block with ``schema`` (a field it lacks is an error)."""
    import pyarrow as pa
    import pyarrow.json as pjson

    return pjson.read_json(pa.BufferReader(data),
                           read_options=pjson.ReadOptions(use_threads=False, block_size=len(data) + 1),
                           parse_options=pjson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error"))


def _first_line(e: Exception) -> str:
    """The first line of pyarrow's message, without the row it names within a chunk (or a line)."""
    return re.sub(r" in row \d+$", "", str(e).strip().splitlines()[0])
