"""Batches as tensors: every column of a batch a view of one buffer.

In this process each column is its own tensor (`torch.from_numpy`, the cheapest). A batch that
leaves a DataLoader worker crosses to the main process through shared memory,
one block per tensor *storage* (a block made, a file descriptor passed and mapped): that, not
the bytes, bounds the batches a second a worker delivers.  Columns that view one storage cross
as one block (torch shares a storage once per batch), so the batches of ``tab`` (3 columns)
crossed 1.6-2x as fast as three separate tensors (docs/PERFORMANCE.md, DataLoader workers).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import torch

from ..decode import Decoded
from ..ragged import Ragged

_log = logging.getLogger("streambatch")

__all__ = ["make_batch", "make_batches", "make_shared_batch", "COLLATES", "RaggedOutput", "decoded_row_nbytes", "drop_rows"]


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


def make_batches(columns: dict[str, np.ndarray], rows: int) -> list[dict[str, torch.Tensor]]:
    """The batches of ``rows`` rows each of ``columns`` (arrays of one length), as ``make_batch``
    makes them one by one: a ``torch.from_numpy`` and a ``split`` per column for all of them (the
    packed batches of a group: twelve [8, 2048] batches of 4 MiB)."""
    parts = [torch.from_numpy(a).split(rows) for a in columns.values()]
    return [dict(zip(columns, views)) for views in zip(*parts)]


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


def decoded_row_nbytes(decoders: dict[str, Any]) -> int:
    """Bytes the decoded images of one row take in a batch (uint8 [3, H, W] each)."""
    return sum(int(np.prod(spec.shape)) for spec in decoders.values())


def drop_rows(batch: dict[str, Any], failed: np.ndarray) -> dict[str, Any]:
    """``batch`` without the rows at positions ``failed`` (tensors, nested tensors and lists)."""
    if failed.size == 0:
        return batch
    n = next(len(v) if isinstance(v, list) else int(v.size(0)) for v in batch.values())
    keep = np.setdiff1d(np.arange(n), failed)
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, list):
            out[k] = [v[i] for i in keep.tolist()]
        elif v.is_nested:
            parts = v.unbind()
            out[k] = torch.nested.nested_tensor([parts[i] for i in keep.tolist()], layout=torch.jagged)
        else:
            out[k] = v[torch.from_numpy(keep)]
    return out


class RaggedOutput:
    """Turns a batch's ragged columns (``Ragged``) into what is served: for a ``list`` column a
    jagged nested tensor (``torch.nested``, ``layout=torch.jagged``; ``"nested"``, the default),
    a padded ``[B, max_len]`` tensor and ``NAME_len`` (``"pad"``, padded with 0) or a list of
    tensors (``"list"``); ``list[str]`` for a ``string`` column, ``list[bytes]`` for ``bytes``.
    Columns with a decoder (``decoders``: name -> ``streambatch.Image``) are decoded into a
    uint8 ``[B, 3, H, W]`` tensor; ``unit_start`` (the manifest's) names a failed row's unit."""

    def __init__(self, kinds: dict[str, str], collate: dict[str, str], decoders: dict[str, Any] | None = None,
                 unit_start: np.ndarray | None = None) -> None:
        self.kinds, self.collate, self.decoders = kinds, collate, decoders or {}
        self.unit_start = unit_start
        self.needs_ids = bool(self.decoders)  # decoding errors name the row
        self.skipped = 0  # rows dropped because they did not decode (on_error="skip")
        self.pool: Any = None  # threads that decode parts of a batch beside the one assembling it (Prefetcher)

    drop = staticmethod(drop_rows)

    @property
    def extra_row_nbytes(self) -> int:
        """Bytes a row's decoded columns add to a batch."""
        return decoded_row_nbytes(self.decoders)

    def __call__(self, rows: dict[str, Ragged], ids: np.ndarray | None) -> tuple[dict[str, Any], np.ndarray]:
        """The served columns, and the batch positions of rows that did not decode (to drop)."""
        out: dict[str, Any] = {}
        failed = np.empty(0, np.int64)
        for name, r in rows.items():
            spec = self.decoders.get(name)
            if spec is not None:
                out[name], bad = self._decode(name, spec, r, ids)
                failed = np.union1d(failed, bad)
            elif self.kinds[name] == "string":
                out[name] = [bytes(r.values[a:b]).decode("utf-8") for a, b in _bounds(r)]
            elif self.kinds[name] == "bytes":
                out[name] = [bytes(r.values[a:b]) for a, b in _bounds(r)]
            else:
                out.update(_numbers(name, r, self.collate.get(name, "nested")))
        return out, failed

    def _decode(self, name: str, spec: Any, r: Ragged, ids: np.ndarray | None) -> tuple[torch.Tensor, np.ndarray]:
        ids = np.full(len(r), -1, np.int64) if ids is None else ids
        starts = self.unit_start

        def unit(i: int) -> str:
            return "unknown unit" if starts is None else f"unit {int(np.searchsorted(starts, ids[i], 'right')) - 1}"

        dst = np.empty((len(r), *spec.shape), np.uint8)
        got = _decode_parts(self.pool, spec, r, dst, ids, unit, name)
        for message in got.errors:
            _log.warning("streambatch: skipped %s", message)
        self.skipped += len(got.failed)
        return torch.from_numpy(dst), got.failed


DECODE_PART_ROWS = 8
"""The fewest rows a part of a batch decoded by another thread holds."""


def _decode_parts(pool: Any, spec: Any, r: Ragged, dst: np.ndarray, ids: np.ndarray, unit: Callable[[int], str],
                  name: str) -> Any:
    """``spec.decode_into`` of the batch's rows ``r`` into ``dst``, in parts: the calling thread
    decodes the first while ``pool``'s threads decode the others (a batch of 256 decoded images
    is one batch task, and the budget may keep only 2 ahead: the threads, not the batches ahead,
    then set how many images decode at once).  The first failure in row order is raised."""
    n = len(r)
    parts = 1 if pool is None else min(2 * (len(pool.threads) + 1), n // DECODE_PART_ROWS)
    if parts <= 1:
        return spec.decode_into(r, dst, ids, unit, name)
    cut = np.linspace(0, n, parts + 1).astype(np.int64).tolist()
    tasks = [pool.submit(0, _decode_part, (spec, r, dst, ids, unit, name, a, b),
                         f"while decoding rows {a}..{b - 1} of a batch of column {name!r}")
             for a, b in zip(cut[1:-1], cut[2:])]
    results: list[Any] = []
    for k in range(parts):
        try:
            results.append(_decode_part(spec, r, dst, ids, unit, name, 0, cut[1]) if k == 0
                           else pool.wait(tasks[k - 1]))
        except BaseException as e:  # noqa: BLE001 - the first in row order, once the parts before it are in
            results.append(e)
    for got in results:
        if isinstance(got, BaseException):
            raise got
    return Decoded(np.concatenate([got.failed for got in results]), sum((got.errors for got in results), ()))


def _decode_part(spec: Any, r: Ragged, dst: np.ndarray, ids: np.ndarray, unit: Callable[[int], str], name: str,
                 a: int, b: int) -> Any:
    """Rows ``a:b`` of the batch decoded into ``dst[a:b]``; failed positions counted in the batch."""
    got = spec.decode_into(r[a:b], dst[a:b], ids[a:b], lambda i: unit(a + i), name)
    return Decoded(got.failed + a, got.errors)


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
