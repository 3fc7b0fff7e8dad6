#!/usr/bin/env python
"""Packed token batches through the loader against an in-RAM packing of the same documents.

Documents of heavy-tailed length (``_tokens.doc_lengths``: lognormal, 99th percentile 100x the
median of 256 tokens; 2**28 int32 tokens = 1 GiB, 2**24 with ``--quick``) are written once to
``DIR/tokens/tokens_<N>.parquet`` and converted once with ``streambatch convert`` (Parquet,
``large_list<int32>``).  Each repeat, alternating:

* ``in-RAM``: the documents read into RAM beforehand (outside the clock), taken in a random
  order, concatenated and cut into batches (``_tokens.pack_in_ram``);
* ``streambatch``: one epoch of ``StreamDataset(ds, batch_size=B, pack=Pack("tokens", L),
  memory_budget=--budget)``, warm page cache, served as tensors.

Each timed epoch follows an untimed epoch of the same path (:func:`_time`; the loader's peak RSS
is sampled in that one), as in a training run, which runs one of them.  The in-RAM packing's time
depends on what ran before it in the process: 2.5-4.4 s as a process's first epoch and 2-3x its
usual time right after a loader epoch (the page faults of its 1 GB gather), against 1.1-1.6 s
after one of its own; timed after whatever ran before, it made the loader look 1.3-2x closer
than it is.

The consumer touches one element of each output.  Figures: tokens/s of each path, the loader's
ratio to the in-RAM packing of the same repeat (target >= 0.7x), process CPU seconds per GB of
tokens, and the loader's peak RSS above the RSS before its epoch (the in-RAM documents stay
allocated throughout) against its budget.  Both paths deliver every token once (checked).
Usage::

    python benchmarks/bench_tokens.py [--data DIR] [--repeats 3] [--quick] [--budget 256MiB]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import _tokens  # noqa: E402

import streambatch  # noqa: E402
from streambatch import Pack, StreamDataset  # noqa: E402
from streambatch._sizes import format_size, parse_size  # noqa: E402

NAME = "tokens"
TARGET = 0.7


def _touch(batches: Iterable[dict[str, Any]]) -> int:
    """Consume ``batches``, one element of each output read; the real tokens delivered.  The same
    numpy code for both paths: the loader's tensors are looked at through their numpy views (no
    copy), since a torch op in the consumer waits for the reader threads' interpreter lock where
    the in-RAM path's numpy op does not (docs/PERFORMANCE.md, "Packed tokens")."""
    tokens = 0
    for b in batches:
        arrays = {k: np.asarray(b[k]) for k in ("tokens", "position_ids", "document_ids")}
        _ = [int(a[-1, -1]) for a in arrays.values()]
        tokens += int((arrays["document_ids"] >= 0).sum())
    return tokens


def _time(fn: Callable[[], Iterable[dict[str, Any]]], rss: bool) -> dict[str, Any]:
    """An untimed epoch of ``fn`` (its peak RSS above its start sampled, with ``rss``), then a
    timed one with nothing else running: the sampler's thread takes the GIL every 20 ms."""
    extra = {}
    if rss:
        with _common.PeakRSS() as mem:
            _touch(fn())
        extra = {"peak_rss_above_start": mem.peak - mem.start}
    else:
        _touch(fn())
    cpu0, t0 = _common.process_cpu_seconds(), time.perf_counter()
    tokens = _touch(fn())
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": _common.process_cpu_seconds() - cpu0,
            "tokens": tokens, **extra}


def _dataset(args: argparse.Namespace, total: int) -> tuple[Path, Path]:
    folder = Path(args.data) / "tokens"
    src, dst = folder / f"tokens_{total}.parquet", folder / f"tokens_{total}.sb"
    if not src.exists():
        folder.mkdir(parents=True, exist_ok=True)
        _tokens.write_token_parquet(src, total, seed=0)
    if not dst.exists():
        t0 = time.perf_counter()
        streambatch.convert(src, dst, progress=False)
        print(f"converted in {time.perf_counter() - t0:.1f} s", flush=True)
    return src, dst


def run(args: argparse.Namespace) -> dict[str, Any]:
    total = 2**24 if args.quick else 2**28
    src, dst = _dataset(args, total)
    docs = _tokens.read_token_parquet(src)
    real = int(docs.lengths.sum())
    budget = parse_size(args.budget, "budget")
    runs: dict[str, list[dict[str, Any]]] = {"in-RAM": [], "streambatch": []}
    for r in range(args.repeats):
        order = np.random.default_rng(r).permutation(len(docs)).astype(np.int64)
        ds = StreamDataset(dst, batch_size=args.batch, pack=Pack("tokens", seq_len=args.seq_len),
                           memory_budget=budget, seed=r)
        paths = {"in-RAM": (lambda: _tokens.pack_in_ram(docs, order, args.seq_len, args.batch), False),
                 "streambatch": (lambda: iter(ds), True)}
        for name in (paths if r % 2 == 0 else reversed(list(paths))):
            fn, rss = paths[name]
            runs[name].append(_time(fn, rss))
            if runs[name][-1]["tokens"] != real:
                raise SystemExit(f"{name}: delivered {runs[name][-1]['tokens']} tokens of {real}")
            print(f"repeat {r} {name:12s} {real / runs[name][-1]['seconds'] / 1e6:8.1f} M tokens/s", flush=True)
    return _summary(args, dst, real, docs.lengths, budget, runs)


