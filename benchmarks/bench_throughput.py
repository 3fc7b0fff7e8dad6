#!/usr/bin/env python
"""Throughput benchmark: how close to the limits does streambatch get, at good shuffle quality?

For the label-sorted datasets ``tab`` and ``img`` (see ``shared/BENCHMARKS.md``) stored in every
format of ``streambatch.storage.FORMATS`` (codec ``none``; for tab the default format with ``lz4``
too), with a warm page cache (every file read
once before it is measured), a 256 MiB memory budget, batch 256 and default settings otherwise,
this script measures in one run:

* ram-limit: the arrays in RAM, one permutation, gather and ``torch.from_numpy``
  (``_common.ram_limit``), once before and once after the loaders of a dataset (the machine is
  noisy: the mean of the two medians is the reference);
* naive: ``np.load(mmap_mode="r")`` behind a map-style ``Dataset`` with ``RandomSampler``
  (``_common.naive_loader``), ``num_workers`` 0 and 2, timed over a prefix of ``max_batches``
  batches (it is slow) and reported at its measured rate;
* streambatch in process for 3 epochs on one ``StreamDataset`` (epoch 1 pays the page faults of
  fresh window buffers; the median of epochs 2-3 is the steady state), and the same through
  ``DataLoader(num_workers=2)`` (torch's default: fresh workers every epoch), steady state
  again epochs 2-3 (epoch 1 of both checks every unit whole: see ``verify``).

Per configuration it reports samples/s, decoded MB/s, the ratios to ram-limit and to the naive
loader, time to first batch, peak RSS (sampled around the run) next to ``describe()``'s
``predicted_peak_bytes``, completeness of every epoch (ids missing / duplicated against
``0..N-1``) and the shuffle quality of the served order (``streambatch.quality.summarize``:
deff, KL / ideal, fraction of batches missing a class, Spearman) next to ``predicted_deff``.

``--datasets varlen`` (alone or with the others): label-sorted token documents of heavy-tailed
length (``_varlen.py``: 3 x 2**25 int32 tokens in 119,541 documents, median 128 tokens, 1% of them
over 100x that), stored as Parquet, with the light consumer only, at a budget of a quarter of its
decoded bytes.  Its in-RAM baseline for ragged rows: the documents in RAM as one ``Ragged``, one
``np.random.permutation``, each batch's documents gathered with ``Ragged.take`` and made into the
same jagged nested tensors by the loader's own ``RaggedOutput``, with ``label`` and ``_row``;
streambatch: epoch 2 of ``StreamDataset(..., return_index=True)``; the two alternated within each
repeat, the ratio paired per repeat; samples/s, MB/s of token bytes, CPU s per GB of token bytes
(``_varlen.throughput``).

Usage::

    python benchmarks/bench_throughput.py [--data DIR] [--quick | --fraction F] [--repeats N] [--datasets tab,img,varlen]

Datasets are generated (``tools/make_datasets.py``) and converted (``streambatch.convert``) only
when missing, under ``DIR`` (default ``data/`` in the repository root; ``DIR/quick/loaders/`` for
``--quick``, which uses tiny row counts and a budget scaled down with them; ``DIR/fraction-F/`` for
``--fraction F``, the datasets at a fraction ``F`` of their rows and the budget scaled alike, for a
machine too busy or too small for the full run). The helpers here
(:func:`ensure_npy`, :func:`ensure_store`, :func:`budget_for`, :func:`run_epoch`, ...) are
shared with ``bench_cold.py`` and ``bench_scaling.py``.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import gc
import itertools
import os
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NAME = "throughput"

BATCH = 256
BUDGET = 256 * 2**20
"""The memory budget of the 1 GB datasets (BENCHMARKS.md)."""
FULL_ROWS = {"tab": 2_000_000, "img": 100_000}
QUICK_ROWS = {"tab": 20_000, "img": 2_000}
NAIVE_BATCHES = 400
NAIVE_BATCHES_QUICK = 20
EPOCHS = 3
DL_WORKERS = 2
NAIVE_WORKERS = (0, 2)
MIB = 2**20

# (dataset, format, codec) in the order they are measured: every registered format uncompressed,
# and on tab the default format with lz4 too (_common.layouts).
CONFIGS: list[tuple[str, str, str]] = [
    (kind, fmt, codec) for kind in FULL_ROWS for fmt, codec in _common.layouts() if codec == "none" or kind == "tab"]

# The issue's targets for the steady state, per dataset.
TARGETS = {
    "tab": {"ram": 0.5, "naive": 3.0},
    "img": {"ram": 0.7, "naive": 1.3},
}
FIRST_BATCH_TARGET_S = 1.0
DEFF_TARGET = 2.0


# ---------------------------------------------------------------------------- datasets
def _make_dataset_fn() -> Any:
    """``tools/make_datasets.make_dataset`` (the tools folder is not a package)."""
    tools = str(ROOT / "tools")
    if tools not in sys.path:
        sys.path.insert(0, tools)
    from make_datasets import make_dataset  # type: ignore[import-not-found]

    return make_dataset


def data_root(data: str | os.PathLike[str] | None, quick: bool, fraction: float = 1.0) -> Path:
    """The folder holding the datasets: ``DIR`` (default ``data/``), ``DIR/quick/loaders`` or
    ``DIR/fraction-F``.

    Full-size datasets use the shared names (``DIR/tab-npy``, ``DIR/tab.zarr``, ...); the tiny
    ``--quick`` ones of the throughput, cold and scaling benchmarks and the reduced ones of
    ``--fraction`` get their own folders, so that datasets of other sizes are never replaced.
    """
    base = Path(data) if data is not None else ROOT / "data"
    if quick:
        return base / "quick" / "loaders"
    return base if fraction == 1.0 else base / f"fraction-{fraction:g}"


def rows_for(kind: str, quick: bool, fraction: float = 1.0) -> int:
    """Rows of dataset ``kind`` at full size, for ``--quick`` or at ``fraction`` of full size."""
    return QUICK_ROWS[kind] if quick else int(FULL_ROWS[kind] * fraction)


def ensure_npy(root: Path, kind: str, rows: int) -> Path:
    """``root/<kind>-npy`` with ``rows`` rows, generated with ``make_dataset`` if missing."""
    out = root / f"{kind}-npy"
    try:
        have = np.load(out / "id.npy", mmap_mode="r").shape[0]
        if all((out / f"{c}.npy").exists() for c in ("x", "y")) and have == rows:
            return out
    except (OSError, ValueError):
        pass
    log(f"generating {kind} ({rows:,} rows) in {out}")
    _make_dataset_fn()(kind, out, rows=rows, seed=0)
    return out


def store_path(root: Path, kind: str, fmt: str, codec: str) -> Path:
    """``root/<kind>.zarr``, ``root/<kind>-lz4.zarr``, ``root/<kind>.parquet``, ..."""
    suffix = "" if codec == "none" else f"-{codec}"
    return root / f"{kind}{suffix}.{fmt}"


def ensure_store(npy_dir: Path, dst: Path, fmt: str, codec: str, rows: int) -> Path:
    """``dst`` converted from ``npy_dir`` (label ``y``, default unit and shard sizes) if missing.

    An existing dataset is reused when its manifest has the right storage, codec, rows and
    label and was written in source order (no converter shuffle: the served ids must be the
    storage row numbers for the quality figures).
    """
    import streambatch

    try:
        m = streambatch.load_manifest(dst)
        if (m.storage == fmt and m.codec == codec and m.rows == rows and m.label == "y"
                and m.options.get("shuffle") is None):
            return dst
    except Exception:  # missing or stale: convert again
        pass
    log(f"converting {npy_dir} -> {dst} ({fmt}, codec {codec})")
    streambatch.convert(npy_dir, dst, format=fmt, label="y", codec=codec, overwrite=True)
    return dst


def budget_for(kind: str, quick: bool, fraction: float = 1.0) -> int:
    """256 MiB at full size; for ``--quick`` or ``fraction`` < 1 scaled with the rows (at least
    40 batches' bytes)."""
    if not quick and fraction == 1.0:
        return BUDGET
    frac = rows_for(kind, quick, fraction) / FULL_ROWS[kind]
    row_bytes = 16 + (128 * 4 if kind == "tab" else 3 * 64 * 64)
    return max(int(BUDGET * frac), 40 * BATCH * row_bytes)


def release_memory() -> None:
    """Collect garbage and hand the C allocator's free pages back to the OS (glibc ``malloc_trim``).

    Between measurements only, so that each run's RSS starts from what is live and not from
    what an earlier configuration left in malloc's arenas (glibc keeps freed batch buffers).
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def warm(path: Path) -> float:
    """Read every file under ``path`` once (warm page cache); return the MB/s of that read."""
    return float(_common.sequential_read(path)["mb_per_s"])


def stored_bytes(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------- measuring
_T0 = time.perf_counter()


def log(msg: str) -> None:
    """Progress line on stdout with the seconds since the script started."""
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)


def run_epoch(batches: Iterable[Mapping[str, torch.Tensor]], n_rows: int,
              unit_rows: NDArray[np.int64] | None = None, quality: bool = True, touch: bool = False) -> dict[str, Any]:
    """Consume one epoch under :class:`_common.PeakRSS`; rates, memory, completeness, quality.

    ``touch``: the light consumer (``_common.consume``), which reads one element of each tensor.

    The served ``id`` column is the row index of the label-sorted dataset, so completeness is
    checked against ``0..n_rows-1`` and the quality of the order is measured with the unit
    sizes ``unit_rows`` (when given and the epoch is complete).
    """
    with _common.peak_rss_of(batches) as mem:
        res = _common.consume(batches, touch=touch)
    seconds = max(float(res["seconds"]), 1e-12)
    ids = res.pop("ids")
    out: dict[str, Any] = {k: v for k, v in res.items() if k != "x_sum"}
    out.update(
        samples_per_s=res["samples"] / seconds,
        mb_per_s=res["bytes"] / 1e6 / seconds,
        peak_rss_bytes=mem.peak,
        rss_start_bytes=mem.start,
        peak_rss_delta_bytes=mem.peak - mem.start,
    )
    out.update(_common.check_complete(ids, n_rows))
    if quality and unit_rows is not None:
        out.update(order_quality(ids, unit_rows, out))
    return out


def order_quality(ids: NDArray[np.int64], unit_rows: NDArray[np.int64],
                  completeness: Mapping[str, int]) -> dict[str, float]:
    """``streambatch.quality.summarize`` of the served ids (NaN when the epoch is incomplete)."""
    from streambatch.quality import summarize

    keys = ("deff", "kl", "kl_ratio", "frac_missing_class", "spearman")
    if completeness["missing"] or completeness["duplicated"] or completeness["foreign"]:
        return {k: float("nan") for k in keys}
    q = summarize(ids, unit_rows, BATCH, n_labels=10)
    return {k: float(q[k]) for k in keys}


def median(values: Sequence[float]) -> float:
    """Median of finite values (NaN when there are none)."""
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(statistics.median(vals)) if vals else float("nan")


def ram_limit_median(columns: Mapping[str, NDArray[Any]], repeats: int, touch: bool = False) -> dict[str, Any]:
    """Median (by samples/s) of ``repeats`` ram-limit runs, with every run's samples/s and the
    median CPU seconds per GB and CPU / wall."""
    rec, runs = _common.median_of(lambda: _common.ram_limit(columns, BATCH, touch=touch), repeats)
    rec["runs_samples_per_s"] = [r["samples_per_s"] for r in runs]
    rec.update(_cpu_figures(runs, ""))
    return rec


def consumer_limit(columns: Mapping[str, NDArray[Any]], n_batches: int = 200,
                   distinct: int = 16, touch: bool = False) -> dict[str, Any]:
    """The consume loop alone: ``distinct`` batches gathered beforehand, served in a cycle.

    Not a loader: it tells how much of every loader's time (ram-limit's too) is the shared
    consumption loop itself (the float64 sum of ``x`` dominates for ``uint8`` images).
    """
    n = len(columns["id"])
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(distinct):
        idx = np.sort(rng.choice(n, size=min(BATCH, n), replace=False))
        batches.append({k: torch.from_numpy(v[idx]) for k, v in columns.items()})
    res = _common.consume(itertools.islice(itertools.cycle(batches), n_batches), touch=touch)
    seconds = max(float(res["seconds"]), 1e-12)
    return {"samples_per_s": res["samples"] / seconds, "mb_per_s": res["bytes"] / 1e6 / seconds,
            "batches": res["batches"]}


def measure_ram_limit(npy_dir: Path, repeats: int, consumer: bool = False, touch: bool = False) -> dict[str, Any]:
    """Load the columns into RAM (page cache warmed first), measure, free them again.

    With ``consumer`` the record also carries ``consumer`` (median of :func:`consumer_limit`);
    ``touch``: the light consumer.
    """
    warm(npy_dir)
    columns = _common.load_columns(npy_dir)
    try:
        rec = ram_limit_median(columns, repeats, touch)
        if consumer:
            rec["consumer"], _ = _common.median_of(lambda: consumer_limit(columns, touch=touch), repeats)
        return rec
    finally:
        del columns
        release_memory()


def ratio(a: float, b: float) -> float:
    """``a / b`` (NaN when ``b`` is not a positive number)."""
    return a / b if b and np.isfinite(b) and b > 0 else float("nan")


def base_record(args: argparse.Namespace, run_id: str, script: str) -> dict[str, Any]:
    """Fields every record of one invocation carries."""
    return {
        "run_id": run_id,
        "command": shlex.join(["python", f"benchmarks/{script}", *sys.argv[1:]]),
        "quick": bool(args.quick),
        "fraction": getattr(args, "fraction", 1.0),
        "repeats": args.repeats,
    }


def new_run_id() -> str:
    """One id per script invocation: a UTC timestamp and the process id."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}"


