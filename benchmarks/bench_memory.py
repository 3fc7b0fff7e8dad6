#!/usr/bin/env python
"""Memory benchmark: does peak RSS stay flat as the dataset grows past the budget?

The budget is fixed (256 MiB) and the label-sorted ``tab`` dataset is generated at 1x, 4x and
8x (optionally 16x) the budget in decoded bytes (528 bytes per row), converted to Zarr with the
default settings. For each size one full shuffled epoch of
``StreamDataset(path, memory_budget=budget)`` runs in a fresh Python process (so the memory of
one run cannot leak into the next), consumed by ``_common.consume`` and watched by
``_common.PeakRSS`` (every 20 ms) inside that process. Each child reports its RSS right after
``import torch, streambatch`` (the fixed overhead), the peak, the loader's own byte accounting
(``last_peak_accounted_bytes``), ``describe()["predicted_peak_bytes"]`` and the completeness of
the served ids. A bare ``python -c "import torch, numpy"`` gives the interpreter+torch floor.

Usage::

    python benchmarks/bench_memory.py                  # sizes 1,4,8 x 256 MiB, 3 repeats
    python benchmarks/bench_memory.py --sizes 1,4,8,16 # + 16x (about 4.3 GB, slow)
    python benchmarks/bench_memory.py --quick          # 16 MiB budget, tiny datasets
    python benchmarks/bench_memory.py --wide           # only 3 rows x float32[2,000,000] (_wide.py)
    python benchmarks/bench_memory.py --varlen         # only the token documents (_varlen_budget.py)

Datasets go to ``DATA/memory/tab-x{k}.zarr`` (``DATA/quick/memory/`` with ``--quick``); the
intermediate ``.npy`` folders are deleted after conversion unless ``--keep-npy``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _wide  # noqa: E402

MiB = 2**20
ROW_BYTES = 528  # tab: id int64 + x float32[128] + y int64
BATCH_SIZE = 256
BUDGET = 256 * MiB
QUICK_BUDGET = 16 * MiB
MARGIN = 64 * MiB  # allowed on top of budget + imports baseline
GROWTH_SHARE = 0.10  # allowed growth of peak RSS from the smallest to the 8x dataset
NAME = "memory"


# --------------------------------------------------------------------------- child process


def _rss_now() -> int:
    """Resident set size of this process in bytes (``/proc`` when available, else psutil)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import psutil

        return int(psutil.Process().memory_info().rss)


def child(path: str, budget: int, interval: float) -> dict[str, Any]:
    """One epoch in this (fresh) process; returns the figures as a dict (printed as JSON).

    Imports torch and streambatch (including the lazily imported ``StreamDataset``) first and
    takes the RSS then as the fixed overhead, before the dataset is opened.
    """
    import _common  # noqa: PLC0415 - imports numpy, torch, psutil
    import numpy as np  # noqa: PLC0415
    import streambatch  # noqa: PLC0415

    stream_dataset = streambatch.StreamDataset  # the lazy import of the torch part
    rss_imports = _rss_now()
    with _common.PeakRSS(interval=interval) as mem:
        ds = stream_dataset(path, batch_size=BATCH_SIZE, memory_budget=budget)
        desc = ds.describe()
        rss_open = _rss_now()
        result = _common.consume(ds, count_ids=int(ds.manifest.rows))
        accounted = int(ds.last_peak_accounted_bytes)
    rss_end = _rss_now()
    rows = int(ds.manifest.rows)
    # ids outside 0..rows-1 would have raised IndexError in the counter
    complete = {"missing": result.pop("missing"), "duplicated": result.pop("duplicated"), "foreign": 0}
    seconds = max(float(result["seconds"]), 1e-12)
    return {
        "rows": rows,
        "units": int(ds.manifest.n_units),
        "unit_rows": float(desc["unit_rows"]),
        "rss_after_imports": rss_imports,
        "rss_after_open": rss_open,
        "rss_end": rss_end,
        "peak_rss": int(mem.peak),
        "rss_samples": int(mem.samples),
        "peak_accounted_bytes": accounted,
        "predicted_peak_bytes": int(desc["predicted_peak_bytes"]),
        "window_rows": int(desc["window_rows"]),
        "window_units": float(desc["window_units"]),
        "threads": int(desc["threads"]),
        "predicted_deff": float(desc["predicted_deff"]),
        "samples": int(result["samples"]),
        "batches": int(result["batches"]),
        "seconds": seconds,
        "first_batch_s": float(result["first_batch_s"]),
        "samples_per_s": result["samples"] / seconds,
        "mb_per_s": result["bytes"] / 1e6 / seconds,
        "ids_missing": complete["missing"],
        "ids_duplicated": complete["duplicated"],
        "ids_foreign": complete["foreign"],
        "complete": complete["missing"] == complete["duplicated"] == complete["foreign"] == 0
        and int(result["samples"]) == rows,
        "x_sum_finite": bool(np.isfinite(result["x_sum"])),
    }


