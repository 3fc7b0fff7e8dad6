#!/usr/bin/env python
"""Contention benchmark: how much of the gap to the in-RAM limit is the consumer's own use of the cores?

The throughput benchmark's consume loop sums every batch's ``x`` in float64 with torch, and
torch runs that sum on all its intra-op threads (one per core by default).  The ram-limit
baseline has the machine to itself; a loader's reader threads need cores at the same time as
that sum.  On a 2-core machine this decides the ``img`` figure (12 KB rows: the sum is most of
the consume loop's time).  This benchmark measures it directly: for each torch thread count
(the default, then 1 unless ``--torch-threads`` says otherwise) and each stored layout it runs
``--repeats`` adjacent pairs (a ram-limit epoch, then a streambatch epoch of one
``StreamDataset`` at default settings, warm cache, 256 MiB budget, batch 256) after one
untimed warm-up epoch, and reports:

* the consume loop alone (batches gathered beforehand, ``bench_throughput.consumer_limit``);
* the ram-limit and streambatch samples/s (medians);
* the median of the per-pair ratios streambatch / ram-limit: each pair ran within seconds, so
  the ratio is less exposed to this VM's drift than one against baselines minutes apart;
* streambatch without a consumer (the loop only counts rows): what the loader alone delivers.

Usage::

    python benchmarks/bench_contention.py [--data DIR] [--quick] [--repeats N]
                                          [--datasets img] [--torch-threads 2,1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import bench_throughput as bt  # noqa: E402  (dataset helpers and baselines shared with it)

NAME = "contention"
LAYOUTS = [("zarr", "none"), ("parquet", "none")]


def thread_list(text: str) -> list[int]:
    """``"2,1"`` -> [2, 1] (argparse type); every count at least 1."""
    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"torch thread counts must be >= 1, got {text!r}")
    return out


def loader_alone(ds: Any) -> float:
    """Samples/s of one epoch of ``ds`` with a loop that only counts rows."""
    t0 = time.perf_counter()
    n = 0
    for batch in ds:
        n += len(batch["id"])
    return n / max(time.perf_counter() - t0, 1e-12)


def measure(kind: str, fmt: str, codec: str, store: Path, columns: dict[str, Any], budget: int, repeats: int,
            torch_threads: int) -> dict[str, Any]:
    """Adjacent (ram-limit, streambatch) epoch pairs at ``torch_threads`` intra-op threads."""
    from streambatch import StreamDataset

    before = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    ds = StreamDataset(store, batch_size=bt.BATCH, memory_budget=budget)
    try:
        consumer, _ = _common.median_of(lambda: bt.consumer_limit(columns), repeats)
        ds.set_epoch(0)
        _common.consume(ds)  # untimed: faults in the window buffers, as every epoch after the first reuses them
        ram, loader, ratios = [], [], []
        for r in range(repeats):
            ram.append(_common.ram_limit(columns, bt.BATCH)["samples_per_s"])
            ds.set_epoch(r + 1)
            res = _common.consume(ds)
            loader.append(res["samples"] / max(float(res["seconds"]), 1e-12))
            ratios.append(loader[-1] / ram[-1])
        alone = []
        for r in range(repeats):
            ds.set_epoch(repeats + r + 1)
            alone.append(loader_alone(ds))
        config = bt.store_config(store, ds)
    finally:
        ds.release_buffers()
        torch.set_num_threads(before)
    return {
        "kind": "contention", "role": "streambatch", "dataset": kind, "format": fmt, "codec": codec,
        "torch_threads": torch_threads, "threads": config.get("threads"), "rows": config.get("rows"),
        "budget_bytes": budget, "batch_size": bt.BATCH,
        "consumer_samples_per_s": consumer["samples_per_s"],
        "ram_limit_samples_per_s": statistics.median(ram), "ram_limit_all": ram,
        "samples_per_s": statistics.median(loader), "samples_per_s_all": loader,
        "vs_ram_paired": statistics.median(ratios), "vs_ram_paired_all": ratios,
        "alone_samples_per_s": statistics.median(alone),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, append its records and regenerate RESULTS.md."""
    p = bt.make_parser(__doc__ or "")
    p.add_argument("--datasets", default="img", help="comma-separated subset of tab,img (default img)")
    p.add_argument("--torch-threads", type=thread_list, default=None,
                   help="torch intra-op thread counts to compare (default: torch's default, then 1)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    kinds = [k.strip() for k in args.datasets.split(",") if k.strip()]
    if not kinds or any(k not in bt.FULL_ROWS for k in kinds):
        p.error(f"unknown dataset(s) in {args.datasets!r}; choose from tab, img")
    default_threads = torch.get_num_threads()
    counts = args.torch_threads or list(dict.fromkeys([default_threads, 1]))
    run_id = bt.new_run_id()
    common = bt.base_record(args, run_id, "bench_contention.py")
    root = bt.data_root(args.data, args.quick)
    for kind in kinds:
        rows = bt.rows_for(kind, args.quick)
        npy = bt.ensure_npy(root, kind, rows)
        budget = bt.budget_for(kind, args.quick)
        bt.warm(npy)
        columns = _common.load_columns(npy)
        try:
            for fmt, codec in LAYOUTS:
                store = bt.store_path(root, kind, fmt, codec)
                bt.ensure_store(npy, store, fmt, codec, rows)
                bt.warm(store)
                for n in counts:
                    bt.log(f"{kind} {fmt}/{codec}: torch threads {n}")
                    rec = measure(kind, fmt, codec, store, columns, budget, args.repeats, n)
                    rec["torch_default_threads"] = default_threads
                    _common.write_record(NAME, {**common, **rec})
                    bt.log(f"  ram-limit {rec['ram_limit_samples_per_s']:,.0f}/s, streambatch "
                           f"{rec['samples_per_s']:,.0f}/s = {rec['vs_ram_paired']:.2f}x (paired), "
                           f"alone {rec['alone_samples_per_s']:,.0f}/s")
        finally:
            del columns
            bt.release_memory()
    import report

    report.main()
    return 0


def render(records: list[dict[str, Any]]) -> str:
    """Markdown section for the records of the latest run."""
    rows = [r for r in records if r.get("role") == "streambatch"]
    if not rows:
        return "## Contention\n\nNo records in the latest run.\n"
    first = rows[0]
    quick = " (**--quick smoke run: tiny datasets, not a measurement**)" if first.get("quick") else ""
    lines = [
        "## Contention: the consumer's threads against the loader's",
        "",
        "How much of the gap to the in-RAM limit is the consume loop's own use of the cores? The "
        "loop sums each batch's `x` in float64 with torch, on all of torch's intra-op threads; the "
        "ram-limit has the cores to itself, a loader's reader threads need them at the same time. "
        f"Adjacent pairs of epochs (ram-limit, then streambatch at default settings; warm cache, "
        f"budget {bt._mib(first['budget_bytes'])} MiB, batch {first['batch_size']}), {first.get('repeats')} "
        f"pairs per row, the ratio is the median of the pairs' ratios{quick}.",
        "",
    ]
    table = []
    for r in rows:
        default = r.get("torch_default_threads")
        table.append({
            "dataset": r["dataset"], "format": r["format"], "codec": r["codec"],
            "torch threads": f"{r['torch_threads']}{' (default)' if r['torch_threads'] == default else ''}",
            "reader threads": r.get("threads"),
            "consume loop alone samples/s": bt._num(r["consumer_samples_per_s"], ",.0f"),
            "ram-limit samples/s": bt._num(r["ram_limit_samples_per_s"], ",.0f"),
            "streambatch samples/s": bt._num(r["samples_per_s"], ",.0f"),
            "× ram-limit (paired)": bt._num(r["vs_ram_paired"], ".2f"),
            "pairs": " ".join(f"{v:.2f}" for v in r["vs_ram_paired_all"]),
            "streambatch, no consumer, samples/s": bt._num(r["alone_samples_per_s"], ",.0f"),
        })
    lines.append(_common.format_table(table, list(table[0])))
    lines += ["", f"Command: `{first.get('command')}`", "", bt.machine_line(first)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
