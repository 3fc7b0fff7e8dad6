"""``streambatch bench`` and ``streambatch demo``: measure an epoch, next to the in-RAM limit.

::

    streambatch bench train.zarr --memory-budget 256MiB --epochs 2 --compare naive,ram
    streambatch demo                    # make a sorted dataset bigger than its budget, stream it

Both print per-epoch samples/s and MB/s, the time to the first batch, the peak RSS of the
process and the shuffle quality of the order actually served (SHUFFLE.md: deff, label KL).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ._progress import progress_bar
from ._sizes import format_size, parse_size

__all__ = ["add_commands", "bench", "RssSampler", "ram_limit", "naive_rate"]


def _rss_now() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the process's peak so far
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssSampler:
    """Peak RSS of this process, sampled every ``interval`` seconds by a helper thread."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = _rss_now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_now())

    def __enter__(self) -> "RssSampler":
        self.peak = _rss_now()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_now())


def _touch(batch: dict[str, Any]) -> int:
    """What a training step does with a batch at least: read every value once."""
    import torch

    n = 0
    for v in batch.values():
        if isinstance(v, torch.Tensor) and v.dtype.is_floating_point:
            float(v.sum(dtype=torch.float64))
        n = int(v.shape[0])
    return n


def _timed(batches: Iterable[dict[str, Any]], total: int, label: str, progress: bool,
           keep: Callable[[dict[str, Any]], None] | None = None, limit_s: float | None = None) -> dict[str, float]:
    t0 = time.perf_counter()
    first = float("nan")
    samples = nb = 0
    with progress_bar(total, label, progress) as bar:
        for batch in batches:
            if nb == 0:
                first = time.perf_counter() - t0
            n = _touch(batch)
            if keep is not None:
                keep(batch)
            samples += n
            nb += 1
            bar.update(n)
            if limit_s is not None and time.perf_counter() - t0 > limit_s:
                break
    dt = time.perf_counter() - t0
    return {"samples": samples, "seconds": dt, "samples_per_s": samples / dt if dt else 0.0, "first_batch_s": first}


def ram_limit(columns: dict[str, np.ndarray], batch_size: int, seed: int = 0) -> dict[str, float]:
    """The in-RAM limit: one permutation, a gather per batch, ``torch.from_numpy``."""
    import torch

    n = len(next(iter(columns.values())))
    perm = np.random.default_rng(seed).permutation(n)

    def gen() -> Iterable[dict[str, Any]]:
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            yield {k: torch.from_numpy(v[idx]) for k, v in columns.items()}

    return _timed(gen(), n, "ram-limit", False)


def naive_rate(dataset: Any, batch_size: int, limit_s: float = 3.0, num_workers: int = 0) -> dict[str, float]:
    """A map-style dataset with ``RandomSampler`` and default collate: what users write without us."""
    import torch

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers)
    return _timed(loader, len(dataset), "naive", False, limit_s=limit_s)


def _quality(rows: np.ndarray, labels: np.ndarray | None, unit_rows: np.ndarray, batch_size: int) -> dict[str, float]:
    from .quality import design_effect, global_order, label_kl

    out: dict[str, float] = {}
    if rows.size >= 2 * batch_size and np.unique(rows).size == rows.size:
        # the design effect compares batches with units: undefined for data in one unit
        whole = rows.size == int(unit_rows.sum())
        out["deff"] = design_effect(rows, unit_rows, batch_size)["deff"] if whole and unit_rows.size > 1 \
            else float("nan")
        out["spearman"] = global_order(rows)["spearman"] if whole else float("nan")
    if labels is not None and labels.size >= 2 * batch_size:
        kl = label_kl(labels, batch_size)
        out.update({"label_kl": kl["kl_mean"], "label_kl_ratio": kl["kl_ratio"],
                    "frac_missing_class": kl["frac_missing_class"]})
    return out


