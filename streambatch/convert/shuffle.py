"""The pre-shuffle (``--shuffle SEED``): an out-of-core uniform shuffle in two passes.

Rows are scattered at random into bucket files on disk, then each bucket is read back and
permuted.  A row's bucket is uniform and independent, and each bucket is permuted uniformly,
so the output is a uniformly random permutation of the input.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import InputError, WriteError
from ..schema import Column
from ..sources import Source
from ..stats import BYTES_PER_FEATURE
from .temp import writing

__all__ = ["shuffled_pieces"]


def shuffled_pieces(source: Source, pieces: Iterator[dict[str, np.ndarray]], cols: tuple[Column, ...], seed: int,
                    memory: int, piece_rows: int, workdir: Path, target: Path) -> Iterator[dict[str, np.ndarray]]:
    """The rows of ``pieces`` (the source's rows in source order) in a uniformly random order
    drawn from ``seed``, in pieces of at most ``piece_rows``.  Buckets are sized to a quarter of
    ``memory`` on average and written into ``workdir`` (created, and removed when done).

    Raises ``InputError`` when ``memory`` would need more than 2,000 buckets, ``WriteError``
    naming ``target`` for a failed bucket write.
    """
    row_bytes = sum(c.row_nbytes for c in cols)
    n_buckets = max(1, math.ceil(source.rows * row_bytes / max(1, memory // 4)))
    if n_buckets > 2000:
        stats_b = BYTES_PER_FEATURE * sum(c.row_items for c in cols)  # what convert set aside beside ``memory``
        raise InputError(f"{source.path}: --memory {memory + stats_b} bytes is too small to pre-shuffle "
                         f"{source.rows * row_bytes} bytes; give at least "
                         f"{source.rows * row_bytes // 2000 * 4 + stats_b} bytes")
    with writing(target):
        workdir.mkdir()
    sizes = _scatter(pieces, cols, n_buckets, np.random.default_rng((seed, 0x5348, 1)), workdir, target)
    for b in range(n_buckets):
        size = int(sizes[b])
        perm = np.random.default_rng((seed, 0x5348, 2, b)).permutation(size)
        paths = {c.name: workdir / f"{b}-{c.name}.bin" for c in cols}
        if size * row_bytes <= memory // 2:  # the bucket and a piece: about half the budget
            data = {c.name: np.fromfile(paths[c.name], dtype=c.np_dtype).reshape(size, *c.shape) for c in cols}
            for lo in range(0, size, piece_rows):
                yield {k: v[perm[lo:lo + piece_rows]] for k, v in data.items()}
            del data
        else:  # a bucket of a few wide rows that drew more than its share: read in the shuffled order
            yield from _rows_in_order(paths, cols, perm, piece_rows)
        for path in paths.values():
            path.unlink()
    workdir.rmdir()


def _scatter(pieces: Iterator[dict[str, np.ndarray]], cols: tuple[Column, ...], n_buckets: int,
             rng: np.random.Generator, workdir: Path, target: Path) -> np.ndarray:
    """Append each row of ``pieces`` to a bucket drawn from ``rng`` (a file a bucket and column);
    return the rows of each bucket."""
    files: dict[tuple[int, str], Any] = {}
    sizes = np.zeros(n_buckets, np.int64)
    try:
        with writing(target):
            for b in range(n_buckets):
                for c in cols:
                    files[(b, c.name)] = open(workdir / f"{b}-{c.name}.bin", "wb")
        for piece in pieces:
            n = len(piece[cols[0].name])
            bucket = rng.integers(0, n_buckets, size=n)
            order = np.argsort(bucket, kind="stable")
            counts = np.bincount(bucket, minlength=n_buckets)
            bounds = np.concatenate([[0], np.cumsum(counts)])
            with writing(target):
                for c in cols:
                    arr = np.ascontiguousarray(piece[c.name][order], dtype=c.np_dtype)
                    for b in np.flatnonzero(counts):
                        files[(b, c.name)].write(memoryview(arr[bounds[b]:bounds[b + 1]]).cast("B"))
            sizes += counts
        with writing(target):
            for f in files.values():
                f.close()  # flushes: a full disk may show here
    finally:
        for f in files.values():
            try:
                f.close()
            except OSError:  # already failing; the first error is the one raised
                pass
    return sizes


def _rows_in_order(paths: dict[str, Path], cols: tuple[Column, ...], order: np.ndarray,
                   piece_rows: int) -> Iterator[dict[str, np.ndarray]]:
    """Rows ``order`` of the bucket files ``paths`` (one a column), a piece at a time, each row
    read from its place: a bucket's worth of memory is never held."""
    files = {}
    try:
        for c in cols:
            files[c.name] = open(paths[c.name], "rb", buffering=0)
        for lo in range(0, len(order), piece_rows):
            rows = order[lo:lo + piece_rows].tolist()
            piece = {}
            for c in cols:
                out = np.empty((len(rows), *c.shape), c.np_dtype)
                flat = out.reshape(len(rows), -1).view(np.uint8)
                f = files[c.name]
                for k, r in enumerate(rows):
                    f.seek(r * c.row_nbytes)
                    view, got = memoryview(flat[k]), 0
                    while got < len(view):  # one read returns at most ~2 GiB
                        n = f.readinto(view[got:])
                        if not n:
                            raise WriteError(f"{paths[c.name]}: pre-shuffle bucket file truncated")
                        got += n
                piece[c.name] = out
            yield piece
    finally:
        for f in files.values():
            f.close()
