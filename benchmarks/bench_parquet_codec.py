#!/usr/bin/env python
"""Parquet codec benchmark: does the hand-written Parquet page codec earn its ~650 lines?

streambatch writes uncompressed Parquet with its own page writer (``storage/_parquet_write.py``:
``FixedSizeList`` tensors whose pages hold the arrays' bytes) and reads whole units straight into
the loader's window at offsets the manifest records (``parquet_store.Reader._read_direct``), with
its own Thrift and page decoding for the rest (``_parquet_pages.py``).  The alternative is pyarrow
alone, with tensors stored another way: ``_pq_alt.py`` writes them as ``FixedSizeBinary`` (shape
and dtype in the field metadata; PLAIN pages store the values back to back).  In one run, for the
label-sorted ``tab`` and ``img`` datasets at reduced row counts (``ROWS``), this script measures:

* convert: ``streambatch.convert`` npy -> Parquet in this process with each writer (own; pyarrow
  FixedSizeBinary; pyarrow FixedSizeList as pyarrow writes it today for codecs other than none),
  warm input, an ``os.sync()`` before each (untimed);
* ceiling (``_pq_ceiling.py``): one thread reading units into place, microseconds per unit:
  ``preadv`` of the values alone, the own reader, and pyarrow's ``ParquetFile.read_row_group``
  with each option (memory map, ``pre_buffer``, ``buffer_size``), with and without the unit
  checksum, plus ``pyarrow.dataset`` fragments and ``pq.read_table`` with filters on a few units;
* epochs: ``StreamDataset`` (batch 256, budget 1/4 of the data, default threads, verify on as by
  default, warm cache) with each reader plugged in for ``open_reader``, consumed by the *light*
  consumer (reads one element of ``x``, keeps the ids): samples/s of epoch 1 and of the steady
  state (median of epochs 2-3), the process's user+sys CPU seconds per decoded GB
  (``resource.getrusage``) in the steady state, and completeness.

Every part runs its variants in a rotated order within each of ``--repeats`` repeats (no variant
always follows the same one) and reports medians and, against the own codec, the median of the
per-repeat ratios (paired: this machine's load moves between repeats more than between
neighbours).  Every reader is first checked against the source rows.

The decision (issue 15): keep the own codec only if it beats the best pyarrow-based reader by
1.3x or more on an epoch (tab or img), as the median of the paired ratios.

Usage::

    python benchmarks/bench_parquet_codec.py [--data DIR] [--quick] [--repeats N] [--datasets tab,img] [--fsl-epochs]

Datasets are made under ``DIR/parquet_codec/`` (default ``data/``; ``--quick``: tiny ones under
``DIR/quick/parquet_codec/``).
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import _pq_alt as alt  # noqa: E402
from _pq_ceiling import CEILING_UNITS, FLOOR, ceiling_variants, check_reader, measure_ceiling, rotated  # noqa: E402
from bench_throughput import (base_record, ensure_npy, log, machine_line, make_parser,  # noqa: E402
                              new_run_id, release_memory, stored_bytes, warm)

import streambatch  # noqa: E402

NAME = "parquet_codec"
ROWS = {"tab": 400_000, "img": 20_000}
QUICK_ROWS = {"tab": 20_000, "img": 2_000}
BATCH = 256
EPOCHS = 3
"""Per dataset object: epoch 1 pays page faults on fresh window buffers; steady = median of the rest."""
QUICK_BUDGET = 64 * 2**20
"""--quick only: a quarter of 2,000 img rows cannot hold the loader's batches."""
KEEP_RATIO = 1.3

# writers: layout name -> (what it is, Writer class for streambatch.convert or None for today's)
WRITERS: dict[str, tuple[str, Any]] = {
    "own": ("own page writer (FixedSizeList, identity dictionary for 1-byte values)", None),
    "flba": ("pyarrow, FixedSizeBinary, PLAIN, one page per chunk", alt.FlbaWriter),
    "fsl": ("pyarrow, FixedSizeList (dictionary for 1-byte values)", alt.FslWriter),
}


