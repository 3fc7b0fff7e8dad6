"""Batches as tensors: every column of a batch a view of one buffer.

In this process each column is its own tensor (`torch.from_numpy`, the cheapest). A batch that
leaves a DataLoader worker crosses to the main process through shared memory,
one block per tensor *storage* (a block made, a file descriptor passed and mapped): that, not
the bytes, bounds the batches a second a worker delivers.  Columns that view one storage cross
as one block (torch shares a storage once per batch), so the batches of ``tab`` (3 columns)
crossed 1.6-2x as fast as three separate tensors (docs/PERFORMANCE.md, DataLoader workers).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..ragged import Ragged

__all__ = ["make_batch", "make_shared_batch", "COLLATES", "RaggedOutput"]


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


COLLATES = ("nested", "pad", "list")
"""How a ragged column of numbers is served: a jagged nested tensor, padded with its lengths
(``NAME_len``), or a list of 1-D tensors."""


class RaggedOutput:
    """Turns a batch's ragged columns (``Ragged``) into what is served: for a ``list`` column a
    jagged nested tensor (``torch.nested``, ``layout=torch.jagged``; ``"nested"``, the default),
    a padded ``[B, max_len]`` tensor and ``NAME_len`` (``"pad"``, padded with 0) or a list of
    tensors (``"list"``); ``list[str]`` for a ``string`` column, ``list[bytes]`` for ``bytes``.
    Columns with a decoder (``decoders``: name -> callable(Ragged) -> array) are decoded."""

    def __init__(self, kinds: dict[str, str], collate: dict[str, str], decoders: dict[str, Any] | None = None) -> None:
        self.kinds, self.collate, self.decoders = kinds, collate, decoders or {}

    def __call__(self, rows: dict[str, Ragged]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, r in rows.items():
            decode = self.decoders.get(name)
            if decode is not None:
                out[name] = torch.from_numpy(decode(r))
            elif self.kinds[name] == "string":
                out[name] = [bytes(r.values[a:b]).decode("utf-8") for a, b in _bounds(r)]
            elif self.kinds[name] == "bytes":
                out[name] = [bytes(r.values[a:b]) for a, b in _bounds(r)]
            else:
                out.update(_numbers(name, r, self.collate.get(name, "nested")))
        return out


def _bounds(r: Ragged) -> list[tuple[int, int]]:
    o = r.offsets.tolist()
    return list(zip(o[:-1], o[1:]))


def _numbers(name: str, r: Ragged, how: str) -> dict[str, Any]:
    values = torch.from_numpy(r.values)
    if how == "list":
        return {name: [values[a:b] for a, b in _bounds(r)]}
    lengths = r.lengths
    if how == "pad":
        width = int(lengths.max()) if lengths.size else 0
        padded = np.zeros((len(r), width, *r.values.shape[1:]), r.values.dtype)
        mask = np.arange(width) < lengths[:, None]
        padded[mask] = r.values[r.offsets[0]:r.offsets[-1]]
        return {name: torch.from_numpy(padded), f"{name}_len": torch.from_numpy(lengths)}
    offsets = torch.from_numpy(r.offsets - r.offsets[0])
    return {name: torch.nested.nested_tensor_from_jagged(values[int(r.offsets[0]):int(r.offsets[-1])], offsets)}
