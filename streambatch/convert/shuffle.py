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

__all__ = ["shuffled_pieces", "bucket_count", "Draws", "scatter", "bucket_order", "bucket_pieces", "DRAW_ROWS"]

DRAW_ROWS = 1 << 16
"""Rows whose buckets are drawn together, from a generator of their own: a row's bucket depends on
the seed and its row number only, not on how the rows are cut into pieces or tasks (a cluster's
first pass draws the buckets of its row ranges apart, and gets the local converter's)."""


def shuffled_pieces(source: Source, pieces: Iterator[dict[str, np.ndarray]], cols: tuple[Column, ...], seed: int,
                    memory: int, piece_rows: int, workdir: Path, target: Path) -> Iterator[dict[str, np.ndarray]]:
    """The rows of ``pieces`` (the source's rows in source order) in a uniformly random order
    drawn from ``seed``, in pieces of at most ``piece_rows``.  Buckets are sized to a quarter of
    ``memory`` on average and written into ``workdir`` (created, and removed when done).

    Raises ``InputError`` when ``memory`` would need more than 2,000 buckets, ``WriteError``
    naming ``target`` for a failed bucket write.
    """
    n_buckets = bucket_count(source, cols, memory)
    with writing(target):
        workdir.mkdir()
    sizes = scatter(pieces, cols, Draws(seed, n_buckets), 0, workdir, target)
    for b in range(n_buckets):
        size = int(sizes[b])
        paths = {c.name: workdir / f"{b}-{c.name}.bin" for c in cols}
        yield from bucket_pieces({k: [v] for k, v in paths.items()}, np.array([0, size]), cols,
                                 bucket_order(seed, b, size), memory, piece_rows)
        for path in paths.values():
            path.unlink()
    workdir.rmdir()


def bucket_count(source: Source, cols: tuple[Column, ...], memory: int) -> int:
    """The buckets of pre-shuffling ``source`` within ``memory``: a quarter of it each on average.
    Raises ``InputError`` when that needs more than 2,000."""
    row_bytes = sum(c.row_nbytes for c in cols)
    n_buckets = max(1, math.ceil(source.rows * row_bytes / max(1, memory // 4)))
    if n_buckets > 2000:
        stats_b = BYTES_PER_FEATURE * sum(c.row_items for c in cols)  # what convert set aside beside ``memory``
        raise InputError(f"{source.path}: --memory {memory + stats_b} bytes is too small to pre-shuffle "
                         f"{source.rows * row_bytes} bytes; give at least "
                         f"{source.rows * row_bytes // 2000 * 4 + stats_b} bytes")
    return n_buckets


class Draws:
    """Each row's bucket among ``n_buckets``, drawn from ``seed`` by blocks of ``DRAW_ROWS`` rows
    (the last block drawn is kept: consecutive pieces draw each block once)."""

    def __init__(self, seed: int, n_buckets: int) -> None:
        self.seed, self.n_buckets = seed, n_buckets
        self._block, self._draws = -1, np.empty(0, np.int64)

    def _drawn(self, j: int) -> np.ndarray:
        if j != self._block:
            rng = np.random.default_rng((self.seed, 0x5348, 1, j))
            self._block, self._draws = j, rng.integers(0, self.n_buckets, size=DRAW_ROWS)
        return self._draws

    def __call__(self, start: int, n: int) -> np.ndarray:
        """The buckets of rows ``start`` to ``start + n``."""
        out = np.empty(n, np.int64)
        row = start
        while row < start + n:
            j, lo = divmod(row, DRAW_ROWS)
            take = min(DRAW_ROWS - lo, start + n - row)
            out[row - start:row - start + take] = self._drawn(j)[lo:lo + take]
            row += take
        return out


def bucket_order(seed: int, bucket: int, size: int) -> np.ndarray:
    """The uniformly random order of a bucket's ``size`` rows."""
    return np.random.default_rng((seed, 0x5348, 2, bucket)).permutation(size)


def bucket_pieces(paths: dict[str, list[Path]], bounds: np.ndarray, cols: tuple[Column, ...], order: np.ndarray,
                  memory: int, piece_rows: int) -> Iterator[dict[str, np.ndarray]]:
    """Rows ``order`` of a bucket, in pieces of at most ``piece_rows``.  The bucket is one or more
    segments, each a file a column (``paths``), holding its rows ``bounds[k]`` to ``bounds[k + 1]``.
    Read whole when it fits in half of ``memory``, else row by row in ``order``."""
    size = int(bounds[-1])
    if size * sum(c.row_nbytes for c in cols) <= memory // 2:  # the bucket and a piece: about half the budget
        data = {c.name: np.concatenate([np.fromfile(p, dtype=c.np_dtype) for p in paths[c.name]])
                .reshape(size, *c.shape) for c in cols}
        for lo in range(0, size, piece_rows):
            yield {k: v[order[lo:lo + piece_rows]] for k, v in data.items()}
    else:  # a bucket of a few wide rows that drew more than its share: read in the shuffled order
        yield from _rows_in_order(paths, bounds, cols, order, piece_rows)


def scatter(pieces: Iterator[dict[str, np.ndarray]], cols: tuple[Column, ...], draws: Draws, first_row: int,
            workdir: Path, target: Path) -> np.ndarray:
    """Append each row of ``pieces`` (rows ``first_row`` on) to its bucket (``draws``), a file a
    bucket and column in ``workdir``; return the rows of each bucket."""
    n_buckets = draws.n_buckets
    files: dict[tuple[int, str], Any] = {}
    sizes = np.zeros(n_buckets, np.int64)
    row = first_row
    try:
        with writing(target):
            for b in range(n_buckets):
                for c in cols:
                    files[(b, c.name)] = open(workdir / f"{b}-{c.name}.bin", "wb")
        for piece in pieces:
            n = len(piece[cols[0].name])
            bucket = draws(row, n)
            row += n
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


def _rows_in_order(paths: dict[str, list[Path]], bounds: np.ndarray, cols: tuple[Column, ...], order: np.ndarray,
                   piece_rows: int) -> Iterator[dict[str, np.ndarray]]:
    """Rows ``order`` of the bucket's segment files ``paths`` (see :func:`bucket_pieces`), a piece
    at a time, each row read from its place: a bucket's worth of memory is never held."""
    files: dict[str, list[Any]] = {c.name: [] for c in cols}
    try:
        for c in cols:
            for p in paths[c.name]:
                files[c.name].append(open(p, "rb", buffering=0))
        for lo in range(0, len(order), piece_rows):
            rows = order[lo:lo + piece_rows]
            segs = (np.searchsorted(bounds, rows, side="right") - 1).tolist()
            rows = (rows - bounds[segs]).tolist()
            piece = {}
            for c in cols:
                out = np.empty((len(rows), *c.shape), c.np_dtype)
                flat = out.reshape(len(rows), -1).view(np.uint8)
                for k, (seg, r) in enumerate(zip(segs, rows)):
                    f = files[c.name][seg]
                    f.seek(r * c.row_nbytes)
                    view, got = memoryview(flat[k]), 0
                    while got < len(view):  # one read returns at most ~2 GiB
                        n = f.readinto(view[got:])
                        if not n:
                            raise WriteError(f"{paths[c.name][seg]}: pre-shuffle bucket file truncated")
                        got += n
                piece[c.name] = out
            yield piece
    finally:
        for fs in files.values():
            for f in fs:
                f.close()
