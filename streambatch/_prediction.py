"""Shuffle-quality predictions (``SHUFFLE.md``): the design effect and label KL a tumbling window
of ``K`` shuffle units gives, before anything runs, and the intra-unit label correlation
(:func:`label_icc`) that scales them.  Exported by ``streambatch.quality``."""

from __future__ import annotations

import math

import numpy as np

from numpy.typing import ArrayLike

from ._quality_args import count as _count
from ._quality_args import finite as _finite
from ._quality_args import int_array as _int_array
from ._quality_args import n_classes as _n_classes
from ._quality_args import unit_sizes as _unit_sizes

__all__ = ["predict_deff", "predict_kl", "label_icc"]


_PERIOD_CELLS_MAX = 1 << 20


def _same_window_share(batch_size: int, window_rows: float) -> float:
    """Mean share of a batch's row pairs that fall in one window.

    Batches of ``B`` rows and windows of ``W`` rows both tile the epoch from position 0. For
    an integral ``W`` the batch-window pattern repeats every ``lcm(B, W)`` rows, and one
    period is counted exactly (this catches aligned sizes, e.g. ``W`` a multiple of ``B``
    where no batch straddles two windows). Otherwise the window boundaries fall at uniformly
    random offsets within a batch, which gives ``E[sum_i l_i^2] = B^2 - B^3/(3W)`` for
    ``W >= B`` and ``WB - W^2/3`` for ``W < B`` (``l_i``: rows of the batch in window ``i``).
    """
    b, w = batch_size, window_rows
    if w.is_integer():
        wi = int(w)
        g = math.gcd(b, wi)
        if (b + wi) // g <= _PERIOD_CELLS_MAX:
            period = b // g * wi
            cuts = np.union1d(np.arange(0, period + 1, b), np.arange(0, period + 1, wi))
            cells = np.diff(cuts).astype(np.float64)
            return float(np.sum(cells * (cells - 1.0)) / (period * (b - 1.0)))
    if w >= b:
        sum_sq = b * b - b**3 / (3.0 * w)
    else:
        sum_sq = w * b - w * w / 3.0
    return float(max(sum_sq - b, 0.0) / (b * (b - 1.0)))


def predict_deff(unit_rows: float, window_units: float, n_units: int, batch_size: int,
                 icc: float = 1.0) -> float:
    """Predict the design effect of a tumbling window of ``K`` units of ``C`` rows.

    The planner modelled reads the ``M`` units in random order, shuffles the rows of each
    run of ``K`` units (a window of ``W = KC`` rows; the last window holds the
    ``r = M mod K`` units left) and cuts batches of ``B`` consecutive rows. Two distinct rows
    of one window come from one unit with probability ``(C-1)/(W-1)``, so a batch's expected
    same-unit pair share is ``s(W) = (C-1)/(W-1) * P(same window)``, where ``P(same window)``
    is 1 when every batch lies inside one window (``W`` a multiple of ``B``), about
    ``1 - B/(3W)`` for large unaligned windows and about ``W/B`` for windows much smaller
    than a batch (see ``_same_window_share``). The epoch mean is
    ``s = (floor(M/K) K s(KC) + r s(rC)) / M``; against a uniform shuffle,
    ``s0 = (C-1)/(MC-1)``, ``kappa = (s - s0)/(1 - s0)`` and
    ``deff = 1 + (B-1) icc kappa``, clamped to ``[1, B]``. For ``KC`` a multiple of ``B`` and
    ``M`` a multiple of ``K`` this is ``1 + (B-1) icc (1/K - 1/M)`` up to terms of order
    ``1/C`` (the approximation in ``SHUFFLE.md``).

    Units of unequal sizes collide more often than equal ones of the same mean size, so for
    them the prediction (from the mean ``C``) is a lower bound rather than an estimate.

    Args:
        unit_rows: ``C``, rows per unit (the mean where sizes differ), >= 1.
        window_units: ``K``, units mixed per window, >= 1 (``K >= M`` is a full shuffle).
        n_units: ``M``, units in the dataset, >= 1.
        batch_size: ``B`` >= 2.
        icc: intra-unit label correlation (:func:`label_icc`); 1 for label-sorted data,
            about 0 for pre-shuffled data.

    Returns:
        The predicted ``deff`` as a float in ``[1, B]``.

    Raises:
        ValueError: an argument is not a finite number in its range, or the dataset
            (``M C`` rows) holds no full batch.
    """
    c = _finite(unit_rows, "unit_rows", 1.0)
    k = _finite(window_units, "window_units", 1.0)
    m = _count(n_units, "n_units", 1)
    b = _count(batch_size, "batch_size", 2)
    rho = _finite(icc, "icc", -math.inf)
    if m * c < b:
        raise ValueError(f"{m} units of {c} rows hold no full batch of {b} rows")
    if k >= m or c == 1.0:
        return 1.0

    def share(units: float) -> float:
        rows = max(units, 1.0) * c
        return (c - 1.0) / (rows - 1.0) * _same_window_share(b, rows)

    full_windows = math.floor(m / k)
    rest = m - full_windows * k
    s_mean = (full_windows * k * share(k) + (rest * share(rest) if rest > 0 else 0.0)) / m
    s0 = (c - 1.0) / (m * c - 1.0)
    kappa = (s_mean - s0) / (1.0 - s0)
    return float(min(max(1.0 + (b - 1) * rho * kappa, 1.0), float(b)))


