"""Batch assembly: gather a batch's rows from the window buffer, normalise, make tensors, transform.

Runs on pool threads, several batches per task (one task per batch cost more in thread
hand-offs than the copies for small rows).  The per-feature mean and inverse std used to
normalise come from the statistics stored at conversion (:func:`normalizers`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
from numpy.typing import NDArray

from ..errors import ManifestError
from ..manifest import Manifest
from ..ragged import Ragged
from ..schema import Column
from .._kernels import take_rows
from .rows import RaggedBuf, gather_ragged, slice_ragged

__all__ = ["Normalizers", "batch_buffer_bytes", "gather_batches", "normalizers"]

Normalizers = dict[str, tuple[np.ndarray, np.ndarray]]  # column -> (mean, 1/std) as float32


_ALIGN = 64  # byte alignment of each column in a batch's one buffer


def _layout(buffers: dict[str, np.ndarray], rows: int, normalize: Normalizers, index_key: str | None
            ) -> tuple[list[tuple[str, np.dtype, tuple[int, ...], int, int]], int]:
    """Each column's (name, dtype, shape, byte offset, bytes) in one buffer of ``rows`` rows, and its size."""
    specs = []
    pos = 0
    cols = [(n, np.dtype(np.float32) if n in normalize else b.dtype, (rows, *b.shape[1:])) for n, b in buffers.items()]
    if index_key is not None:
        cols.append((index_key, np.dtype(np.int64), (rows,)))
    for name, dt, shape in cols:
        nbytes = math.prod(shape) * dt.itemsize
        specs.append((name, dt, shape, pos, nbytes))
        pos += -(-nbytes // _ALIGN) * _ALIGN
    return specs, pos


def batch_buffer_bytes(shapes: dict[str, tuple[np.dtype, tuple[int, ...]]], rows: int, normalize: Normalizers,
                       index_key: str | None) -> int:
    """The bytes ``gather_batches`` asks ``alloc`` for, for a batch of ``rows`` rows of columns of
    (dtype, row shape) ``shapes``."""
    bufs = {n: np.empty((0, *shape), dt) for n, (dt, shape) in shapes.items()}
    return _layout(bufs, rows, normalize, index_key)[1] + _ALIGN


def _batch_buffers(buffers: dict[str, np.ndarray], idx_list: list[NDArray[np.int64]], normalize: Normalizers,
                   key: str | None, alloc: Callable[[int], np.ndarray] | None
                   ) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Each batch's one buffer (``_layout``, from ``alloc`` or new) and its columns' views of it."""
    layouts: dict[int, tuple[list[tuple[str, np.dtype, tuple[int, ...], int, int]], int]] = {}
    made = []
    for idx in idx_list:
        rows = len(idx)
        if rows not in layouts:  # the batches of a group share one length but the last
            layouts[rows] = _layout(buffers, rows, normalize, key)
        specs, total = layouts[rows]
        raw = np.empty(total + _ALIGN, np.uint8) if alloc is None else alloc(total + _ALIGN)
        skip = -raw.__array_interface__["data"][0] % _ALIGN  # (cheaper than .ctypes, as are the calls below:
        # a small batch's Python costs as much as its copies)
        made.append((raw[skip:skip + total], {name: np.ndarray(shape, dt, raw, skip + at)
                                              for name, dt, shape, at, nbytes in specs}))
    return made


def gather_batches(buffers: dict[str, np.ndarray], idx_list: list[NDArray[np.int64]],
                   row_ids: NDArray[np.int64] | None, index_key: str | None, normalize: Normalizers,
                   make_batch: Callable[[np.ndarray, dict[str, np.ndarray]], Any] | None,
                   transform: Callable[[Any], Any] | None, ragged: dict[str, RaggedBuf] | None = None,
                   finish_ragged: Any = None, alloc: Callable[[int], np.ndarray] | None = None,
                   views: bool = False) -> list[Any]:
    """Assemble a group of batches (one task for several batches keeps thread hand-offs rare).

    A batch's columns are gathered into one buffer (one allocation; in a DataLoader worker, one
    shared-memory block crosses to the main process instead of one per column), and
    ``make_batch(buffer, columns)`` turns it into what is served (tensors); None: the numpy views.
    Ragged columns (``ragged``: their window buffers) are gathered each into a ``Ragged``, which
    ``finish_ragged(rows, row_ids)`` turns into what is served (nested or padded tensors, strings,
    decoded images) with the positions of rows to drop (images that did not decode, when skipped).
    ``alloc(nbytes)`` gives that buffer (uint8; the device path's reused pinned buffers), else a new one.
    ``views``: ragged columns as ``RowSlices`` of their window buffers instead (a packed stream's).
    """
    key = index_key if row_ids is not None and index_key is not None else None
    # the plain columns (and the row ids) of every batch of the group gathered in one call (one GIL
    # release, not one per column and batch); normalised columns after, batch by batch
    # (others: the columns read row by row into the batches, loader/direct.py, each its own take)
    plain = [n for n, b in buffers.items() if n not in normalize and isinstance(b, np.ndarray)]
    others = [n for n, b in buffers.items() if n not in normalize and not isinstance(b, np.ndarray)]
    normed = [n for n in buffers if n in normalize]
    srcs = [buffers[n] for n in plain]
    if key is not None and key not in buffers:
        plain.append(key)
        srcs.append(row_ids)  # type: ignore[arg-type]
    made = _batch_buffers(buffers, idx_list, normalize, key, alloc)
    take_rows(srcs, idx_list, [[out[n] for n in plain] for _, out in made])
    out_list = []
    for idx, (flat, out) in zip(idx_list, made):
        for name in others:
            buffers[name].take(idx, 0, out[name], "clip")
        for name in normed:
            mean, inv_std = normalize[name]
            view = out[name]
            np.subtract(np.take(buffers[name], idx, axis=0).astype(np.float32, copy=False), mean, out=view)
            view *= inv_std
        batch = make_batch(flat, out) if make_batch is not None else out
        if ragged:
            rows_r = slice_ragged(ragged, idx) if views else gather_ragged(ragged, idx)
            if finish_ragged is None:
                batch.update(rows_r)
            else:
                served, failed = finish_ragged(rows_r, None if row_ids is None else row_ids[idx])
                batch.update(served)
                if failed.size:
                    batch = finish_ragged.drop(batch, failed)
        if transform is not None:
            batch = transform(batch)
        out_list.append(batch)
    return out_list


def normalizers(manifest: Manifest, columns: tuple[Column, ...], normalize: bool | list[str],
                remote: Callable[[], Any]) -> Normalizers:
    """Mean and inverse std of each column to normalise (``True``: every float column).

    ``remote()`` gives the ``RemoteFiles`` that reads a statistics file of a dataset at a URL.

    Raises:
        ValueError: an unknown column.
        ManifestError: a column without statistics, or with non-finite ones.
        DataError: a statistics file that is missing or damaged.
    """
    if normalize is False:
        return {}
    names = [c.name for c in columns if c.np_dtype.kind == "f" and not c.ragged] if normalize is True \
        else list(normalize)
    out = {}
    for name in names:
        if manifest.column(name).ragged:
            raise ValueError(f"{manifest.root}: column {name!r} varies in length; only fixed-size columns are "
                             "normalised")
        wide = name in manifest.stats_files  # its statistics are in a file: read it now
        if not wide and not manifest.stats.get(name):
            raise ManifestError(f"{manifest.root}: no statistics for column {name!r} to normalise with")
        st = manifest.feature_stats(name, remote=remote() if wide else None)
        mean, std = st["mean"], st["std"]
        del st
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            raise ManifestError(f"{manifest.root}: column {name!r} has non-finite statistics (NaN or inf "
                                "in the data); it cannot be normalised")
        mean, std = mean.astype(np.float32), std.astype(np.float32)
        out[name] = (mean, np.where(std > 0, 1.0 / np.where(std > 0, std, 1), 1.0).astype(np.float32))
    return out