# readers for the epochs: name -> (layout it reads, factory(manifest, verify, remote) or None for today's)
def epoch_readers(arrow_options: str, fsl: bool) -> dict[str, tuple[str, Any]]:
    """The epoch variants; ``arrow_options`` is the fastest pyarrow option set of the ceiling;
    ``fsl`` adds pyarrow on its FixedSizeList files (13x slower than own on img: a long run)."""
    readers = {
        "own": ("own", None),
        "pyarrow": ("flba", functools.partial(alt.ArrowReader, options=arrow_options)),
        "pyarrow+inplace": ("flba", functools.partial(alt.InplaceReader, options=arrow_options)),
    }
    if fsl:
        readers["pyarrow FSL"] = ("fsl", functools.partial(alt.ArrowReader, options=arrow_options))
    return readers


def paired(this: Sequence[float], base: Sequence[float]) -> dict[str, Any]:
    """Per-repeat ratios ``this[i] / base[i]``: their median and all of them."""
    ratios = [a / b for a, b in zip(this, base)]
    return {"median": statistics.median(ratios), "all": ratios}


# ---------------------------------------------------------------------------- convert
def store_path(root: Path, kind: str, layout: str) -> Path:
    return root / f"{kind}-{layout}.parquet"


def convert_once(npy: Path, dst: Path, layout: str) -> float:
    """Seconds of one ``streambatch.convert`` with ``layout``'s writer (target removed and
    dirty pages written back first, untimed)."""
    if dst.exists():
        shutil.rmtree(dst)
    os.sync()
    with alt.patched_writer(WRITERS[layout][1]):
        t0 = time.perf_counter()
        streambatch.convert(npy, dst, format="parquet", label="y", codec="none", progress=False)
        return time.perf_counter() - t0


def measure_convert(npy: Path, root: Path, kind: str, repeats: int) -> dict[str, dict[str, Any]]:
    """Every writer ``repeats`` times, in rotated order; the last output of each stays for reading."""
    warm(npy)
    times: dict[str, list[float]] = {k: [] for k in WRITERS}
    for i in range(repeats):
        for layout in rotated(list(WRITERS), i):
            times[layout].append(convert_once(npy, store_path(root, kind, layout), layout))
    decoded = sum(p.stat().st_size for p in npy.glob("*.npy"))
    out = {}
    for layout, ts in times.items():
        s = statistics.median(ts)
        out[layout] = {"seconds": s, "seconds_all": ts, "decoded_mb_per_s": decoded / 1e6 / s,
                       "over_own": paired(ts, times["own"]),
                       "stored_bytes": stored_bytes(store_path(root, kind, layout))}
    return out


# ---------------------------------------------------------------------------- epochs
def light_epoch(ds: Any, n_rows: int) -> dict[str, Any]:
    """One epoch under the light consumer (one element of ``x`` read, ids kept): samples/s, time
    to the first batch, user+sys CPU seconds of the whole process (reader threads included)."""
    ids: list[np.ndarray] = []
    touched = 0.0
    first = float("nan")
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    it = iter(ds)
    try:
        for batch in it:
            touched += float(batch["x"].reshape(-1)[0])  # the light consumer's touch of x
            ids.append(batch["id"].numpy().copy())
            if len(ids) == 1:
                first = time.perf_counter() - t0
        seconds = time.perf_counter() - t0
    finally:
        it.close()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    served = np.concatenate(ids) if ids else np.empty(0, np.int64)
    return {"samples_per_s": len(served) / seconds, "seconds": seconds, "first_batch_s": first, "cpu_s": cpu,
            **_common.check_complete(served, n_rows)}


def epoch_run(store: Path, budget: int, factory: Any) -> dict[str, Any]:
    """:data:`EPOCHS` epochs of a fresh ``StreamDataset`` on ``store`` reading through ``factory``:
    epoch 1, and the steady state (median samples/s and CPU seconds of the later epochs)."""
    from streambatch import StreamDataset

    warm(store)
    ds = StreamDataset(store, batch_size=BATCH, shuffle=True, seed=0, memory_budget=budget)
    try:
        with alt.patched_reader(factory):
            runs = []
            for e in range(EPOCHS):
                ds.set_epoch(e)
                runs.append(light_epoch(ds, ds.manifest.rows))
        threads = ds.describe()["threads"]
    finally:
        ds.release_buffers()
        del ds
        release_memory()
    return {"epoch1": runs[0]["samples_per_s"], "first_batch_s": runs[0]["first_batch_s"], "threads": threads,
            "steady": statistics.median(r["samples_per_s"] for r in runs[1:]),
            "steady_cpu_s": statistics.median(r["cpu_s"] for r in runs[1:]),
            "missing": sum(r["missing"] for r in runs), "duplicated": sum(r["duplicated"] for r in runs)}