def store_config(store: Path, ds: Any, num_workers: int = 0) -> dict[str, Any]:
    """The configuration of one StreamDataset over ``store`` (from its manifest and describe())."""
    m = ds.manifest
    d = ds.describe(num_workers=num_workers)
    return {
        "store": str(store),
        "format": m.storage,
        "codec": m.codec,
        "rows": m.rows,
        "row_bytes": m.row_nbytes,
        "units": m.n_units,
        "unit_rows": float(np.mean(m.unit_rows)),
        "unit_bytes": float(np.mean(m.unit_rows)) * m.row_nbytes,
        "shard_bytes": m.options.get("shard_bytes"),
        "stored_bytes": stored_bytes(store),
        "decoded_bytes": m.rows * m.row_nbytes,
        "batch_size": ds.batch_size,
        "budget_bytes": ds.memory_budget,
        "threads": d["threads"],
        "window_rows": d["window_rows"],
        "window_units": d["window_units"],
        "piece_rows": d.get("piece_rows"),
        "predicted_peak_bytes": d["predicted_peak_bytes"],
        "predicted_deff": d["predicted_deff"],
        "predicted_kl": d["predicted_kl"],
        "label_icc": d["label_icc"],
    }


# ---------------------------------------------------------------------------- one configuration
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "noverify": {"verify": False},
    "whole": {"piece_rows": 0},
    "whole-noverify": {"piece_rows": 0, "verify": False},
}
"""StreamDataset settings per streambatch variant (``--variants``): default (shuffle pieces sized
at load time, each unit's checksum checked once an epoch), verify off, whole units
(``piece_rows=0``, the loader before pieces) and both."""


