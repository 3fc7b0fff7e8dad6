"""The ceiling of bench_parquet_codec.py: each read path alone, one thread, microseconds per unit.

Also :func:`check_reader`, which every variant passes before it is timed (its units equal the
source rows, whole and sliced).  Variants are the own reader, ``_pq_alt``'s pyarrow readers with
each of pyarrow's options, with and without the unit checksum, and the floor: ``preadv`` of the
values alone (``_pq_alt.RawPread``).
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import _common
import _pq_alt as alt
from streambatch.storage import parquet_store

__all__ = ["CEILING_UNITS", "FLOOR", "check_reader", "ceiling_variants", "measure_ceiling", "rotated"]

CEILING_UNITS = 400
"""Units per pass (~100 MB: more than the caches hold)."""
FLOOR = "preadv values into place"


def rotated(names: Sequence[str], i: int) -> list[str]:
    """``names`` starting at the ``i``-th (mod len): repeat ``i`` runs the variants in this order,
    so that no variant always follows the same one."""
    k = i % len(names)
    return [*names[k:], *names[:k]]


# ---------------------------------------------------------------------------- correctness
def check_reader(make: Callable[[], Any], npy: Path) -> None:
    """Every unit, whole and a partial slice, equals the source rows (storage order = source order)."""
    cols = _common.load_columns(npy, mmap=True)
    reader = make()
    m = reader.manifest
    try:
        for u in range(m.n_units):
            s, n = int(m.unit_start[u]), int(m.unit_rows[u])
            for lo, hi in ((0, n), (n // 3, n)):
                out = {c.name: np.empty((hi - lo, *c.shape), c.np_dtype) for c in m.columns}
                reader.read_into(u, lo, hi, out)
                for k, v in out.items():
                    if not np.array_equal(v, cols[k][s + lo:s + hi]):
                        raise AssertionError(f"{m.root}: unit {u} rows {lo}:{hi} column {k} differ")
    finally:
        reader.close()


# ---------------------------------------------------------------------------- ceiling
def ceiling_variants(stores: dict[str, Any]) -> dict[str, tuple[str, Callable[[], Any]]]:
    """name -> (layout, opener of a reader with ``read_into``) for the per-unit ceiling."""
    own, flba, fsl = stores["own"], stores["flba"], stores["fsl"]
    v: dict[str, tuple[str, Callable[[], Any]]] = {FLOOR: ("own", functools.partial(alt.RawPread, own))}
    for verify in (False, True):
        tag = "checksum" if verify else "no checksum"
        v[f"own reader, {tag}"] = ("own", functools.partial(parquet_store.Reader, own, verify=verify))
        v[f"pyarrow+inplace, {tag}"] = ("flba", functools.partial(alt.InplaceReader, flba, verify=verify))
        for opt in alt.ARROW_OPTIONS:
            v[f"pyarrow {opt}, {tag}"] = ("flba", functools.partial(alt.ArrowReader, flba, verify=verify, options=opt))
        v[f"pyarrow FSL mmap, {tag}"] = ("fsl", functools.partial(alt.ArrowReader, fsl, verify=verify, options="mmap"))
    v["pyarrow mmap, page CRCs"] = ("flba", functools.partial(alt.ArrowReader, flba, options="mmap", page_crc=True))
    return v


def _per_unit_us(read: Callable[[int, dict[str, np.ndarray]], None], m: Any, units: Sequence[int]) -> float:
    """Microseconds per unit of ``read(unit, out)`` over ``units``, into one preallocated buffer."""
    bufs = {c.name: np.empty((int(m.unit_rows.max()), *c.shape), c.np_dtype) for c in m.columns}
    for b in bufs.values():
        b.fill(0)  # no first-touch page faults inside the timing
    t0 = time.perf_counter()
    for u in units:
        n = int(m.unit_rows[u])
        read(u, {k: b[:n] for k, b in bufs.items()})
    return (time.perf_counter() - t0) / len(units) * 1e6


def measure_ceiling(stores: dict[str, Any], repeats: int) -> dict[str, dict[str, Any]]:
    """Per-unit microseconds of each variant on one thread over the first :data:`CEILING_UNITS`
    units, in rotated order, medians."""
    variants = ceiling_variants(stores)
    units = range(min(CEILING_UNITS, stores["own"].n_units))
    runs: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(repeats):
        for name in rotated(list(variants), i):
            layout, make = variants[name]
            reader = make()
            try:
                runs[name].append(_per_unit_us(lambda u, out: reader.read_into(u, 0, len(out["id"]), out),
                                               stores[layout], units))
            finally:
                reader.close()
    out = {k: {"us": statistics.median(v), "us_all": v} for k, v in runs.items()}
    out.update(slow_pyarrow_paths(stores["flba"]))
    return out


def slow_pyarrow_paths(m: Any) -> dict[str, dict[str, Any]]:
    """``pyarrow.dataset`` fragment per row group and ``pq.read_table`` with filters: a few units."""
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    frag = next(iter(pads.dataset(m.path_of(0), format="parquet").get_fragments()))
    n = min(50, m.n_units)
    t0 = time.perf_counter()
    for u in range(n):
        frag.subset(row_group_ids=[u]).to_table(use_threads=False)
    frag_us = (time.perf_counter() - t0) / n * 1e6
    k = min(5, m.n_units)
    t0 = time.perf_counter()
    for u in range(k):  # no statistics in the file (12 KB min/max per image): every row group is read
        lo, hi = int(m.unit_start[u]), int(m.unit_start[u] + m.unit_rows[u])
        pq.read_table(m.path_of(0), filters=[("id", ">=", lo), ("id", "<", hi)], use_threads=False)
    return {"pyarrow.dataset fragment.subset(row_group_ids)": {"us": frag_us, "units": n},
            "pq.read_table(filters=id range)": {"us": (time.perf_counter() - t0) / k * 1e6, "units": k}}
