#!/usr/bin/env python
"""Cold-cache benchmark: how close to the disk does a streambatch epoch get when nothing is cached?

For the label-sorted ``tab`` dataset stored as Zarr (codec ``none`` and ``lz4``) and as Parquet,
each repeat

1. evicts every file of the dataset from the page cache (``_common.evict``: ``fdatasync`` and
   ``POSIX_FADV_DONTNEED`` per file, never the machine's whole cache),
2. reads the same files sequentially in 8 MiB blocks (``_common.sequential_read``): the disk
   limit, measured in the same run,
3. evicts them again and serves one shuffled epoch in process (256 MiB budget, batch 256,
   default threads), timing it with the shared consumption loop: ``--consumer touch`` (the
   default) reads one element of every tensor, so that the loader is what is measured;
   ``--consumer sum`` sums ``x`` in float64 on torch's threads, which compete with the loader's.

After the repeats the files are cached again and the same dataset serves as many warm epochs:
their stored MB/s is the ceiling of a cold epoch (reads fully hidden), reported next to it.

The epoch's rate is stated twice against the sequential read: stored bytes (what the disk had to
deliver) per second and decoded bytes (the tensors served) per second. One ``StreamDataset``
per configuration serves every repeat (``set_epoch``), after one untimed warm-up epoch that
allocates its window buffers, so each timed epoch is what every epoch of an out-of-core
training run costs. A sequential read of the cached files after the repeats (the warm read)
shows that eviction took effect. Medians of ``--repeats`` (default 3).

Usage::

    python benchmarks/bench_cold.py [--data DIR] [--quick] [--repeats N] [--consumer touch|sum]
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import bench_throughput as bt  # noqa: E402  (dataset helpers shared with the throughput benchmark)

NAME = "cold"
KIND = "tab"
CONFIGS: list[tuple[str, str]] = _common.layouts()  # every format uncompressed, the default one with lz4 too
TARGET = 0.7
"""Epoch stored MB/s at least this fraction of the cold sequential read."""
EVICTION_SUSPECT = 0.8
"""A cold read this close to the warm read suggests eviction did not take effect."""


def measure_cold(store: Path, budget: int, repeats: int, touch: bool = True) -> dict[str, Any]:
    """Cold sequential read and cold epoch of one stored dataset, ``repeats`` times."""
    from streambatch import StreamDataset

    ds = StreamDataset(store, batch_size=bt.BATCH, shuffle=True, seed=0, memory_budget=budget)
    config = bt.store_config(store, ds)
    n, units = ds.manifest.rows, ds.manifest.unit_rows
    # Untimed warm-up epoch: allocates (and faults in) the window buffers kept between epochs.
    ds.set_epoch(0)
    warmup = bt.run_epoch(ds, n, units, quality=False, touch=touch)
    runs: list[dict[str, Any]] = []
    for r in range(repeats):
        evicted = _common.evict(store)
        seq = _common.sequential_read(store)
        _common.evict(store)
        ds.set_epoch(r + 1)
        ep = bt.run_epoch(ds, n, units, touch=touch)
        seconds = max(float(ep["seconds"]), 1e-12)
        stored_mb_s = seq["bytes"] / 1e6 / seconds
        runs.append({
            **ep,
            "evicted_bytes": evicted["bytes"],
            "seq_mb_per_s": seq["mb_per_s"],
            "seq_seconds": seq["seconds"],
            "stored_mb_per_s": stored_mb_s,
            "stored_vs_seq": stored_mb_s / seq["mb_per_s"],
            "decoded_vs_seq": ep["mb_per_s"] / seq["mb_per_s"],
        })
    bt.warm(store)  # cache everything, then time a warm read and warm epochs for comparison
    warm_read = _common.sequential_read(store)
    warm_epochs = []
    for r in range(repeats):
        ds.set_epoch(repeats + r + 1)
        warm_epochs.append(seq_bytes_of(runs) / 1e6 / max(float(bt.run_epoch(ds, n, units, quality=False,
                                                                                       touch=touch)["seconds"]),
                                                           1e-12))
    ds.release_buffers()
    del ds
    bt.release_memory()

    def med(key: str) -> float:
        return bt.median([r[key] for r in runs])

    return {
        **config,
        "cache": "cold",
        "warmup_epoch_seconds": warmup["seconds"],
        "seq_bytes": int(runs[0]["evicted_bytes"]) if runs else None,
        "seq_mb_per_s": med("seq_mb_per_s"),
        "seq_seconds": med("seq_seconds"),
        "warm_read_mb_per_s": warm_read["mb_per_s"],
        # the same loader with everything cached: what a cold epoch reaches if its reads are hidden
        "warm_epoch_mb_per_s": bt.median(warm_epochs),
        "cold_vs_warm_epoch": med("stored_mb_per_s") / bt.median(warm_epochs),
        "ceiling_vs_seq": bt.median(warm_epochs) / med("seq_mb_per_s"),
        "epoch_seconds": med("seconds"),
        "samples_per_s": med("samples_per_s"),
        "decoded_mb_per_s": med("mb_per_s"),
        "stored_mb_per_s": med("stored_mb_per_s"),
        "stored_vs_seq": med("stored_vs_seq"),
        "decoded_vs_seq": med("decoded_vs_seq"),
        "first_batch_s": med("first_batch_s"),
        "runs_stored_vs_seq": [r["stored_vs_seq"] for r in runs],
        "runs_seq_mb_per_s": [r["seq_mb_per_s"] for r in runs],
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
        "peak_rss_delta_bytes": max(r["peak_rss_delta_bytes"] for r in runs),
        "missing": sum(r["missing"] for r in runs),
        "duplicated": sum(r["duplicated"] for r in runs),
        "foreign": sum(r["foreign"] for r in runs),
        "epochs_checked": len(runs),
        "deff": med("deff"),
        "kl_ratio": med("kl_ratio"),
        "frac_missing_class": med("frac_missing_class"),
        "spearman": med("spearman"),
    }


def seq_bytes_of(runs: Sequence[Mapping[str, Any]]) -> int:
    """Bytes of the dataset's files (what each repeat's sequential read read)."""
    return int(runs[0]["evicted_bytes"]) if runs else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the cold-cache benchmark, append its records and regenerate RESULTS.md."""
    p = bt.make_parser(__doc__ or "")
    bt.add_consumer(p, "touch")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    run_id = bt.new_run_id()
    common = bt.base_record(args, run_id, "bench_cold.py")
    root = bt.data_root(args.data, args.quick)
    rows = bt.rows_for(KIND, args.quick)
    npy = bt.ensure_npy(root, KIND, rows)
    budget = bt.budget_for(KIND, args.quick)
    for fmt, codec in CONFIGS:
        bt.log(f"{KIND}: cold {fmt} {codec}")
        store = bt.store_path(root, KIND, fmt, codec)
        try:
            bt.ensure_store(npy, store, fmt, codec, rows)
            res = measure_cold(store, budget, args.repeats, touch=args.consumer == "touch")
        except Exception as exc:  # one broken configuration must not cost the whole run
            _common.write_record(NAME, {**common, "role": "streambatch", "dataset": KIND, "rows": rows,
                                        "cache": "cold", **bt.failure(exc, store, fmt, codec, budget)})
            continue
        rec = {**common, "role": "streambatch", "dataset": KIND, "consumer": args.consumer, **res}
        rec["targets"] = check_targets(rec)
        _common.write_record(NAME, rec)
        bt.log(f"  seq read {res['seq_mb_per_s']:.0f} MB/s (warm {res['warm_read_mb_per_s']:.0f}), epoch "
               f"{res['stored_mb_per_s']:.0f} MB/s stored = {res['stored_vs_seq']:.2f}x, "
               f"{res['decoded_mb_per_s']:.0f} MB/s decoded = {res['decoded_vs_seq']:.2f}x")

    import report

    report.main()
    return 0