def _summary(args: argparse.Namespace, dst: Path, real: int, lengths: np.ndarray, budget: int,
             runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    base = runs["in-RAM"]
    gb = 4 * real / 1e9
    out: dict[str, Any] = {
        "dataset": str(dst), "tokens": real, "gb": gb, "documents": int(lengths.size),
        "length_p50": float(np.median(lengths)), "length_p99": float(np.percentile(lengths, 99)),
        "length_max": int(lengths.max()), "seq_len": args.seq_len, "batch_size": args.batch,
        "budget_bytes": budget, "repeats": args.repeats, "target": TARGET, "paths": {}}
    for name, rs in runs.items():
        out["paths"][name] = {
            "tokens_per_s": float(np.median([real / x["seconds"] for x in rs])),
            "cpu_s_per_gb": float(np.median([x["cpu_seconds"] / gb for x in rs])),
            "ratio_to_in_ram": float(np.median([b["seconds"] / x["seconds"] for x, b in zip(rs, base)]))}
        if "peak_rss_above_start" in rs[0]:
            out["paths"][name]["peak_rss_above_start"] = int(max(x["peak_rss_above_start"] for x in rs))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data", help="folder for the generated files (default data/)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="2**24 tokens instead of 2**28")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--budget", default="256MiB", help="the loader's memory_budget (default 256MiB)")
    p.add_argument("--no-record", action="store_true", help="do not append to records/tokens.jsonl")
    args = p.parse_args(argv)
    res = run(args)
    rows = [{"path": name, "M tokens/s": v["tokens_per_s"] / 1e6, "CPU s/GB": v["cpu_s_per_gb"],
             "vs in-RAM": v["ratio_to_in_ram"]} for name, v in res["paths"].items()]
    print(_common.format_table(rows, ["path", "M tokens/s", "CPU s/GB", "vs in-RAM"]))
    peak = res["paths"]["streambatch"]["peak_rss_above_start"]
    print(f"{res['documents']} documents ({res['gb']:.2f} GB of tokens), length p50 {res['length_p50']:.0f}, "
          f"p99 {res['length_p99']:.0f}, max {res['length_max']}; loader peak RSS +{format_size(peak)} "
          f"under a budget of {format_size(res['budget_bytes'])}; target >= {TARGET}x")
    if not args.no_record:
        _common.write_record(NAME, {**res, "quick": bool(args.quick),
                                    "command": " ".join(["python", "benchmarks/bench_tokens.py", *sys.argv[1:]])})
    return 0


def render(records: list[dict[str, Any]]) -> str:
    """The markdown section for the latest record (``python benchmarks/report.py``)."""
    r = records[-1]
    quick = " (**--quick: 2**24 tokens, not the real figures**)" if r.get("quick") else ""
    rows = [{"path": name, "M tokens/s": f"{v['tokens_per_s'] / 1e6:.1f}", "CPU s/GB": f"{v['cpu_s_per_gb']:.2f}",
             "× in-RAM": f"{v['ratio_to_in_ram']:.2f}",
             "peak RSS above start MiB": f"{v['peak_rss_above_start'] / 2**20:.0f}" if "peak_rss_above_start" in v else "–"}
            for name, v in r["paths"].items()]
    ratio = r["paths"]["streambatch"]["ratio_to_in_ram"]
    peak = r["paths"]["streambatch"].get("peak_rss_above_start", 0)
    m = r.get("machine", {})
    return "\n".join([
        "## Tokens: packed sequences against an in-RAM packing" + quick,
        "",
        f"{r['documents']:,} documents ({r['gb']:.2f} GB of int32 tokens; lengths p50 {r['length_p50']:.0f}, p99 "
        f"{r['length_p99']:.0f}, max {r['length_max']:,}) packed into [{r['batch_size']}, {r['seq_len']}] batches: "
        "`StreamDataset(ds, batch_size, pack=Pack(\"tokens\", seq_len), memory_budget)` against the same documents "
        "in RAM, taken in a random order, concatenated and cut (`_tokens.pack_in_ram`), alternated within each of "
        f"{r['repeats']} repeats (× in-RAM: the median of the paired ratios), each timed epoch after an untimed one "
        "of the same path (the loader's peak RSS sampled in that one); every token delivered once by both.",
        "",
        _common.format_table(rows, list(rows[0])),
        "",
        ("holds" if ratio >= r["target"] else "FAILS") + f": packed sequences at >= {r['target']}x the in-RAM "
        f"packing ({ratio:.2f}x); " + ("holds" if peak <= r["budget_bytes"] else "FAILS")
        + f": the loader's peak RSS above its epoch's start ({format_size(peak)}) within its budget "
        f"({format_size(r['budget_bytes'])}).",
        "",
        f"Command: `{r.get('command', 'python benchmarks/bench_tokens.py')}`",
        "",
        f"Machine: {m.get('cpu_count')} CPUs, Python {m.get('python')}, numpy {m.get('numpy')}, pyarrow "
        f"{m.get('pyarrow')}, torch {m.get('torch')}, streambatch {m.get('streambatch')}.",
    ]) + "\n"


if __name__ == "__main__":
    sys.exit(main())
