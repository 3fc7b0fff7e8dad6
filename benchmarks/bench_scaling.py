#!/usr/bin/env python
"""Scaling benchmark: how does streambatch's throughput grow with reader threads and workers?

On the label-sorted ``tab`` dataset stored as Zarr (codec ``none``), warm page cache, 256 MiB
budget, batch 256:

* in process with ``threads`` = 1, 2, 4, 8, 16 (powers of two up to the CPU count, at least up
  to 4, at most 16): one fresh ``StreamDataset`` per repeat serves 2 epochs and the 2nd is
  reported (the steady state: epoch 1 also pays page faults on fresh window buffers);
* through ``torch.utils.data.DataLoader(num_workers=0, 1, 2)`` with the default threads (the
  cores divided among the workers): 2 epochs, the 2nd reported (workers are not persistent,
  as in torch's default, so with workers each epoch starts new processes);

samples/s and the ratio to ram-limit (measured before and after, mean of the two medians),
and a plot of throughput against threads (``scaling_threads.png``). Medians of ``--repeats``.

Usage::

    python benchmarks/bench_scaling.py [--data DIR] [--quick] [--repeats N]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import bench_throughput as bt  # noqa: E402  (dataset helpers shared with the throughput benchmark)

NAME = "scaling"
KIND = "tab"
FMT, CODEC = "zarr", "none"
EPOCHS = 2
WORKERS = (0, 1, 2)
MAX_THREADS = 16


def thread_counts(cpus: int | None = None) -> list[int]:
    """1, 2, 4 and further powers of two up to the CPU count, at most :data:`MAX_THREADS`."""
    cpus = cpus or os.cpu_count() or 1
    top = min(MAX_THREADS, max(4, cpus))
    out, t = [], 1
    while t <= top:
        out.append(t)
        t *= 2
    return out


def measure(store: Path, budget: int, repeats: int, *, threads: int | None = None,
            num_workers: int | None = None) -> dict[str, Any]:
    """``repeats`` x (fresh dataset, :data:`EPOCHS` epochs); the last epoch's figures, medians.

    ``num_workers=None`` iterates the dataset in process; an int goes through a DataLoader.
    """
    from streambatch import StreamDataset

    last: list[dict[str, Any]] = []
    first: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    for _ in range(repeats):
        bt.warm(store)
        ds = StreamDataset(store, batch_size=bt.BATCH, shuffle=True, seed=0, memory_budget=budget,
                           threads=threads)
        if not config:
            config = bt.store_config(store, ds, num_workers=num_workers or 0)
        n, units = ds.manifest.rows, ds.manifest.unit_rows
        source: Any = ds
        if num_workers is not None:
            source = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers)
        runs = []
        for e in range(EPOCHS):
            ds.set_epoch(e)
            # Quality only on the reported epoch (it costs a pass over the ids).
            runs.append(bt.run_epoch(source, n, units, quality=e == EPOCHS - 1))
        first.append(runs[0])
        last.append(runs[-1])
        ds.release_buffers()
        del source, ds
        bt.release_memory()

    def med(runs: list[dict[str, Any]], key: str) -> float:
        return bt.median([r[key] for r in runs])

    return {
        **config,
        "mode": "in-process" if num_workers is None else "dataloader",
        "num_workers": num_workers,
        "threads_requested": threads,
        "epochs": EPOCHS,
        "samples_per_s": med(last, "samples_per_s"),
        "mb_per_s": med(last, "mb_per_s"),
        "seconds": med(last, "seconds"),
        "first_batch_s": med(last, "first_batch_s"),
        "epoch1_samples_per_s": med(first, "samples_per_s"),
        "epoch1_first_batch_s": med(first, "first_batch_s"),
        "runs_samples_per_s": [r["samples_per_s"] for r in last],
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in last),
        "peak_rss_delta_bytes": max(r["peak_rss_delta_bytes"] for r in last),
        "missing": sum(r["missing"] for r in first + last),
        "duplicated": sum(r["duplicated"] for r in first + last),
        "foreign": sum(r["foreign"] for r in first + last),
        "epochs_checked": len(first) + len(last),
        "deff": med(last, "deff"),
        "kl_ratio": med(last, "kl_ratio"),
        "frac_missing_class": med(last, "frac_missing_class"),
        "spearman": med(last, "spearman"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scaling benchmark, append its records and regenerate RESULTS.md."""
    p = bt.make_parser(__doc__ or "")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    run_id = bt.new_run_id()
    common = bt.base_record(args, run_id, "bench_scaling.py")
    root = bt.data_root(args.data, args.quick)
    rows = bt.rows_for(KIND, args.quick)
    npy = bt.ensure_npy(root, KIND, rows)
    store = bt.ensure_store(npy, bt.store_path(root, KIND, FMT, CODEC), FMT, CODEC, rows)
    budget = bt.budget_for(KIND, args.quick)

    bt.log(f"{KIND}: ram-limit (before)")
    ram_before = bt.measure_ram_limit(npy, args.repeats)
    results = []
    for t in thread_counts():
        bt.log(f"{KIND}: in process, threads {t}")
        results.append(measure(store, budget, args.repeats, threads=t))
    for nw in WORKERS:
        bt.log(f"{KIND}: DataLoader num_workers {nw}")
        results.append(measure(store, budget, args.repeats, num_workers=nw))
    bt.log(f"{KIND}: ram-limit (after)")
    ram_after = bt.measure_ram_limit(npy, args.repeats)
    ram = (ram_before["samples_per_s"] + ram_after["samples_per_s"]) / 2
    one = next((r["samples_per_s"] for r in results if r["mode"] == "in-process" and r["threads"] == 1),
               float("nan"))
    for res in results:
        rec = {
            **common,
            "role": "streambatch",
            "dataset": KIND,
            "cache": "warm",
            **res,
            "ram_limit_samples_per_s": ram,
            "ram_limit_before_samples_per_s": ram_before["samples_per_s"],
            "ram_limit_after_samples_per_s": ram_after["samples_per_s"],
            "vs_ram": bt.ratio(res["samples_per_s"], ram),
            "vs_one_thread": bt.ratio(res["samples_per_s"], one),
        }
        _common.write_record(NAME, rec)
        what = (f"threads {res['threads']}" if res["mode"] == "in-process"
                else f"DataLoader w{res['num_workers']} (threads {res['threads']})")
        bt.log(f"  {what}: {res['samples_per_s']:,.0f} samples/s = {rec['vs_ram']:.2f}x ram-limit, "
               f"{rec['vs_one_thread']:.2f}x one thread")

    import report

    report.main()
    return 0


