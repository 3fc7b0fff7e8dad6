"""Checks of JSON fields, shared by every document streambatch reads (the manifest, storage
layouts, statistics entries): each failure is a ``ManifestError`` naming where it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
from numpy.typing import NDArray

from .errors import ManifestError

__all__ = ["need", "optional", "int_array", "safe_relpath", "is_number"]


def need(obj: Mapping[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    """``obj[key]``, which must be of type ``typ`` (``bool`` is not an ``int`` here)."""
    if not isinstance(obj, Mapping) or key not in obj:
        raise ManifestError(f"{where}: missing field {key!r}")
    val = obj[key]
    if isinstance(val, bool) and typ is not bool and (typ is int or (isinstance(typ, tuple) and bool not in typ)):
        raise ManifestError(f"{where}: field {key!r} must be {_type_name(typ)}, got {type(val).__name__}")
    if not isinstance(val, typ):
        raise ManifestError(f"{where}: field {key!r} must be {_type_name(typ)}, got {type(val).__name__}")
    return val


def _type_name(typ: type | tuple[type, ...]) -> str:
    if isinstance(typ, tuple):
        return " or ".join(t.__name__ for t in typ)
    return typ.__name__


def int_array(value: Any, n: int | None, where: str, *, lo: int = 0, hi: int = 1 << 62) -> NDArray[np.int64]:
    """Validate a JSON list of ints (length ``n`` if given, each in ``[lo, hi]``) into int64."""
    if not isinstance(value, list) or not all(type(v) is int for v in value):
        raise ManifestError(f"{where}: expected a list of integers")
    if n is not None and len(value) != n:
        raise ManifestError(f"{where}: expected {n} entries, found {len(value)}")
    if any(v < lo or v > hi for v in value):
        raise ManifestError(f"{where}: values must lie in [{lo}, {hi}]")
    return np.asarray(value, dtype=np.int64).reshape(len(value))


def safe_relpath(root: Path, rel: Any, where: str) -> str:
    """Check that ``rel`` is a relative path that stays inside ``root``; return it."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise ManifestError(f"{where}: file path must be a non-empty string")
    p = Path(rel)
    if p.is_absolute() or rel.startswith(("/", "\\")) or ".." in p.parts or ":" in rel:
        raise ManifestError(f"{where}: file path {rel!r} leaves the dataset folder")
    return rel


def optional(doc: Mapping[str, Any], key: str, typ: type, default: Any, where: str) -> Any:
    """``doc[key]`` if present (of type ``typ``: a dict or a str), else ``default``."""
    val = doc.get(key, default)
    if not isinstance(val, typ):
        raise ManifestError(f"{where}: field {key!r} must be {'an object' if typ is dict else 'a string'}, "
                            f"got {type(val).__name__}")
    return val


def is_number(v: Any) -> bool:
    """A JSON number or null (how statistics store non-finite values)."""
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
