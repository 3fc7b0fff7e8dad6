"""Batches as tensors: every column of a batch a view of one buffer.

In this process each column is its own tensor (`torch.from_numpy`, the cheapest). A batch that
leaves a DataLoader worker crosses to the main process through shared memory,
one block per tensor *storage* (a block made, a file descriptor passed and mapped): that, not
the bytes, bounds the batches a second a worker delivers.  Columns that view one storage cross
as one block (torch shares a storage once per batch), so the batches of ``tab`` (3 columns)
crossed 1.6-2x as fast as three separate tensors (docs/PERFORMANCE.md, DataLoader workers).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["make_batch", "make_shared_batch"]


_DTYPES: dict[np.dtype, torch.dtype] = {}


def _torch_dtype(dt: np.dtype) -> torch.dtype:
    got = _DTYPES.get(dt)
    if got is None:
        got = _DTYPES[dt] = torch.from_numpy(np.empty(0, dt)).dtype
    return got


def make_batch(flat: np.ndarray, columns: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The tensors of one batch served in this process: ``torch.from_numpy`` of each column
    (about 1 us each; views of one tensor, ``make_shared_batch``, cost ~38 us a batch)."""
    return {name: torch.from_numpy(view) for name, view in columns.items()}


def make_shared_batch(flat: np.ndarray, columns: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The tensors of one batch gathered into ``flat`` (``columns`` are numpy views of it), each
    a view of one tensor over ``flat``: what a DataLoader worker serves."""
    t = torch.from_numpy(flat)
    base = flat.ctypes.data
    out = {}
    for name, view in columns.items():
        at = view.ctypes.data - base
        out[name] = t[at:at + view.nbytes].view(_torch_dtype(view.dtype)).view(view.shape)
    return out
