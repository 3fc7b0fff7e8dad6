"""JSON Lines text parsed by pyarrow, for ``jsonl``: a block of whole lines in one go (with the
input's types, or inferring them), a folder's files as one stream, and, where pyarrow cannot
infer the types from an input's first block, the file and line to blame."""

from __future__ import annotations

import bisect
import io
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["read_json", "first_line", "Concatenated", "located"]


def read_json(data: bytes, schema: Any) -> Any:
    """``data`` parsed by pyarrow in one block with ``schema`` (a field it lacks is an error), or
    inferring the types where it is ``None``."""
    import pyarrow as pa
    import pyarrow.json as pjson

    unexpected = "infer" if schema is None else "error"
    parse = pjson.ParseOptions(explicit_schema=schema, unexpected_field_behavior=unexpected)
    return pjson.read_json(pa.BufferReader(data),
                           read_options=pjson.ReadOptions(use_threads=False, block_size=len(data) + 1),
                           parse_options=parse)


def first_line(e: Exception) -> str:
    """The first line of pyarrow's message, without the row it names within a chunk (or a line)."""
    return re.sub(r" in row \d+$", "", str(e).strip().splitlines()[0])


class Concatenated(io.RawIOBase):
    """The files ``paths`` one after another (each decompressed by its extension, as pyarrow
    reads a file, and ending its last line): a stream for pyarrow's reader.  ``marks`` holds
    ``(first byte, file)`` of each file opened so far."""

    def __init__(self, paths: list[Path]) -> None:
        super().__init__()
        self._paths, self._stream, self._pos, self._last = paths, None, 0, b"\n"
        self.marks: list[tuple[int, int]] = []

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        """Fill ``buf`` (short only at the end: pyarrow takes a short read for a block's end)."""
        import pyarrow as pa

        view, got = memoryview(buf).cast("B"), 0
        while got < len(view) and (self._stream is not None or len(self.marks) < len(self._paths)):
            if self._stream is None:
                self.marks.append((self._pos, len(self.marks)))
                self._stream = pa.input_stream(str(self._paths[len(self.marks) - 1]))
            data = self._stream.read(len(view) - got)
            if not data:  # this file's end: a line break after its last line, if it has none
                self._stream.close()
                self._stream = None
                data = b"\n" if self._last != b"\n" else b""
            if data:
                view[got:got + len(data)] = data
                got, self._pos, self._last = got + len(data), self._pos + len(data), data[-1:]
        return got

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        super().close()


def located(path: Path, paths: list[Path], error: Exception, block: int) -> InputError:
    """pyarrow's ``error`` inferring the types from the first ``block`` bytes of input ``path``'s
    files ``paths`` as an ``InputError`` naming the file and line (from 1) of the first line by
    which the lines before it no longer parse together; ``path`` and pyarrow's message where no
    line is to blame (nothing to read, an unreadable file)."""
    try:
        with io.BufferedReader(Concatenated(paths)) as stream:
            data = stream.read(block) + stream.readline()
            marks = stream.raw.marks
    except OSError:
        data, marks = b"", []
    cuts = (np.flatnonzero(np.frombuffer(data, np.uint8) == 10) + 1).tolist()
    cuts += [len(data)] if data[-1:] not in (b"\n", b"") else []
    k = bisect.bisect_left(range(len(cuts)), True, key=lambda j: _fails(data[:cuts[j]]) is not None)
    if k == len(cuts):
        return InputError(f"{path}: cannot parse JSONL: {str(error).splitlines()[0]}")
    at = cuts[k - 1] if k else 0  # the line's first byte
    first, f = marks[bisect.bisect_right(marks, (at, len(paths))) - 1]
    line = data.count(b"\n", first, at) + 1
    return InputError(f"{paths[f]}: line {line}: cannot parse JSONL: {first_line(_fails(data[:cuts[k]]) or error)}")


def _fails(data: bytes) -> Exception | None:
    """pyarrow's error parsing ``data`` (whole lines) in one block, inferring the types; ``None``
    where it parses or holds only blank lines."""
    import pyarrow as pa

    try:
        if data.strip():
            read_json(data, None)
    except pa.ArrowInvalid as e:
        return e
    return None
