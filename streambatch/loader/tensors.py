"""Batches as tensors: every column of a batch a view of one buffer.

A batch that leaves a DataLoader worker crosses to the main process through shared memory,
one block per tensor *storage* (a block made, a file descriptor passed and mapped): that, not
the bytes, bounds the batches a second a worker delivers.  Columns that view one storage cross
as one block (torch shares a storage once per batch), so the batches of ``tab`` (3 columns)
crossed 1.6-2x as fast as three separate tensors (docs/PERFORMANCE.md, DataLoader workers).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["make_batch"]


def make_batch(flat: np.ndarray, columns: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The tensors of one batch gathered into ``flat`` (``columns`` are numpy views of it), each
    a view of one tensor over ``flat``."""
    t = torch.from_numpy(flat)
    base = flat.ctypes.data
    out = {}
    for name, view in columns.items():
        at = view.ctypes.data - base
        out[name] = t[at:at + view.nbytes].view(torch.from_numpy(view[:0]).dtype).view(view.shape)
    return out