def check_targets(rec: Mapping[str, Any]) -> dict[str, bool]:
    """Cold epoch (stored bytes) at least :data:`TARGET` of the cold sequential read; complete."""
    return {
        "disk": bool(rec["stored_vs_seq"] >= TARGET),
        "complete": bool(rec["missing"] == 0 and rec["duplicated"] == 0 and rec.get("foreign", 0) == 0),
    }


def render(records: list[dict[str, Any]]) -> str:
    """Markdown section for the records of one run of this benchmark."""
    everything = [r for r in records if r.get("role") == "streambatch"]
    rows = [r for r in everything if "error" not in r]
    failed = [r for r in everything if "error" in r]
    if not everything:
        return "## Cold cache\n\nNo records in the latest run.\n"
    if not rows:
        return "## Cold cache\n\nEvery configuration failed:\n\n" + bt.error_lines(failed) + "\n"
    first = rows[0]
    quick = " (**--quick smoke run: tiny dataset, not a measurement**)" if first.get("quick") else ""
    lines = [
        "## Cold cache: an epoch against a sequential read of the same files",
        "",
        "How close to the disk does one shuffled epoch get when nothing is cached "
        f"(`{first['dataset']}`, {first['rows']:,} rows, budget {bt._mib(first['budget_bytes'])} MiB, "
        f"batch {first['batch_size']}, {first['threads']} threads, "
        + ("a consumer that reads one element of every tensor, so that the loader is what is measured, "
           if first.get("consumer") == "touch" else "a consumer that sums x in float64, ")
        + f"medians of {first.get('repeats')} "
        f"repeats){quick}?",
        "",
    ]
    table = []
    for r in rows:
        table.append({
            "format": r["format"], "codec": r["codec"],
            "stored MB": bt._num(r["seq_bytes"] / 1e6, ".0f"),
            "decoded MB": bt._num(r["decoded_bytes"] / 1e6, ".0f"),
            "cold seq read MB/s": bt._num(r["seq_mb_per_s"], ".0f"),
            "warm read MB/s": bt._num(r["warm_read_mb_per_s"], ".0f"),
            "epoch s": bt._num(r["epoch_seconds"], ".2f"),
            "epoch stored MB/s": bt._num(r["stored_mb_per_s"], ".0f"),
            "× seq (stored)": bt._num(r["stored_vs_seq"], ".2f"),
            "warm epoch stored MB/s": bt._num(r.get("warm_epoch_mb_per_s"), ".0f"),
            "× warm epoch": bt._num(r.get("cold_vs_warm_epoch"), ".2f"),
            "ceiling: warm epoch / seq": bt._num(r.get("ceiling_vs_seq"), ".2f"),
            "epoch decoded MB/s": bt._num(r["decoded_mb_per_s"], ".0f"),
            "× seq (decoded)": bt._num(r["decoded_vs_seq"], ".2f"),
            "samples/s": bt._num(r["samples_per_s"], ",.0f"),
            "first batch s": bt._num(r["first_batch_s"], ".3f"),
            "peak RSS MiB (Δ) / predicted": (f"{bt._mib(r['peak_rss_bytes'])} ({bt._mib(r['peak_rss_delta_bytes'])})"
                                             f" / {bt._mib(r['predicted_peak_bytes'])}"),
            "missing / dup": f"{r['missing']} / {r['duplicated']}",
            "deff (pred.)": f"{bt._num(r['deff'], '.2f')} ({bt._num(r['predicted_deff'], '.2f')})",
        })
    lines.append(_common.format_table(table, list(table[0])))
    suspect = [f"{r['format']}/{r['codec']}" for r in rows
               if r["seq_mb_per_s"] >= EVICTION_SUSPECT * r["warm_read_mb_per_s"]]
    lines += [
        "",
        "Each repeat: evict the dataset's files, read them sequentially (8 MiB blocks), evict again, "
        "serve one epoch. Stored MB/s = bytes of the dataset's files / epoch seconds; decoded MB/s = "
        "bytes of the tensors served / epoch seconds. Every timed epoch reuses the window buffers of "
        "an untimed warm-up epoch (as every epoch after the first does). Warm read = the same "
        "sequential read from the page cache. Warm epoch = the same loader after the files are "
        "cached again (median of as many epochs): a cold epoch cannot beat it, so where the disk "
        "reads faster than the warm epoch serves, the ratio to the sequential read is capped at "
        "the ceiling column, whatever the reads do.",
    ]
    if suspect:
        lines += ["", f"**Warning:** the cold read of {', '.join(suspect)} is within "
                  f"{EVICTION_SUSPECT:.0%} of the warm read: the eviction may not have taken effect."]
    if failed:
        lines += ["", "**Configurations that failed** (no figures):", "", bt.error_lines(failed)]
    lines += [
        "",
        f"Command: `{first['command']}`",
        "",
        bt.machine_line(first),
        "",
        target_line(rows, failed),
    ]
    return "\n".join(lines) + "\n"


def target_line(rows: Sequence[Mapping[str, Any]], failed: Sequence[Mapping[str, Any]] = ()) -> str:
    """The sentence stating which targets hold or fail."""
    goal = (f"Target: a cold epoch reaches ≥ {TARGET}× the cold sequential read (stored bytes per "
            "second), with no id missing or duplicated.")
    fails = [f"{r['format']}/{r['codec']}: raised an error" for r in failed]
    for r in rows:
        t = r.get("targets") or check_targets(r)
        missed = [k for k, ok in t.items() if not ok]
        if missed:
            fails.append(f"{r['format']}/{r['codec']} ({bt._num(r['stored_vs_seq'], '.2f')}×): " + ", ".join(missed))
    held = [f"{r['format']}/{r['codec']} ({bt._num(r['stored_vs_seq'], '.2f')}×)" for r in rows
            if all((r.get("targets") or check_targets(r)).values())]
    parts = []
    if held:
        parts.append("**Holds:** " + ", ".join(held) + ".")
    if fails:
        parts.append("**Fails:** " + "; ".join(fails) + ".")
    return goal + " " + " ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
