"""Shuffle-quality metrics for an epoch's row order (numpy only).

These are the figures defined in ``SHUFFLE.md``: they measure how well a chunk-then-row
shuffle mixes a dataset whose rows are stored in shuffle units (Zarr chunks, Parquet row
groups, ...), from nothing but the order in which the rows are served.

Conventions used throughout:

``order``
    ``order[t]`` is the row index (in storage order) served at position ``t`` of the epoch;
    a permutation of ``0 .. N-1``.
``unit_rows``
    rows per shuffle unit, in storage order (units may have unequal sizes); unit ``u`` holds
    the rows ``sum(unit_rows[:u]) .. sum(unit_rows[:u+1]) - 1`` and ``N = sum(unit_rows)``.
``batch_size``
    ``B``; batches are runs of ``B`` consecutive positions, the last partial batch is dropped.

Metrics (numbering as in ``SHUFFLE.md``):

* M1 :func:`design_effect` -- same-unit collisions within a batch turned into a design effect
  ``deff`` (1 for a uniform shuffle, about ``B`` when every batch comes from one unit) and an
  effective batch size ``B / deff``;
* M2 :func:`label_sorted_kl` / :func:`label_kl` -- KL divergence of each batch's label histogram
  from the global one, worst case (label-sorted data) or for real labels;
* M3 :func:`global_order` -- how far the order is from storage order;
* M4 :func:`epoch_pair` -- how independent two epochs' orders are.

:func:`predict_deff` and :func:`predict_kl` forecast M1 and M2 for a tumbling window of ``K``
units before anything runs, and :func:`label_icc` measures the intra-unit label correlation
that scales the worst-case design effect down to the realistic one (the predictions live in
``streambatch._prediction``, the argument checks in ``streambatch._quality_args``). Every function
returns plain Python floats, so results can go straight into JSON.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._prediction import label_icc, predict_deff, predict_kl
from ._quality_args import count as _count
from ._quality_args import int_array as _int_array
from ._quality_args import n_batches as _n_batches
from ._quality_args import n_classes as _n_classes
from ._quality_args import permutation as _permutation
from ._quality_args import unit_sizes as _unit_sizes

__all__ = [
    "chunk_ids",
    "design_effect",
    "label_sorted_kl",
    "label_kl",
    "global_order",
    "epoch_pair",
    "predict_deff",
    "predict_kl",
    "summarize",
    "label_icc",
]

_Order = ArrayLike
_UnitRows = ArrayLike
# predict_deff, predict_kl and label_icc live in streambatch._prediction and are part of this module's API


# --------------------------------------------------------------------------- M1


def chunk_ids(order: _Order, unit_rows: _UnitRows) -> NDArray[np.int64]:
    """Return the shuffle unit that each served row belongs to.

    Args:
        order: row indices in served order (need not be a full permutation here).
        unit_rows: rows per shuffle unit, in storage order; sizes may differ.

    Returns:
        An int64 array as long as ``order``: ``out[t]`` is the unit holding row ``order[t]``.

    Raises:
        ValueError: ``unit_rows`` is empty, negative or adds up to 0 rows, ``order`` is not a
            1-D integer array, or it holds an index outside ``0 .. sum(unit_rows)-1``.
    """
    sizes = _unit_sizes(unit_rows)
    idx = _int_array(order, "order")
    n = int(sizes.sum())
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n):
        bad = int(idx.min()) if int(idx.min()) < 0 else int(idx.max())
        raise ValueError(f"order holds row {bad}, outside 0..{n - 1} (the rows of unit_rows)")
    first = int(sizes[0])
    if first > 0 and np.all(sizes[:-1] == first):  # equal units, the last one may differ
        return np.minimum(idx // first, sizes.size - 1)
    ends = np.cumsum(sizes)
    return np.searchsorted(ends, idx, side="right").astype(np.int64, copy=False)


def _collision_null(sizes: NDArray[np.int64]) -> float:
    """s0: probability that two distinct uniformly drawn rows share a unit."""
    c = sizes.astype(np.float64)
    n = c.sum()
    return float(np.sum(c * (c - 1.0)) / (n * (n - 1.0)))


def design_effect(order: _Order, unit_rows: _UnitRows, batch_size: int) -> dict[str, float]:
    """M1: same-unit collisions per batch and the design effect they imply.

    For batch ``b``, ``s_b = sum_u n_bu (n_bu - 1) / (B (B - 1))`` is the share of its row pairs
    that come from one unit. With ``s0`` the same share under a uniform permutation,
    ``kappa = (mean(s_b) - s0) / (1 - s0)`` and the worst-case (label-pure units) design
    effect is ``deff = 1 + (B - 1) kappa``: a batch carries as much information as
    ``B / deff`` independent rows. Runs in O(N log B).

    Args:
        order: a permutation of ``0 .. N-1``, ``N = sum(unit_rows)``, in served order.
        unit_rows: rows per shuffle unit, in storage order; sizes may differ.
        batch_size: ``B`` >= 2; the last partial batch is dropped.

    Returns:
        ``s_mean`` (mean s_b), ``s0``, ``kappa``, ``deff``, ``effective_batch`` (``B / deff``)
        and ``adj_same_unit`` (share of consecutive positions serving rows of one unit).

    Raises:
        ValueError: ``batch_size`` < 2, ``order`` is not a permutation of the rows of
            ``unit_rows``, the epoch holds no full batch, or all rows sit in one unit
            (``kappa`` is then undefined).
    """
    b = _count(batch_size, "batch_size", 2)
    sizes = _unit_sizes(unit_rows)
    n = int(sizes.sum())
    perm = _permutation(order, n)
    nb = _n_batches(n, b)
    s0 = _collision_null(sizes)
    if s0 >= 1.0:
        raise ValueError("all rows sit in one shuffle unit: the design effect is undefined")
    units = chunk_ids(perm, sizes)
    # Sort the unit ids inside each batch; then runs of equal ids are the n_bu.
    grouped = np.sort(units[: nb * b].reshape(nb, b), axis=1).ravel()
    run_start = np.ones(grouped.size, dtype=bool)
    run_start[1:] = grouped[1:] != grouped[:-1]
    run_start[::b] = True  # a run never crosses a batch boundary
    starts = np.flatnonzero(run_start)
    lengths = np.diff(np.append(starts, grouped.size)).astype(np.float64)
    pairs = np.bincount(starts // b, weights=lengths * (lengths - 1.0), minlength=nb)
    s = pairs / (b * (b - 1.0))
    s_mean = float(s.mean())
    kappa = (s_mean - s0) / (1.0 - s0)
    deff = 1.0 + (b - 1) * kappa
    adj = float(np.mean(units[1:] == units[:-1])) if n > 1 else 0.0
    return {
        "s_mean": s_mean,
        "s0": s0,
        "kappa": float(kappa),
        "deff": float(deff),
        "effective_batch": float(b / deff),
        "adj_same_unit": adj,
    }


# --------------------------------------------------------------------------- M2


def _kl_figures(labels: NDArray[np.int64], batch_size: int, n_labels: int) -> dict[str, float]:
    """M2 figures for labels already validated to lie in ``0 .. n_labels-1``."""
    b = batch_size
    nb = _n_batches(labels.size, b)
    q = np.bincount(labels, minlength=n_labels) / labels.size
    present = q > 0
    n_present = int(present.sum())
    if n_present < 2:
        raise ValueError("the labels hold a single class: the batch KL is always 0")
    batch_of = np.repeat(np.arange(nb, dtype=np.int64), b)
    counts = np.bincount(batch_of * n_labels + labels[: nb * b], minlength=nb * n_labels)
    counts = counts.reshape(nb, n_labels)[:, present]
    p = counts / b
    qp = q[present]
    nz = p > 0
    safe_p = np.where(nz, p, 1.0)
    kl = np.where(nz, p * np.log(safe_p / qp), 0.0).sum(axis=1)
    entropy = -np.where(nz, p * np.log2(safe_p), 0.0).sum(axis=1)
    ideal = (n_present - 1) / (2.0 * b)
    kl_mean = float(kl.mean())
    return {
        "kl_mean": kl_mean,
        "kl_ideal": float(ideal),
        "kl_ratio": float(kl_mean / ideal),
        "entropy_bits": float(entropy.mean()),
        "frac_missing_class": float(np.mean((counts == 0).any(axis=1))),
        "kl_p95": float(np.quantile(kl, 0.95)),
    }


def label_sorted_kl(order: _Order, n_rows: int, batch_size: int,
                    n_labels: int = 10) -> dict[str, float]:
    """M2, worst case: batch label KL as if the dataset were sorted by label.

    Row ``i`` gets the synthetic label ``floor(i * L / N)`` (``L`` equal contiguous classes),
    so every unit is (nearly) label-pure. For each batch the KL divergence (nats) of its label
    histogram from the global one is computed; a uniform shuffle gives about
    ``(L - 1) / (2 B)``.

    Args:
        order: a permutation of ``0 .. n_rows-1`` in served order.
        n_rows: ``N``, the number of rows.
        batch_size: ``B`` >= 2; the last partial batch is dropped.
        n_labels: ``L``, 2 <= L <= N.

    Returns:
        ``kl_mean``, ``kl_ideal`` (``(L-1)/(2B)``), ``kl_ratio`` (``kl_mean / kl_ideal``),
        ``entropy_bits`` (mean batch label entropy), ``frac_missing_class`` (share of batches
        lacking at least one class) and ``kl_p95`` (95th percentile of the batch KL).

    Raises:
        ValueError: bad ``batch_size``, ``n_rows`` or ``n_labels``, ``order`` is not a
            permutation of ``0 .. n_rows-1``, or the epoch holds no full batch.
    """
    b = _count(batch_size, "batch_size", 2)
    n = _count(n_rows, "n_rows", 1)
    n_lab = _count(n_labels, "n_labels", 2)
    if n_lab > n:
        raise ValueError(f"n_labels = {n_lab} exceeds the {n} rows")
    perm = _permutation(order, n)
    return _kl_figures((perm * n_lab) // n, b, n_lab)


def label_kl(labels_in_served_order: ArrayLike, batch_size: int,
             n_labels: int | None = None) -> dict[str, float]:
    """M2 for real labels: batch label KL against the epoch's own label distribution.

    The global distribution is the histogram of all given labels. Classes that never occur
    are ignored, so ``kl_ideal = (L' - 1) / (2 B)`` with ``L'`` the number of classes present
    (to first order the expected KL of a uniformly shuffled batch for any class balance).
    With rare classes, ``frac_missing_class`` is high even for a perfect shuffle.

    Args:
        labels_in_served_order: integer class labels ``0 .. L-1``, one per served row, in
            served order (encode other labels with ``np.unique(..., return_inverse=True)``).
        batch_size: ``B`` >= 2; the last partial batch is dropped.
        n_labels: ``L``; defaults to ``max(label) + 1``.

    Returns:
        The keys of :func:`label_sorted_kl`.

    Raises:
        ValueError: ``batch_size`` < 2, labels that are not 1-D non-negative integers or that
            reach ``n_labels``, fewer than two classes present, or no full batch.
    """
    b = _count(batch_size, "batch_size", 2)
    y = _int_array(labels_in_served_order, "labels")
    if y.size == 0:
        raise ValueError("labels is empty")
    return _kl_figures(y, b, _n_classes(y, n_labels, 2))


# --------------------------------------------------------------------------- M3, M4


def _spearman_from_ranks(d: NDArray[np.float64], n: int) -> float:
    """Spearman correlation of two rankings of ``n`` items differing by ``d``.

    The sum of squares by ``einsum``'s own loop, not ``np.dot``: OpenBLAS threads a long dot
    product, and its threads then spin for a while, holding a core the loader's readers need (an
    epoch of 20k ``img`` rows right after this ran 0.6-0.7x as fast: docs/PERFORMANCE.md)."""
    return float(1.0 - 6.0 * np.einsum("i,i->", d, d) / (n * (float(n) ** 2 - 1.0)))


def global_order(order: _Order, n_bins: int = 10) -> dict[str, float]:
    """M3: how far the served order is from storage order.

    Args:
        order: a permutation of ``0 .. N-1`` in served order.
        n_bins: ``G``, bins per axis of the chi-square table; ``N`` must be at least ``G``.

    Returns:
        ``spearman``: Spearman correlation of position and row index (1 for storage order,
        0 +- 1/sqrt(N-1) for a uniform shuffle, 0 +- 1/sqrt(M-1) for one that moves whole
        units); ``disp_norm``: mean ``|order[t] - t| / N`` (ideal about 1/3); ``chi2``: the
        Pearson chi-square of the ``G x G`` table of (row-index bin, position bin) counts
        (ideal mean ``(G-1)^2``).

    Raises:
        ValueError: ``order`` is not a permutation, has fewer than 2 rows or fewer than
            ``n_bins`` rows, or ``n_bins`` < 2.
    """
    g = _count(n_bins, "n_bins", 2)
    perm = _permutation(order)
    n = perm.size
    if n < g:
        raise ValueError(f"global_order needs at least n_bins = {g} rows, got {n}")
    pos = np.arange(n, dtype=np.int64)
    d = (perm - pos).astype(np.float64)
    table = np.bincount((perm * g // n) * g + pos * g // n, minlength=g * g).reshape(g, g)
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / n
    chi2 = float(((table - expected) ** 2 / expected).sum())
    return {
        "spearman": _spearman_from_ranks(d, n),
        "disp_norm": float(np.abs(d).mean() / n),
        "chi2": chi2,
    }


def epoch_pair(order_a: _Order, order_b: _Order, batch_size: int) -> dict[str, float]:
    """M4: independence of two epochs' orders over the same rows.

    Args:
        order_a: the served order of one epoch, a permutation of ``0 .. N-1``.
        order_b: the served order of the next epoch, a permutation of the same rows.
        batch_size: ``B`` >= 2; rows in either epoch's last partial batch are left out.

    Returns:
        ``epoch_spearman``: Spearman correlation of each row's positions in the two epochs
        (ideal 0 +- 1/sqrt(N-1)); ``cobatch_recur``: share of the same-batch row pairs of
        epoch a that share a batch again in epoch b; ``cobatch_ideal``: its value for
        independent uniform shuffles, ``(B-1)/(N-1)``.

    Raises:
        ValueError: ``batch_size`` < 2, either order is not a permutation, the two differ in
            length, or the epoch holds no full batch.
    """
    b = _count(batch_size, "batch_size", 2)
    a = _permutation(order_a, what="order_a")
    n = a.size
    c = _permutation(order_b, n, what="order_b")
    nb = _n_batches(n, b)
    pos_a = np.empty(n, dtype=np.int64)
    pos_a[a] = np.arange(n)
    pos_b = np.empty(n, dtype=np.int64)
    pos_b[c] = np.arange(n)
    rho = _spearman_from_ranks((pos_a - pos_b).astype(np.float64), n)
    full = nb * b
    keep = (pos_a < full) & (pos_b < full)
    cell = (pos_a[keep] // b) * nb + pos_b[keep] // b  # (batch in a, batch in b)
    _, together = np.unique(cell, return_counts=True)
    together = together.astype(np.float64)
    recur = np.sum(together * (together - 1.0)) / (nb * b * (b - 1.0))
    return {
        "epoch_spearman": rho,
        "cobatch_recur": float(recur),
        "cobatch_ideal": float((b - 1.0) / (n - 1.0)),
    }


# --------------------------------------------------------------------------- summary


def summarize(order: _Order, unit_rows: _UnitRows, batch_size: int,
              n_labels: int = 10) -> dict[str, float]:
    """The headline figures of one epoch's order, for benchmarks and ``streambatch bench``.

    Args:
        order: a permutation of ``0 .. N-1``, ``N = sum(unit_rows)``, in served order.
        unit_rows: rows per shuffle unit, in storage order.
        batch_size: ``B`` >= 2.
        n_labels: ``L`` for the label-sorted KL.

    Returns:
        ``deff`` (M1), ``kl`` and ``kl_ratio`` and ``frac_missing_class`` (M2, label-sorted
        worst case) and ``spearman`` (M3).

    Raises:
        ValueError: as :func:`design_effect`, :func:`label_sorted_kl` and
            :func:`global_order`.
    """
    sizes = _unit_sizes(unit_rows)
    n = int(sizes.sum())
    perm = _permutation(order, n)
    m1 = design_effect(perm, sizes, batch_size)
    m2 = label_sorted_kl(perm, n, batch_size, n_labels)
    d = (perm - np.arange(n, dtype=np.int64)).astype(np.float64)
    return {
        "deff": m1["deff"],
        "kl": m2["kl_mean"],
        "kl_ratio": m2["kl_ratio"],
        "frac_missing_class": m2["frac_missing_class"],
        "spearman": _spearman_from_ranks(d, n),
    }