def consumer_child(rows: int, interval: float) -> dict[str, Any]:
    """Control: ``consume`` over ``rows`` rows of synthetic batches, no loader (fresh process).

    The batches carry a 256-row ``id`` tensor and a one-value-per-row ``x``, so what grows is what
    the harness itself keeps: a copy of every batch's ids and their concatenation at the end.
    """
    import _common  # noqa: PLC0415
    import streambatch  # noqa: PLC0415
    import torch  # noqa: PLC0415

    _ = streambatch.StreamDataset  # same imports as the loader child
    rss_imports = _rss_now()

    def batches() -> Any:
        for start in range(0, rows, BATCH_SIZE):
            stop = min(rows, start + BATCH_SIZE)
            yield {"x": torch.ones(stop - start), "id": torch.arange(start, stop)}

    with _common.PeakRSS(interval=interval) as mem:
        result = _common.consume(batches(), count_ids=rows)
    return {"rows": rows, "samples": int(result["samples"]), "rss_after_imports": rss_imports,
            "peak_rss": int(mem.peak), "peak_over_imports": int(mem.peak) - rss_imports}


def _run_child(path: Path | None, budget: int, interval: float, timeout: float,
               consumer_rows: int | None = None) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--interval", str(interval)]
    if consumer_rows is not None:
        cmd += ["--child-consumer", str(consumer_rows)]
    else:
        cmd += ["--child", str(path), "--budget-bytes", str(budget)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child run failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stderr[-4000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"child printed no JSON: {shlex.join(cmd)}\n{proc.stdout[-2000:]}")
    return json.loads(lines[-1])


def _bare_imports_rss(timeout: float) -> int:
    """RSS of ``python -c "import torch, numpy"`` right after the imports (bytes)."""
    code = ("import torch, numpy, os\n"
            "print(int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, check=True)
    return int(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- datasets


def _rows_for(size: float, budget: int) -> int:
    """Rows of ``tab`` whose decoded bytes are ``size`` x ``budget``."""
    return max(BATCH_SIZE, round(size * budget / ROW_BYTES))


def ensure_dataset(folder: Path, size: float, budget: int, keep_npy: bool) -> Path:
    """``folder/tab-x{size}.zarr`` with ``size * budget / 528`` rows; made only if missing."""
    import streambatch  # noqa: PLC0415
    if str(ROOT / "tools") not in sys.path:
        sys.path.insert(0, str(ROOT / "tools"))
    from make_datasets import make_dataset  # noqa: PLC0415

    rows = _rows_for(size, budget)
    tag = f"{size:g}"
    dst = folder / f"tab-x{tag}.zarr"
    if dst.exists():
        try:
            if streambatch.load_manifest(dst).rows == rows:
                return dst
        except Exception:  # noqa: BLE001 - a broken or partial dataset is simply rebuilt
            pass
    npy = folder / f"tab-x{tag}-npy"
    t0 = time.perf_counter()
    make_dataset("tab", npy, rows=rows, seed=0)
    t1 = time.perf_counter()
    streambatch.convert(npy, dst, format="zarr", label="y", overwrite=True)
    t2 = time.perf_counter()
    print(f"  made {dst.name}: {rows:,} rows ({rows * ROW_BYTES / MiB:.0f} MiB), generate {t1 - t0:.1f}s,"
          f" convert {t2 - t1:.1f}s", flush=True)
    if not keep_npy:
        shutil.rmtree(npy, ignore_errors=True)
    return dst


# --------------------------------------------------------------------------- main


def _mib(n: float | None) -> float | None:
    return None if n is None else n / MiB


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or one ``--child`` epoch), write records and regenerate RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data", help="dataset folder (default: data/)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_BUDGET // MiB} MiB budget, tiny datasets")
    parser.add_argument("--repeats", type=int, default=None,
                        help="fresh processes per size, median reported (default 3; 1 with --quick)")
    parser.add_argument("--sizes", default="1,4,8", help="dataset sizes in multiples of the budget")
    parser.add_argument("--keep-npy", action="store_true", help="keep the .npy folders after conversion")
    parser.add_argument("--interval", type=float, default=0.02, help="RSS sampling interval (s)")
    parser.add_argument("--child", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--budget-bytes", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-consumer", type=int, metavar="ROWS", help=argparse.SUPPRESS)
    parser.add_argument("--wide", action="store_true", help="only the wide rows: convert and loader peak RSS")
    parser.add_argument("--child-wide-convert", nargs=3, metavar=("SRC", "DST", "MEMORY"), help=argparse.SUPPRESS)
    parser.add_argument("--child-wide-load", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--shuffle", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--normalize", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--varlen", action="store_true", help="only the variable-length rows (_varlen_budget.py)")
    parser.add_argument("--child-varlen", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--collate", default="nested", help=argparse.SUPPRESS)
    parser.add_argument("--arrow-pool", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child_varlen:
        if args.arrow_pool:  # read once, when pyarrow is first imported (below)
            os.environ["ARROW_DEFAULT_MEMORY_POOL"] = args.arrow_pool
        import _varlen_budget  # noqa: PLC0415

        print(json.dumps(_varlen_budget.memory_child(args.child_varlen, args.budget_bytes, args.collate)), flush=True)
        return 0

    if args.child_wide_convert or args.child_wide_load:
        out = (_wide.convert_child(*args.child_wide_convert, args.shuffle) if args.child_wide_convert
               else _wide.loader_child(args.child_wide_load, args.normalize))
        print(json.dumps(out), flush=True)
        return 0

    if args.child_consumer:
        print(json.dumps(consumer_child(args.child_consumer, args.interval)), flush=True)
        return 0

    if args.child:
        out = child(args.child, args.budget_bytes or BUDGET, args.interval)
        print(json.dumps(out), flush=True)
        return 0

    import _common  # noqa: PLC0415

    budget = QUICK_BUDGET if args.quick else BUDGET
    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or any(s <= 0 for s in sizes):
        parser.error("--sizes: positive multiples of the budget, e.g. 1,4,8")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    folder = args.data / ("quick" if args.quick else "") / "memory"
    folder.mkdir(parents=True, exist_ok=True)
    run_id = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    command = shlex.join(["python", "benchmarks/bench_memory.py", *(argv if argv is not None else sys.argv[1:])])
    timeout = 600.0 if args.quick else 3600.0
    common = {"run_id": run_id, "command": command, "quick": bool(args.quick), "dataset": "tab",
              "format": "zarr", "codec": "none", "budget_bytes": budget, "batch_size": BATCH_SIZE,
              "cache": "warm (files not evicted; page cache is not in RSS)", "rss_interval_s": args.interval,
              "margin_bytes": MARGIN}

    if args.wide:
        return _run_wide(folder, args.repeats, common)
    if args.varlen:
        return _run_varlen(args, common, report=True)
    print(f"bare `import torch, numpy` RSS ({args.repeats} runs)", flush=True)
    bare = [_bare_imports_rss(timeout) for _ in range(args.repeats)]
    _common.write_record(NAME, {**common, "kind": "reference", "config": "python -c 'import torch, numpy'",
                                "rss_after_imports": int(statistics.median(bare)),
                                "rss_after_imports_all": bare})

    for size in sizes:
        path = ensure_dataset(folder, size, budget, args.keep_npy)
        print(f"x{size:g}: {args.repeats} fresh-process epochs of {path}", flush=True)
        med, runs = _common.median_of(lambda: _run_child(path, budget, args.interval, timeout),
                                      repeats=args.repeats, key="peak_rss")
        shard = None
        try:
            import streambatch  # noqa: PLC0415

            m = streambatch.load_manifest(path)
            shard = m.options.get("shard_bytes")
        except Exception:  # noqa: BLE001 - informational only
            pass
        control, _ = _common.median_of(
            lambda: _run_child(None, budget, args.interval, timeout, consumer_rows=med["rows"]),
            repeats=args.repeats, key="peak_over_imports")
        consumer = int(control["peak_over_imports"])
        rec = {
            **common, **med, "kind": "loader", "config": f"x{size:g}", "size_x_budget": size,
            "dataset_bytes": med["rows"] * ROW_BYTES, "dataset_path": str(path),
            "unit_bytes": round(med["unit_rows"] * ROW_BYTES), "shard_bytes": shard,
            "peak_over_imports": med["peak_rss"] - med["rss_after_imports"],
            "consumer_control_bytes": consumer,
            "peak_over_imports_less_consumer": med["peak_rss"] - med["rss_after_imports"] - consumer,
            "peak_rss_all": [r["peak_rss"] for r in runs],
            "rss_after_imports_all": [r["rss_after_imports"] for r in runs],
            "peak_accounted_all": [r["peak_accounted_bytes"] for r in runs],
            "complete_all": all(r["complete"] for r in runs),
            "seconds_all": [r["seconds"] for r in runs],
            "repeats": args.repeats,
        }
        _common.write_record(NAME, rec)
        print(f"  peak RSS {med['peak_rss'] / MiB:.0f} MiB (imports {med['rss_after_imports'] / MiB:.0f} MiB,"
              f" accounted {med['peak_accounted_bytes'] / MiB:.0f} MiB), epoch {med['seconds']:.1f}s,"
              f" complete={rec['complete_all']}", flush=True)

    _run_varlen(args, common, report=False)
    return _run_wide(folder, args.repeats, common)


def _run_varlen(args: argparse.Namespace, common: dict[str, Any], report: bool) -> int:
    """The variable-length rows (benchmarks/_varlen_budget.py), then RESULTS.md regenerated if ``report``."""
    import _common  # noqa: PLC0415
    import _varlen_budget  # noqa: PLC0415

    print(f"varlen rows ({args.repeats} fresh processes each)", flush=True)
    _varlen_budget.memory_run(args.data / "quick" if args.quick else args.data, args.quick, args.repeats,
                              {k: v for k, v in common.items() if k not in ("dataset", "budget_bytes", "format")},
                              lambda rec: _common.write_record(NAME, rec), MARGIN)
    if report:
        import report as _report  # noqa: PLC0415

        _report.main()
    return 0


def _run_wide(folder: Path, repeats: int, common: dict[str, Any]) -> int:
    """The wide-row measurements (benchmarks/_wide.py), then RESULTS.md regenerated."""
    import _common  # noqa: PLC0415
    import report  # noqa: PLC0415

    print(f"wide rows ({repeats} fresh processes each)", flush=True)
    _wide.run(folder / "wide", repeats, {k: v for k, v in common.items() if k not in ("dataset", "budget_bytes")},
              lambda rec: _common.write_record(NAME, rec), _common.median_of)
    report.main()
    return 0


# --------------------------------------------------------------------------- report


def _targets(loaders: list[dict[str, Any]]) -> list[str]:
    """The target lines (hold / FAIL) for the loader records of one run."""
    if not loaders:
        return ["no loader records"]
    budget = loaders[0]["budget_bytes"]
    margin = loaders[0].get("margin_bytes", MARGIN)
    lines = []
    over = [r for r in loaders if r["peak_rss"] > budget + r["rss_after_imports"] + margin]
    lines.append(("holds" if not over else "FAILS") + f": peak RSS <= budget + imports baseline + {margin / MiB:.0f} MiB"
                 f" for every size" + ("" if not over else " (fails at " + ", ".join(r["config"] for r in over) + ")"))
    small = min(loaders, key=lambda r: r["size_x_budget"])
    eight = [r for r in loaders if r["size_x_budget"] >= 8]
    if eight and small["size_x_budget"] < 8:
        big = min(eight, key=lambda r: r["size_x_budget"])
        limit = GROWTH_SHARE * budget
        raw = big["peak_rss"] - small["peak_rss"]
        own = (big["peak_over_imports_less_consumer"] - small["peak_over_imports_less_consumer"])
        lines.append(("holds" if raw < limit else "FAILS") + f": growth of peak RSS {small['config']} -> "
                     f"{big['config']} {raw / MiB:+.1f} MiB < {limit / MiB:.1f} MiB (10% of the budget)")
        lines.append(("holds" if own < limit else "FAILS") + ": same, less what the benchmark's consume loop "
                     "itself holds (its id counter, measured by the control without a loader): "
                     f"{own / MiB:+.1f} MiB")
        mids = [r for r in loaders if small["size_x_budget"] < r["size_x_budget"] < big["size_x_budget"]]
        if mids:
            mid = min(mids, key=lambda r: r["size_x_budget"])
            lines.append(f"growth from {mid['config']} to {big['config']}: {(big['peak_rss'] - mid['peak_rss']) / MiB:+.1f} "
                         "MiB. Both window buffers are resident from the first epoch whatever the dataset's "
                         "length: a short first window (the ramp, a small dataset) zero-fills the rest of a fresh "
                         "buffer in a reader thread (before that, the x1 dataset peaked ~70 MiB lower and the "
                         "1x -> 8x growth failed).")
    else:
        lines.append("growth target (1x -> 8x) not measured: run with sizes including 1 and 8")
    acc = [r for r in loaders if r["peak_accounted_bytes"] > budget]
    lines.append(("holds" if not acc else "FAILS") + ": loader-accounted bytes <= budget for every size")
    inc = [r for r in loaders if not r.get("complete_all", r.get("complete"))]
    lines.append(("holds" if not inc else "FAILS") + ": every epoch complete (0 ids missing, 0 duplicated)")
    return lines


def render(records: list[dict[str, Any]]) -> str:
    """Markdown section for the records of one run of this benchmark."""
    loaders = sorted((r for r in records if r.get("kind") == "loader"), key=lambda r: r["size_x_budget"])
    refs = [r for r in records if r.get("kind") == "reference"]
    any_rec = (loaders or refs or [{}])[0]
    budget = any_rec.get("budget_bytes", BUDGET)
    margin = any_rec.get("margin_bytes", MARGIN)
    rows = []
    for r in loaders:
        rows.append({
            "dataset": f"{r['config']} ({r['dataset_bytes'] / MiB:,.0f} MiB, {r['rows']:,} rows)",
            "imports RSS MiB": _mib(r["rss_after_imports"]),
            "peak RSS MiB": _mib(r["peak_rss"]),
            "peak - imports MiB": _mib(r["peak_over_imports"]),
            "consumer MiB": _mib(r["consumer_control_bytes"]),
            "loader own MiB": _mib(r["peak_over_imports_less_consumer"]),
            "accounted MiB": _mib(r["peak_accounted_bytes"]),
            "predicted MiB": _mib(r["predicted_peak_bytes"]),
            "window rows (units)": f"{r['window_rows']:,} ({r['window_units']:.0f})",
            "epoch s": r["seconds"],
            "samples/s": f"{r['samples_per_s']:,.0f}",
            "missing/dup": f"{r['ids_missing']}/{r['ids_duplicated']}",
        })
    cols = ["dataset", "imports RSS MiB", "peak RSS MiB", "peak - imports MiB", "consumer MiB", "loader own MiB",
            "accounted MiB", "predicted MiB", "window rows (units)", "epoch s", "samples/s", "missing/dup"]
    import _common  # noqa: PLC0415

    parts = [
        "## Memory: peak RSS against dataset size",
        "",
        f"Does peak RSS stay flat as the label-sorted `tab` dataset grows past a fixed "
        f"{budget / MiB:.0f} MiB budget? One shuffled epoch per size, each in a fresh process "
        f"(`StreamDataset(path, memory_budget={budget / MiB:.0f} MiB)`, batch {any_rec.get('batch_size', BATCH_SIZE)},"
        f" Zarr, default unit and shard sizes, threads = cores), peak RSS sampled every "
        f"{1000 * any_rec.get('rss_interval_s', 0.02):.0f} ms; median of "
        f"{loaders[0]['repeats'] if loaders else '?'} processes by peak RSS.",
        "",
        _common.format_table(rows, cols) if rows else "(no loader records)",
        "",
    ]
    if refs:
        ref = refs[0]
        parts.append(f"Reference: `python -c \"import torch, numpy\"` RSS after imports "
                     f"{ref['rss_after_imports'] / MiB:.0f} MiB; the children above also import streambatch "
                     f"and the harness (psutil).")
    parts += [
        "`imports RSS` is the child's RSS after `import torch, streambatch` and before the dataset is "
        "opened (the fixed overhead). `accounted` is `ds.last_peak_accounted_bytes` (window buffers + "
        "batches in flight), `predicted` is `describe()[\"predicted_peak_bytes\"]`. `consumer MiB` is a "
        "control run in its own fresh process: `_common.consume` over synthetic batches of the same row "
        "count, no loader; it is what the benchmark loop itself holds (a uint8 counter per id for the "
        "completeness check: 1 B per row), and `loader own` = peak - imports - consumer.",
        "",
        f"Reproduce: `{any_rec.get('command', 'python benchmarks/bench_memory.py')}`"
        + (" (quick: tiny datasets, not the real figures)" if any_rec.get("quick") else ""),
        "",
        _machine_line(any_rec),
        "",
        f"Targets (budget {budget / MiB:.0f} MiB, margin {margin / MiB:.0f} MiB):",
        "",
        *[f"- {line}" for line in _targets(loaders)],
        "",
        *_wide.render(records),
        *_varlen_render(records),
    ]
    return "\n".join(parts) + "\n"


def _varlen_render(records: list[dict[str, Any]]) -> list[str]:
    import _varlen_budget  # noqa: PLC0415 - imports torch and streambatch

    return _varlen_budget.render_memory(records)


def _machine_line(rec: dict[str, Any]) -> str:
    m = rec.get("machine", {})
    return (f"Machine: {m.get('cpu_count')} cores ({m.get('cpus_usable')} usable), "
            f"{(m.get('memory_total') or 0) / 2**30:.0f} GiB RAM, {m.get('platform')}; Python {m.get('python')}, "
            f"numpy {m.get('numpy')}, zarr {m.get('zarr')}, pyarrow {m.get('pyarrow')}, torch {m.get('torch')}, "
            f"streambatch {m.get('streambatch')}; run {rec.get('run_id')}.")


def plot(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """``memory_rss.png``: peak RSS against dataset size, with the budget lines."""
    import _common  # noqa: PLC0415

    loaders = sorted((r for r in records if r.get("kind") == "loader"), key=lambda r: r["size_x_budget"])
    if not loaders:
        return []
    xs = [r["size_x_budget"] for r in loaders]
    budget = loaders[0]["budget_bytes"]
    margin = loaders[0].get("margin_bytes", MARGIN)
    base = statistics.median(r["rss_after_imports"] for r in loaders)
    series = {
        "peak RSS": (xs, [r["peak_rss"] / MiB for r in loaders]),
        "peak RSS less consumer control": (xs, [(r["peak_rss"] - r["consumer_control_bytes"]) / MiB
                                                for r in loaders]),
        "RSS after imports": (xs, [r["rss_after_imports"] / MiB for r in loaders]),
        "imports + budget": (xs, [(base + budget) / MiB] * len(xs)),
        f"imports + budget + {margin / MiB:.0f} MiB (target)": (xs, [(base + budget + margin) / MiB] * len(xs)),
    }
    return [_common.plot_lines(out_dir / "memory_rss.png", series, "dataset size (x budget)", "MiB",
                               f"Peak RSS, budget {budget / MiB:.0f} MiB" + (" (quick)" if loaders[0].get("quick")
                                                                              else ""), logx=True)]


if __name__ == "__main__":
    sys.exit(main())
