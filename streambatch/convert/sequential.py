"""Writing a dataset in order, as one part: a background thread reads the source in order and
summarises each piece (so errors name source rows) while this thread writes, unit by unit, the
rows as read or pre-shuffled.  Sources without random access and the pre-shuffle go this way."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..sources import Source
from .parts import PartOptions, PartResult, PartWriter
from .readahead import ReadAhead
from .shuffle import shuffled_pieces

__all__ = ["write_sequential"]


def write_sequential(source: Source, opts: PartOptions, folder: Path, target: Path, shuffle: int | None,
                     memory: int, progress: Callable[[int], None]) -> PartResult:
    """Write every row of ``source`` into ``folder`` (pre-shuffled with seed ``shuffle`` within
    ``memory``); ``progress(rows)`` is told of the rows written.  Raises what the source and
    the writer raise (writes as ``WriteError`` naming ``target``)."""
    part = PartWriter(opts, folder, target, 0, progress)
    reader: ReadAhead | None = None
    try:
        reader = ReadAhead(part.summarised(source))
        pieces: Iterator[dict[str, np.ndarray]] = iter(reader)
        if shuffle is not None:
            pieces = shuffled_pieces(source, pieces, opts.columns, int(shuffle), memory, opts.piece_rows,
                                     folder / ".buckets", target)
        part.write(pieces)
        reader.close()
        reader = None
        return part.finish()
    except BaseException:
        if reader is not None:
            reader.close()
        part.abort()
        raise

