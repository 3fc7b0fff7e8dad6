#!/usr/bin/env python
"""Scaling benchmark: how does streambatch's throughput grow with reader threads and workers?

On the label-sorted ``tab`` dataset stored as Zarr (codec ``none``), warm page cache, 256 MiB
budget, batch 256:

* in process with ``threads`` = 1, 2, 4, 8, 16 (powers of two up to the CPU count, at least up
  to 4, at most 16; ``--threads 1,2,4,8,16`` chooses the list): one fresh ``StreamDataset`` per
  repeat serves 2 epochs and the 2nd is reported (the steady state: epoch 1 also pays page
  faults on fresh window buffers);
* through ``torch.utils.data.DataLoader(num_workers=0, 1, 2)`` (``--workers 0,2,4,8`` chooses
  the list) with the default threads (the cores divided among the workers): 2 epochs, the 2nd
  reported (workers are not persistent, as in torch's default, so with workers each epoch
  starts new processes);

samples/s and the ratio to ram-limit (measured before and after, mean of the two medians, with
the same consumer: ``--consumer touch``, the default, reads one element of every tensor and keeps
the ids, so that the loader is what is measured, and adds its CPU seconds per GB; ``--consumer
sum`` sums ``x`` in float64 on torch's threads, as a training step would, which for ``img`` is
slower than the loader),
and a plot of throughput against threads (``scaling_threads.png``). Medians of ``--repeats``.
Records carry the machine (``_common.machine_info``: CPU count, usable CPUs, RAM, versions).

A SIGTERM (``timeout``'s signal) stops the run after the configuration being measured: the
configurations finished so far are still written, marked ``partial`` (no ram-limit after).

Usage::

    python benchmarks/bench_scaling.py [--data DIR] [--quick] [--repeats N]
                                       [--threads 1,2,4,8,16] [--workers 0,2,4,8]
                                       [--consumer sum|touch]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import bench_throughput as bt  # noqa: E402  (dataset helpers shared with the throughput benchmark)
from streambatch.storage import FORMATS  # noqa: E402

NAME = "scaling"
KIND = "tab"
FMT, CODEC = "zarr", "none"
EPOCHS = 2
WORKERS = (0, 1, 2)
MAX_THREADS = 16


def stores_list(text: str) -> list[tuple[str, str, str]]:
    """``tab:zarr:none,img:parquet:none`` -> [(kind, format, codec), ...] (argparse type)."""
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        parts = item.split(":")
        if (len(parts) != 3 or parts[0] not in ("tab", "img") or parts[1] not in FORMATS
                or parts[2] not in FORMATS[parts[1]].codecs):
            raise argparse.ArgumentTypeError(f"{item!r}: expected DATASET:FORMAT:CODEC, e.g. tab:zarr:none")
        out.append((parts[0], parts[1], parts[2]))
    return out


def thread_counts(cpus: int | None = None) -> list[int]:
    """1, 2, 4 and further powers of two up to the CPU count, at most :data:`MAX_THREADS`."""
    cpus = cpus or os.cpu_count() or 1
    top = min(MAX_THREADS, max(4, cpus))
    out, t = [], 1
    while t <= top:
        out.append(t)
        t *= 2
    return out


def worker_budget(budget: int, quick: bool, num_workers: int | None) -> int:
    """The budget for ``num_workers`` DataLoader workers: unchanged at full size (256 MiB).

    ``--quick`` budgets are a few batches' bytes (``bt.budget_for``), too small to split among
    more than 2 workers; there each worker beyond 2 adds half of it.
    """
    if not quick or not num_workers or num_workers <= 2:
        return budget
    return budget * num_workers // 2


def int_list(text: str, minimum: int) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (an empty string: no values); every value >= ``minimum``."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {text!r}") from None
    bad = [v for v in values if v < minimum]
    if bad:
        raise argparse.ArgumentTypeError(f"values must be >= {minimum}, got {bad}")
    return values


class _Stop(Exception):
    """Raised in the main thread by the SIGTERM handler: stop measuring, write what is done."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Stop(f"signal {signum}")


