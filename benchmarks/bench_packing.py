#!/usr/bin/env python
"""Packing micro-benchmark: ``streambatch.packing.Packer`` against an in-RAM packing, same documents.

Documents of heavy-tailed length (``_tokens.doc_lengths``: lognormal, 99th percentile 100x the
median of 256 tokens) are written once to ``DIR/packing/tokens_<N>.parquet`` (a ``large_list<int32>``
column ``tokens``; 2**28 tokens = 1 GiB, 2**24 with ``--quick``) and read into RAM.  Each repeat
draws a random document order and times, alternating within the repeat:

* ``in-RAM``: ``_tokens.pack_in_ram``: the documents taken in that order and concatenated at
  once, then cut into batches of sequences, each batch's ``position_ids`` and ``document_ids``
  made as it is served;
* ``packer``: the loader's path: the same order in chunks of ``--chunk-docs`` documents, each
  gathered (``Ragged.take``) and fed to a ``Packer``, its batches taken with ``batches()`` (one
  new buffer per batch);
* ``packer (reused out)``: the same writing every batch into one reused buffer (``write_batch``).

The consumer touches one element of each output.  Figures: tokens/s per path and the ratio of
each packer path to the in-RAM packing of the same repeat (median of the paired ratios), by wall
time and by process CPU time (steadier on a shared machine); the target for the whole loader
later is >= 0.7x.  Both paths' outputs are compared (batch count,
first and last batch) outside the clock.  Usage::

    python benchmarks/bench_packing.py [--data DIR] [--repeats 3] [--quick] [--seq-len 2048] [--batch 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import _tokens  # noqa: E402

from streambatch.packing import OUTPUTS, Packer, batch_nbytes, batch_views  # noqa: E402
from streambatch.ragged import Ragged  # noqa: E402

NAME = "packing"
TARGET = 0.7


def _touch(batches: Iterable[dict[str, np.ndarray]]) -> tuple[int, list[dict[str, np.ndarray]]]:
    """Consume ``batches``, one element of each output read; (batches, copies of the first and last)."""
    n, first, last = 0, None, None
    for b in batches:
        _ = [int(b[k][-1, -1]) for k in OUTPUTS]
        first = first or {k: v.copy() for k, v in b.items()}
        last, n = b, n + 1
    return n, [first or {}, {k: v.copy() for k, v in (last or {}).items()}]


def _packed(docs: Ragged, order: NDArray[np.int64], seq_len: int, batch: int,
            chunk: int) -> Iterable[dict[str, np.ndarray]]:
    p = Packer(seq_len, batch, dtype=docs.values.dtype)
    for a in range(0, order.size, chunk):
        rows = order[a:a + chunk]
        p.feed(docs.take(rows), rows)
        yield from p.batches()
    p.finish()
    yield from p.batches()


def _packed_reused(docs: Ragged, order: NDArray[np.int64], seq_len: int, batch: int,
                   chunk: int) -> Iterable[dict[str, np.ndarray]]:
    p = Packer(seq_len, batch, dtype=docs.values.dtype)
    out = batch_views(np.empty(batch_nbytes(batch, seq_len, docs.values.dtype), np.uint8), batch, seq_len,
                      docs.values.dtype)
    for a in range(0, order.size + chunk, chunk):
        if a < order.size:
            rows = order[a:a + chunk]
            p.feed(docs.take(rows), rows.copy())
        else:
            p.finish()
        while n := p.write_batch(out):
            yield {k: v[:n] for k, v in out.items()}


def _time(fn: Callable[[], Iterable[dict[str, np.ndarray]]]) -> dict[str, Any]:
    cpu0, t0 = _common.process_cpu_seconds(), time.perf_counter()
    n, ends = _touch(fn())
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": _common.process_cpu_seconds() - cpu0,
            "batches": n, "ends": ends}


def _same(a: dict[str, Any], b: dict[str, Any], name: str) -> None:
    ok = a["batches"] == b["batches"] and all(
        np.array_equal(x[k], y[k]) for x, y in zip(a["ends"], b["ends"]) for k in OUTPUTS)
    if not ok:
        raise SystemExit(f"{name}: its batches differ from the in-RAM packing's")


def run(args: argparse.Namespace) -> dict[str, Any]:
    total = 2**24 if args.quick else 2**28
    path = Path(args.data) / "packing" / f"tokens_{total}.parquet"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _tokens.write_token_parquet(path, total, seed=0)
    docs = _tokens.read_token_parquet(path)
    lengths = docs.lengths
    paths = {"in-RAM": _tokens.pack_in_ram, "packer": lambda d, o, s, b: _packed(d, o, s, b, args.chunk_docs),
             "packer (reused out)": lambda d, o, s, b: _packed_reused(d, o, s, b, args.chunk_docs)}
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in paths}
    for r in range(args.repeats):
        order = np.random.default_rng(r).permutation(len(docs)).astype(np.int64)
        for name, fn in paths.items():
            runs[name].append(_time(lambda: fn(docs, order, args.seq_len, args.batch)))
            _same(runs[name][-1], runs["in-RAM"][-1], name)
            print(f"repeat {r} {name:20s} {total / runs[name][-1]['seconds'] / 1e6:8.1f} M tokens/s", flush=True)
    return _summary(args, path, total, lengths, runs)


def _summary(args: argparse.Namespace, path: Path, total: int, lengths: NDArray[np.int64],
             runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    base = runs["in-RAM"]
    out: dict[str, Any] = {
        "file": str(path), "tokens": total, "documents": int(lengths.size),
        "length_p50": float(np.median(lengths)), "length_p99": float(np.percentile(lengths, 99)),
        "length_max": int(lengths.max()), "seq_len": args.seq_len, "batch_size": args.batch,
        "chunk_docs": args.chunk_docs, "repeats": args.repeats, "target": TARGET, "paths": {}}
    for name, rs in runs.items():
        ratios = [b["seconds"] / x["seconds"] for x, b in zip(rs, base)]
        cpu = [b["cpu_seconds"] / x["cpu_seconds"] for x, b in zip(rs, base)]
        out["paths"][name] = {"tokens_per_s": float(np.median([total / x["seconds"] for x in rs])),
                              "cpu_seconds": float(np.median([x["cpu_seconds"] for x in rs])),
                              "ratio_to_in_ram": float(np.median(ratios)), "cpu_ratio_to_in_ram": float(np.median(cpu))}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data", help="folder for the generated Parquet file (default data/)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="2**24 tokens instead of 2**28")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--chunk-docs", type=int, default=256, help="documents per feed() (default 256)")
    p.add_argument("--no-record", action="store_true", help="do not append to records/packing.jsonl")
    args = p.parse_args(argv)
    res = run(args)
    rows = [{"path": name, "M tokens/s": v["tokens_per_s"] / 1e6, "CPU s": v["cpu_seconds"],
             "vs in-RAM": v["ratio_to_in_ram"], "vs in-RAM (CPU)": v["cpu_ratio_to_in_ram"]}
            for name, v in res["paths"].items()]
    print(_common.format_table(rows, ["path", "M tokens/s", "CPU s", "vs in-RAM", "vs in-RAM (CPU)"]))
    print(f"{res['documents']} documents, length p50 {res['length_p50']:.0f}, p99 {res['length_p99']:.0f}, "
          f"max {res['length_max']}; target >= {TARGET}x for the loader")
    if not args.no_record:
        print("record:", _common.write_record(NAME, {**res, "quick": args.quick}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
