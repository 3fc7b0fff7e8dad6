"""``streambatch convert``: any common dataset into chunked Zarr v3, Parquet or Arrow IPC plus a manifest.

::

    source --pieces--> [pre-shuffle: scatter to buckets, shuffle each] --units--> part writer(s)
                 \\--> statistics (one streaming pass)           temp folder --rename--> target

``plan`` sizes the conversion; the dataset is written by parts (``parts``): one a file on
several threads (``parallel``), or one part fed in order by a read-ahead thread and the
pre-shuffle (``sequential``, ``readahead``, ``shuffle``); URL sources and targets go through
``remote``.  Everything is written into a temporary folder beside the target
(``.NAME.sbtmp-PID-XXXX``, ``temp``) and renamed into place at the end, manifest last; a crash
or Ctrl-C leaves no dataset at the target, and a later run removes temporary folders whose
process is gone.  The rename never replaces a target that appeared meanwhile, and ``overwrite``
replaces only a streambatch dataset or an empty folder, never the input (``_target``).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._feature_stats import stats_json
from .._progress import progress_bar
from .._sizes import parse_size
from .._target import check_target, install, temp_name
from ..errors import InputError
from ..io.remote import is_url
from ..manifest import FORMAT_VERSION, Manifest, compute_fingerprint
from ..schema import Column
from ..sources import Source, open_source
from ..storage import DEFAULT_FORMAT, check_codec
from .cluster import convert_frame, is_frame, run_on_cluster
from .cluster_shuffle import ClusterShuffle
from .parallel import ParallelParts
from .parts import PartOptions, PartResult, first_row_shifts, plan_parts
from .plan import DEFAULT_CODEC, DEFAULT_MEMORY, DEFAULT_SHARD_BYTES, DEFAULT_UNIT_BYTES, Plan, make_plan
from .sequential import write_sequential
from .shuffle import bucket_count
from .temp import clean_stale_temp, writing

RAGGED_FORMATS = ("parquet", "zarr")
"""The storage formats that hold variable-length columns."""

__all__ = ["convert", "clean_stale_temp", "DEFAULT_UNIT_BYTES", "DEFAULT_SHARD_BYTES", "DEFAULT_CODEC",
           "DEFAULT_MEMORY"]


# long: the docstring documents every argument; the body is short
def convert(src: str | os.PathLike[str], dst: str | os.PathLike[str], format: str | None = None, *,
            columns: list[str] | None = None, label: str | None = None, unit_rows: int | None = None,
            unit_bytes: int | str | None = None, shard_bytes: int | str = DEFAULT_SHARD_BYTES,
            codec: str = DEFAULT_CODEC, shuffle: int | None = None, memory: int | str = DEFAULT_MEMORY,
            overwrite: bool = False, dry_run: bool = False, source_format: str | None = None,
            progress: bool | None = None, threads: int | None = None, fill: dict[str, Any] | None = None,
            drop_nulls: bool = False, delimiter: str | None = None, client: Any = None) -> Manifest | dict[str, Any]:
    """Convert ``src`` into a streambatch dataset at ``dst`` and return its ``Manifest``.

    Args:
        src: an .npy file or folder of .npy files (one column each), .npz, Parquet file or
            folder (also Hive-partitioned: key=value/ folders), CSV, JSON Lines file or folder
            (its files in name order, as one file), Arrow IPC / Feather, HDF5, or a Zarr v2/v3
            store; with ``client``, also a ``dask.dataframe.DataFrame`` (its partitions written
            as Parquet beside ``dst`` first, by the cluster).
        dst: the dataset folder to create.
        format: a name in ``streambatch.storage.FORMATS``: ``"zarr"`` (sharded Zarr v3, the default),
            ``"parquet"`` or ``"arrow"`` (uncompressed Arrow IPC files, codec ``"none"`` only).
            Variable-length columns (token lists, strings, bytes) are stored in Zarr (the
            default) or Parquet, not Arrow.
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
        client: a ``distributed.Client``: each file is written by a task on its Dask cluster
            (``convert.cluster``; with ``shuffle``, the pre-shuffle's passes too), the output the
            same as without it.  For .npy, Parquet and (uncompressed) JSON Lines files or
            folders that the workers see (local paths, or a URL source: copied beside ``dst`` first), into a local
            ``dst``, without ``fill`` or ``drop_nulls``.

    Raises:
        InputError: the input is missing, empty, ragged, of different column lengths, of an
            unsupported dtype, has duplicate column names, NaN labels, or nulls without
            ``fill`` / ``drop_nulls``, or a CSV header that looks separated by something else.
        TargetExistsError: ``dst`` exists and ``overwrite`` is false, or appeared during the
            conversion (another conversion's result is never replaced), or holds the input, or
            is something ``overwrite`` may not replace (a file, a folder that is not a dataset).
        InputError: ``dst`` lies inside the input folder.
        WriteError: a write failed (disk full, file size limit); nothing is left at ``dst``.
        ValueError: an unknown format or codec, or a bad size; a ``client`` with a URL target,
            an input read in order, ``fill`` or ``drop_nulls``.

    ``src`` and ``dst`` may be URLs (``s3://``, ``gs://``, ``https://`` ...): a remote source
    is copied into a temporary folder first; a remote target is converted locally, then
    uploaded, data first and the manifest last.  ``overwrite`` replaces a remote target only
    if it holds a streambatch dataset or nothing (its old objects are removed before the upload).
    """
    opts = dict(columns=columns, label=label, unit_rows=unit_rows, unit_bytes=unit_bytes, shard_bytes=shard_bytes,
                codec=codec, shuffle=shuffle, memory=memory, dry_run=dry_run, source_format=source_format,
                progress=progress, threads=threads, fill=fill, drop_nulls=drop_nulls, delimiter=delimiter)
    if client is not None and is_frame(src):
        return convert_frame(src, dst, client, convert, format=format, overwrite=overwrite, **opts)
    if client is not None and is_url(dst):
        raise ValueError(f"{src} -> {dst}: a conversion on a Dask cluster writes to a local path its workers see")
    if is_url(src) or (is_url(dst) and not dry_run):
        from .remote import convert_remote  # here: a local conversion's start does without it (and tempfile)

        # on a cluster, a remote source is copied beside the target: where the workers see files
        work = temp_name(Path(dst)) if client is not None else None
        return convert_remote(src, dst, format, overwrite, {**opts, "client": client}, convert, work)
    check_codec(format or DEFAULT_FORMAT, codec)  # ValueError for an unknown format too
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    memory_b = parse_size(memory, "memory")
    shard_b = parse_size(shard_bytes, "shard bytes")
    source, cols = _open(src, columns, label, source_format, fill, drop_nulls, delimiter)
    with source:
        format = _format_for(source, cols, format, shuffle)
        check_codec(format, codec)
        cols = size_ragged(source, cols)
        plan = make_plan(source, cols, format, codec, unit_rows, unit_bytes, shard_b, memory_b, threads)
        if dry_run:
            return plan.to_json(source, cols)
        return _write(src, Path(dst), overwrite, source, cols, plan, label, shuffle, progress, client)


def _open(src: str | os.PathLike[str], columns: list[str] | None, label: str | None, source_format: str | None,
          fill: dict[str, Any] | None, drop_nulls: bool, delimiter: str | None) -> tuple[Source, tuple[Column, ...]]:
    """The source and the columns to convert, in ``columns``' order; ``InputError`` for a column
    named twice or a label that is not among them."""
    if columns is not None and len(set(columns)) != len(columns):
        raise InputError(f"{src}: column list names a column twice: {list(columns)}")
    source = open_source(src, source_format, tuple(columns) if columns else None, fill=fill, drop_nulls=drop_nulls,
                         delimiter=delimiter)
    names = tuple(columns) if columns else tuple(c.name for c in source.columns)
    by_name = {c.name: c for c in source.columns}
    if label is not None and label not in names:
        source.close()
        raise InputError(f"{source.path}: label column {label!r} is not among the columns {list(names)}")
    return source, tuple(by_name[n] for n in names)


def _format_for(source: Source, cols: tuple[Column, ...], format: str | None, shuffle: int | None) -> str:
    """The storage format: ``format``, or by default Zarr (variable-length columns too: their
    packed token epochs ran at 1.3-2x the Parquet rate, docs/PERFORMANCE.md).
    ``ValueError`` naming the column where a ragged one goes to a format that cannot store it
    (Arrow IPC)."""
    ragged = [c for c in cols if c.ragged]
    if ragged and shuffle is not None:
        raise ValueError(f"{source.path}: --shuffle does not take columns of varying length yet (column "
                         f"{ragged[0].name!r}); convert without it: the loader's windows mix whole units")
    if format is None:
        return DEFAULT_FORMAT
    if ragged and format not in RAGGED_FORMATS:
        raise ValueError(f"{source.path}: column {ragged[0].name!r} holds rows of varying length ({ragged[0].kind}), "
                         f"which {format} storage does not hold yet; convert with --format "
                         f"{' or '.join(RAGGED_FORMATS)}")
    return format


def size_ragged(source: Source, cols: tuple[Column, ...]) -> tuple[Column, ...]:
    """``cols``, each ragged one sized (``Column.nbytes_hint``) by the mean bytes of the values of
    the first rows (``Source.ragged_sample``) plus an 8-byte offset: what units and files are sized by."""
    names = tuple(c.name for c in cols if c.ragged)
    if not names:
        return cols
    values, seen = source.ragged_sample(names)
    return tuple(replace(c, nbytes_hint=-(-values[c.name] // max(1, seen)) + 8) if c.ragged else c for c in cols)


def _write(src: str | os.PathLike[str], target: Path, overwrite: bool, source: Source, cols: tuple[Column, ...],
           plan: Plan, label: str | None, shuffle: int | None, progress: bool | None, client: Any) -> Manifest:
    """Write the dataset into a temporary folder beside ``target`` and swap it in, manifest last;
    the temporary folder is removed whatever happens."""
    if client is not None:
        _check_cluster(source)
    check_target(src, target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temp(target)
    tmp = temp_name(target)
    with writing(target):
        tmp.mkdir()
    try:
        # on a cluster, a bar of the tasks done instead (convert.cluster)
        with progress_bar(source.rows, f"convert {source.path.name}", progress if client is None else False) as bar:
            result = _write_rows(source, cols, plan, label, shuffle, tmp, target, bar.update, client, progress)
        if result.rows != source.rows:
            raise InputError(f"{source.path}: read {result.rows} rows, expected {source.rows} (input changed?)")
        with writing(target):  # per-feature statistics of wide columns: files, written before the manifest
            manifest = _manifest(src, target, tmp, source, cols, plan, label, shuffle, result)
            manifest.write(tmp)
            install(tmp, target, overwrite)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_rows(source: Source, cols: tuple[Column, ...], plan: Plan, label: str | None, shuffle: int | None,
                folder: Path, target: Path, progress: Callable[[int], None], client: Any = None,
                bar: bool | None = None) -> PartResult:
    """Every row into ``folder``: by parts as tasks of ``client``'s Dask cluster (``bar``: its
    progress bar of tasks), or on several threads where the plan allows, else in order."""
    assert source.spec is not None
    parallel = client is not None or plan.parallel(source, shuffle)
    piece_rows, stage_bytes = plan.piece_sizes(len(cols), parallel)
    opts = PartOptions(source=source.spec, fmt=plan.fmt, columns=cols, rows=source.rows, unit_rows=plan.unit_rows,
                       shard_bytes=plan.shard_bytes, codec=plan.codec, label=label, piece_rows=piece_rows,
                       stage_bytes=stage_bytes, shifts=first_row_shifts(source, cols) if parallel else None,
                       runs=parallel)
    if parallel:
        parts = plan_parts(source.rows, plan.unit_rows, plan.per_file)
        if client is not None:
            pre = ClusterShuffle(parts, opts, folder, target, int(shuffle), bucket_count(source, cols, plan.work),
                                 plan.work, len(client.nthreads())) if shuffle is not None else None
            return run_on_cluster(client, parts, opts, folder, target, bar, pre)
        return ParallelParts(parts, opts, source, folder, target, plan.threads).run(progress)
    return write_sequential(source, opts, folder, target, shuffle, plan.work, progress)


def _check_cluster(source: Source) -> None:
    """``ValueError`` where a conversion cannot run as parts on a cluster: an option or an input
    that needs the rows in order (naming it)."""
    if source.nulls.active:
        option = "--fill" if source.nulls.fill else "--drop-nulls"
        raise ValueError(f"{source.path}: {option} reads the input in order, not by parts on a Dask cluster; "
                         f"convert without --scheduler or without {option}")
    if not source.random_access:
        raise ValueError(f"{source.path}: {source.in_order}, not by parts on a Dask cluster (use .npy, Parquet "
                         "or uncompressed JSON Lines); convert it without --scheduler")


def _manifest(src: str | os.PathLike[str], target: Path, tmp: Path, source: Source, cols: tuple[Column, ...],
              plan: Plan, label: str | None, shuffle: int | None, result: PartResult) -> Manifest:
    """The manifest of the rows written (``result``); the statistics of wide columns are written
    into ``tmp`` as files beside it."""
    files, layout, stored, checksums = result.written
    written, unit_rows = result.rows, plan.unit_rows
    urows = np.full(-(-written // unit_rows), unit_rows, np.int64)
    urows[-1] = written - unit_rows * (len(urows) - 1)
    col_stats, stats_files = stats_json(result.stats, cols, tmp)
    if result.labels is not None:
        col_stats[result.labels.col.name]["histogram"] = result.labels.to_json()
    delimiter = source.spec.delimiter if source.spec is not None else None
    return Manifest(
        root=target, storage=plan.fmt, rows=written, columns=cols,
        unit_start=np.concatenate([[0], np.cumsum(urows)[:-1]]).astype(np.int64), unit_rows=urows,
        unit_stored_nbytes=np.asarray(stored, np.int64), codec=plan.codec,
        files=tuple(files), layout=layout, stats=col_stats, stats_files=stats_files, label=label,
        fingerprint=compute_fingerprint(cols, written, checksums),
        source={"path": str(Path(src).resolve()), "format": source.format, **source.nulls.report()},
        options={"unit_rows": unit_rows, "shard_bytes": plan.shard_bytes, "codec": plan.codec, "shuffle": shuffle,
                 "memory": plan.memory, "columns": [c.name for c in cols], **source.nulls.options(),
                 **({"delimiter": delimiter} if delimiter is not None else {})},
        version=FORMAT_VERSION,
    )
