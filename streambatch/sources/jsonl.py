"""JSON Lines input: one JSON object a line, its keys the columns; a file, or a folder of them.

A folder's files named ``*.jsonl`` / ``*.ndjson`` (compressed ones too) are one input, read in
name order as a Parquet folder's (other files are ignored, as there): the rows and types of the
files one after another, each ending its last line, as if they were one file.

A plain input has random access by row range.  A raw line break cannot occur inside a JSON
string, so each file is cut after line breaks into chunks of about 1 MiB of whole lines (more
in an input over 4 GiB, up to 8 MiB: about 4,096 chunks, and one more a file, up to 32 GiB),
and the pass at open parses each chunk on its own with the schema pyarrow infers from the
input's first 8 MiB, as its streaming read of the whole input would: every chunk gives the
types the whole input gives, and the rows pyarrow finds (a blank line is none, two objects on a
line are two).  Where each chunk starts (byte, row, and line in its file) is kept in memory
(:class:`JsonlIndex`); a row range parses the chunks holding it.  The index goes with the
source's ``SourceSpec``, so a conversion's part that opens the input again (in another process)
reads only its own chunks.  A compressed file (``.gz``, ``.bz2``, ``.lz4``, ``.zst``: pyarrow
decompresses it), or a folder holding one, is read in order, as a whole.
"""

from __future__ import annotations

import os
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import InputError
from ._batches import numbered
from ._jsonl_text import Concatenated, first_line, located, read_json
from ._text import BLOCK_BYTES, TextSource
from .base import ReadOptions

__all__ = ["JsonlSource", "JsonlIndex"]

CHUNK_BYTES = 1 << 20
"""The least bytes of text a chunk holds (a file's last one aside)."""
COMPRESSED = (".bz2", ".gz", ".lz4", ".zst")
"""The extensions by which pyarrow reads a file decompressed."""
MAX_CHUNKS = 4096
"""Chunks grow beyond ``CHUNK_BYTES`` (up to ``BLOCK_BYTES``) to keep the index this small."""


@dataclass(frozen=True, eq=False)
class JsonlIndex:
    """Where the chunks of a JSON Lines input start, found by the pass at open; plain values, so
    that it travels to another process with the ``SourceSpec``.  Its files are taken one after
    another (a folder's in name order); ``names``, ``sizes`` and ``mtimes_ns`` are theirs when
    indexed: a later open refuses an input that changed."""

    names: tuple[str, ...]
    """The files' names (a file's own name, or the names of a folder's files)."""
    sizes: np.ndarray
    """int64, files: the bytes of each."""
    mtimes_ns: np.ndarray
    """int64, files: the modification time of each."""
    schema: bytes
    """The Arrow schema every chunk is parsed with (serialised)."""
    offsets: np.ndarray
    """int64, chunks + 1: each chunk's first byte in the files one after another, then their end."""
    rows: np.ndarray
    """int64, chunks + 1: each chunk's first row, then the row count."""
    lines: np.ndarray
    """int64, chunks: each chunk's first line in its file (from 0), for errors."""

    @property
    def starts(self) -> np.ndarray:
        """int64, files + 1: each file's first byte in the files one after another, then their end."""
        return np.concatenate([[0], np.cumsum(self.sizes, dtype=np.int64)])

    def __repr__(self) -> str:
        return (f"JsonlIndex({len(self.lines)} chunks, {int(self.rows[-1])} rows, {len(self.names)} files, "
                f"{int(self.offsets[-1])} bytes)")


