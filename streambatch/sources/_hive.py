"""Hive-partitioned Parquet folders (``key=value/`` directories): each partition key is a column,
integer keys as int64, others categorical; a file's rows get its folders' values."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import unquote

import numpy as np

from ..errors import InputError
from ..schema import Column
from ._mapped import code_dtype

__all__ = ["Hive", "is_hive", "hive_layout", "own_columns", "with_partitions"]

_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
_INT = re.compile(r"^[+-]?[0-9]{1,18}$")


@dataclass
class Hive:
    """A Hive-partitioned folder: its Parquet files in sorted path order, the partition key
    columns, and for each file the stored value of each key (``None`` for a null)."""

    files: list[Path]
    columns: dict[str, Column]
    values: list[dict[str, int | None]]

    def has_null(self, file_index: int, names: Iterable[str]) -> bool:
        """Whether a key among ``names`` is null in file ``file_index``."""
        return any(self.values[file_index].get(n, 0) is None for n in names)


def _visible(p: Path) -> bool:
    return not p.name.startswith((".", "_"))  # _SUCCESS, _common_metadata, .crc: not data (as pyarrow)


def _walk(folder: Path, got: dict[str, str | None], out: list[tuple[Path, dict[str, str | None]]]) -> None:
    """Every Parquet file under ``folder`` with its partition values, in sorted path order."""
    entries = sorted((p for p in folder.iterdir() if _visible(p)), key=lambda p: p.name)
    dirs = [p for p in entries if p.is_dir()]
    files = [p for p in entries if p.is_file() and p.suffix.lower() in (".parquet", ".pq")]
    if dirs and files:
        raise InputError(f"{folder}: holds both Parquet files and partition folders ({dirs[0].name}); "
                         "a Hive-partitioned folder has files only at its deepest level")
    for p in dirs:
        key, eq, value = p.name.partition("=")
        if not eq or not key or key in got:
            raise InputError(f"{p}: not a key=value partition folder of a new key")
        _walk(p, {**got, key: None if value == _HIVE_NULL else unquote(value)}, out)
    out += [(f, got) for f in files]


def is_hive(path: Path) -> bool:
    """Whether folder ``path`` has a ``key=value`` folder at its top."""
    return any(p.is_dir() and "=" in p.name and _visible(p) for p in path.iterdir())


def hive_layout(path: Path) -> Hive | None:
    """The Hive layout of folder ``path`` (``None`` when it has no ``key=value`` folder at its top).
    String keys are categorical (categories sorted), keys whose every value is an integer int64."""
    if not is_hive(path):
        return None
    found: list[tuple[Path, dict[str, str | None]]] = []
    _walk(path, {}, found)
    if not found:
        raise InputError(f"{path}: partition folders hold no Parquet files")
    for f, got in found:
        if list(got) != list(found[0][1]):
            raise InputError(f"{f}: partition keys {list(got)} differ from those of "
                             f"{found[0][0].relative_to(path)} ({list(found[0][1])})")
    columns: dict[str, Column] = {}
    stored: dict[str, dict[str | None, int | None]] = {}
    for key in found[0][1]:
        seen = sorted({v[key] for _, v in found if v[key] is not None})
        if all(_INT.match(v) for v in seen):
            columns[key] = Column(key, "int64")
            stored[key] = {v: int(v) for v in seen}
        else:
            columns[key] = Column(key, code_dtype(len(seen)), meta={"type": "category", "categories": seen,
                                                                   "ordered": False})
            stored[key] = {v: i for i, v in enumerate(seen)}
        stored[key][None] = None
    return Hive([f for f, _ in found], columns, [{k: stored[k][v] for k, v in got.items()} for _, got in found])


def own_columns(hive: Hive | None, names: tuple[str, ...]) -> tuple[str, ...]:
    """The columns among ``names`` that the files hold (not partition keys)."""
    return names if hive is None else tuple(n for n in names if n not in hive.columns)


def with_partitions(batch: Any, hive: Hive | None, file_index: int, names: tuple[str, ...]) -> Any:
    """``batch`` (Arrow, or a dict of numpy arrays) of file ``file_index`` with its partition key
    columns among ``names`` added."""
    import pyarrow as pa

    keys = [n for n in names if hive is not None and n in hive.columns]
    if not keys:
        return batch
    assert hive is not None
    values = hive.values[file_index]
    if isinstance(batch, dict):  # decoded in place: the file has no null key (Hive.has_null)
        n = len(next(iter(batch.values())))
        return {**batch, **{k: np.full(n, values[k], hive.columns[k].np_dtype) for k in keys}}
    n = batch.num_rows
    arrays = [pa.nulls(n, pa.from_numpy_dtype(hive.columns[k].np_dtype)) if values[k] is None else
              pa.array(np.full(n, values[k], hive.columns[k].np_dtype)) for k in keys]
    return pa.RecordBatch.from_arrays([*batch.columns, *arrays], names=[*batch.schema.names, *keys])
