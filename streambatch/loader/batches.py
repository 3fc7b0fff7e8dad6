"""Batch assembly: gather a batch's rows from the window buffer, normalise, make tensors, transform.

Runs on pool threads, several batches per task (one task per batch cost more in thread
hand-offs than the copies for small rows).  The per-feature mean and inverse std used to
normalise come from the statistics stored at conversion (:func:`normalizers`).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from numpy.typing import NDArray

from ..errors import ManifestError
from ..manifest import Manifest
from ..schema import Column

__all__ = ["Normalizers", "gather_batches", "normalizers"]

Normalizers = dict[str, tuple[np.ndarray, np.ndarray]]  # column -> (mean, 1/std) as float32


def gather_batches(buffers: dict[str, np.ndarray], idx_list: list[NDArray[np.int64]],
                   row_ids: NDArray[np.int64] | None, index_key: str | None, normalize: Normalizers,
                   to_tensor: Callable[[np.ndarray], Any] | None, transform: Callable[[Any], Any] | None
                   ) -> list[Any]:
    """Assemble a group of batches (one task for several batches keeps thread hand-offs rare)."""
    out_list = []
    for idx in idx_list:
        out: dict[str, Any] = {}
        for name, buf in buffers.items():
            arr = np.take(buf, idx, axis=0)
            if name in normalize:
                mean, inv_std = normalize[name]
                arr = (arr.astype(np.float32) - mean) * inv_std
            out[name] = arr
        if index_key is not None and row_ids is not None:
            out[index_key] = row_ids[idx]
        if to_tensor is not None:
            out = {k: to_tensor(v) for k, v in out.items()}
        if transform is not None:
            out = transform(out)
        out_list.append(out)
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
    names = [c.name for c in columns if c.np_dtype.kind == "f"] if normalize is True else list(normalize)
    out = {}
    for name in names:
        manifest.column(name)
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