def predict_kl(deff: float, batch_size: int, n_labels: int = 10) -> float:
    """Predict the mean batch label KL (nats) from a design effect.

    To first order the KL of a batch is ``(L-1)/(2B)`` times the design effect; the result
    is capped at ``ln L``, the KL of a single-class batch under balanced classes.

    Args:
        deff: a design effect, e.g. from :func:`predict_deff` or :func:`design_effect`.
        batch_size: ``B`` >= 2.
        n_labels: ``L`` >= 2.

    Returns:
        ``min((L-1)/(2B) * deff, ln L)`` as a float.

    Raises:
        ValueError: ``deff`` is not a finite positive number, ``batch_size`` < 2 or
            ``n_labels`` < 2.
    """
    d = _finite(deff, "deff", 0.0)
    b = _count(batch_size, "batch_size", 2)
    n_lab = _count(n_labels, "n_labels", 2)
    return float(min((n_lab - 1) / (2.0 * b) * d, math.log(n_lab)))


def label_icc(labels: ArrayLike, unit_rows: ArrayLike, n_labels: int | None = None) -> float:
    """Intra-unit correlation of one-hot labels: how label-pure the stored units are.

    Computed from per-unit label histograms as a one-way ANOVA estimate: 0 when units look
    like random samples of the dataset, about 1 when every unit holds one class. The
    realistic design effect of a planner is ``1 + (B-1) icc kappa`` (see
    :func:`predict_deff`). Empty units are ignored.

    Args:
        labels: integer class labels ``0 .. L-1`` in storage order, ``sum(unit_rows)`` of them.
        unit_rows: rows per shuffle unit, in storage order.
        n_labels: ``L``; defaults to ``max(label) + 1``.

    Returns:
        The ICC as a float (it can be slightly negative; at most 1).

    Raises:
        ValueError: labels that are not 1-D non-negative integers, reach ``n_labels`` or do
            not match ``sum(unit_rows)`` in length, a single class, or units of one row each
            on average (the estimate is then undefined).
    """
    sizes = _unit_sizes(unit_rows)
    y = _int_array(labels, "labels")
    n = int(sizes.sum())
    if y.size != n:
        raise ValueError(f"labels has {y.size} entries but unit_rows adds up to {n} rows")
    n_lab = _n_classes(y, n_labels, 1)
    unit = np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
    counts = np.bincount(unit * n_lab + y, minlength=sizes.size * n_lab).reshape(-1, n_lab)
    nonempty = sizes > 0
    counts = counts[nonempty]
    rows = sizes[nonempty].astype(np.float64)[:, None]
    p = counts.sum(axis=0) / n
    total = float((p * (1.0 - p)).sum())
    if total == 0.0:
        raise ValueError("the labels hold a single class: the ICC is undefined")
    mean_rows = float(rows.mean())
    if mean_rows <= 1.0:
        raise ValueError("units hold one row each: the ICC is undefined")
    between = float((rows * (counts / rows - p) ** 2).sum() / n)
    return float((between - total / mean_rows) / (total * (1.0 - 1.0 / mean_rows)))