def bench(path: str | os.PathLike[str], memory_budget: int | str = "256MiB", threads: int | None = None,
          epochs: int = 2, batch_size: int = 256, compare: tuple[str, ...] = (), num_workers: int = 0,
          progress: bool | None = None, ram_source: Callable[[], dict[str, np.ndarray]] | None = None,
          naive_dataset: Any = None) -> dict[str, Any]:
    """Measure ``epochs`` shuffled epochs of ``path``; return a JSON-able report.

    ``compare`` may hold ``"ram"`` (the in-RAM limit on the same columns; skipped when the
    data would not fit in half the machine's memory) and ``"naive"`` (random row access
    through the format's standard library, measured for 3 s).
    """
    import torch

    from .dataset import INDEX_KEY, StreamDataset
    from .storage import FORMATS, read_all

    ds = StreamDataset(path, batch_size=batch_size, memory_budget=memory_budget, threads=threads, return_index=True)
    m = ds.manifest
    label = m.label
    report: dict[str, Any] = {"dataset": str(m.root), "rows": m.rows, "storage": m.storage, "codec": m.codec,
                              "row_bytes": ds.row_nbytes, "describe": ds.describe(num_workers), "epochs": []}
    loader: Iterable[dict[str, Any]] = ds if num_workers == 0 else torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=num_workers)
    with RssSampler() as rss_all:
        for e in range(epochs):
            ds.set_epoch(e)
            rows: list[np.ndarray] = []
            labels: list[np.ndarray] = []

            def keep(batch: dict[str, Any]) -> None:
                rows.append(batch[INDEX_KEY].numpy().copy())
                if label is not None:
                    labels.append(batch[label].numpy().copy())

            with RssSampler() as rss:
                r = _timed(loader, m.rows, f"epoch {e}", progress if progress is not None else sys.stderr.isatty(), keep)
            r["mb_per_s"] = r["samples_per_s"] * ds.row_nbytes / 1e6
            r["peak_rss_bytes"] = rss.peak
            served = np.concatenate(rows) if rows else np.empty(0, np.int64)
            r["missing"] = int(m.rows - np.unique(served).size)
            r["duplicated"] = int(served.size - np.unique(served).size)
            r.update(_quality(served, np.concatenate(labels) if labels else None, m.unit_rows, batch_size))
            report["epochs"].append(r)
    report["peak_rss_bytes"] = rss_all.peak  # before any baseline loads data into RAM
    if "ram" in compare:
        need = m.rows * ds.row_nbytes
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if ram_source is None and need < avail // 2:
            ram_source = lambda: read_all(ds.manifest, ds.columns)  # noqa: E731
        if ram_source is not None:
            report["ram"] = ram_limit(ram_source(), batch_size)
        else:
            report["ram"] = {"skipped": f"{format_size(need)} does not fit in half of RAM"}
    if "naive" in compare:
        names = [c.name for c in ds.columns]
        nd = naive_dataset or FORMATS[m.storage].library_rows(m, names)
        report["naive"] = naive_rate(nd, batch_size)
    return report


def _print_report(rep: dict[str, Any]) -> None:
    d = rep["describe"]
    print(f"{rep['dataset']}: {rep['rows']:,} rows x {rep['row_bytes']} B ({rep['storage']}, {rep['codec']}); "
          f"budget {format_size(d['budget_bytes'])}, window {d['window_rows']:,} rows in {d['window_pieces']:,.0f} "
          f"pieces of {d['piece_rows']:.0f} rows, "
          f"{d['threads']} threads, predicted deff {d['predicted_deff']:.2f}")
    ram = rep.get("ram", {}).get("samples_per_s")
    naive = rep.get("naive", {}).get("samples_per_s")
    for i, e in enumerate(rep["epochs"]):
        extra = ""
        if ram:
            extra += f"  {e['samples_per_s'] / ram:.2f}x in-RAM"
        if naive:
            extra += f"  {e['samples_per_s'] / naive:.1f}x naive"
        deff = e.get("deff", float("nan"))
        q = f"deff {deff:.2f}" if deff == deff else "deff n/a"
        if "label_kl_ratio" in e:
            q += f", label KL {e['label_kl_ratio']:.2f}x ideal, {100 * e['frac_missing_class']:.0f}% batches miss a class"
        print(f"  epoch {i}: {e['samples_per_s']:,.0f} samples/s, {e['mb_per_s']:,.0f} MB/s, first batch "
              f"{e['first_batch_s']:.3f}s, peak RSS {format_size(e['peak_rss_bytes'])}, {q}, "
              f"missing {e['missing']}, duplicated {e['duplicated']}{extra}")
    if ram:
        print(f"  in-RAM limit: {ram:,.0f} samples/s (x[randperm] gather, data already in memory)")
    elif "ram" in rep:
        print(f"  in-RAM limit: {rep['ram']['skipped']}")
    if naive:
        print(f"  naive loader: {naive:,.0f} samples/s (random rows via the format's own library)")


def _cmd_bench(args: argparse.Namespace) -> int:
    compare = tuple(c for c in (args.compare or "").split(",") if c)
    unknown = set(compare) - {"naive", "ram"}
    if unknown:
        raise ValueError(f"--compare: unknown baseline(s) {sorted(unknown)}; use naive,ram")
    rep = bench(args.dataset, memory_budget=args.memory_budget, threads=args.threads, epochs=args.epochs,
                batch_size=args.batch_size, compare=compare, num_workers=args.num_workers,
                progress=False if args.json else None)
    if args.json:
        print(json.dumps(rep, indent=2, default=float))
    else:
        _print_report(rep)
    return 0


