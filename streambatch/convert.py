"""``streambatch convert``: any common dataset into chunked Zarr v3, Parquet or Arrow IPC plus a manifest.

::

    source --pieces--> [pre-shuffle: scatter to buckets, shuffle each] --units--> writer
                 \\--> statistics (one streaming pass)           temp folder --rename--> target

Everything is written into a temporary folder beside the target (``.NAME.sbtmp-PID-XXXX``)
and renamed into place at the end, manifest last; a crash or Ctrl-C leaves no dataset at the
target, and a later run removes temporary folders whose process is gone.  The rename never
replaces a target that appeared meanwhile, and ``overwrite`` replaces only a streambatch
dataset or an empty folder, never the input (``_target``).
"""

from __future__ import annotations

import math
import os
import queue
import re
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ._feature_stats import stats_json
from ._progress import Progress
from ._sizes import format_size, parse_size
from ._target import check_target, install, temp_name
from .errors import InputError, StreambatchError, WriteError
from .manifest import _MAX_UNIT_BYTES, FORMAT_VERSION, Manifest, compute_fingerprint
from .schema import Column
from .sources import Source, open_source
from .stats import BYTES_PER_FEATURE, ColumnStats, LabelStats, shift_of
from .storage import DEFAULT_FORMAT, FORMATS, check_codec, combine, open_writer, units_per_file

__all__ = ["convert", "DEFAULT_UNIT_BYTES", "DEFAULT_SHARD_BYTES", "DEFAULT_CODEC", "DEFAULT_MEMORY"]

