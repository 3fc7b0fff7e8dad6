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

torch's intra-op threads come from libgomp, whose idle threads spin for a while after each
parallel region before they sleep (``OMP_WAIT_POLICY`` unset).  A consumer that sums a batch
every few milliseconds keeps its second thread spinning and so takes a core away from the
reader threads.  ``--wait-policies default,passive`` (the default) therefore repeats every
row with more than one torch thread in a child process started with ``OMP_WAIT_POLICY=PASSIVE``
(the variable is read when libgomp loads, so it cannot be changed in this process); the
``OMP wait policy`` column tells the rows apart.

Usage::

    python benchmarks/bench_contention.py [--data DIR] [--quick] [--repeats N]
                                          [--datasets img] [--torch-threads 2,1]
                                          [--wait-policies default,passive]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
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
LAYOUTS = [(fmt, codec) for fmt, codec in _common.layouts() if codec == "none"]  # every format, uncompressed
POLICIES = ("default", "passive")


def wait_policy() -> str:
    """This process's libgomp wait policy as the table names it: ``OMP_WAIT_POLICY`` lower-cased,
    or ``default`` when it is unset."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().lower() or "default"


def policy_list(text: str) -> list[str]:
    """``"default,passive"`` -> ["default", "passive"] (argparse type)."""
    out = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not out or any(t not in POLICIES for t in out):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(POLICIES)}, got {text!r}")
    return list(dict.fromkeys(out))


def child_argv(argv: Sequence[str], run_id: str, counts: Sequence[int]) -> list[str]:
    """The arguments of the ``OMP_WAIT_POLICY=PASSIVE`` child: this run's, without the options the
    parent decides (wait policies, torch threads), plus the run id its records join and
    ``--no-report`` (the parent writes RESULTS.md once both have measured)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in ("--wait-policies", "--torch-threads", "--run-id"):
            skip = "=" not in a
            continue
        if name == "--no-report":
            continue
        out.append(a)
    return [*out, "--wait-policies", "passive", "--torch-threads", ",".join(map(str, counts)),
            "--run-id", run_id, "--no-report"]


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
        "alone_samples_per_s": statistics.median(alone), "omp_wait_policy": wait_policy(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, append its records and regenerate RESULTS.md."""
    p = bt.make_parser(__doc__ or "")
    p.add_argument("--datasets", default="img", help="comma-separated subset of tab,img (default img)")
    p.add_argument("--torch-threads", type=thread_list, default=None,
                   help="torch intra-op thread counts to compare (default: torch's default, then 1)")
    p.add_argument("--wait-policies", type=policy_list, default=list(POLICIES),
                   help="libgomp wait policies to compare (default: default,passive; passive rows run "
                        "in a child process, for torch thread counts above 1)")
    p.add_argument("--run-id", default=None, help=argparse.SUPPRESS)  # the child's records join the parent's run
    p.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    kinds = [k.strip() for k in args.datasets.split(",") if k.strip()]
    if not kinds or any(k not in bt.FULL_ROWS for k in kinds):
        p.error(f"unknown dataset(s) in {args.datasets!r}; choose from tab, img")
    default_threads = torch.get_num_threads()
    counts = args.torch_threads or list(dict.fromkeys([default_threads, 1]))
    run_id = args.run_id or bt.new_run_id()
    common = bt.base_record(args, run_id, "bench_contention.py")
    here = wait_policy()
    if here not in args.wait_policies:
        p.error(f"this process runs with OMP_WAIT_POLICY={here!r}; --wait-policies must include it")
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
    spinning = [n for n in counts if n > 1]
    if "passive" in args.wait_policies and here != "passive" and spinning:
        bt.log("the same rows with OMP_WAIT_POLICY=PASSIVE (a child process)")
        argv_now = list(sys.argv[1:] if argv is None else argv)
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        subprocess.run([sys.executable, str(Path(__file__).resolve()), *child_argv(argv_now, run_id, spinning)],
                       env=env, check=True)
    if not args.no_report:
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
        "torch's idle intra-op threads spin (libgomp) unless `OMP_WAIT_POLICY=PASSIVE` is set before "
        "torch loads; rows with `passive` ran in a child process started so. "
        f"Adjacent pairs of epochs (ram-limit, then streambatch at default settings; warm cache, "
        f"budget {bt._mib(first['budget_bytes'])} MiB, batch {first['batch_size']}); the ratio is the median "
        f"of the pairs' ratios (column `pairs`){quick}.",
        "",
    ]
    table = []
    for r in rows:
        default = r.get("torch_default_threads")
        table.append({
            "dataset": r["dataset"], "format": r["format"], "codec": r["codec"],
            "torch threads": f"{r['torch_threads']}{' (default)' if r['torch_threads'] == default else ''}",
            "OMP wait policy": r.get("omp_wait_policy", "default"),
            "reader threads": r.get("threads"),
            "consume loop alone samples/s": bt._num(r["consumer_samples_per_s"], ",.0f"),
            "ram-limit samples/s": bt._num(r["ram_limit_samples_per_s"], ",.0f"),
            "streambatch samples/s": bt._num(r["samples_per_s"], ",.0f"),
            "× ram-limit (paired)": bt._num(r["vs_ram_paired"], ".2f"),
            "pairs": " ".join(f"{v:.2f}" for v in r["vs_ram_paired_all"]),
            "streambatch, no consumer, samples/s": bt._num(r["alone_samples_per_s"], ",.0f"),
        })
    lines.append(_common.format_table(table, list(table[0])))
    commands = list(dict.fromkeys(str(r.get("command")) for r in rows if "--no-report" not in str(r.get("command"))))
    lines += ["", "Command" + ("s" if len(commands) > 1 else "") + ": " + ", ".join(f"`{c}`" for c in commands),
              "", bt.machine_line(first)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