def write_demo_source(folder: Path, rows: int, width: int = 128, n_labels: int = 10, seed: int = 0) -> Path:
    """A label-sorted source dataset (.npy columns id, x float32[width], y), written in blocks."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "id": np.lib.format.open_memmap(folder / "id.npy", "w+", np.int64, (rows,)),
        "x": np.lib.format.open_memmap(folder / "x.npy", "w+", np.float32, (rows, width)),
        "y": np.lib.format.open_memmap(folder / "y.npy", "w+", np.int64, (rows,)),
    }
    block = 65536
    for lo in range(0, rows, block):
        hi = min(rows, lo + block)
        idx = np.arange(lo, hi, dtype=np.int64)
        y = idx * n_labels // rows
        rng = np.random.default_rng((seed, lo))
        files["id"][lo:hi] = idx
        files["y"][lo:hi] = y
        # Learnable structure: class-dependent mean plus noise.
        files["x"][lo:hi] = rng.standard_normal((hi - lo, width), dtype=np.float32) + y[:, None] * 0.1
    for f in files.values():
        f.flush()
    del files
    return folder


def _cmd_demo(args: argparse.Namespace) -> int:
    budget = parse_size(args.memory_budget, "--memory-budget")
    rows = args.rows or int(4 * budget // (128 * 4 + 16))
    if args.dir:
        return _demo(args, budget, rows, Path(args.dir))
    work = Path(tempfile.mkdtemp(prefix="streambatch-demo-"))
    try:
        return _demo(args, budget, rows, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _demo(args: argparse.Namespace, budget: int, rows: int, work: Path) -> int:
    import torch

    from .convert import convert
    src = work / "source"
    dst = work / "train.zarr"
    print(f"1/3 generating a label-sorted dataset: {rows:,} rows x 528 B = {format_size(rows * 528)} "
          f"({rows * 528 / budget:.1f}x the {format_size(budget)} memory budget) in {work}")
    if not (src / "y.npy").exists():
        write_demo_source(src, rows)
    print("2/3 converting to sharded Zarr v3 (streambatch convert)")
    convert(src, dst, label="y", overwrite=True, progress=None)
    print(f"3/3 streaming {args.epochs} shuffled epochs through a torch DataLoader, memory budget {format_size(budget)}")

    class NaiveRows(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __init__(self) -> None:
            self.a = {n: np.load(src / f"{n}.npy", mmap_mode="r") for n in ("id", "x", "y")}

        def __len__(self) -> int:
            return rows

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {k: torch.from_numpy(np.array(v[i])) for k, v in self.a.items()}

    rep = bench(dst, memory_budget=budget, epochs=args.epochs, compare=("ram", "naive"),
                ram_source=lambda: {n: np.load(src / f"{n}.npy") for n in ("id", "x", "y")},
                naive_dataset=NaiveRows(), num_workers=args.num_workers)
    _print_report(rep)
    e = rep["epochs"][-1]
    ram = rep["ram"]["samples_per_s"]
    print(f"\nsummary: {e['samples_per_s'] / ram:.2f}x the in-RAM shuffle's speed, "
          f"{e['samples_per_s'] / rep['naive']['samples_per_s']:.0f}x a naive memmap loader, deff {e.get('deff', 0):.2f} "
          f"(1 = perfect shuffle, {256} = none), peak RSS {format_size(rep['peak_rss_bytes'])} "
          f"(imports included; budget {format_size(budget)} for data)")
    return 0


def add_commands(sub: Any, commands: dict[str, Callable[[argparse.Namespace], int]]) -> None:
    """Register ``bench`` and ``demo`` on the ``streambatch`` parser."""
    b = sub.add_parser("bench", help="measure epochs of a dataset: throughput, first batch, memory, quality",
                       epilog="example: streambatch bench train.zarr --memory-budget 256MiB --compare naive,ram")
    b.add_argument("dataset")
    b.add_argument("--memory-budget", default="256MiB")
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--epochs", type=int, default=2)
    b.add_argument("--batch-size", type=int, default=256)
    b.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (0: in-process)")
    b.add_argument("--compare", default="", help="baselines: naive,ram")
    b.add_argument("--json", action="store_true")
    d = sub.add_parser("demo", help="generate a sorted dataset larger than the budget, convert it, stream it",
                       epilog="example: streambatch demo --memory-budget 64MiB")
    d.add_argument("--dir", default=None, help="work folder (default: a new temporary folder)")
    d.add_argument("--memory-budget", default="64MiB")
    d.add_argument("--rows", type=int, default=None, help="rows (default: 4x the budget)")
    d.add_argument("--epochs", type=int, default=2)
    d.add_argument("--num-workers", type=int, default=0)
    commands["bench"] = _cmd_bench
    commands["demo"] = _cmd_demo