DEFAULT_UNIT_BYTES = 256 * 1024
DEFAULT_SHARD_BYTES = 128 * 1024 * 1024
DEFAULT_CODEC = "none"
DEFAULT_MEMORY = 1024 * 1024 * 1024
_PIECE_BYTES = 8 * 1024 * 1024
_PARALLEL_PIECE_BYTES = 1024 * 1024
_SMALL_BUFFERS = 16 * 1024 * 1024
"""Buffers up to this size are part of the converter's fixed overhead: a smaller ``--memory``
still runs (a tiny budget makes tiny pieces), refused only where rows or units need more."""
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.sbtmp-(?P<pid>\d+)-[0-9a-f]+$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temp(target: Path) -> list[Path]:
    """Remove temporary folders of earlier conversions to ``target`` whose process is gone."""
    removed = []
    parent = target.parent
    if not parent.is_dir():
        return removed
    for p in parent.iterdir():
        m = _TMP_RE.match(p.name)
        if m and m.group("name") == target.name and not _pid_alive(int(m.group("pid"))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


@contextmanager
def _writing(target: Path) -> Iterator[None]:
    """Turn an ``OSError`` of a write (disk full, file too large) into a ``WriteError`` naming ``target``."""
    try:
        yield
    except OSError as e:
        if isinstance(e, StreambatchError):
            raise
        what = e.strerror or str(e) or type(e).__name__
        err = WriteError(f"{target}: cannot write the dataset: {what}"
                         f"{f' ({e.filename})' if e.filename else ''}; the target was left as it was "
                         "and temporary files were removed")
        err.errno = e.errno
        raise err from e


class _ReadAhead:
    """Iterate ``it`` in a background thread, up to ``depth`` items ahead of the consumer.

    The converter reads and computes statistics here while the main thread writes, so the
    two cores overlap reading with writing.  An exception of ``it`` is raised to the consumer
    with its original type, in order; :meth:`close` stops the thread (also mid-way).
    """

    _END = object()

    def __init__(self, it: Iterator[Any], depth: int = 2) -> None:
        self._it = it
        # C-level queues: queue.Queue's Python-level locking can be interrupted by Ctrl-C in the
        # consumer right after taking its mutex, which the reader's next put then waits for
        # forever (see _prefetch._Done).  Free slots bound the items ahead (``depth``).
        self._items: queue.SimpleQueue[tuple[Any, BaseException | None]] = queue.SimpleQueue()
        self._slots: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(depth):
            self._slots.put(None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="streambatch-convert-read", daemon=True)
        self._thread.start()

    def _put(self, item: Any, err: BaseException | None = None) -> bool:
        while not self._stop.is_set():
            try:
                self._slots.get(timeout=0.05)
            except queue.Empty:
                continue
            self._items.put((item, err))
            return True
        return False

    def _run(self) -> None:
        try:
            for item in self._it:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._put(None, e)
        finally:
            close = getattr(self._it, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[Any]:
        while True:
            item, err = self._items.get()
            self._slots.put(None)
            if err is not None:
                raise err
            if item is self._END:
                return
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _stage_units(pieces: Iterator[dict[str, np.ndarray]], unit_rows: int,
                 runs: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Re-cut pieces of any size into units of exactly ``unit_rows`` rows (the last may be short);
    with ``runs``, the whole units within one piece come out together, as one run of units."""
    pending: list[dict[str, np.ndarray]] = []
    have = 0
    for piece in pieces:
        n = len(next(iter(piece.values())))
        lo = 0
        if have:
            take = min(unit_rows - have, n)
            pending.append({k: v[:take] for k, v in piece.items()})
            have += take
            lo = take
            if have == unit_rows:
                yield {k: np.concatenate([p[k] for p in pending]) for k in piece}
                pending, have = [], 0
        while n - lo >= unit_rows:
            take = (n - lo) // unit_rows * unit_rows if runs else unit_rows
            yield {k: v[lo:lo + take] for k, v in piece.items()}
            lo += take
        if lo < n:
            pending.append({k: v[lo:] for k, v in piece.items()})
            have += n - lo
    if have:
        keys = pending[0].keys()
        yield {k: np.concatenate([p[k] for p in pending]) for k in keys}


class _Abandoned(Exception):
    """A part's thread stops because a part before it failed or the conversion was interrupted."""


class _Parts:
    """Write the dataset file by file (Zarr shards, Parquet files) on several threads at once.

    Each part is one file's units: its thread reads the part's rows from a random-access source,
    summarises them into its own statistics and writes them with its own writer.  The parts'
    statistics, histograms and layouts are joined in file order, so the result is the sequential
    one (statistics to rounding).  Reading, statistics and writing then each use every core,
    where the sequential pipeline left its reading thread the bottleneck: tab npy -> Zarr (1 GB,
    2 cores, CLI) took 1.46-2.25 s (median 1.48) against 1.71-2.23 s (median 1.78).

    A failing part stops the parts after it (the ones before it finish), and :meth:`run` raises
    the error of the first failing part with its original type: the first bad row in source
    order, as the sequential path names it.  An interrupt stops all of them.
    """

    def __init__(self, source: Source, cols: tuple[Column, ...], fmt: str, folder: Path, unit_rows: int,
                 shard_bytes: int, codec: str, label: Column | None, threads: int, piece_bytes: int,
                 target: Path) -> None:
        self.source, self.cols, self.fmt, self.folder, self.target = source, cols, fmt, folder, target
        self.unit_rows, self.shard_bytes, self.codec, self.label = unit_rows, shard_bytes, codec, label
        units = -(-source.rows // unit_rows)
        per_file = units_per_file(fmt, cols, source.rows, unit_rows, shard_bytes)
        self.starts = list(range(0, units, per_file))
        self.per_file = per_file
        self.threads = max(1, min(threads, len(self.starts)))
        # whole units a piece: runs of units are written with one call
        self.piece_rows = max(1, piece_bytes // max(1, unit_rows * sum(c.row_nbytes for c in cols))) * unit_rows
        self.stage_bytes = max(4096, min(1 << 20, piece_bytes // max(1, len(cols))))
        # every part's moments around the same point, the first row: merged parts then keep
        # float64 precision however far the values are from zero (see ColumnStats)
        first = next(source.pieces(1, tuple(c.name for c in cols), 0, 1))
        self.shifts = {c.name: shift_of(first[c.name][0]) for c in cols}
        self.done = [0] * len(self.starts)  # rows written per part (progress)
        self.results: list[Any] = [None] * len(self.starts)
        self.errors: dict[int, BaseException] = {}
        # Finished parts' statistics are merged in file order as soon as the parts before them are
        # (the sequential result, to rounding), and a part starts only within 2 x threads of the
        # first unmerged one: parts of wide rows hold statistics of ~32 bytes a value each.
        self.stats = {c.name: ColumnStats(c, shift=self.shifts[c.name]) for c in cols}
        self.lstats: LabelStats | None = None
        self._merged = 0
        self._stop_after = len(self.starts)  # parts after this one abandon their work
        self._next = 0
        self._lock = threading.Lock()

    def _take(self) -> int | None:
        """The next part to write, ``-1`` to wait for earlier parts, ``None`` when done."""
        with self._lock:
            i = self._next
            if i >= len(self.starts) or i > self._stop_after:
                return None
            if i >= self._merged + 2 * self.threads:
                return -1
            self._next += 1
            return i

    def _finish(self, i: int, result: Any, stats: dict[str, ColumnStats], lstats: LabelStats | None) -> None:
        """Keep part ``i``'s result; merge the statistics of every finished part not yet merged
        that follows the merged ones."""
        with self._lock:
            self.results[i] = (result, stats, lstats)
            while self._merged < len(self.results) and self.results[self._merged] is not None:
                part_result, part_stats, part_lstats = self.results[self._merged]
                for name, st in part_stats.items():
                    self.stats[name].merge(st)
                if part_lstats is not None:
                    if self.lstats is None:
                        self.lstats = part_lstats
                    else:
                        self.lstats.merge(part_lstats)
                self.results[self._merged] = (part_result, None, None)
                self._merged += 1

    def _fail(self, i: int, e: BaseException) -> None:
        with self._lock:
            self.errors[i] = e
            self._stop_after = min(self._stop_after, i)

    def stop(self) -> None:
        with self._lock:
            self._stop_after = -1

    def _part(self, i: int) -> None:
        u0 = self.starts[i]
        lo, hi = u0 * self.unit_rows, min(self.source.rows, (u0 + self.per_file) * self.unit_rows)
        names = tuple(c.name for c in self.cols)
        stats = {c.name: ColumnStats(c, self.stage_bytes, self.shifts[c.name]) for c in self.cols}
        lstats = LabelStats(self.label) if self.label is not None else None
        where = str(self.source.path)

        def counted() -> Iterator[dict[str, np.ndarray]]:
            row = lo
            for piece in self.source.pieces(self.piece_rows, names, lo, hi):
                if i > self._stop_after:
                    raise _Abandoned
                for c in self.cols:
                    stats[c.name].update(piece[c.name])
                if lstats is not None:
                    lstats.check(piece[lstats.col.name], where, row)
                row += len(piece[names[0]])
                yield piece

        with _writing(self.target):  # write errors only: a read error keeps its own type
            writer = open_writer(self.fmt, self.folder, self.cols, self.source.rows, self.unit_rows, self.shard_bytes,
                                 self.codec, first_unit=u0)
        try:
            for run in _stage_units(counted(), self.unit_rows, runs=True):
                with _writing(self.target):
                    writer.write_units(run)
                if lstats is not None:
                    labels = run[lstats.col.name]
                    for u in range(0, len(labels), self.unit_rows):
                        lstats.update_unit(labels[u:u + self.unit_rows])
                self.done[i] += len(run[names[0]])
            with _writing(self.target):
                result = writer.finish()
        except BaseException:
            try:
                writer.abort()
            except OSError:  # closing a file on a full disk fails again; the first error is raised
                pass
            raise
        for st in stats.values():
            st.release()
        self._finish(i, result, stats, lstats)

    def _work(self) -> None:
        while (i := self._take()) is not None:
            if i < 0:
                time.sleep(0.002)
                continue
            try:
                self._part(i)
            except _Abandoned:
                return
            except BaseException as e:  # handed to run(), which re-raises the first part's
                self._fail(i, e)
                return

    def run(self, bar: Progress) -> tuple[Any, dict[str, ColumnStats], LabelStats | None, int]:
        """Write every part; return the joined (files, layout, stored, checksums), the statistics,
        the label statistics and the rows written."""
        workers: list[threading.Thread] = []
        shown = 0
        try:
            for k in range(self.threads):
                workers.append(threading.Thread(target=self._work, name=f"streambatch-convert-{k}", daemon=True))
                workers[-1].start()
            for t in workers:
                while t.is_alive():
                    t.join(0.1)
                    done = sum(self.done)
                    bar.update(done - shown)
                    shown = done
        finally:
            self.stop()  # only matters when this thread was interrupted: workers stop at their next piece
            for t in workers:
                if t.ident is not None:  # started (an interrupt may come between creating and starting)
                    t.join()
        if self.errors:
            raise self.errors[min(self.errors)]
        assert self._merged == len(self.results)
        written = sum(self.done)
        return combine(self.fmt, [r[0] for r in self.results]), self.stats, self.lstats, written


def _shuffled_pieces(source: Source, pieces: Iterator[dict[str, np.ndarray]], cols: tuple[Column, ...], seed: int,
                     memory: int, piece_rows: int, workdir: Path, target: Path) -> Iterator[dict[str, np.ndarray]]:
    """Out-of-core uniform shuffle: scatter rows at random into buckets on disk, then shuffle each.

    A row's bucket is uniform and independent, and each bucket is permuted uniformly, so the
    output is a uniformly random permutation of the input.  Buckets are sized to a quarter of
    ``memory`` on average.  ``pieces`` are the source's rows in source order.
    """
    row_bytes = sum(c.row_nbytes for c in cols)
    n_buckets = max(1, math.ceil(source.rows * row_bytes / max(1, memory // 4)))
    if n_buckets > 2000:
        stats_b = BYTES_PER_FEATURE * sum(c.row_items for c in cols)  # what convert set aside beside ``memory``
        raise InputError(f"{source.path}: --memory {memory + stats_b} bytes is too small to pre-shuffle "
                         f"{source.rows * row_bytes} bytes; give at least "
                         f"{source.rows * row_bytes // 2000 * 4 + stats_b} bytes")
    with _writing(target):
        workdir.mkdir()
    rng = np.random.default_rng((seed, 0x5348, 1))
    files: dict[tuple[int, str], Any] = {}
    sizes = np.zeros(n_buckets, np.int64)
    try:
        with _writing(target):
            for b in range(n_buckets):
                for c in cols:
                    files[(b, c.name)] = open(workdir / f"{b}-{c.name}.bin", "wb")
        for piece in pieces:
            n = len(piece[cols[0].name])
            bucket = rng.integers(0, n_buckets, size=n)
            order = np.argsort(bucket, kind="stable")
            counts = np.bincount(bucket, minlength=n_buckets)
            bounds = np.concatenate([[0], np.cumsum(counts)])
            with _writing(target):
                for c in cols:
                    arr = np.ascontiguousarray(piece[c.name][order], dtype=c.np_dtype)
                    for b in np.flatnonzero(counts):
                        files[(b, c.name)].write(memoryview(arr[bounds[b]:bounds[b + 1]]).cast("B"))
            sizes += counts
        with _writing(target):
            for f in files.values():
                f.close()  # flushes: a full disk may show here
    finally:
        for f in files.values():
            try:
                f.close()
            except OSError:  # already failing; the first error is the one raised
                pass
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


def _plan(source: Source, cols: tuple[Column, ...], unit_rows: int, shard_bytes: int, fmt: str,
          codec: str) -> dict[str, Any]:
    row_bytes = sum(c.row_nbytes for c in cols)
    units = -(-source.rows // unit_rows)
    unit_bytes = unit_rows * row_bytes
    per_file = units_per_file(fmt, cols, source.rows, unit_rows, shard_bytes)
    return {
        "source": str(source.path), "source_format": source.format, "format": fmt, "codec": codec,
        "rows": source.rows, "columns": [c.to_json() for c in cols], "row_bytes": row_bytes,
        "unit_rows": unit_rows, "unit_bytes": unit_bytes, "units": units,
        "shards": -(-units // per_file),
        "bytes": source.rows * row_bytes,
        **({"dropped_rows": source.nulls.dropped} if source.nulls.drop else {}),
    }


def _convert_remote(src: Any, dst: Any, fmt: str, overwrite: bool, opts: dict[str, Any]) -> Manifest | dict[str, Any]:
    import dataclasses
    import tempfile

    from ._target import check_not_input
    from ._transfer import check_target, download, upload_dataset
    from .io.remote import RemoteRoot, is_url

    if is_url(dst):
        if is_url(src):
            check_not_input(src, dst, {str(src).rstrip("/")}, {str(dst).rstrip("/")}, "/")
        check_target(str(dst), overwrite)  # fail before converting anything
    work = Path(tempfile.mkdtemp(prefix="streambatch-convert-"))
    try:
        if is_url(src):
            src = download(str(src), work / "src")
        if not is_url(dst):
            return convert(src, dst, fmt, overwrite=overwrite, **opts)
        result = convert(src, work / "out", fmt, overwrite=True, **opts)
        assert isinstance(result, Manifest)
        upload_dataset(work / "out", str(dst), overwrite)
        return dataclasses.replace(result, root=RemoteRoot(str(dst)))  # type: ignore[arg-type]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def convert(src: str | os.PathLike[str], dst: str | os.PathLike[str], format: str = DEFAULT_FORMAT, *,
            columns: list[str] | None = None, label: str | None = None, unit_rows: int | None = None,
            unit_bytes: int | str | None = None, shard_bytes: int | str = DEFAULT_SHARD_BYTES,
            codec: str = DEFAULT_CODEC, shuffle: int | None = None, memory: int | str = DEFAULT_MEMORY,
            overwrite: bool = False, dry_run: bool = False, source_format: str | None = None,
            progress: bool | None = None, threads: int | None = None, fill: dict[str, Any] | None = None,
            drop_nulls: bool = False, delimiter: str | None = None) -> Manifest | dict[str, Any]:
    """Convert ``src`` into a streambatch dataset at ``dst`` and return its ``Manifest``.

    Args:
        src: an .npy file or folder of .npy files (one column each), .npz, Parquet file or
            folder (also Hive-partitioned: key=value/ folders), CSV, JSON Lines, Arrow IPC /
            Feather, HDF5, or a Zarr v2/v3 store.
        dst: the dataset folder to create.
        format: a name in ``streambatch.storage.FORMATS``: ``"zarr"`` (sharded Zarr v3, the default),
            ``"parquet"`` or ``"arrow"`` (uncompressed Arrow IPC files, codec ``"none"`` only).
        columns: the columns to keep (all by default).
        label: an integer column to histogram; its intra-unit correlation predicts shuffle quality.
        unit_rows / unit_bytes: the shuffle unit size (rows, or decoded bytes; default 256 KiB).
        shard_bytes: the file size (Zarr shard, Parquet or Arrow file); default 128 MiB.
        codec: ``"none"``, ``"lz4"`` or ``"zstd"`` (those the format takes).
        shuffle: a seed: write the rows in a uniformly random order (out-of-core, two passes).
        memory: the converter's memory budget (default 1 GiB).
        overwrite: replace an existing ``dst`` if it is a streambatch dataset or an empty
            folder (swapped in atomically on Linux: ``dst`` is one complete dataset throughout).
        dry_run: only return the plan (rows, units, shards, sizes) as a dict.
        source_format: force the input format instead of detecting it from the path.
        progress: draw a progress bar (default: when stderr is a terminal).
        threads: files (Zarr shards, Parquet or Arrow files) written at once, each by its own
            thread that reads, summarises and writes its rows (default: the format's
            ``default_threads``: for Zarr and Arrow one per core, at most 8; for Parquet 1).
            Used for .npy and Parquet inputs without ``shuffle``; otherwise one thread reads in
            order while another writes.
        fill: column -> the value its nulls become (a number or bool of the column's dtype, or
            its text; for categorical codes -1 is pandas' "missing"); the count per column is
            in the manifest's ``source["filled"]``.
        drop_nulls: leave out the rows with a null in a kept column that has no ``fill`` value;
            their count is ``source["dropped_rows"]``.  Nulls are in Parquet, Arrow, CSV and
            JSON Lines inputs (NaN is a value); filling or dropping them reads the input in order.
        delimiter: a CSV's field separator (default ``,``).

    Raises:
        InputError: the input is missing, empty, ragged, of different column lengths, of an
            unsupported dtype, has duplicate column names, NaN labels, or nulls without
            ``fill`` / ``drop_nulls``, or a CSV header that looks separated by something else.
        TargetExistsError: ``dst`` exists and ``overwrite`` is false, or appeared during the
            conversion (another conversion's result is never replaced), or holds the input, or
            is something ``overwrite`` may not replace (a file, a folder that is not a dataset).
        InputError: ``dst`` lies inside the input folder.
        WriteError: a write failed (disk full, file size limit); nothing is left at ``dst``.
        ValueError: an unknown format or codec, or a bad size.

    ``src`` and ``dst`` may be URLs (``s3://``, ``gs://``, ``https://`` ...): a remote source
    is copied into a temporary folder first; a remote target is converted locally, then
    uploaded, data first and the manifest last.  ``overwrite`` replaces a remote target only
    if it holds a streambatch dataset or nothing (its old objects are removed before the upload).
    """
    from .io.remote import is_url

    opts = dict(columns=columns, label=label, unit_rows=unit_rows, unit_bytes=unit_bytes, shard_bytes=shard_bytes,
                codec=codec, shuffle=shuffle, memory=memory, dry_run=dry_run, source_format=source_format,
                progress=progress, threads=threads, fill=fill, drop_nulls=drop_nulls, delimiter=delimiter)
    if is_url(src) or (is_url(dst) and not dry_run):
        return _convert_remote(src, dst, format, overwrite, opts)
    check_codec(format, codec)  # ValueError for an unknown format too
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    memory_b = parse_size(memory, "memory")
    shard_b = parse_size(shard_bytes, "shard bytes")
    if columns is not None and len(set(columns)) != len(columns):
        raise InputError(f"{src}: column list names a column twice: {list(columns)}")
    source = open_source(src, source_format, tuple(columns) if columns else None, fill=fill, drop_nulls=drop_nulls,
                         delimiter=delimiter)
    names = tuple(columns) if columns else tuple(c.name for c in source.columns)
    by_name = {c.name: c for c in source.columns}
    cols = tuple(by_name[n] for n in names)
    if label is not None and label not in names:
        raise InputError(f"{source.path}: label column {label!r} is not among the columns {list(names)}")
    row_bytes = sum(c.row_nbytes for c in cols)
    if unit_rows is None:
        ub = parse_size(unit_bytes, "unit bytes") if unit_bytes is not None else DEFAULT_UNIT_BYTES
        unit_rows = max(1, ub // max(1, row_bytes))
    if unit_rows <= 0:
        raise ValueError(f"unit rows must be positive, got {unit_rows}")
    unit_rows = min(unit_rows, source.rows)
    if unit_rows * row_bytes > _MAX_UNIT_BYTES:
        raise ValueError(f"a shuffle unit of {unit_rows} rows x {row_bytes} bytes is larger than "
                         f"{_MAX_UNIT_BYTES} bytes; choose a smaller unit")
    work_b = _work_memory(source, cols, unit_rows, memory_b)
    plan = _plan(source, cols, unit_rows, shard_b, format, codec)
    if dry_run:
        return plan

    target = Path(dst)
    check_target(src, target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temp(target)
    tmp = temp_name(target)
    with _writing(target):
        tmp.mkdir()
    try:
        label_col = by_name[label] if label is not None else None
        threads = threads or FORMATS[format].default_threads(_cores())  # each format's own default
        # Each thread holds a piece (sized below), a unit or two being staged and encoded, its
        # statistics' stage (an eighth of a piece) and the statistics of up to two parts (see
        # _Parts): fewer threads where big units or wide rows would not fit.
        per_thread = 8 * unit_rows * row_bytes + 2 * (memory_b - work_b)
        threads = max(1, min(threads, work_b // per_thread))
        file_rows = units_per_file(format, cols, source.rows, unit_rows, shard_b) * unit_rows
        # A source read in blocks larger than an eighth of a file (big Parquet row groups) would
        # have every part decode the blocks it shares with its neighbours: read it in order.
        if (shuffle is None and source.random_access and source.block_rows <= file_rows // 8 and threads > 1
                and plan["shards"] > 1):
            # Pieces small enough to stay in the core's cache from the read to the write.
            parts = _Parts(source, cols, format, tmp, unit_rows, shard_b, codec, label_col, threads,
                           max(1, min(_PARALLEL_PIECE_BYTES, work_b // (16 * threads))), target)
            with Progress(source.rows, f"convert {source.path.name}", row_bytes, enabled=progress) as bar:
                written_files, stats, lstats, written = parts.run(bar)
        else:
            written_files, stats, lstats, written = _write_sequential(
                source, cols, format, tmp, unit_rows, shard_b, codec, label_col, shuffle, work_b, target, progress)
        if written != source.rows:
            raise InputError(f"{source.path}: read {written} rows, expected {source.rows} (input changed?)")
        files, layout, stored, checksums = written_files
        urows = np.full(-(-written // unit_rows), unit_rows, np.int64)
        urows[-1] = written - unit_rows * (len(urows) - 1)
        with _writing(target):  # per-feature statistics of wide columns: files, written before the manifest
            col_stats, stats_files = stats_json(stats, cols, tmp)
        if lstats is not None:
            col_stats[lstats.col.name]["histogram"] = lstats.to_json()
        manifest = Manifest(
            root=target, storage=format, rows=written, columns=cols,
            unit_start=np.concatenate([[0], np.cumsum(urows)[:-1]]).astype(np.int64), unit_rows=urows,
            unit_stored_nbytes=np.asarray(stored, np.int64), codec=codec,
            files=tuple(files), layout=layout, stats=col_stats, stats_files=stats_files, label=label,
            fingerprint=compute_fingerprint(cols, written, checksums),
            source={"path": str(Path(src).resolve()), "format": source.format, **source.nulls.report()},
            options={"unit_rows": unit_rows, "shard_bytes": shard_b, "codec": codec, "shuffle": shuffle,
                     "memory": memory_b, "columns": list(names), **source.nulls.options(),
                     **({"delimiter": delimiter} if delimiter is not None else {})},
            version=FORMAT_VERSION,
        )
        with _writing(target):
            manifest.write(tmp)
            install(tmp, target, overwrite)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _work_memory(source: Source, cols: tuple[Column, ...], unit_rows: int, memory_b: int) -> int:
    """What ``memory_b`` leaves for pieces, units and shuffle buckets once the statistics are
    counted (``BYTES_PER_FEATURE`` a value of a row: 80 MB for rows of 2,000,000 values).

    Raises ``InputError`` naming the least ``--memory`` that holds the statistics and 8 units (the
    pieces read ahead, a unit staged and one encoded) when they need more than ``memory_b`` plus
    ``_SMALL_BUFFERS``, which are counted in the converter's fixed overhead.
    """
    values = sum(c.row_items for c in cols)
    row_bytes = sum(c.row_nbytes for c in cols)
    stats_b = BYTES_PER_FEATURE * values
    need = stats_b + 8 * unit_rows * row_bytes
    if need > memory_b + _SMALL_BUFFERS:
        raise InputError(f"{source.path}: --memory {format_size(memory_b)} is too small for rows of "
                         f"{format_size(row_bytes)} ({values:,} values a row, whose statistics take "
                         f"{format_size(stats_b)}) in units of {unit_rows:,} row(s): give at least "
                         f"{-(-need // (1 << 20))}MiB")
    return max(memory_b - stats_b, memory_b // 4)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _write_sequential(source: Source, cols: tuple[Column, ...], fmt: str, folder: Path, unit_rows: int,
                      shard_b: int, codec: str, label: Column | None, shuffle: int | None, memory_b: int,
                      target: Path, progress: bool | None
                      ) -> tuple[Any, dict[str, ColumnStats], LabelStats | None, int]:
    """Read the source in order on one thread (with the statistics) while this one writes; the
    pre-shuffle and sources without random access go this way.  Returns what ``_Parts.run`` does."""
    names = tuple(c.name for c in cols)
    row_bytes = sum(c.row_nbytes for c in cols)
    writer = None
    reader: _ReadAhead | None = None
    try:
        # Pieces of at most 8 MiB: fresh 64 MiB pieces cost page faults on every read
        # (npy -> zarr ran at 340 MB/s with 64 MiB pieces, 500 MB/s with 16 MiB ones).
        piece_rows = max(1, min(memory_b // 16, _PIECE_BYTES) // max(1, row_bytes))
        stage_bytes = max(4096, min(1 << 20, memory_b // (16 * len(cols))))
        stats = {c.name: ColumnStats(c, stage_bytes) for c in cols}
        lstats = LabelStats(label) if label is not None else None
        with _writing(target):
            writer = open_writer(fmt, folder, cols, source.rows, unit_rows, shard_b, codec)

        def counted(it: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
            for piece in it:
                for c in cols:
                    stats[c.name].update(piece[c.name])
                if lstats is not None:
                    lstats.check(piece[lstats.col.name], str(source.path))
                yield piece

        # Statistics and label checks see the rows in source order, so errors name source rows.
        # They run with the reads in a background thread while this thread writes.
        reader = _ReadAhead(counted(source.pieces(piece_rows, names)))
        pieces: Iterator[dict[str, np.ndarray]] = iter(reader)
        if shuffle is not None:
            pieces = _shuffled_pieces(source, pieces, cols, int(shuffle), memory_b, piece_rows, folder / ".buckets",
                                      target)
        written = 0
        with Progress(source.rows, f"convert {source.path.name}", row_bytes, enabled=progress) as bar:
            for unit in _stage_units(pieces, unit_rows):
                with _writing(target):
                    writer.write_unit(unit)
                if lstats is not None:
                    lstats.update_unit(unit[lstats.col.name])
                n = len(unit[names[0]])
                written += n
                bar.update(n)
        reader.close()
        reader = None
        with _writing(target):
            result = writer.finish()
        writer = None
        return result, stats, lstats, written
    finally:
        if reader is not None:
            reader.close()
        if writer is not None:
            try:
                writer.abort()
            except OSError:  # closing a file on a full disk fails again; the first error is raised
                pass
