"""Argument checks shared by the shuffle-quality metrics and predictions (``streambatch.quality``):
each returns the checked value or raises a one-line ``ValueError`` naming the argument."""

from __future__ import annotations

import math
import operator

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["count", "int_array", "unit_sizes", "permutation", "n_classes", "n_batches", "finite"]


def count(value: object, what: str, minimum: int) -> int:
    """``value`` as a Python int >= ``minimum``; ``ValueError`` otherwise."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    try:
        n = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{what} must be an integer, got {value!r}") from None
    if n < minimum:
        raise ValueError(f"{what} must be at least {minimum}, got {n}")
    return n


def int_array(values: ArrayLike, what: str) -> NDArray[np.int64]:
    """``values`` as a 1-D int64 array; ``ValueError`` if it is not 1-D integers."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def unit_sizes(unit_rows: ArrayLike) -> NDArray[np.int64]:
    """Validated rows-per-unit array: 1-D, non-negative integers, at least one row in all."""
    sizes = int_array(unit_rows, "unit_rows")
    if sizes.size == 0:
        raise ValueError("unit_rows is empty: give the number of rows of every shuffle unit")
    if np.any(sizes < 0):
        bad = int(np.flatnonzero(sizes < 0)[0])
        raise ValueError(f"unit_rows[{bad}] = {int(sizes[bad])} is negative")
    if int(sizes.sum()) == 0:
        raise ValueError("unit_rows adds up to 0 rows")
    return sizes


def permutation(order: ArrayLike, n_rows: int | None = None, what: str = "order") -> NDArray[np.int64]:
    """``order`` as an int64 array after checking it is a permutation of ``0 .. n_rows-1``.

    ``n_rows`` defaults to ``len(order)``.
    """
    perm = int_array(order, what)
    n = perm.size if n_rows is None else n_rows
    if perm.size != n:
        raise ValueError(f"{what} has {perm.size} entries but the dataset has {n} rows; "
                         f"it must be a permutation of 0..{n - 1}")
    if n == 0:
        raise ValueError(f"{what} is empty")
    lo, hi = int(perm.min()), int(perm.max())
    if lo < 0 or hi >= n:
        raise ValueError(f"{what} is not a permutation of 0..{n - 1}: "
                         f"it holds {lo if lo < 0 else hi}")
    seen = np.zeros(n, dtype=bool)
    seen[perm] = True
    if not seen.all():
        missing = int(np.flatnonzero(~seen)[0])
        raise ValueError(f"{what} is not a permutation of 0..{n - 1}: row {missing} is never "
                         f"served (so another row is served twice)")
    return perm


def n_classes(y: NDArray[np.int64], n_labels: int | None, minimum: int) -> int:
    """The number of classes: ``n_labels`` checked against the labels, or ``max + 1``."""
    lo, hi = int(y.min()), int(y.max())
    if lo < 0:
        raise ValueError(f"labels must be non-negative class indices, got {lo}")
    n_lab = hi + 1 if n_labels is None else count(n_labels, "n_labels", minimum)
    if hi >= n_lab:
        raise ValueError(f"labels hold class {hi}, but n_labels = {n_lab}")
    return n_lab


def n_batches(n: int, batch_size: int) -> int:
    """Full batches in ``n`` rows; ``ValueError`` if there is none."""
    nb = n // batch_size
    if nb < 1:
        raise ValueError(f"an epoch of {n} rows holds no full batch of {batch_size} rows")
    return nb


def finite(value: object, what: str, minimum: float) -> float:
    """``value`` as a finite float >= ``minimum``; ``ValueError`` otherwise."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise ValueError(f"{what} must be a number, got {value!r}")
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(x) or x < minimum:
        raise ValueError(f"{what} must be a finite number >= {minimum}, got {value!r}")
    return x