class JsonlSource(TextSource):
    """A JSON Lines file (``.jsonl`` or ``.ndjson``) or a folder of them: by chunks
    (:class:`JsonlIndex`), or, when a file is compressed, in order."""

    name = "jsonl"
    extensions = (".jsonl", ".ndjson")
    ranged = True

    def __init__(self, path: Path, opts: ReadOptions) -> None:
        super().__init__(path, opts)
        self._files = _members(path)
        self._schema: Any = None  # with an index: the schema its chunks are parsed with
        self._starts = self._bounds = np.zeros(1, np.int64)  # with an index: where each file's bytes and chunks start

    @classmethod
    def claims_folder(cls, path: Path, kinds: set[str]) -> bool:
        return kinds == {"jsonl"} or (not kinds and any(_is_member(p.name) for p in path.iterdir()
                                                        if not p.name.startswith(".")))

    @classmethod
    def open(cls, path: Path, keep: tuple[str, ...] | None, opts: ReadOptions) -> TextSource:
        import pyarrow as pa

        out = cls(path, opts)
        if opts.index is None and any(_compressed(p) for p in out._files):  # with an index: a file added is refused
            return super().open(path, keep, opts)
        index = opts.index if opts.index is not None else _build(out._files, out._first_schema())
        _check_unchanged(path, out._files, index)
        out.index, out._schema = index, pa.ipc.read_schema(pa.py_buffer(index.schema))
        out._starts = index.starts
        out._bounds = np.searchsorted(index.offsets[:-1], out._starts)  # each file's first chunk, then the count
        out._setup(out._schema, int(index.rows[-1]), keep, opts, block_rows=max(1, int(np.diff(index.rows).max())))
        return out

    @property
    def random_access(self) -> bool:
        return self.index is not None and super().random_access

    @property
    def in_order(self) -> str:
        if self.index is not None:
            return super().in_order
        why = "a compressed JSON Lines file is read in order"
        if self._files == [self.path]:
            return why
        return f"{next(p for p in self._files if _compressed(p)).name} is compressed: {why}"

    def _reader(self) -> Any:
        import pyarrow.json as pjson

        source = str(self.path) if self._files == [self.path] else Concatenated(self._files)
        return pjson.open_json(source, read_options=pjson.ReadOptions(block_size=BLOCK_BYTES))

    def _first_schema(self) -> Any:
        """The schema pyarrow infers from the input's first ``BLOCK_BYTES`` (what a streaming read
        of the whole input takes); ``InputError`` where that block does not parse (naming the
        file and line, :func:`._jsonl_text.located`) or is empty."""
        try:
            return self._reader().schema
        except Exception as e:  # pyarrow raises ArrowInvalid with the row
            raise located(self.path, self._files, e, BLOCK_BYTES) from None

    def _chunks(self, first: int, names: tuple[str, ...]) -> Iterator[tuple[int, Any]]:
        """``(first row, table)`` of the chunks from chunk ``first`` on, columns ``names``."""
        bounds = self._bounds
        for k in range(int(np.searchsorted(bounds, first, side="right")) - 1, len(self._files)):
            yield from self._file_chunks(k, max(first, int(bounds[k])), int(bounds[k + 1]), names)

    def _file_chunks(self, k: int, lo: int, hi: int, names: tuple[str, ...]) -> Iterator[tuple[int, Any]]:
        """``(first row, table)`` of chunks ``lo`` to ``hi``, of file ``k``.  Each call opens the
        file (ranges are read from several threads)."""
        index, path = self.index, self._files[k]
        ends, start = index.offsets, int(self._starts[k])
        try:
            with open(path, "rb") as f:
                f.seek(int(ends[lo]) - start)
                for i in range(lo, hi):
                    data = f.read(int(ends[i + 1] - ends[i]))
                    if len(data) != ends[i + 1] - ends[i]:
                        raise InputError(f"{path}: ended at byte {ends[i] - start + len(data)}, expected "
                                         f"{index.sizes[k]} bytes (changed since it was opened?)")
                    yield int(index.rows[i]), _parse(path, data, self._schema, int(index.lines[i])).select(
                        list(names))
        except OSError as e:
            raise InputError(f"{path}: cannot read: {e.strerror or e}") from None

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


def _members(path: Path) -> list[Path]:
    """The JSON Lines files of input ``path``: itself, or a folder's files named ``*.jsonl`` or
    ``*.ndjson``, compressed or not, sorted by name (as a Parquet folder's files).  Raises
    ``InputError`` for a folder without any."""
    if not path.is_dir():
        return [path]
    found = sorted(p for p in path.iterdir() if _is_member(p.name))
    if not found:
        raise InputError(f"{path}: folder holds no JSON Lines files (.jsonl, .ndjson, compressed or not)")
    return found


def _is_member(name: str) -> bool:
    """Whether a folder's file ``name`` is one of its JSON Lines files (:func:`_members`)."""
    plain = next((name[: -len(c)] for c in COMPRESSED if name.endswith(c)), name)
    return plain.lower().endswith(JsonlSource.extensions)