def measure_epochs(root: Path, kind: str, budget: int, row_bytes: int, rows: int, repeats: int,
                   readers: dict[str, tuple[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every reader ``repeats`` times, in rotated order within each repeat; medians, and per repeat
    the own reader's steady samples/s over each other reader's and each reader's CPU seconds over
    the own reader's (paired ratios: the machine's load moves between repeats, less between
    neighbours)."""
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in readers}
    for i in range(repeats):
        for name in rotated(list(readers), i):
            layout, factory = readers[name]
            runs[name].append(epoch_run(store_path(root, kind, layout), budget, factory))
    own = runs["own"]
    out = {}
    for name, rs in runs.items():
        steady = [r["steady"] for r in rs]
        speed = paired([r["steady"] for r in own], steady)
        cpu = paired([r["steady_cpu_s"] for r in rs], [r["steady_cpu_s"] for r in own])
        out[name] = {
            "layout": readers[name][0],
            "epoch1_samples_per_s": statistics.median(r["epoch1"] for r in rs),
            "steady_samples_per_s": statistics.median(steady),
            "steady_all": steady,
            "steady_mb_per_s": statistics.median(steady) * row_bytes / 1e6,
            "cpu_s_per_gb": statistics.median(r["steady_cpu_s"] for r in rs) / (rows * row_bytes / 1e9),
            "first_batch_s": statistics.median(r["first_batch_s"] for r in rs),
            "threads": rs[0]["threads"],
            "own_over_this": speed["median"],
            "own_over_this_all": speed["all"],
            "cpu_over_own": cpu["median"],
            "cpu_over_own_all": cpu["all"],
            "missing": sum(r["missing"] for r in rs),
            "duplicated": sum(r["duplicated"] for r in rs),
        }
    return out


# ---------------------------------------------------------------------------- decision
PURE = ("pyarrow", "pyarrow FSL")  # pyarrow decodes; "pyarrow+inplace" reads pyarrow's file into place


def decide(epochs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The own reader's steady samples/s over the best pure-pyarrow reader and over the best
    pyarrow-written layout (in-place read included), as medians of the paired ratios; ``keep``:
    the latter reaches ``KEEP_RATIO``."""
    ratio = {k: e["own_over_this"] for k, e in epochs.items() if k != "own"}
    pure = min((k for k in PURE if k in ratio), key=ratio.__getitem__)
    best = min(ratio, key=ratio.__getitem__)
    return {"best_pure": pure, "own_over_pure": ratio[pure], "best_alternative": best,
            "own_over_best": ratio[best], "keep": ratio[best] >= KEEP_RATIO}


# ---------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, append one record per dataset and regenerate RESULTS.md."""
    p = make_parser(__doc__ or "")
    p.add_argument("--datasets", default="tab,img", help="comma-separated subset of tab,img")
    p.add_argument("--fsl-epochs", action="store_true",
                   help="also run epochs of pyarrow on its FixedSizeList files (slow on img)")
    args = p.parse_args(argv)
    kinds = [k.strip() for k in args.datasets.split(",") if k.strip()]
    if args.repeats < 1 or any(k not in ROWS for k in kinds):
        p.error("--repeats must be at least 1 and --datasets a subset of tab,img")
    base = Path(args.data) if args.data else Path(__file__).resolve().parent.parent / "data"
    root = base / ("quick/parquet_codec" if args.quick else "parquet_codec")
    common = base_record(args, new_run_id(), "bench_parquet_codec.py")
    for kind in kinds:
        load_start = os.getloadavg()[0]
        rows = (QUICK_ROWS if args.quick else ROWS)[kind]
        npy = ensure_npy(root, kind, rows)
        log(f"{kind}: convert ({', '.join(WRITERS)})")
        convert = measure_convert(npy, root, kind, args.repeats)
        stores = {layout: streambatch.load_manifest(store_path(root, kind, layout)) for layout in WRITERS}
        row_bytes = stores["own"].row_nbytes
        log(f"{kind}: every reader against the source")
        for name, (_, make) in ceiling_variants(stores).items():
            if name != FLOOR:  # whole units only: the floor, not a reader
                check_reader(make, npy)
        log(f"{kind}: ceiling (one thread, per unit)")
        ceiling = measure_ceiling(stores, args.repeats)
        option = min(alt.ARROW_OPTIONS, key=lambda o: ceiling[f"pyarrow {o}, checksum"]["us"])
        budget = rows * row_bytes // 4 if not args.quick else max(rows * row_bytes // 4, QUICK_BUDGET)
        log(f"{kind}: epochs (budget {budget / 2**20:.0f} MiB, pyarrow options {option!r})")
        epochs = measure_epochs(root, kind, budget, row_bytes, rows, args.repeats, epoch_readers(option, args.fsl_epochs))
        decision = decide(epochs)
        _common.write_record(NAME, {
            **common, "role": "codec", "dataset": kind, "rows": rows, "row_bytes": row_bytes,
            "units": stores["own"].n_units, "unit_rows": float(np.mean(stores["own"].unit_rows)),
            "budget_bytes": budget, "batch_size": BATCH, "arrow_options": option, "convert": convert,
            "ceiling": ceiling, "epochs": epochs, "decision": decision, "keep_ratio": KEEP_RATIO,
            "loadavg_start": load_start, "loadavg_end": os.getloadavg()[0]})
        for name, e in epochs.items():
            log(f"  {name:16s} steady {e['steady_samples_per_s']:,.0f}/s, {e['cpu_s_per_gb']:.2f} CPU s/GB, "
                f"own/this {e['own_over_this']:.2f}")
    import report

    report.main()
    return 0


# ---------------------------------------------------------------------------- report
def _spread(values: Sequence[float], fmt: str = ",.0f") -> str:
    return f"{min(values):{fmt}}-{max(values):{fmt}}"


def _tables(r: dict[str, Any]) -> list[str]:
    kind = r["dataset"]
    conv = r["convert"]
    lines = ["", f"**{kind}**: {r['rows']:,} rows of {r['row_bytes']:,} bytes, {r['units']} units of "
             f"{r['unit_rows']:.0f} rows; budget {r['budget_bytes'] / 2**20:.0f} MiB; pyarrow options in the "
             f"epochs: `{r['arrow_options']}` (the fastest in the ceiling, with checksum)"
             + (f"; load average {r['loadavg_start']:.1f} at the start, {r['loadavg_end']:.1f} at the end"
                if "loadavg_start" in r else "") + ".", ""]
    lines.append(_common.format_table([{
        "writer": f"{k}: {WRITERS[k][0]}" if k in WRITERS else k,
        "convert s (range)": f"{c['seconds']:.2f} ({_spread(c['seconds_all'], '.2f')})",
        "decoded MB/s": f"{c['decoded_mb_per_s']:,.0f}",
        "× own time (paired range)": f"{c['over_own']['median']:.2f} ({_spread(c['over_own']['all'], '.2f')})",
        "stored MB": f"{c['stored_bytes'] / 1e6:,.0f}"} for k, c in conv.items()],
        ["writer", "convert s (range)", "decoded MB/s", "× own time (paired range)", "stored MB"]))
    floor = r["ceiling"][FLOOR]["us"]
    lines += ["", _common.format_table([{
        "read path (one thread)": k, "µs per unit": f"{c['us']:,.0f}",
        "range": _spread(c["us_all"]) if "us_all" in c else f"{c['units']} units",
        "× preadv": f"{c['us'] / floor:.2f}"} for k, c in sorted(r["ceiling"].items(), key=lambda kv: kv[1]["us"])],
        ["read path (one thread)", "µs per unit", "range", "× preadv"])]
    lines += ["", _common.format_table([{
        "reader (layout)": f"{k} ({e['layout']})",
        "epoch 1 samples/s": f"{e['epoch1_samples_per_s']:,.0f}",
        "steady samples/s (range)": f"{e['steady_samples_per_s']:,.0f} ({_spread(e['steady_all'])})",
        "steady MB/s": f"{e['steady_mb_per_s']:,.0f}",
        "CPU s per GB": f"{e['cpu_s_per_gb']:.2f}",
        "CPU ÷ own (paired range)": f"{e['cpu_over_own']:.2f} ({_spread(e['cpu_over_own_all'], '.2f')})",
        "own ÷ this (paired range)": f"{e['own_over_this']:.2f} ({_spread(e['own_over_this_all'], '.2f')})",
        "first batch s": f"{e['first_batch_s']:.3f}",
        "missing / dup": f"{e['missing']} / {e['duplicated']}"} for k, e in r["epochs"].items()],
        ["reader (layout)", "epoch 1 samples/s", "steady samples/s (range)", "steady MB/s", "CPU s per GB",
         "CPU ÷ own (paired range)", "own ÷ this (paired range)", "first batch s", "missing / dup"])]
    return lines


def render(records: list[dict[str, Any]]) -> str:
    """The markdown section for the latest run's records."""
    rows = [r for r in records if r.get("role") == "codec"]
    if not rows:
        return "## Parquet codec decision\n\nNo records yet.\n"
    first = rows[0]
    quick = " **(--quick smoke run: tiny datasets, not a measurement)**" if first.get("quick") else ""
    lines = [
        "## Parquet codec decision",
        "",
        "Does the own Parquet page codec (page writer, page decoder, Thrift parsing) beat pyarrow by 1.3x "
        f"or more on an epoch?{quick} Convert = `streambatch.convert` npy -> Parquet in process (codec none, "
        "default unit and shard sizes, an `os.sync()` before each, untimed). Ceiling = one thread reading the "
        f"first {CEILING_UNITS} units into a preallocated buffer. Epochs = `StreamDataset` (batch 256, budget "
        "1/4 of the data, default threads, verify on, warm cache) with the reader plugged in for "
        "`open_reader`, light consumer (one element of `x` read, ids kept); steady = median of epochs 2-3 of "
        "each dataset object; CPU s per GB = the process's user+sys in a steady epoch per decoded GB. "
        f"{first['repeats']} repeats, the variants in a rotated order within each (no variant always follows "
        "the same one); medians, ranges over the repeats; paired = the median of the per-repeat ratios, "
        "which is what the decision uses (this machine is shared and its load moves between repeats). "
        "Readers: `own` = today's `parquet_store.Reader` (values read into place); `pyarrow` = "
        "`ParquetFile.read_row_group` per unit of the FixedSizeBinary file, the values buffer viewed and "
        "copied into the window, unit checksum over the row group's bytes; `pyarrow+inplace` = the "
        "FixedSizeBinary file written by pyarrow, whole units read into place (`Reader._read_direct`) at "
        "offsets taken from pyarrow's footer when it was written; `pyarrow FSL` = `read_row_group` of "
        "pyarrow's own FixedSizeList files. Code: benchmarks/_pq_alt.py.",
    ]
    for r in rows:
        lines += _tables(r)
    lines += ["", f"Command: `{first['command']}`", "", machine_line(first), "", verdict(rows)]
    return "\n".join(lines) + "\n"


def verdict(rows: Sequence[dict[str, Any]]) -> str:
    """The decision by the 1.3x rule, with the paired ratios it rests on and what it costs."""
    def cpu(r: dict[str, Any], key: str) -> str:
        return f"(its CPU s per GB {r['epochs'][r['decision'][key]]['cpu_over_own']:.2f}x own's)"

    parts = [f"{r['dataset']}: own ÷ best pure pyarrow ({r['decision']['best_pure']}) "
             f"{r['decision']['own_over_pure']:.2f} {cpu(r, 'best_pure')}, own ÷ best on pyarrow's files "
             f"({r['decision']['best_alternative']}) {r['decision']['own_over_best']:.2f} {cpu(r, 'best_alternative')}, "
             f"pyarrow's FixedSizeBinary convert {r['convert']['flba']['over_own']['median']:.2f}x the own writer's time"
             for r in rows]
    if any(r["decision"]["keep"] for r in rows):
        head = "keep the own codec"
    elif any(r["decision"]["own_over_pure"] >= KEEP_RATIO for r in rows):
        head = ("drop the own page writer, page decoder and Thrift parsing, write FixedSizeBinary tensors with "
                "pyarrow, and keep reading uncompressed units at value offsets taken from pyarrow's footer "
                "(whole units into place, row ranges sliced from the checked row group): as fast as today; "
                "pyarrow decoding every unit would lose by the rule's margin")
    else:
        head = "drop the own codec in favour of pyarrow"
    return (f"**Decision (keep only at ≥ {KEEP_RATIO}x on an epoch, median of paired ratios): {head}.** "
            + "; ".join(parts) + ".")


if __name__ == "__main__":
    sys.exit(main())
