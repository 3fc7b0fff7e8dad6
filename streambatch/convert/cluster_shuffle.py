"""The pre-shuffle (``--shuffle SEED``) on a Dask cluster: the two passes of ``shuffle`` as tasks.

1. Scatter: a task a range of source rows reads and summarises them (statistics, label checks,
   in source order) and appends each row to its bucket (``shuffle.Draws``: a row's bucket
   depends on the seed and its row number only), a file a bucket and column of its own.
2. Permute: a task a bucket joins its segments (one a scatter task, in row order: the rows
   the local converter's single scatter appends to that bucket, in that order), puts them in
   the bucket's order (``shuffle.bucket_order``) and writes the permuted bucket.
3. Write: a task a part (a file of the dataset) reads its rows of the permuted buckets, one
   after another, and writes them as the local converter's writer would.

Every task writes into its attempt folder (``cluster.in_attempt``) and renames its files to
fixed names, so the output is the local ``--shuffle SEED``'s whatever the workers or the order
tasks end in.  The buckets live in ``.buckets`` in the conversion's temporary folder: the
scattered ones until every bucket is permuted, the permuted ones until every part is written
(at most about three times the data's size beside the target, against twice locally).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..sources import open_source
from .cluster import Tasks, in_attempt
from .parts import Abandoned, Part, PartOptions, PartResult, PartWriter, Summary
from .shuffle import Draws, bucket_order, bucket_pieces, scatter
from .temp import writing

__all__ = ["ClusterShuffle"]

BUCKETS = ".buckets"


class ClusterShuffle:
    """Pre-shuffling ``parts``' rows with ``seed`` into ``n_buckets`` (``shuffle.bucket_count``)
    within ``memory`` (a task's), then writing the parts, as tasks; scatter tasks: two a worker
    (``workers``), at most one a part."""

    def __init__(self, parts: list[Part], opts: PartOptions, folder: Path, target: Path, seed: int, n_buckets: int,
                 memory: int, workers: int) -> None:
        self.n_buckets = n_buckets
        self.parts, self.opts, self.folder, self.target = parts, opts, str(folder), str(target)
        self.seed, self.memory = seed, memory
        n = max(1, min(len(parts), 2 * workers))
        self.ranges = [(opts.rows * i // n, opts.rows * (i + 1) // n) for i in range(n)]

    @property
    def tasks(self) -> int:
        return len(self.ranges) + self.n_buckets + len(self.parts)

    def run(self, run: Tasks, summary: Summary) -> None:
        """Run the three passes; the statistics and the parts' results into ``summary``."""
        counts: list[np.ndarray] = []

        def scattered(result: tuple[np.ndarray, Any, Any]) -> None:
            counts.append(result[0])
            summary.add_stats(result[1], result[2])

        args = (self.opts, self.seed, self.n_buckets, self.folder, self.target)
        run([(scatter_task, (k, lo, hi, *args)) for k, (lo, hi) in enumerate(self.ranges)], scattered)
        sizes = np.stack(counts)  # [scatter task, bucket]
        run([(permute_task, (b, sizes[:, b], self.memory, *args)) for b in range(self.n_buckets)], _ignore)
        for k in range(len(self.ranges)):
            shutil.rmtree(Path(self.folder) / BUCKETS / f"s{k:05d}")
        bucket_rows = sizes.sum(axis=0)
        run([(write_task, (p, bucket_rows, self.opts, self.folder, self.target)) for p in self.parts], summary.add)
        shutil.rmtree(Path(self.folder) / BUCKETS)


def _ignore(result: Any) -> None:
    pass


def scatter_task(k: int, start: int, stop: int, opts: PartOptions, seed: int, n_buckets: int, folder: str,
                 target: str) -> tuple[np.ndarray, Any, Any]:
    """Pass 1 for source rows ``start`` to ``stop``: (the rows of each bucket, the statistics,
    the label statistics).  Raises what reading the source raises (``InputError`` naming a bad
    label's row), ``WriteError`` naming ``target``."""
    def work(attempt: Path, abandon: Callable[[], bool]) -> tuple[np.ndarray, Any, Any]:
        out = attempt / BUCKETS / f"s{k:05d}"
        with writing(Path(target)):
            out.mkdir(parents=True)
        with open_source(**vars(opts.source)) as source:
            reader = PartWriter(opts, None, Path(target))
            sizes = scatter(reader.summarised(source, start, stop, abandon), opts.columns, Draws(seed, n_buckets),
                            start, out, Path(target))
            result = reader.finish()
        return sizes, result.stats, result.labels

    return in_attempt(folder, f"s{k:05d}", work)


def permute_task(b: int, segments: np.ndarray, memory: int, opts: PartOptions, seed: int, n_buckets: int,
                 folder: str, target: str) -> None:
    """Pass 2 for bucket ``b``, whose scatter tasks gave it ``segments`` rows each: the bucket's
    rows in its order, a file a column (``.buckets/pB-COLUMN.bin``)."""
    def work(attempt: Path, abandon: Callable[[], bool]) -> None:
        src = Path(folder) / BUCKETS
        paths = {c.name: [src / f"s{k:05d}" / f"{b}-{c.name}.bin" for k in range(len(segments))]
                 for c in opts.columns}
        bounds = np.concatenate([[0], np.cumsum(segments)])
        out = attempt / BUCKETS
        with writing(Path(target)):
            out.mkdir()
            files = {c.name: open(out / f"p{b}-{c.name}.bin", "wb") for c in opts.columns}
            try:
                for piece in bucket_pieces(paths, bounds, opts.columns, bucket_order(seed, b, int(bounds[-1])),
                                           memory, opts.piece_rows):
                    if abandon():
                        raise Abandoned
                    for c in opts.columns:
                        files[c.name].write(memoryview(np.ascontiguousarray(piece[c.name])).cast("B"))
            finally:
                for f in files.values():
                    f.close()

    in_attempt(folder, f"p{b:05d}", work)


def write_task(part: Part, bucket_rows: np.ndarray, opts: PartOptions, folder: str, target: str) -> PartResult:
    """Pass 3: ``part``'s rows of the shuffled stream (the permuted buckets one after another)
    written as its file(s); its result holds no statistics (pass 1 has them)."""
    def work(attempt: Path, abandon: Callable[[], bool]) -> PartResult:
        writer = PartWriter(opts, attempt, Path(target), part.first_unit)
        try:
            writer.write(_stream(Path(folder) / BUCKETS, opts, bucket_rows, part.start, part.stop, abandon))
            result = writer.finish()
        except BaseException:
            writer.abort()
            raise
        return PartResult(result.written, {}, result.labels, result.rows)

    return in_attempt(folder, f"{part.index:05d}", work)


def _stream(buckets: Path, opts: PartOptions, bucket_rows: np.ndarray, start: int, stop: int,
            abandon: Callable[[], bool]) -> Iterator[dict[str, np.ndarray]]:
    """Rows ``start`` to ``stop`` of the permuted buckets one after another, in pieces."""
    offsets = np.concatenate([[0], np.cumsum(bucket_rows)])
    row = start
    while row < stop:
        if abandon():
            raise Abandoned
        b = int(np.searchsorted(offsets, row, side="right")) - 1
        take = int(min(opts.piece_rows, stop - row, offsets[b + 1] - row))
        lo = row - int(offsets[b])
        yield {c.name: np.fromfile(buckets / f"p{b}-{c.name}.bin", dtype=c.np_dtype, count=take * c.row_items,
                                   offset=lo * c.row_nbytes).reshape(take, *c.shape) for c in opts.columns}
        row += take
