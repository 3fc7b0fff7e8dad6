"""Checks of ``StreamDataset``'s options: the rank and world size, and for variable-length columns
``collate``, ``pack`` and rows that cannot fit the budget.  Each raises ``ValueError`` naming the
column (or row)."""

from __future__ import annotations

import os
from typing import Any, Mapping

from ..manifest import Manifest
from ..schema import Column
from .tensors import COLLATES

__all__ = ["check_collate", "check_decode", "check_pack", "check_ragged", "padded_batch_nbytes", "resolve_rank"]


def _by_kind(option: str, columns: tuple[Column, ...], given: Mapping[str, Any] | None, kind: str,
             what: str) -> dict[str, Any]:
    """``given`` (``option``'s mapping) as a dict, each key a selected column of ``kind``."""
    out = dict(given or {})
    kinds = {c.name: c.kind for c in columns}
    for name in out:
        if kinds.get(name) != kind:
            raise ValueError(f"{option}: {name!r} is not a selected column of {what} "
                             f"(those are {[n for n, k in kinds.items() if k == kind]})")
    return out


def check_collate(columns: tuple[Column, ...], collate: Mapping[str, str] | None) -> dict[str, str]:
    """``collate`` checked: each key a ragged column of numbers, each value one of ``COLLATES``."""
    out = _by_kind("collate", columns, collate, "list", "varying-length numbers")
    for name, how in out.items():
        if how not in COLLATES:
            raise ValueError(f"collate[{name!r}] must be one of {', '.join(COLLATES)}, got {how!r}")
    return out


def padded_batch_nbytes(m: Manifest, columns: tuple[Column, ...], collate: Mapping[str, str], batch_size: int) -> int:
    """Bytes a batch of ``batch_size`` rows holds at most in its padded copies (``collate="pad"``):
    every row padded to the column's longest (the manifest's statistics), and the boolean mask of
    that shape made with it (``rows.batch_values_nbytes`` counts the same); 0 where no column is
    padded or the statistics are missing (a dataset written before they were kept)."""
    total = 0
    for c in columns:
        st = m.stats.get(c.name) if collate.get(c.name) == "pad" else None
        if st:
            longest = st["max_row_nbytes"] // max(1, c.item_nbytes)
            total += batch_size * longest * (c.item_nbytes + 1)
    return total


def check_ragged(m: Manifest, columns: tuple[Column, ...], budget: int, *, piece_rows: int | None,
                 device: Any) -> None:
    """``ValueError`` naming the row, before anything is read, where one row of a ragged column
    is larger than the memory budget; and for the options ragged columns do not take yet:
    pieces smaller than units (they are decoded whole) and ``device=``."""
    ragged = [c for c in columns if c.ragged]
    if ragged and piece_rows:
        raise ValueError(f"{m.root}: piece_rows: variable-length columns are read in whole units")
    if ragged and device is not None:
        raise ValueError(f"{m.root}: device= copies fixed-size columns; leave it out with columns of varying "
                         "length (and pack=), and move their batches yourself")
    for c in ragged:
        st = m.stats.get(c.name)
        if st and st["max_row_nbytes"] > budget:
            raise ValueError(f"{m.root}: row {st['max_row']} of column {c.name!r} holds {st['max_row_nbytes']} "
                             f"bytes, more than the memory budget of {budget} bytes: give a larger memory_budget")


def check_decode(columns: tuple[Column, ...], decode: Mapping[str, Any] | None) -> dict[str, Any]:
    """``decode`` checked: each key a selected ``bytes`` column, each value a ``streambatch.Image``."""
    from ..decode import Image

    out = _by_kind("decode", columns, decode, "bytes", "encoded bytes")
    for name, spec in out.items():
        if not isinstance(spec, Image):
            raise TypeError(f"decode[{name!r}] must be a streambatch.Image, got {type(spec).__name__}")
    return out


def check_pack(columns: tuple[Column, ...], pack: Any) -> Any:
    """``pack`` (a ``streambatch.Pack`` or None) checked against the selected columns: it names a
    ``list`` column of numbers that can hold its ``pad_id``."""
    if pack is None:
        return None
    from ..packing import Pack

    if not isinstance(pack, Pack):
        raise TypeError(f"pack must be a streambatch.Pack, got {type(pack).__name__}")
    col = next((c for c in columns if c.name == pack.column), None)
    if col is None or col.kind != "list" or col.shape:
        raise ValueError(f"pack: {pack.column!r} is not a selected column of token lists "
                         f"(those are {[c.name for c in columns if c.kind == 'list' and not c.shape]})")
    pack.check_dtype(col.np_dtype)
    return pack


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world size): as given, else torch.distributed's, else the RANK / WORLD_SIZE variables."""
    if rank is not None or world_size is not None:
        r, w = (0 if rank is None else rank), (1 if world_size is None else world_size)
        if w < 1:
            raise ValueError(f"world_size must be at least 1, got {w}")
    else:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            r, w = dist.get_rank(), dist.get_world_size()
        else:
            r, w = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= r < w:
        raise ValueError(f"rank {r} outside world size {w}")
    return r, w