def _streambatch_repeat(store: Path, budget: int, settings: Mapping[str, Any], touch: bool) -> dict[str, Any]:
    """One repeat of one variant: ``EPOCHS`` in-process epochs of one StreamDataset, then
    ``EPOCHS`` epochs of a fresh one through DataLoader(num_workers=2)."""
    from streambatch import StreamDataset

    warm(store)
    ds = StreamDataset(store, batch_size=BATCH, shuffle=True, seed=0, memory_budget=budget, **settings)
    out: dict[str, Any] = {"config": store_config(store, ds)}
    n, units = ds.manifest.rows, ds.manifest.unit_rows
    runs, peak_accounted = [], 0
    for e in range(EPOCHS):
        ds.set_epoch(e)
        runs.append(run_epoch(ds, n, units, touch=touch))
        peak_accounted = max(peak_accounted, ds.last_peak_accounted_bytes)
    ds.release_buffers()
    del ds
    release_memory()

    ds = StreamDataset(store, batch_size=BATCH, shuffle=True, seed=0, memory_budget=budget, **settings)
    out["dl_predicted"] = ds.describe(num_workers=DL_WORKERS)["predicted_peak_bytes"]
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=DL_WORKERS)
    dl = []
    for e in range(EPOCHS):
        ds.set_epoch(e)
        dl.append(run_epoch(loader, n, units, touch=touch))
    out.update(epoch1=runs[0], steady=runs[1:], peak_accounted=peak_accounted, dl_epoch1=dl[0], dl=dl[1:])
    del loader, ds
    release_memory()
    return out


