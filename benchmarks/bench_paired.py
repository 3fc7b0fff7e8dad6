#!/usr/bin/env python
"""Epoch throughput of two source trees of streambatch, paired in one process (for refactors).

    python benchmarks/bench_paired.py --a OLD_TREE --b NEW_TREE --data DIR [--repeats 7]
           [--budget 64MiB] [--datasets tab.zarr,tab.parquet,img.zarr,img.parquet] [--num-workers 2]
           [--persistent]

``DIR`` holds converted datasets (e.g. ``tools/make_datasets.py tab DIR/tab-npy --rows 400000``,
then ``streambatch convert DIR/tab-npy DIR/tab.zarr --label y``); ``--data-a`` gives tree A datasets
of its own where the trees write different files (each tree reads what it converts).  Both trees' ``streambatch``
packages are imported into this one process under two names (the package imports itself only
relatively), so that on a shared, loaded machine both see the same conditions: per dataset, one
``StreamDataset`` of each tree serves a warm-up epoch (it pays the page faults of fresh window
buffers and warms the page cache; its served ids and ``x`` sum must match between the trees),
then epochs alternate A B B A A B ... (``--repeats`` each) with a light consumer that touches every
batch.  The table gives the median samples/s per tree, B / A, and the median of the per-pair
ratios; samples per CPU-second (all threads, and DataLoader workers once reaped) vary less than
wall-clock rates on a busy machine.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

DATASETS = "tab.zarr,tab.parquet,img.zarr,img.parquet"
PERSISTENT = False  # --persistent


def _import_tree(tree: Path, alias: str, links: Path) -> ModuleType:
    """``tree/streambatch`` imported as the top-level package ``alias``."""
    (links / alias).symlink_to(tree.resolve() / "streambatch", target_is_directory=True)
    return importlib.import_module(alias)


_LOADERS: dict[int, Any] = {}  # --persistent: each dataset's DataLoader, kept across epochs


def _batches(ds: Any, workers: int) -> Any:
    """The dataset itself, or a DataLoader of ``workers`` fresh worker processes (persistent ones,
    kept across epochs, with ``--persistent``)."""
    if not workers:
        return ds
    import torch

    if PERSISTENT:
        if id(ds) not in _LOADERS:
            _LOADERS[id(ds)] = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers,
                                                           persistent_workers=True)
        return _LOADERS[id(ds)]
    return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)


def _warm_up(ds: Any, workers: int) -> tuple[str, float]:
    import numpy as np
    import torch

    ids, x_sum = [], 0.0
    for b in _batches(ds, workers):
        ids.append(b["id"].numpy().copy())
        x_sum += float(b["x"].sum(dtype=torch.float64))
    return hashlib.sha1(np.concatenate(ids).tobytes()).hexdigest(), x_sum


def _epoch(ds: Any, epoch: int, workers: int) -> tuple[float, float]:
    """(samples per second, samples per CPU-second) of one epoch with a light consumer."""
    ds.set_epoch(epoch)
    n, touched = 0, 0.0
    t0, c0 = time.perf_counter(), _common.process_cpu_seconds()
    for b in _batches(ds, workers):
        n += b["id"].shape[0]
        touched += float(b["x"].reshape(-1)[-1])
    return n / (time.perf_counter() - t0), n / (_common.process_cpu_seconds() - c0)


def _measure(packages: dict[str, ModuleType], paths: dict[str, Path], args: argparse.Namespace) -> str:
    sets = {k: p.StreamDataset(paths[k], batch_size=256, memory_budget=args.budget, seed=0)
            for k, p in packages.items()}
    path = paths["B"]
    same = len({_warm_up(ds, args.num_workers) for ds in sets.values()}) == 1
    wall: dict[str, list[float]] = {"A": [], "B": []}
    cpu: dict[str, list[float]] = {"A": [], "B": []}
    for r in range(args.repeats):
        for key in ("A", "B") if r % 2 == 0 else ("B", "A"):  # A B B A ...: neither always goes first
            w, c = _epoch(sets[key], r + 1, args.num_workers)
            wall[key].append(w)
            cpu[key].append(c)
    med = {k: statistics.median(v) for k, v in wall.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    pair = statistics.median(b / a for a, b in zip(wall["A"], wall["B"]))
    return (f"| {path.name} | {med['A']:,.0f} | {med['B']:,.0f} | {med['B'] / med['A']:.3f} | {pair:.3f} | "
            f"{cmed['A']:,.0f} | {cmed['B']:,.0f} | {cmed['B'] / cmed['A']:.3f} | {'yes' if same else 'NO'} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", type=Path, required=True, help="the old source tree (holds streambatch/)")
    ap.add_argument("--b", type=Path, required=True, help="the new source tree")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--data-a", type=Path, default=None,
                    help="A's datasets where the trees write different files (default: --data)")
    ap.add_argument("--datasets", default=DATASETS)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--budget", default="64MiB")
    ap.add_argument("--persistent", action="store_true",
                    help="persistent DataLoader workers (their CPU is not counted: they are reaped at exit)")
    ap.add_argument("--num-workers", type=int, default=0,
                    help="serve every epoch through a DataLoader with this many fresh (forked) worker processes")
    args = ap.parse_args()
    global PERSISTENT
    PERSISTENT = args.persistent
    links = Path(tempfile.mkdtemp(prefix="sb-paired-"))
    sys.path.insert(0, str(links))
    packages = {"A": _import_tree(args.a, "streambatch_a", links), "B": _import_tree(args.b, "streambatch_b", links)}
    print(f"A = {args.a.resolve()}\nB = {args.b.resolve()}\nbudget {args.budget}, batch 256, epochs alternated "
          f"A B B A ..., {args.repeats} each, after a warm-up epoch each; num_workers {args.num_workers}"
          f"{' (persistent)' if args.persistent else ''}; "
          f"{os.cpu_count()} CPUs\n")
    print("| dataset | A samples/s | B samples/s | B / A | median pair B / A | A per CPU-s | B per CPU-s "
          "| B / A (CPU) | same batches |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for name in args.datasets.split(","):
        paths = {"A": (args.data_a or args.data) / name, "B": args.data / name}
        print(_measure(packages, paths, args), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