def measure(store: Path, budget: int, repeats: int, *, threads: int | None = None,
            num_workers: int | None = None, touch: bool = False) -> dict[str, Any]:
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
            runs.append(bt.run_epoch(source, n, units, quality=e == EPOCHS - 1, touch=touch))
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
        "cpu_s_per_gb": bt.median([r["cpu_seconds"] / (r["bytes"] / 1e9) for r in last]),
        "cpu_per_wall": bt.median([r["cpu_seconds"] / r["wall_seconds"] for r in last]),
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


def run_store(args: Any, common: dict[str, Any], threads_list: list[int], kind: str, fmt: str,
              codec: str) -> bool:
    """Every configuration on one stored dataset; records written.  True if stopped by SIGTERM."""
    root = bt.data_root(args.data, args.quick)
    rows = bt.rows_for(kind, args.quick)
    npy = bt.ensure_npy(root, kind, rows)
    store = bt.ensure_store(npy, bt.store_path(root, kind, fmt, codec), fmt, codec, rows)
    budget = bt.budget_for(kind, args.quick)

    bt.log(f"{kind}: ram-limit (before)")
    touch = args.consumer == "touch"
    ram_before = bt.measure_ram_limit(npy, args.repeats, touch=touch)
    bt.log(f"  ram-limit {ram_before['samples_per_s']:,.0f} samples/s")
    results = []
    failures: list[dict[str, Any]] = []
    jobs = [{"threads": t} for t in threads_list] + [{"num_workers": nw} for nw in args.workers]
    partial = False
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        for job in jobs:
            what = (f"in process, threads {job['threads']}" if "threads" in job
                    else f"DataLoader num_workers {job['num_workers']}")
            bt.log(f"{kind}: {what}")
            try:
                res = measure(store, worker_budget(budget, args.quick, job.get("num_workers")), args.repeats,
                              touch=touch, **job)
            except _Stop:
                raise
            except Exception as exc:  # one broken configuration must not cost the others
                error = f"{type(exc).__name__}: {exc}"
                bt.log(f"  FAILED {what}: {error}")
                traceback.print_exc()
                failures.append({**job, "error": error})
                continue
            results.append(res)
            bt.log(f"  {what} (threads {res['threads']}): {res['samples_per_s']:,.0f} samples/s, "
                   f"epoch 1 {res['epoch1_samples_per_s']:,.0f} samples/s, "
                   f"missing/dup {res['missing']}/{res['duplicated']}")
        bt.log(f"{kind}: ram-limit (after)")
        ram_after = bt.measure_ram_limit(npy, args.repeats, touch=touch)
    except _Stop as exc:
        partial = True
        bt.log(f"stopped by {exc} after {len(results)} of {len(jobs)} configurations; writing those")
        ram_after = {"samples_per_s": float("nan")}
    finally:
        signal.signal(signal.SIGTERM, previous)
    after = ram_after["samples_per_s"]
    ram = (ram_before["samples_per_s"] + after) / 2 if after == after else ram_before["samples_per_s"]
    one = next((r["samples_per_s"] for r in results if r["mode"] == "in-process" and r["threads"] == 1),
               float("nan"))
    for res in results:
        rec = {
            **common,
            "role": "streambatch",
            "dataset": kind,
            "cache": "warm",
            **res,
            "task_bytes": args.task_bytes,
            "consumer": args.consumer,
            "ram_limit_samples_per_s": ram,
            "ram_limit_before_samples_per_s": ram_before["samples_per_s"],
            "ram_limit_after_samples_per_s": ram_after["samples_per_s"],
            "vs_ram": bt.ratio(res["samples_per_s"], ram),
            "vs_one_thread": bt.ratio(res["samples_per_s"], one),
        }
        if partial:
            rec["partial"] = True
        _common.write_record(NAME, rec)
        what = (f"threads {res['threads']}" if res["mode"] == "in-process"
                else f"DataLoader w{res['num_workers']} (threads {res['threads']})")
        bt.log(f"  {what}: {res['samples_per_s']:,.0f} samples/s = {rec['vs_ram']:.2f}x ram-limit, "
               f"{rec['vs_one_thread']:.2f}x one thread")

    for fail in failures:
        _common.write_record(NAME, {**common, "role": "failed", "dataset": kind, "cache": "warm", **fail})
    return partial


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scaling benchmark, append its records and regenerate RESULTS.md."""
    p = bt.make_parser(__doc__ or "")
    p.add_argument("--threads", default=None, metavar="LIST",
                   type=lambda t: int_list(t, 1),
                   help="comma-separated reader threads in process (default: 1, 2, 4, ... up to the "
                        f"CPU count, at least 4, at most {MAX_THREADS}; '' for none)")
    p.add_argument("--workers", default=list(WORKERS), metavar="LIST",
                   type=lambda t: int_list(t, 0),
                   help="comma-separated DataLoader num_workers (default: "
                        f"{','.join(map(str, WORKERS))}; '' for none)")
    p.add_argument("--stores", default=[(KIND, FMT, CODEC)], metavar="LIST", type=stores_list,
                   help="comma-separated DATASET:FORMAT:CODEC to measure, in order "
                        f"(default {KIND}:{FMT}:{CODEC}; e.g. tab:zarr:none,tab:zarr:lz4,img:zarr:none)")
    p.add_argument("--task-bytes", type=int, default=None, metavar="N",
                   help="ablation: the loader's bytes per pool task (default: the library's; 1 = one unit "
                        "per read task and 4 batches per batch task, as before tasks were grouped)")
    bt.add_consumer(p, "touch")
    args = p.parse_args(argv)
    if args.task_bytes is not None:
        import streambatch.loader.pool as pool

        pool.TASK_BYTES = max(1, args.task_bytes)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    threads_list = thread_counts() if args.threads is None else args.threads
    run_id = bt.new_run_id()
    common = bt.base_record(args, run_id, "bench_scaling.py")
    for kind, fmt, codec in args.stores:
        if run_store(args, common, threads_list, kind, fmt, codec):
            break  # stopped by SIGTERM: what was measured is written
    import report

    report.main()
    return 0


def _threads(r: Mapping[str, Any]) -> Any:
    """The threads a row ran with, and those asked where the loader used fewer (local files: at
    most the cores)."""
    asked = r.get("threads_requested")
    return r["threads"] if asked is None or asked == r["threads"] else f"{asked} asked, {r['threads']} used"


def _key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r.get("machine", {}).get("cpu_count"), r["dataset"], r["format"], r["codec"], r.get("task_bytes"),
            r.get("consumer", "sum"))


def render(records: list[dict[str, Any]]) -> str:
    """Markdown section: one table per (machine, dataset, format, codec) of the latest runs."""
    rows = [r for r in records if r.get("role") == "streambatch"]
    if not rows:
        return "## Scaling\n\nNo records in the latest run.\n"
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_key(r), []).append(r)
    parts = ["## Scaling: throughput against threads and DataLoader workers\n"]
    for key in sorted(groups, key=lambda k: (k[0] or 0, k[1], k[2], k[3], k[4] or 0, k[5])):
        parts.append(_render_group(records, groups[key]))
    return "\n".join(parts)


def _render_group(records: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    first = rows[0]
    touch = first.get("consumer") == "touch"
    consumer = ("a consumer that reads one element of every tensor and keeps the ids, so that the loader is "
                "what is measured" if touch else "a consumer that sums x in float64")
    quick = " (**--quick smoke run: tiny dataset, not a measurement**)" if first.get("quick") else ""
    lines = [
        f"### {first['dataset']} {first['format']}/{first['codec']} on {first.get('machine', {}).get('cpu_count')} CPUs"
        + (f" (ablation: {first['task_bytes']} bytes per pool task)" if first.get("task_bytes") else "")
        + (", touch consumer" if touch else ""),
        "",
        "How does the steady-state throughput grow with reader threads in process, and what do "
        f"DataLoader worker processes add (`{first['dataset']}` {first['format']}/{first['codec']}, "
        f"{first['rows']:,} rows, warm cache, budget {bt._mib(first['budget_bytes'])} MiB, batch "
        f"{first['batch_size']}, {consumer}, epoch 2 of 2, medians of {first.get('repeats')} repeats){quick}?",
        "",
    ]
    table = []
    for r in rows:
        mode = "in process" if r["mode"] == "in-process" else f"DataLoader num_workers={r['num_workers']}"
        table.append({
            "mode": mode,
            "threads (per process)": _threads(r),
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
            **({"CPU s/GB": bt._num(r.get("cpu_s_per_gb", float("nan")), ".2f"),
                "CPU / wall": bt._num(r.get("cpu_per_wall", float("nan")), ".2f")} if touch else {}),
        })
    lines.append(_common.format_table(table, list(table[0])))
    inproc = sorted((r for r in rows if r["mode"] == "in-process"), key=lambda r: r["threads"])
    best = max(inproc, key=lambda r: r["samples_per_s"]) if inproc else None
    after = first.get("ram_limit_after_samples_per_s")
    ram_how = (f"mean of {bt._num(first['ram_limit_before_samples_per_s'], ',.0f')} before and "
               f"{bt._num(after, ',.0f')} after" if after is not None and after == after
               else "measured before the loaders only")
    lines += [
        "",
        f"ram-limit: {bt._num(first['ram_limit_samples_per_s'], ',.0f')} samples/s ({ram_how}). "
        "DataLoader workers are not "
        "persistent (torch's default): each epoch forks new workers, each with its share of the budget "
        "and of the cores. Worker RSS counts pages shared after fork once per process.",
    ]
    if best is not None:
        lines += ["", f"Best in process: {best['threads']} thread(s), "
                  f"{bt._num(best['samples_per_s'], ',.0f')} samples/s = {bt._num(best['vs_ram'], '.2f')}× "
                  f"ram-limit, {bt._num(best['vs_one_thread'], '.2f')}× one thread on "
                  f"{best.get('machine', {}).get('cpu_count')} CPUs."]
    complete = all(r["missing"] == 0 and r["duplicated"] == 0 and r.get("foreign", 0) == 0 for r in rows)
    failed = [r for r in records if r.get("role") == "failed" and r.get("run_id") == first.get("run_id")
              and r.get("dataset") == first["dataset"]]
    for r in failed:
        what = (f"in process, threads {r['threads']}" if r.get("threads") is not None
                else f"DataLoader num_workers={r.get('num_workers')}")
        lines += ["", f"**Failed**: {what}: `{r['error']}`"]
    if any(r.get("partial") for r in rows):
        lines += ["", "**Partial run**: stopped (SIGTERM) before every configuration was measured; "
                  "ram-limit is the measurement before the loaders only."]
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
    """``scaling_threads.png``: in-process throughput as a ratio to ram-limit against threads,
    one line per (machine, dataset, format, codec)."""
    series: dict[str, tuple[Sequence[float], Sequence[float]]] = {}
    for r0 in records:
        if r0.get("role") != "streambatch" or r0.get("mode") != "in-process":
            continue
        key = _key(r0)
        label = f"{key[1]} {key[2]}/{key[3]}, {key[0]} CPUs" + (f", {key[4]} B/task" if key[4] else "")
        if label in series:
            continue
        inproc = sorted((r for r in records if r.get("role") == "streambatch" and r.get("mode") == "in-process"
                         and _key(r) == key), key=lambda r: r.get("threads_requested") or r["threads"])
        series[label] = ([float(r.get("threads_requested") or r["threads"]) for r in inproc],
                         [float(r["vs_ram"]) for r in inproc])
    if not series:
        return []
    quick = ", --quick" if any(r.get("quick") for r in records) else ""
    return [_common.plot_lines(Path(out_dir) / "scaling_threads.png", series, "reader threads",
                               "samples/s / ram-limit", f"in-process throughput against threads{quick}",
                               logx=True)]


if __name__ == "__main__":
    sys.exit(main())