def measure_streambatch(store: Path, budget: int, repeats: int, variants: Sequence[str] = ("default",),
                        touch: bool = False) -> list[dict[str, Any]]:
    """In-process epochs (1 and steady 2-3) and a DataLoader(num_workers=2) epoch, ``repeats``
    times, for each of ``variants`` (names in :data:`VARIANTS`, alternated within every repeat
    so that a noisy machine slows them alike); one summary per variant."""
    reps: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for _ in range(repeats):
        for v in variants:
            reps[v].append(_streambatch_repeat(store, budget, VARIANTS[v], touch))
    return [{**summarize_streambatch(reps[v]), "variant": v} for v in variants]


def _cpu_figures(runs: list[dict[str, Any]], prefix: str) -> dict[str, float]:
    """Median CPU seconds per GB served and CPU / wall of epochs ``runs``."""
    return {f"{prefix}cpu_s_per_gb": median([r["cpu_seconds"] / (r["bytes"] / 1e9) for r in runs]),
            f"{prefix}cpu_per_wall": median([r["cpu_seconds"] / r["wall_seconds"] for r in runs])}


def summarize_streambatch(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """The record of one variant from its repeats (:func:`_streambatch_repeat`)."""
    epoch1 = [r["epoch1"] for r in reps]
    steady = [s for r in reps for s in r["steady"]]
    dl_runs = [s for r in reps for s in r["dl"]]
    dl_epoch1 = [r["dl_epoch1"] for r in reps]

    def med(runs: list[dict[str, Any]], key: str) -> float:
        return median([r[key] for r in runs])

    all_runs = epoch1 + steady + dl_epoch1 + dl_runs
    out = dict(reps[0]["config"])
    out.update(
        epochs=EPOCHS,
        epoch1_samples_per_s=med(epoch1, "samples_per_s"),
        epoch1_mb_per_s=med(epoch1, "mb_per_s"),
        epoch1_seconds=med(epoch1, "seconds"),
        first_batch_s=med(epoch1, "first_batch_s"),
        steady_samples_per_s=median([med(r["steady"], "samples_per_s") for r in reps]),
        steady_mb_per_s=med(steady, "mb_per_s"),
        steady_seconds=med(steady, "seconds"),
        steady_first_batch_s=med(steady, "first_batch_s"),
        steady_runs_samples_per_s=[r["samples_per_s"] for r in steady],
        **_cpu_figures(steady, "steady_"),
        peak_rss_bytes=max(r["peak_rss_bytes"] for r in epoch1 + steady),
        peak_rss_delta_bytes=max(r["peak_rss_delta_bytes"] for r in epoch1 + steady),
        rss_start_bytes=min(r["rss_start_bytes"] for r in epoch1 + steady),
        peak_accounted_bytes=max(r["peak_accounted"] for r in reps),
        dl_workers=DL_WORKERS,
        dl_samples_per_s=median([med(r["dl"], "samples_per_s") for r in reps]),
        dl_epoch1_samples_per_s=med(dl_epoch1, "samples_per_s"),
        dl_mb_per_s=med(dl_runs, "mb_per_s"),
        dl_first_batch_s=med(dl_runs, "first_batch_s"),
        **_cpu_figures(dl_runs, "dl_"),
        dl_peak_rss_bytes=max(r["peak_rss_bytes"] for r in dl_epoch1 + dl_runs),
        dl_peak_rss_delta_bytes=max(r["peak_rss_delta_bytes"] for r in dl_epoch1 + dl_runs),
        dl_predicted_peak_bytes=reps[0]["dl_predicted"],
        missing=sum(r["missing"] for r in all_runs),
        duplicated=sum(r["duplicated"] for r in all_runs),
        foreign=sum(r["foreign"] for r in all_runs),
        epochs_checked=len(all_runs),
        deff=med(epoch1 + steady, "deff"),
        kl=med(epoch1 + steady, "kl"),
        kl_ratio=med(epoch1 + steady, "kl_ratio"),
        frac_missing_class=med(epoch1 + steady, "frac_missing_class"),
        spearman=med(epoch1 + steady, "spearman"),
        deff_max=max((r["deff"] for r in epoch1 + steady if np.isfinite(r["deff"])), default=float("nan")),
        dl_deff=med(dl_epoch1 + dl_runs, "deff"),
        dl_kl_ratio=med(dl_epoch1 + dl_runs, "kl_ratio"),
    )
    return out


def failure(exc: BaseException, store: Path, fmt: str, codec: str, budget: int) -> dict[str, Any]:
    """The record of a configuration that raised: logged with its traceback, kept in the report."""
    log(f"  FAILED {fmt} {codec}: {type(exc).__name__}: {exc}")
    traceback.print_exc()
    return {"store": str(store), "format": fmt, "codec": codec, "budget_bytes": budget,
            "error": f"{type(exc).__name__}: {exc}"}


def measure_naive(npy_dir: Path, repeats: int, max_batches: int, touch: bool = False) -> dict[int, dict[str, Any]]:
    """Median naive-loader run for each ``num_workers`` in :data:`NAIVE_WORKERS` (``touch``: the
    light consumer), with the median CPU seconds per GB and CPU / wall."""
    out = {}
    for nw in NAIVE_WORKERS:
        warm(npy_dir)
        rec, runs = _common.median_of(
            lambda nw=nw: _common.naive_loader(npy_dir, BATCH, num_workers=nw, max_batches=max_batches, touch=touch),
            repeats,
        )
        rec["runs_samples_per_s"] = [r["samples_per_s"] for r in runs]
        rec.update(_cpu_figures(runs, ""))
        out[nw] = rec
        release_memory()
    return out


# ---------------------------------------------------------------------------- main
def make_parser(doc: str) -> argparse.ArgumentParser:
    """The common CLI: ``--data``, ``--quick``, ``--repeats``."""
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument("--data", default=None, help="dataset folder (default: data/ in the repo root)")
    p.add_argument("--quick", action="store_true", help="tiny row counts: a smoke run under a minute")
    p.add_argument("--repeats", type=int, default=3, help="repeats per figure (medians); default 3")
    return p


def add_consumer(p: argparse.ArgumentParser, default: str, more: str = "") -> None:
    """``--consumer sum|touch``: how each batch is consumed (:func:`_common.consume`)."""
    p.add_argument("--consumer", choices=("sum", "touch"), default=default,
                   help=f"sum: x summed in float64 on torch's threads; touch: one element of every tensor read, "
                        f"so that the loader is what is measured (with CPU seconds per GB){more}; "
                        f"default {default}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the throughput benchmark, append its records and regenerate RESULTS.md."""
    p = make_parser(__doc__ or "")
    p.add_argument("--datasets", default="tab,img", help="comma-separated subset of tab,img,varlen")
    p.add_argument("--fraction", type=float, default=1.0,
                   help="rows (and budget) as a fraction of the full datasets, e.g. 0.25 on a busy machine")
    add_consumer(p, "sum", "; with touch, in a section of its own")
    p.add_argument("--variants", default=None,
                   help=f"comma-separated streambatch variants of {list(VARIANTS)}; default: all with "
                        "--consumer touch, else default")
    p.add_argument("--formats", default=None, help="comma-separated subset of the formats (default: all)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if not 0 < args.fraction <= 1 or (args.quick and args.fraction != 1.0):
        p.error("--fraction must lie in (0, 1], and not with --quick")
    kinds = [k.strip() for k in args.datasets.split(",") if k.strip()]
    bad = [k for k in kinds if k not in FULL_ROWS and k != "varlen"]
    if bad:
        p.error(f"unknown dataset(s) {bad}; choose from tab, img, varlen")
    touch = args.consumer == "touch"
    variants = [v.strip() for v in (args.variants or ",".join(VARIANTS if touch else ["default"])).split(",")]
    formats = None if args.formats is None else {f.strip() for f in args.formats.split(",")}
    if set(variants) - set(VARIANTS) or (formats and formats - {f for _, f, _ in CONFIGS}):
        p.error(f"--variants must name some of {list(VARIANTS)} and --formats some of the registered formats")
    run_id = new_run_id()
    common = base_record(args, run_id, "bench_throughput.py")
    if touch:  # its own records (report.load_records groups by kind): a section beside the summing one
        common.update(kind="touch", consumer="touch")
    root = data_root(args.data, args.quick, args.fraction)
    naive_batches = NAIVE_BATCHES_QUICK if args.quick else NAIVE_BATCHES
    torch.manual_seed(0)

    for kind in kinds:
        if kind == "varlen":
            measure_varlen(args, common)
            continue
        rows = rows_for(kind, args.quick, args.fraction)
        npy = ensure_npy(root, kind, rows)
        configs = [(fmt, codec) for k, fmt, codec in CONFIGS if k == kind and (not formats or fmt in formats)]
        budget = budget_for(kind, args.quick, args.fraction)
        load_before = os.getloadavg()[0]

        log(f"{kind}: ram-limit (before)")
        ram_before = measure_ram_limit(npy, args.repeats, consumer=True, touch=touch)
        log(f"{kind}: naive loader, num_workers {NAIVE_WORKERS}")
        naive = measure_naive(npy, args.repeats, naive_batches, touch)
        results = []
        for fmt, codec in configs:
            log(f"{kind}: streambatch {fmt} {codec}")
            store = store_path(root, kind, fmt, codec)
            try:
                ensure_store(npy, store, fmt, codec, rows)
                results += measure_streambatch(store, budget, args.repeats, variants, touch)
            except Exception as exc:  # one broken configuration must not cost the whole run
                results.append(failure(exc, store, fmt, codec, budget))
        log(f"{kind}: ram-limit (after)")
        ram_after = measure_ram_limit(npy, args.repeats, touch=touch)
        ram = (ram_before["samples_per_s"] + ram_after["samples_per_s"]) / 2
        ram_mb = (ram_before["mb_per_s"] + ram_after["mb_per_s"]) / 2
        naive0 = naive[0]["samples_per_s"]
        naive_best_nw = max(naive, key=lambda nw: naive[nw]["samples_per_s"])
        naive_best = naive[naive_best_nw]["samples_per_s"]

        baselines = {
            "ram_limit_samples_per_s": ram,
            "ram_limit_mb_per_s": ram_mb,
            "ram_limit_before_samples_per_s": ram_before["samples_per_s"],
            "ram_limit_after_samples_per_s": ram_after["samples_per_s"],
            "ram_limit_first_batch_s": (ram_before["first_batch_s"] + ram_after["first_batch_s"]) / 2,
            "consumer_samples_per_s": ram_before["consumer"]["samples_per_s"],
            "consumer_mb_per_s": ram_before["consumer"]["mb_per_s"],
            "naive_max_batches": naive_batches,
            "naive_best_workers": naive_best_nw,
            "naive_best_samples_per_s": naive_best,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg()[0],
            "ram_limit_cpu_s_per_gb": (ram_before["cpu_s_per_gb"] + ram_after["cpu_s_per_gb"]) / 2,
            "ram_limit_cpu_per_wall": (ram_before["cpu_per_wall"] + ram_after["cpu_per_wall"]) / 2,
        }
        for nw, rec in naive.items():
            baselines[f"naive_w{nw}_samples_per_s"] = rec["samples_per_s"]
            baselines[f"naive_w{nw}_mb_per_s"] = rec["mb_per_s"]
            baselines[f"naive_w{nw}_first_batch_s"] = rec["first_batch_s"]
            baselines[f"naive_w{nw}_samples"] = rec["samples"]
            baselines[f"naive_w{nw}_cpu_s_per_gb"] = rec["cpu_s_per_gb"]
            baselines[f"naive_w{nw}_cpu_per_wall"] = rec["cpu_per_wall"]
        _common.write_record(NAME, {**common, "role": "baseline", "dataset": kind, "rows": rows,
                                    "cache": "warm", **baselines})
        for res in results:
            if "error" in res:
                _common.write_record(NAME, {**common, "role": "streambatch", "dataset": kind, "cache": "warm",
                                            "rows": rows, "batch_size": BATCH, **res, **baselines})
                continue
            rec = {
                **common,
                "role": "streambatch",
                "dataset": kind,
                "cache": "warm",
                **res,
                **baselines,
                "steady_vs_ram": ratio(res["steady_samples_per_s"], ram),
                "epoch1_vs_ram": ratio(res["epoch1_samples_per_s"], ram),
                "steady_vs_naive0": ratio(res["steady_samples_per_s"], naive0),
                "steady_vs_naive_best": ratio(res["steady_samples_per_s"], naive_best),
                "dl_vs_ram": ratio(res["dl_samples_per_s"], ram),
                "dl_vs_naive0": ratio(res["dl_samples_per_s"], naive0),
                "dl_vs_naive_best": ratio(res["dl_samples_per_s"], naive_best),
            }
            rec["targets"] = check_targets(rec)
            _common.write_record(NAME, rec)
            log(f"  {res['format']:8s} {res['codec']:5s} {res.get('variant', '')} steady {res['steady_samples_per_s']:,.0f}/s "
                f"({rec['steady_vs_ram']:.2f}x ram, {rec['steady_vs_naive_best']:.1f}x naive), DataLoader "
                f"{res['dl_samples_per_s']:,.0f}/s, first batch {res['first_batch_s']:.3f}s, deff {res['deff']:.2f}")

    import report

    report.main()
    return 0


def measure_varlen(args: argparse.Namespace, common: Mapping[str, Any]) -> None:
    """The ``varlen`` dataset (``_varlen.py``: label-sorted token documents, heavy-tailed lengths)
    with the touch consumer, at a budget of a quarter of its decoded bytes (as 256 MiB is of the
    1 GB datasets; at least 8 MiB): the loader serving jagged nested tensors against the in-RAM
    baseline making the same tensors, alternated within every repeat (``_varlen.throughput``); one
    record per path (``kind`` varlen)."""
    import _varlen

    src, dst = _varlen.ensure(data_root(args.data, args.quick), args.quick)  # --fraction: not scaled
    facts = _varlen.dataset_facts(dst)
    budget = max(facts["decoded_bytes"] // 4, 8 * MIB)
    load_before = os.getloadavg()[0]
    log(f"varlen: {facts['rows']:,} documents, {facts['token_bytes'] / 1e6:.0f} MB of tokens, budget "
        f"{budget / MIB:.0f} MiB")
    results = _varlen.throughput(src, dst, budget, args.repeats)
    for res in results:
        _common.write_record(NAME, {**common, "consumer": "touch", **facts, **res, "kind": "varlen",
                                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()[0]})


# ---------------------------------------------------------------------------- report
def check_targets(rec: Mapping[str, Any]) -> dict[str, bool]:
    """The issue's targets for one configuration record (steady state, epoch-1 first batch)."""
    t = TARGETS.get(rec["dataset"], TARGETS["tab"])
    clean = rec["missing"] == 0 and rec["duplicated"] == 0 and rec.get("foreign", 0) == 0
    return {
        "ram": bool(rec["steady_vs_ram"] >= t["ram"]),
        "naive": bool(rec["steady_vs_naive_best"] >= t["naive"]),
        "first_batch": bool(rec["first_batch_s"] < FIRST_BATCH_TARGET_S),
        "deff": bool(rec["deff"] <= DEFF_TARGET),
        "complete": bool(clean),
    }


def _mib(v: Any) -> str:
    return "" if v is None else f"{float(v) / MIB:.0f}"


def _num(v: Any, fmt: str = ".3g") -> str:
    if v is None:
        return ""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "nan" if not np.isfinite(f) else format(f, fmt)


def machine_line(rec: Mapping[str, Any]) -> str:
    """One line naming the machine and versions of a record."""
    m = rec.get("machine", {})
    return (f"Machine: {m.get('cpu_count')} CPUs ({m.get('cpus_usable')} usable), "
            f"{_num(m.get('memory_total', 0) / 2**30, '.0f')} GiB RAM, {m.get('platform')}; "
            f"Python {m.get('python')}, numpy {m.get('numpy')}, pyarrow {m.get('pyarrow')}, "
            f"zarr {m.get('zarr')}, torch {m.get('torch')}, streambatch {m.get('streambatch')}.")


def render(records: list[dict[str, Any]]) -> str:
    """Markdown section for the records of the latest run of this benchmark, and the section of
    the latest ``--consumer touch`` run (:func:`render_touch`) after it."""
    import _varlen

    touch = [r for r in records if r.get("kind") == "touch"]
    varlen = [r for r in records if r.get("kind") == "varlen"]
    summing = [r for r in records if r.get("kind") not in ("touch", "varlen")]
    tail = "\n" + _varlen.render_throughput(varlen) if varlen else ""
    if not touch:
        return render_summing(summing) + tail
    return (render_summing(summing) + "\n" if summing else "") + render_touch(touch) + tail


def render_summing(records: list[dict[str, Any]]) -> str:
    """Markdown section for the records of one run with the summing consumer."""
    everything = [r for r in records if r.get("role") == "streambatch"]
    rows = [r for r in everything if "error" not in r]
    failed = [r for r in everything if "error" in r]
    if not everything:
        return "## Throughput\n\nNo streambatch records in the latest run.\n"
    if not rows:
        return "## Throughput\n\nEvery configuration failed:\n\n" + error_lines(failed) + "\n"
    first = rows[0]
    quick = " (**--quick smoke run: tiny datasets, not a measurement**)" if first.get("quick") else ""
    if first.get("fraction", 1.0) != 1.0:
        quick = (f" (**reduced run: {first['fraction']:g} of the full rows, the budget scaled alike**: a window"
                 " holds the same share of the dataset but fewer units, so deff is higher than at full size)")
    budgets = " / ".join(dict.fromkeys(f"{r['dataset']} {_mib(r['budget_bytes'])}" for r in rows))
    lines = [
        "## Throughput: warm cache, 256 MiB budget" if first.get("fraction", 1.0) == 1.0
        else "## Throughput: warm cache, reduced datasets",
        "",
        "How close does streambatch get to the in-RAM limit and how much faster than a naive "
        "memory-mapped loader is it, while serving a well-shuffled order of a label-sorted dataset "
        f"(warm page cache, batch {first['batch_size']}, budget {budgets} MiB, "
        f"medians of {first.get('repeats')} repeats){quick}?",
        "",
    ]
    speed = []
    for r in rows:
        speed.append({
            "dataset": r["dataset"], "format": r["format"], "codec": r["codec"],
            "rows": f"{r['rows']:,}",
            "stored / decoded MB": f"{r['stored_bytes'] / 1e6:.0f} / {r['decoded_bytes'] / 1e6:.0f}",
            "steady samples/s": _num(r["steady_samples_per_s"], ",.0f"),
            "steady MB/s": _num(r["steady_mb_per_s"], ".0f"),
            "× ram-limit": _num(r["steady_vs_ram"], ".2f"),
            "× naive w0": _num(r["steady_vs_naive0"], ".2f"),
            "× naive best": _num(r["steady_vs_naive_best"], ".2f"),
            "epoch 1 × ram": _num(r["epoch1_vs_ram"], ".2f"),
            f"DataLoader w{r['dl_workers']} × ram": _num(r["dl_vs_ram"], ".2f"),
            "first batch s": _num(r["first_batch_s"], ".3f"),
            f"DL w{r['dl_workers']} first batch s": _num(r["dl_first_batch_s"], ".3f"),
        })
    lines.append(_common.format_table(speed, list(speed[0])))
    lines += ["", "Memory, completeness and the quality of the served order (median over the in-process "
              "epochs; DataLoader deff separately):", ""]
    mem = []
    for r in rows:
        mem.append({
            "dataset": r["dataset"], "format": r["format"], "codec": r["codec"],
            "units × rows": f"{r['units']} × {r['unit_rows']:.0f}",
            "window units": _num(r["window_units"], ".0f"),
            "threads": r["threads"],
            "peak RSS MiB (Δ)": f"{_mib(r['peak_rss_bytes'])} ({_mib(r['peak_rss_delta_bytes'])})",
            "predicted MiB": _mib(r["predicted_peak_bytes"]),
            f"DL w{r['dl_workers']} RSS MiB (Δ) / predicted": (
                f"{_mib(r['dl_peak_rss_bytes'])} ({_mib(r['dl_peak_rss_delta_bytes'])}) / "
                f"{_mib(r['dl_predicted_peak_bytes'])}"),
            "missing / dup": f"{r['missing']} / {r['duplicated']} ({r['epochs_checked']} epochs)",
            "deff (pred.)": f"{_num(r['deff'], '.2f')} ({_num(r['predicted_deff'], '.2f')})",
            "DL deff": _num(r["dl_deff"], ".2f"),
            "KL / ideal": _num(r["kl_ratio"], ".2f"),
            "batches missing a class": _num(r["frac_missing_class"], ".3f"),
            "Spearman": _num(r["spearman"], ".4f"),
        })
    lines.append(_common.format_table(mem, list(mem[0])))
    base_rows = {}
    for r in rows:
        base_rows.setdefault(r["dataset"], {
            "dataset": r["dataset"],
            "ram-limit samples/s (before / after)": (
                f"{_num(r['ram_limit_samples_per_s'], ',.0f')} ({_num(r['ram_limit_before_samples_per_s'], ',.0f')}"
                f" / {_num(r['ram_limit_after_samples_per_s'], ',.0f')})"),
            "ram-limit MB/s": _num(r["ram_limit_mb_per_s"], ".0f"),
            "consume loop alone samples/s": _num(r.get("consumer_samples_per_s"), ",.0f"),
            "naive w0 samples/s": _num(r.get("naive_w0_samples_per_s"), ",.0f"),
            "naive w2 samples/s": _num(r.get("naive_w2_samples_per_s"), ",.0f"),
            "naive batches timed": r.get("naive_max_batches"),
        })
    lines += ["", "Baselines measured in the same run (ram-limit: mean of the medians before and after "
              "the loaders of each dataset; naive: a prefix of the epoch at its measured rate; consume loop "
              "alone: the shared consumption loop over batches gathered beforehand, the ceiling of every "
              "row, ram-limit included):", ""]
    lines.append(_common.format_table(list(base_rows.values()), list(next(iter(base_rows.values())))))
    lines += [
        "",
        "Steady = median of epochs 2-3 of one StreamDataset in process (epoch 1 also pays page faults "
        "on fresh window buffers); first batch = epoch 1 of a fresh dataset. Peak RSS is the whole "
        "process tree (torch included; Δ = above the RSS at the start of the epoch); for DataLoader "
        "workers RSS counts pages shared after fork once per process, an upper bound.",
        "",
    ]
    if failed:
        lines += ["**Configurations that failed** (no figures):", "", error_lines(failed), ""]
    lines += [
        f"Command: `{first['command']}`",
        "",
        machine_line(first),
        "",
        target_line(rows, failed),
    ]
    return "\n".join(lines) + "\n"


def error_lines(failed: Sequence[Mapping[str, Any]]) -> str:
    """A bullet per failed configuration with its error message."""
    return "\n".join(f"- {r.get('dataset')} {r['format']}/{r['codec']}: `{r['error']}`" for r in failed)


def target_line(rows: Sequence[Mapping[str, Any]], failed: Sequence[Mapping[str, Any]] = ()) -> str:
    """The sentence stating which targets hold or fail."""
    goals = ("Targets (steady state in process): tab ≥ 0.5× ram-limit and ≥ 3× naive (best of "
             "num_workers 0 and 2), img ≥ 0.7× ram-limit and ≥ 1.3× naive, first batch < 1 s, "
             "deff ≤ 2, no id missing or duplicated.")
    fails = [f"{r.get('dataset')} {r['format']}/{r['codec']}: raised an error" for r in failed]
    for r in rows:
        t = r.get("targets") or check_targets(r)
        missed = [k for k, ok in t.items() if not ok]
        if missed:
            fails.append(f"{r['dataset']} {r['format']}/{r['codec']}: " + ", ".join(missed))
    verdict = ("**All targets hold.**" if not fails
               else "**Fail:** " + "; ".join(fails) + ". Everything else holds.")
    return goals + " " + verdict

def _touch_row(name: str, sps: float, cpu: float, cpu_wall: float, base: Mapping[str, Any]) -> dict[str, str]:
    """One row of the touch section: rates, ratios to the baselines, CPU."""
    return {
        "loader": name,
        "samples/s": _num(sps, ",.0f"),
        "× in-RAM gather": _num(ratio(sps, base["ram_limit_samples_per_s"]), ".2f"),
        "× naive w0": _num(ratio(sps, base["naive_w0_samples_per_s"]), ".2f"),
        "× naive w2": _num(ratio(sps, base.get("naive_w2_samples_per_s", float("nan"))), ".2f"),
        "CPU s/GB": _num(cpu, ".2f"),
        "CPU/GB × gather's": _num(ratio(cpu, base["ram_limit_cpu_s_per_gb"]), ".2f"),
        "CPU / wall": _num(cpu_wall, ".2f"),
    }


def touch_rows(recs: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The baselines and every streambatch variant (in process, and through DataLoader workers)
    of one dataset and run."""
    b = recs[0]
    out = [_touch_row("in-RAM gather", b["ram_limit_samples_per_s"], b["ram_limit_cpu_s_per_gb"],
                      b["ram_limit_cpu_per_wall"], b)]
    for nw in NAIVE_WORKERS:
        if f"naive_w{nw}_samples_per_s" in b:
            out.append(_touch_row(f"naive memmap DataLoader w{nw}", b[f"naive_w{nw}_samples_per_s"],
                                  b[f"naive_w{nw}_cpu_s_per_gb"], b[f"naive_w{nw}_cpu_per_wall"], b))
    for r in recs:
        what = f"streambatch {r['format']}/{r['codec']} {r.get('variant', 'default')}"
        if "error" in r:
            out.append({"loader": what, "samples/s": f"error: {r['error']}"})
            continue
        out.append(_touch_row(what, r["steady_samples_per_s"], r["steady_cpu_s_per_gb"], r["steady_cpu_per_wall"], b))
        out.append(_touch_row(f"{what}, DataLoader w{r['dl_workers']}", r["dl_samples_per_s"], r["dl_cpu_s_per_gb"],
                              r["dl_cpu_per_wall"], b))
    return out


def render_touch(records: list[dict[str, Any]]) -> str:
    """The section of a ``--consumer touch`` run: the loader alone against the in-RAM gather and
    the naive loader, with the CPU each spends per GB served."""
    rows = [r for r in records if r.get("role") == "streambatch"]
    if not rows:
        return "## Throughput, loader alone (touch consumer)\n\nNo streambatch records in the latest run.\n"
    first = rows[0]
    lines = [
        "## Throughput, loader alone (touch consumer)",
        "",
        "The consumer reads one element of every tensor of each batch and keeps the ids, so that the loader is "
        f"what is measured (warm page cache, batch {first.get('batch_size', BATCH)}, medians of "
        f"{first.get('repeats')} repeats, streambatch variants alternated within each repeat). CPU s/GB: process "
        "user+sys CPU (DataLoader workers included, counted once they are shut down) per GB of batches served; "
        "CPU / wall over the same span. streambatch rows are the steady state (epochs 2-3) in process, and "
        "through `DataLoader(num_workers=2)` with fresh workers every epoch (torch's default); the in-RAM gather "
        "is the mean of the medians before and after the loaders; naive: a prefix of the epoch.",
        "",
    ]
    for kind in dict.fromkeys(r["dataset"] for r in rows):
        recs = [r for r in rows if r["dataset"] == kind]
        ok = [r for r in recs if "error" not in r]
        b = recs[0]
        desc = (f"{kind}: {b['rows']:,} rows, budget {_mib(b['budget_bytes'])} MiB" +
                (f", window {ok[0]['window_rows']:,} rows, pieces of {_num(ok[0].get('piece_rows'), '.0f')} rows "
                 f"(units {ok[0]['unit_rows']:.0f} rows)" if ok else "") +
                f"; load average {_num(b.get('loadavg_before'), '.1f')} before, "
                f"{_num(b.get('loadavg_after'), '.1f')} after (2 cores: above 2 the machine was loaded)")
        table = touch_rows(recs)
        lines += [desc + ":", "", _common.format_table(table, list(table[0])), ""]
        quality = [{"variant": r.get("variant", "default"), "piece rows": _num(r.get("piece_rows"), ".0f"),
                    "deff (pred.)": f"{_num(r['deff'], '.2f')} ({_num(r['predicted_deff'], '.2f')})",
                    "missing / dup": f"{r['missing']} / {r['duplicated']} ({r['epochs_checked']} epochs)",
                    "peak RSS MiB (Δ)": f"{_mib(r['peak_rss_bytes'])} ({_mib(r['peak_rss_delta_bytes'])})"}
                   for r in ok]
        if quality:
            lines += [_common.format_table(quality, list(quality[0])), ""]
    lines += [f"Command: `{first['command']}`", "", machine_line(first)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