def _threads() -> int:
    """The threads of the pass at open: one a core, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def _compressed(path: Path) -> bool:
    """Whether pyarrow reads ``path`` decompressed: by its extension, as ``pyarrow.input_stream`` tells."""
    return str(path).endswith(COMPRESSED)


def _stat(path: Path) -> os.stat_result:
    """``path.stat()``; ``InputError`` naming it where it cannot be read."""
    try:
        return path.stat()
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None


def _build(paths: list[Path], schema: Any) -> JsonlIndex:
    """The pass at open: every chunk of the files ``paths`` parsed with ``schema`` (on up to
    ``_threads()`` threads, as pyarrow's own reader would), its start kept.  Raises
    ``InputError`` naming the first line that does not parse (and its file)."""
    from concurrent.futures import ThreadPoolExecutor

    starts: list[tuple[int, int]] = []  # (byte in the files one after another, line in its file) of each chunk
    rows, sizes, base, workers = [0], [], 0, _threads()
    stats = [_stat(p) for p in paths]
    step = min(BLOCK_BYTES, max(CHUNK_BYTES, sum(s.st_size for s in stats) // MAX_CHUNKS))
    with ThreadPoolExecutor(workers, "streambatch-jsonl-index") as pool:
        pending: deque[Any] = deque()  # each chunk's row count, in order
        for path in paths:
            end = 0
            for at, line, data in _cut(path, step):
                pending.append(pool.submit(_count, path, data, schema, line))
                starts.append((base + at, line))
                end = at + len(data)
                while pending and (len(pending) > 2 * workers or pending[0].done()):
                    rows.append(rows[-1] + pending.popleft().result())
            sizes.append(end)
            base += end
        rows.extend(rows[-1] + np.cumsum([p.result() for p in pending], dtype=np.int64))
    return JsonlIndex(tuple(p.name for p in paths), np.asarray(sizes, np.int64),
                      np.asarray([s.st_mtime_ns for s in stats], np.int64), schema.serialize().to_pybytes(),
                      np.asarray([a for a, _ in starts] + [base], np.int64), np.asarray(rows, np.int64),
                      np.asarray([n for _, n in starts], np.int64))


def _count(path: Path, data: bytes, schema: Any, line: int) -> int:
    """The rows of a chunk (``_parse``)."""
    return int(_parse(path, data, schema, line).num_rows)


def _cut(path: Path, step: int) -> Iterator[tuple[int, int, bytes]]:
    """``(first byte, first line, bytes)`` of consecutive chunks of file ``path``: ``step`` bytes
    read at a time, each chunk ending after the last line break read, the last one at the end of
    the file.  ``InputError`` where it cannot be read."""
    at, line, rest = 0, 0, b""
    try:
        with open(path, "rb") as f:
            while True:
                block = f.read(step)
                data = rest + block
                if len(block) < step:  # the end of the file
                    if data:
                        yield at, line, data
                    return
                cut = data.rfind(b"\n") + 1
                if cut == 0:  # a line longer than a step: it goes on
                    rest = data
                    continue
                yield at, line, data[:cut]
                at, line, rest = at + cut, line + data.count(b"\n", 0, cut), data[cut:]
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None


def _check_unchanged(path: Path, paths: list[Path], index: JsonlIndex) -> None:
    """``InputError`` where input ``path``'s files ``paths`` are not those ``index`` was made of,
    or one differs in size or time from then."""
    names = tuple(p.name for p in paths)
    if names != index.names:
        gone = [n for n in index.names if n not in names]
        what = f"{gone[0]} is gone" if gone else f"{next(n for n in names if n not in index.names)} appeared"
        raise InputError(f"{path}: {what} since it was opened; convert it again")
    for p, size, mtime in zip(paths, index.sizes, index.mtimes_ns):
        stat = _stat(p)
        if (stat.st_size, stat.st_mtime_ns) != (size, mtime):
            raise InputError(f"{p}: changed since it was opened ({size} bytes then, {stat.st_size} now, or "
                             "modified); convert it again")


def _parse(path: Path, data: bytes, schema: Any, line: int) -> Any:
    """The Arrow table of ``data``, a chunk of whole lines starting at line ``line`` (from 0),
    parsed with ``schema``; ``InputError`` naming the first line that does not parse alone
    (or, failing that, the chunk's lines)."""
    import pyarrow as pa

    try:
        return read_json(data, schema)
    except pa.ArrowInvalid as e:
        error = e
    for k, text in enumerate(data.split(b"\n")):
        try:
            if text.strip():
                read_json(text, schema)
        except pa.ArrowInvalid as e:
            raise InputError(f"{path}: line {line + k + 1}: cannot parse JSONL: {first_line(e)}") from None
    last = line + data.count(b"\n") + (not data.endswith(b"\n"))
    raise InputError(f"{path}: lines {line + 1}-{last}: cannot parse JSONL: {first_line(error)}") from None