def render(records: list[dict[str, Any]]) -> str:
    """Markdown section for the records of one run of this benchmark."""
    rows = [r for r in records if r.get("role") == "streambatch"]
    if not rows:
        return "## Scaling\n\nNo records in the latest run.\n"
    first = rows[0]
    quick = " (**--quick smoke run: tiny dataset, not a measurement**)" if first.get("quick") else ""
    lines = [
        "## Scaling: throughput against threads and DataLoader workers",
        "",
        "How does the steady-state throughput grow with reader threads in process, and what do "
        f"DataLoader worker processes add (`{first['dataset']}` {first['format']}/{first['codec']}, "
        f"{first['rows']:,} rows, warm cache, budget {bt._mib(first['budget_bytes'])} MiB, batch "
        f"{first['batch_size']}, epoch 2 of 2, medians of {first.get('repeats')} repeats){quick}?",
        "",
    ]
    table = []
    for r in rows:
        mode = "in process" if r["mode"] == "in-process" else f"DataLoader num_workers={r['num_workers']}"
        table.append({
            "mode": mode,
            "threads (per process)": r["threads"],
            "samples/s": bt._num(r["samples_per_s"], ",.0f"),
            "MB/s": bt._num(r["mb_per_s"], ".0f"),
            "× ram-limit": bt._num(r["vs_ram"], ".2f"),
            "× 1 thread": bt._num(r["vs_one_thread"], ".2f"),
            "epoch 1 samples/s": bt._num(r["epoch1_samples_per_s"], ",.0f"),
            "first batch s (epoch 1)": bt._num(r["epoch1_first_batch_s"], ".3f"),
            "window units": bt._num(r["window_units"], ".0f"),
            "peak RSS MiB (Δ)": f"{bt._mib(r['peak_rss_bytes'])} ({bt._mib(r['peak_rss_delta_bytes'])})",
            "missing / dup": f"{r['missing']} / {r['duplicated']}",
            "deff": bt._num(r["deff"], ".2f"),
        })
    lines.append(_common.format_table(table, list(table[0])))
    inproc = sorted((r for r in rows if r["mode"] == "in-process"), key=lambda r: r["threads"])
    best = max(inproc, key=lambda r: r["samples_per_s"]) if inproc else None
    lines += [
        "",
        f"ram-limit: {bt._num(first['ram_limit_samples_per_s'], ',.0f')} samples/s (mean of "
        f"{bt._num(first['ram_limit_before_samples_per_s'], ',.0f')} before and "
        f"{bt._num(first['ram_limit_after_samples_per_s'], ',.0f')} after). DataLoader workers are not "
        "persistent (torch's default): each epoch forks new workers, each with its share of the budget "
        "and of the cores. Worker RSS counts pages shared after fork once per process.",
    ]
    if best is not None:
        lines += ["", f"Best in process: {best['threads']} thread(s), "
                  f"{bt._num(best['samples_per_s'], ',.0f')} samples/s = {bt._num(best['vs_ram'], '.2f')}× "
                  f"ram-limit, {bt._num(best['vs_one_thread'], '.2f')}× one thread on "
                  f"{best.get('machine', {}).get('cpu_count')} CPUs."]
    complete = all(r["missing"] == 0 and r["duplicated"] == 0 and r.get("foreign", 0) == 0 for r in rows)
    lines += [
        "",
        f"Command: `{first['command']}`",
        "",
        bt.machine_line(first),
        "",
        "Targets: none set for scaling beyond completeness; every epoch complete (0 missing, 0 "
        f"duplicated): {'**holds**' if complete else '**fails**'}. Threads above the CPU count "
        "cannot add speed; the tab steady state is compared with the throughput target of 0.5× "
        "ram-limit in the throughput section.",
    ]
    return "\n".join(lines) + "\n"


def plot(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """``scaling_threads.png``: in-process samples/s against threads, with ram-limit for scale."""
    inproc = sorted((r for r in records if r.get("role") == "streambatch" and r.get("mode") == "in-process"),
                    key=lambda r: r["threads"])
    if not inproc:
        return []
    xs = [float(r["threads"]) for r in inproc]
    ys = [float(r["samples_per_s"]) for r in inproc]
    series: dict[str, tuple[Sequence[float], Sequence[float]]] = {"streambatch, epoch 2": (xs, ys)}
    if xs[0] == 1:
        series["linear from 1 thread"] = (xs, [ys[0] * x for x in xs])
    series["ram-limit"] = (xs, [float(inproc[0]["ram_limit_samples_per_s"])] * len(xs))
    cpus = inproc[0].get("machine", {}).get("cpu_count")
    quick = ", --quick" if inproc[0].get("quick") else ""
    title = f"{inproc[0]['dataset']} {inproc[0]['format']}/{inproc[0]['codec']}, {cpus} CPUs{quick}"
    return [_common.plot_lines(Path(out_dir) / "scaling_threads.png", series, "reader threads",
                               "samples/s", title, logx=True)]


if __name__ == "__main__":
    sys.exit(main())
