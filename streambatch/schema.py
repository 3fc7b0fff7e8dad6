"""The schema: columns, their dtypes and row shapes, and how the manifest describes them."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._fields import need
from .errors import ManifestError
from .ragged import RAGGED_KINDS

__all__ = ["Column", "SUPPORTED_DTYPES", "MAX_ROW_BYTES", "parse_column"]

MAX_ROW_BYTES = 1 << 32
SUPPORTED_DTYPES = frozenset(
    "bool int8 int16 int32 int64 uint8 uint16 uint32 uint64 float16 float32 float64".split()
)


@dataclass(frozen=True)
class Column:
    """One column: a numpy dtype name and the fixed shape of one row's value (``()`` for scalars).

    ``kind`` is ``"fixed"`` (every row ``shape``), or a variable-length kind (``ragged.RAGGED_KINDS``):
    ``"list"`` (each row a sequence of numbers of ``dtype``, each of ``shape``: token ids),
    ``"bytes"`` (uint8: encoded images) or ``"string"`` (uint8, UTF-8).  A ragged column has no
    ``row_nbytes``; its bytes per unit are in the manifest.
    ``meta`` (absent for plain numbers) says what the stored integers mean:
    ``{"type": "category", "categories": [...], "ordered": bool}`` (codes into ``categories``),
    ``{"type": "timestamp", "unit": "us", "timezone": "UTC"}`` (``timezone`` optional) or
    ``{"type": "duration", "unit": "ns"}``: ``values.view(f"datetime64[{unit}]")`` reads them back.
    """

    name: str
    dtype: str
    shape: tuple[int, ...] = ()
    kind: str = "fixed"
    meta: dict[str, Any] | None = field(default=None, hash=False)
    nbytes_hint: int = field(default=0, compare=False, hash=False)
    """Ragged columns: the bytes a row is sized by (values and its offset), set from the data
    (by the converter from what it reads, by the manifest from the largest mean of a unit);
    not stored.  0: unknown."""

    @property
    def np_dtype(self) -> np.dtype[Any]:
        return np.dtype(self.dtype)

    @property
    def ragged(self) -> bool:
        """Whether rows vary in length (``kind`` is list, bytes or string)."""
        return self.kind in RAGGED_KINDS

    @property
    def row_items(self) -> int:
        """The values in one row (of one element, for a ragged column)."""
        return int(math.prod(self.shape))

    @property
    def item_nbytes(self) -> int:
        """The bytes of one row (of one element, for a ragged column)."""
        return self.row_items * self.np_dtype.itemsize

    @property
    def row_nbytes(self) -> int:
        """The bytes of one row; for a ragged column the bytes it is sized by (``nbytes_hint``),
        ``TypeError`` where that is unknown."""
        if self.ragged:
            if self.nbytes_hint <= 0:
                raise TypeError(f"column {self.name!r} is {self.kind}: its rows have no fixed size")
            return self.nbytes_hint
        return self.item_nbytes

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "kind": self.kind}
        if self.meta is not None:  # absent otherwise: manifests (and fingerprints) of plain columns unchanged
            out["meta"] = self.meta
        return out


_TIME_UNIT = re.compile(r"^[0-9]{0,6}(Y|M|W|D|h|m|s|ms|us|ns|ps|fs|as)$")  # numpy's; Arrow's are s, ms, us, ns


def _check_meta(meta: Any, dtype: str, shape: tuple[int, ...], cw: str) -> dict[str, Any] | None:
    """A column's ``meta`` (see ``Column``): ``None``, or an object of a known ``type`` whose
    fields are right for it and for the column's dtype."""
    if meta is None:
        return None
    kind = meta.get("type") if isinstance(meta, dict) else None
    if kind == "category":
        cats = meta.get("categories")
        ok = isinstance(cats, list) and (all(isinstance(v, str) for v in cats) or all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in cats))
        if not ok or len(set(cats)) != len(cats) or not isinstance(meta.get("ordered", False), bool):
            raise ManifestError(f"{cw}: meta 'categories' must be a list of distinct strings or numbers "
                                "and 'ordered' a boolean")
        if shape or dtype not in ("int8", "int16", "int32", "int64"):
            raise ManifestError(f"{cw}: categorical codes must be a scalar signed integer column, not {dtype}")
    elif kind in ("timestamp", "duration"):
        tz = meta.get("timezone")
        if not (isinstance(meta.get("unit"), str) and _TIME_UNIT.match(meta["unit"])) or \
                not (tz is None or (kind == "timestamp" and isinstance(tz, str))):
            raise ManifestError(f"{cw}: meta of a {kind} needs a 'unit' such as 'ns'"
                                f"{' and an optional string timezone' if kind == 'timestamp' else ''}")
        if dtype != "int64":
            raise ManifestError(f"{cw}: a {kind} column is stored as int64, not {dtype}")
    else:
        raise ManifestError(f"{cw}: meta must be an object whose 'type' is 'category', 'timestamp' or "
                            f"'duration', got {meta!r:.80}")
    return meta




def parse_column(c: Any, cw: str, seen: set[str]) -> Column:
    """The column described by manifest entry ``c`` (``cw`` names it in errors; ``seen``: the
    names before it, to which its own is added).  ``ManifestError`` for anything wrong."""
    name = need(c, "name", str, cw)
    if not name or name in seen or "/" in name or "\\" in name or name.startswith(".") or "\x00" in name:
        raise ManifestError(f"{cw}: bad or duplicate name {name!r}")
    seen.add(name)
    dtype = need(c, "dtype", str, cw)
    if dtype not in SUPPORTED_DTYPES:
        raise ManifestError(f"{cw} ({name}): unsupported dtype {dtype!r}")
    shape_doc = need(c, "shape", list, cw)
    if not all(type(d) is int and 0 < d <= MAX_ROW_BYTES for d in shape_doc) or len(shape_doc) > 8:
        raise ManifestError(f"{cw} ({name}): bad shape {shape_doc!r}")
    col = Column(name, dtype, tuple(shape_doc), str(c.get("kind", "fixed")),
                 _check_meta(c.get("meta"), dtype, tuple(shape_doc), f"{cw} ({name})"))
    if col.kind != "fixed" and col.kind not in RAGGED_KINDS:
        raise ManifestError(f"{cw} ({name}): column kind {col.kind!r} is not supported by this version")
    if col.kind in ("bytes", "string") and (dtype != "uint8" or col.shape):
        raise ManifestError(f"{cw} ({name}): a {col.kind} column is stored as uint8 without a shape")
    if col.item_nbytes > MAX_ROW_BYTES:
        raise ManifestError(f"{cw} ({name}): {col.row_nbytes} bytes per row is absurd")
    return col
