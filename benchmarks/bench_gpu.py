#!/usr/bin/env python
"""GPU benchmark: what does the trip to the GPU cost, and does it hide behind a training step?

By default it measures ``StreamDataset(device=...)`` (issue 18) on ``tab`` and ``img`` (Zarr,
codec ``none``, warm cache, the throughput benchmark's budget, batch 256; ``--datasets``), epoch 2
after a warm-up epoch, medians of ``--repeats``:

* ``load_alone``: the same dataset with ``device=None``, consumed on the CPU (``_common.consume``);
* ``device``: ``device=<gpu>`` with the copy function timed by CUDA events on the copy stream:
  copy throughput = bytes / the copies' own time, against copies of one batch's size from one
  pinned buffer measured in the same run (``batch_h2d``; target >= 0.8x) and one 256 MiB copy;
* ``step_long`` / ``step_short``: ``device=<gpu>`` and a simulated step (``STEP_SHAPES``) taking at
  least 1.5x / at most 0.5x a batch's load; targets: epoch <= 1.1x step alone (step x batches) /
  <= 1.1x load alone.

Every row checks every id once, the ``device=None`` order and the sum of ``x``.  Without CUDA the
same rows run with ``device="cpu"`` as a smoke test (no copy bandwidth; not a GPU measurement).

``--legacy`` adds the manual variants of the first GPU run, described below (tab only).

On the label-sorted ``tab`` dataset stored as Zarr (codec ``none``), warm page cache, 256 MiB
budget, batch 256 (the datasets and helpers of ``bench_throughput.py``), one ``StreamDataset``
in this process serves a warm-up epoch (epoch 1 pays page faults on fresh window buffers) and
then, for every variant below, epoch 2 again (``set_epoch(1)``: the same order each time, so
every variant's ids can be compared with the CPU baseline's one by one). Each figure is the
median of ``--repeats`` such epochs, timed from ``iter()`` until the GPU has finished
(``torch.cuda.synchronize()``):

* ``cpu``: batches left on the CPU, consumed by ``_common.consume`` (sum of ``x`` in float64,
  a copy of ``id``): the baseline, measured first and again after the in-process variants;
* ``pin+copy``: every tensor of the batch ``.pin_memory()`` then ``.to("cuda",
  non_blocking=True)``, consumed on the GPU the same way (``x.sum(dtype=float64)`` accumulated
  on the GPU, ``id`` written into a GPU buffer of the epoch's order; one synchronisation at the
  end of the epoch);
* ``step alone``: a fixed simulated training step, an MLP of 128 -> W -> (4 x W x W) -> 10
  (float32 matmuls with ReLU, forward only) on one batch resident on the GPU, no loading; W is
  calibrated once so that one step takes about as long as loading one batch (the ``cpu``
  baseline's seconds per batch);
* ``load+copy+step serial``: pin, blocking copy, step, ``torch.cuda.synchronize()`` after every
  batch (a loop that calls ``loss.item()`` every step): no overlap at all;
* ``load+copy+step async``: pin, ``non_blocking`` copy and step on the default stream, no
  per-step synchronisation: the CPU loads batch i+1 while the GPU copies and computes batch i
  (copies and compute are serialised on one stream);
* ``load+copy+step overlapped``: as async, with the copies on a side CUDA stream (the compute
  stream waits for each copy; ``record_stream`` keeps the copied tensors alive), so copies
  also overlap compute;
* ``DataLoader wN``: ``DataLoader(ds, batch_size=None, num_workers=N, pin_memory=True)`` (N from
  ``--workers``, default 0 and 4), then ``.to("cuda", non_blocking=True)`` and the GPU consume;
  with workers a fresh dataset, one timed epoch (workers are not persistent, torch's default,
  so every epoch starts new processes: there is nothing to warm up but the page cache).

Reported: samples/s, the ratio to the CPU baseline, and for the step variants the epoch time
divided by max(load alone, step alone), where load alone is the ``cpu`` epoch and step alone
is the step's time x the batches of an epoch (1.00 = the slower of the two hides the other
completely; about (load + step) / max(load, step) when nothing overlaps). Correctness: every
variant's epoch must contain every id exactly once, the in-process variants must serve the
CPU baseline's exact order, and the sum of ``x`` must equal the baseline's (relative 1e-9).

Without CUDA (``torch.cuda.is_available()`` false) the GPU parts are skipped: no pinning, no
copies, no streams; the variants run their loops on the CPU device as a smoke test of this
script (``--quick`` is meant for that), and the records and report say so.

Usage::

    python benchmarks/bench_gpu.py [--data DIR] [--quick] [--repeats N] [--datasets tab,img]
                                   [--legacy] [--workers 0,4] [--records DIR] [--no-report]

Records are appended to ``benchmarks/records/gpu.jsonl`` as each variant finishes (so a run
stopped early keeps what it measured); ``--records DIR`` writes them elsewhere (tests) and
``--no-report`` skips regenerating RESULTS.md.
"""

from __future__ import annotations

import math
import sys
import time
import traceback
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import bench_scaling as bs  # noqa: E402  (worker_budget)
import bench_throughput as bt  # noqa: E402  (dataset helpers shared with the throughput benchmark)
from streambatch.loader.device import DONE, Target  # noqa: E402

NAME = "gpu"
KIND = "tab"
FMT, CODEC = "zarr", "none"
WORKERS = (0, 4)
STEP_DEPTH = 4
"""Hidden W x W matmuls of the simulated step (plus the input and output layers)."""
STEP_WIDTHS = (32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
"""Candidate widths W, ascending; calibration stops at the first step slower than loading."""
X_SUM_RTOL = 1e-9
MEASURED_EPOCH = 1
"""The epoch index every in-process variant serves (0 is the warm-up)."""

VARIANTS = {
    # key: label (DataLoader variants with workers are added as dl_w<N>)
    "cpu": "in process, batches on the CPU (baseline)",
    "pin_copy": "in process + pin_memory + to(cuda, non_blocking)",
    "step_alone": "simulated step alone (one resident batch)",
    "serial": "load+copy+step serial (blocking copy, sync every step)",
    "async": "load+copy+step async (default stream, no per-step sync)",
    "overlap": "load+copy+step overlapped (copies on a side stream)",
    "cpu_after": "in process, batches on the CPU (baseline, after)",
    "dl_w0": "DataLoader num_workers=0, pin_memory=True + to(cuda, non_blocking)",
}


# ---------------------------------------------------------------------------- device
class Device:
    """The target device and its synchronisation; CUDA when available, else a CPU stand-in."""

    def __init__(self, force_cpu: bool = False) -> None:
        self.cuda = bool(torch.cuda.is_available()) and not force_cpu
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.cuda else torch.device("cpu")
        self.side: Any = torch.cuda.Stream(device=self.device) if self.cuda else None

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def info(self) -> dict[str, Any]:
        """Facts about the device for the records."""
        if not self.cuda:
            return {"cuda": False, "device": "cpu", "gpu_name": None, "cuda_version": torch.version.cuda}
        props = torch.cuda.get_device_properties(self.device)
        return {
            "cuda": True,
            "device": str(self.device),
            "gpu_name": props.name,
            "gpu_memory_bytes": int(props.total_memory),
            "gpu_count": torch.cuda.device_count(),
            "gpu_sm_count": int(props.multi_processor_count),
            "cuda_version": torch.version.cuda,
            "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        }

    def warm_up(self) -> None:
        """Create the CUDA context, the side stream's pool and the pinned-memory allocator."""
        if not self.cuda:
            return
        host = torch.ones(1 << 20).pin_memory()
        dev = host.to(self.device, non_blocking=True)
        with torch.cuda.stream(self.side):
            dev2 = host.to(self.device, non_blocking=True)
        torch.cuda.current_stream(self.device).wait_stream(self.side)
        float((dev + dev2).sum())
        self.sync()


def h2d_bandwidth(dev: Device, nbytes: int = 256 * 2**20, repeats: int = 3) -> dict[str, Any]:
    """The copy limit: one ``nbytes`` host-to-device copy from pinned and from pageable memory.

    Best of ``repeats`` each, in GB/s (empty without CUDA).
    """
    if not dev.cuda:
        return {}
    out: dict[str, Any] = {"h2d_bytes": nbytes}
    pageable = torch.ones(nbytes, dtype=torch.uint8)
    target = torch.empty(nbytes, dtype=torch.uint8, device=dev.device)
    for name, host in (("pinned", pageable.pin_memory()), ("pageable", pageable)):
        best = float("inf")
        for _ in range(repeats):
            dev.sync()
            t0 = time.perf_counter()
            target.copy_(host, non_blocking=True)
            dev.sync()
            best = min(best, time.perf_counter() - t0)
        out[f"h2d_{name}_gb_per_s"] = nbytes / 1e9 / max(best, 1e-12)
        del host
    del pageable, target
    torch.cuda.empty_cache()
    return out


class SimStep:
    """A fixed simulated training step: an MLP forward pass, float32 matmuls and ReLU.

    ``x`` [B, F] -> relu(x @ W_in) -> ``depth`` x relu(h @ W) -> h @ W_out [B, 10] -> mean of
    squares (a scalar on the device: nothing synchronises). Weights are seeded and fixed.
    """

    def __init__(self, in_features: int, width: int, depth: int, device: torch.device, seed: int = 0) -> None:
        gen = torch.Generator(device=device).manual_seed(seed)

        def weight(rows: int, cols: int) -> torch.Tensor:
            return torch.randn(rows, cols, generator=gen, device=device) / math.sqrt(rows)

        self.width, self.depth, self.in_features = width, depth, in_features
        self.w_in = weight(in_features, width)
        self.hidden = [weight(width, width) for _ in range(depth)]
        self.w_out = weight(width, 10)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = torch.relu(x.reshape(x.shape[0], -1).float() @ self.w_in)
            for w in self.hidden:
                h = torch.relu(h @ w)
            return (h @ self.w_out).square().mean()

    def flops(self, batch: int) -> float:
        """Multiply-adds x 2 of one step on ``batch`` rows."""
        w = self.width
        return 2.0 * batch * (self.in_features * w + self.depth * w * w + w * 10)


def time_step(step: SimStep, x: torch.Tensor, dev: Device, min_seconds: float = 0.25,
              max_steps: int = 5000) -> float:
    """Seconds per step on the resident batch ``x`` (after 3 warm-up steps), synchronised."""
    acc = torch.zeros((), device=x.device)
    for _ in range(3):
        acc += step(x)
    dev.sync()
    n = 0
    t0 = time.perf_counter()
    while True:
        for _ in range(10):
            acc += step(x)
        n += 10
        dev.sync()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds or n >= max_steps:
            break
    float(acc)
    return elapsed / n


def calibrate_step(target_s: float, x: torch.Tensor, dev: Device, quick: bool) -> tuple[SimStep, float, list[dict[str, float]]]:
    """The :data:`STEP_WIDTHS` width whose step time is closest to ``target_s`` (log scale).

    Widths are tried in ascending order and the search stops at the first one slower than the
    target, so at most one step much slower than a batch load is ever timed.
    """
    tried: list[dict[str, float]] = []
    best: tuple[float, SimStep, float] | None = None
    min_s = 0.05 if quick else 0.25
    for width in STEP_WIDTHS:
        step = SimStep(x[0].numel(), width, STEP_DEPTH, dev.device)
        s = time_step(step, x, dev, min_seconds=min_s)
        tried.append({"width": width, "step_s": s})
        score = abs(math.log(max(s, 1e-12) / max(target_s, 1e-12)))
        if best is None or score < best[0]:
            best = (score, step, s)
        if s >= target_s:
            break
    assert best is not None
    return best[1], best[2], tried


# ---------------------------------------------------------------------------- one epoch
def device_epoch(batches: Iterable[Mapping[str, torch.Tensor]], n_rows: int, dev: Device, *,
                 copy: str = "default", step: SimStep | None = None, sync_each: bool = False,
                 pinned: bool = False) -> dict[str, Any]:
    """One epoch moved to ``dev`` and consumed there; timed until the device has finished.

    ``copy``: ``"none"`` (the batches arrive on the device: ``StreamDataset(device=...)``),
    ``"blocking"`` (``.to(device)``), ``"default"`` (``non_blocking`` on the current
    stream) or ``"side"`` (``non_blocking`` on ``dev.side``; the current stream waits for it
    and the tensors are ``record_stream``-ed to it). ``pinned``: the batches come pinned
    (DataLoader ``pin_memory=True``), else each tensor is ``.pin_memory()``-ed here. Without
    CUDA no pinning or copying happens. The consume mirrors ``_common.consume`` on the device:
    ``x.sum(dtype=float64)`` accumulated there and every ``id`` written into a device buffer
    of the epoch's order, read back once at the end.
    """
    if copy not in ("none", "blocking", "default", "side"):
        raise ValueError(f"unknown copy mode {copy!r}")
    device = dev.device
    order = torch.empty(n_rows, dtype=torch.int64, device=device)
    x_sum = torch.zeros((), dtype=torch.float64, device=device)
    loss = torch.zeros((), dtype=torch.float32, device=device)
    compute = torch.cuda.current_stream(device) if dev.cuda else None
    pos = nbatches = nbytes = overflow = 0
    first_batch_s = float("nan")
    dev.sync()
    t0 = time.perf_counter()
    it = iter(batches)
    try:
        for batch in it:
            if dev.cuda and copy != "none":
                host = batch if pinned else {k: v.pin_memory() for k, v in batch.items()}
                if copy == "side":
                    with torch.cuda.stream(dev.side):
                        moved = {k: v.to(device, non_blocking=True) for k, v in host.items()}
                    compute.wait_stream(dev.side)
                    for v in moved.values():
                        v.record_stream(compute)
                else:
                    moved = {k: v.to(device, non_blocking=copy == "default") for k, v in host.items()}
            else:
                moved = dict(batch)
            x, ids = moved["x"], moved["id"]
            n = int(ids.shape[0])
            x_sum += x.sum(dtype=torch.float64)
            if pos + n <= n_rows:
                order[pos:pos + n].copy_(ids)
            else:
                overflow += n
            if step is not None:
                loss += step(x)
            if sync_each:
                dev.sync()
            pos += n
            nbatches += 1
            nbytes += sum(int(t.nbytes) for t in batch.values())
            if nbatches == 1:
                first_batch_s = time.perf_counter() - t0
        dev.sync()
        seconds = time.perf_counter() - t0
    finally:
        close = getattr(it, "close", None)
        if callable(close):
            close()
        del it
    ids_np = order[: min(pos, n_rows)].cpu().numpy()
    out = {
        "samples": pos,
        "batches": nbatches,
        "seconds": seconds,
        "first_batch_s": first_batch_s,
        "bytes": nbytes,
        "x_sum": float(x_sum),
        "loss_sum": float(loss),
        "overflow": overflow,
        "ids": ids_np,
    }
    return out


def cpu_epoch(batches: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, Any]:
    """The baseline: ``_common.consume`` of one epoch on the CPU."""
    return _common.consume(batches)


def summarise(runs: list[dict[str, Any]], reference: Mapping[str, Any] | None, n_rows: int,
              exact_order: bool) -> dict[str, Any]:
    """Median rates of ``runs`` and their correctness against ``reference`` (the CPU baseline).

    Every run is checked: complete (no id missing, duplicated or outside ``0..n-1``), the same
    sum of ``x`` as the reference and, with ``exact_order``, the reference's exact id order.
    """
    rates = [r["samples"] / max(r["seconds"], 1e-12) for r in runs]
    mid = sorted(range(len(runs)), key=lambda i: rates[i])[(len(runs) - 1) // 2]
    med = runs[mid]
    seconds = max(float(med["seconds"]), 1e-12)
    missing = duplicated = foreign = 0
    order_equal = True
    x_err = 0.0
    crcs = []
    for r in runs:
        c = _common.check_complete(r["ids"], n_rows)
        missing += c["missing"]
        duplicated += c["duplicated"] + int(r.get("overflow", 0))
        foreign += c["foreign"]
        crcs.append(zlib.crc32(np.ascontiguousarray(r["ids"], dtype=np.int64).tobytes()))
        if reference is not None:
            order_equal = order_equal and np.array_equal(r["ids"], reference["ids"])
            ref = float(reference["x_sum"])
            x_err = max(x_err, abs(float(r["x_sum"]) - ref) / max(abs(ref), 1.0))
    out = {
        "samples_per_s": med["samples"] / seconds,
        "mb_per_s": med["bytes"] / 1e6 / seconds,
        "seconds": seconds,
        "first_batch_s": med["first_batch_s"],
        "samples": med["samples"],
        "batches": med["batches"],
        "runs_samples_per_s": rates,
        "missing": missing,
        "duplicated": duplicated,
        "foreign": foreign,
        "epochs_checked": len(runs),
        "ids_sum": int(np.asarray(med["ids"], dtype=np.int64).sum()),
        "ids_crc32": crcs,
        "x_sum": float(med["x_sum"]),
    }
    if reference is not None:
        out["x_sum_rel_err"] = x_err
        out["order_equal_cpu"] = bool(order_equal)
        out["order_checked"] = bool(exact_order)
    clean = missing == 0 and duplicated == 0 and foreign == 0 and out["samples"] == n_rows
    if reference is not None:
        clean = clean and x_err <= X_SUM_RTOL and (order_equal or not exact_order)
    out["correct"] = bool(clean)
    return out


# ---------------------------------------------------------------------------- the device= path
STEP_SHAPES = ((64, 0), (64, 1), (128, 1), (128, 2), (128, 4), (256, 4), (512, 4), (1024, 4), (1536, 4),
               (2048, 4), (3072, 4), (4096, 4), (6144, 4), (8192, 4))
"""(width, hidden depth) of the simulated steps, cheapest first (depth 0: launch-bound, tens of us)."""
LONG_STEP, SHORT_STEP = 1.5, 0.5
"""The long step takes at least 1.5x a batch's load, the short one at most 0.5x."""
OVERLAP_TARGET, COPY_TARGET = 1.1, 0.8


def pick_step(target_s: float, x: torch.Tensor, dev: Device, quick: bool, above: bool
              ) -> tuple[SimStep, float, list[dict[str, float]]]:
    """The cheapest :data:`STEP_SHAPES` step taking at least ``target_s`` (``above``), or the
    costliest taking at most ``target_s`` (else the cheapest of all)."""
    tried: list[dict[str, float]] = []
    chosen: tuple[SimStep, float] | None = None
    for width, depth in STEP_SHAPES:
        step = SimStep(x[0].numel(), width, depth, dev.device)
        s = time_step(step, x, dev, min_seconds=0.05 if quick else 0.2)
        tried.append({"width": width, "depth": depth, "step_s": s})
        if above and s >= target_s:
            return step, s, tried
        if not above and s > target_s:
            break
        chosen = (step, s)
    if chosen is None:  # not even the cheapest is short enough (or none is long enough): the nearest
        chosen = (step, s)
    return chosen[0], chosen[1], tried


class TimedCopy:
    """The device path's copy with its duration measured: CUDA events around each copy on the
    copy stream (the returned end event is the copy's handle), wall time on the CPU stand-in."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.reset()

    def reset(self) -> None:
        self.events: list[tuple[Any, Any]] = []
        self.cpu_s = 0.0
        self.nbytes = 0

    def __call__(self, dst: torch.Tensor, src: torch.Tensor) -> Any:
        self.nbytes += int(dst.numel())
        if not self.cuda:
            t0 = time.perf_counter()
            dst.copy_(src)
            self.cpu_s += time.perf_counter() - t0
            return DONE
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()  # on the current stream: the copy stream
        dst.copy_(src, non_blocking=True)
        end.record()
        self.events.append((start, end))
        return end

    def seconds(self) -> float:
        if not self.cuda:
            return self.cpu_s
        return sum(a.elapsed_time(b) for a, b in self.events) / 1e3


def batch_h2d(dev: Device, nbytes: int, copies: int = 200) -> float | None:
    """GB/s of ``copies`` host-to-device copies of ``nbytes`` (one batch) from one pinned buffer,
    each timed by CUDA events: the reference for the device path's copies (None without CUDA)."""
    if not dev.cuda:
        return None
    host = torch.ones(nbytes, dtype=torch.uint8).pin_memory()
    target = torch.empty(nbytes, dtype=torch.uint8, device=dev.device)
    pairs = []
    for i in range(copies + 10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        target.copy_(host, non_blocking=True)
        b.record()
        if i >= 10:
            pairs.append((a, b))
    dev.sync()
    seconds = sum(a.elapsed_time(b) for a, b in pairs) / 1e3
    return nbytes * copies / 1e9 / max(seconds, 1e-12)


def device_path(kind: str, args: Any, dev: Device, common: dict[str, Any]) -> None:
    """The ``StreamDataset(device=...)`` rows on dataset ``kind``: copy throughput against the pinned
    bandwidth, and a step longer and shorter than loading against step alone and load alone."""
    from streambatch import StreamDataset

    root = bt.data_root(args.data, args.quick)
    rows = bt.rows_for(kind, args.quick)
    npy = bt.ensure_npy(root, kind, rows)
    store = bt.ensure_store(npy, bt.store_path(root, kind, FMT, CODEC), FMT, CODEC, rows)
    budget = bt.budget_for(kind, args.quick)
    bt.warm(store)
    kw = dict(batch_size=bt.BATCH, shuffle=True, seed=0, memory_budget=budget)
    host = StreamDataset(store, **kw)
    timed = TimedCopy(dev.cuda)
    on_dev = StreamDataset(store, device=dev.device, **kw)
    timed_ds = StreamDataset(store, device=Target(dev.device, copy=timed), **kw)
    common = {**common, "dataset": kind, **bt.store_config(store, host)}
    n = host.manifest.rows
    torch.manual_seed(0)

    def runs(ds: Any, fn: Callable[[Any], dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for _ in range(args.repeats):
            ds.set_epoch(MEASURED_EPOCH)
            out.append(fn(ds))
        return out

    def write(variant: str, label: str, res: Mapping[str, Any]) -> None:
        _common.write_record(NAME, {**common, "role": "device", "variant": variant, "label": label, **res},
                             args.records)
        bt.log(f"  {kind} {variant}: {res.get('samples_per_s', 0):,.0f} samples/s, {res.get('seconds', 0):.2f} s, "
               f"correct {res.get('correct')}")

    bt.log(f"{kind}: warm-up epochs ({n:,} rows; host, then the device path on {dev.device})")
    host.set_epoch(0)
    cpu_epoch(host)
    for ds in (on_dev, timed_ds):
        ds.set_epoch(0)
        device_epoch(ds, n, dev, copy="none")
    ref_runs = runs(host, cpu_epoch)
    ref = ref_runs[0]
    load = summarise(ref_runs, ref, n, exact_order=True)
    write("load_alone", "load alone: batches on the CPU (device=None)", load)
    timed.reset()  # count the measured epochs only
    copied = summarise(runs(timed_ds, lambda ds: device_epoch(ds, n, dev, copy="none")), ref, n, True)
    batch_bytes = timed.nbytes / max(1, copied["batches"] * args.repeats)
    copy_gbs = timed.nbytes / 1e9 / max(timed.seconds(), 1e-12)
    same_size = batch_h2d(dev, int(batch_bytes))
    copy = {"copy_gb_per_s": copy_gbs, "copy_batch_bytes": batch_bytes, "h2d_batch_pinned_gb_per_s": same_size,
            "copy_vs_pinned": None if same_size is None else copy_gbs / same_size,
            "copy_vs_pinned_256mib": (copy_gbs / common["h2d_pinned_gb_per_s"]
                                      if common.get("h2d_pinned_gb_per_s") else None)}
    write("device", f"device={dev.device} (copies timed), no step", {**copied, **copy})
    it = iter(on_dev)
    x0 = next(it)["x"].clone()
    it.close()
    load_batch_s = load["seconds"] / max(1, load["batches"])
    summary: dict[str, Any] = {"load_epoch_s": load["seconds"], "load_batch_s": load_batch_s, **copy}
    for name, factor, above in (("long", LONG_STEP, True), ("short", SHORT_STEP, False)):
        step, step_s, tried = pick_step(factor * load_batch_s, x0, dev, args.quick, above)
        step_epoch_s = step_s * load["batches"]
        res = summarise(runs(on_dev, lambda ds: device_epoch(ds, n, dev, copy="none", step=step)), ref, n, True)
        bound = step_epoch_s if name == "long" else load["seconds"]
        fields = {"step_width": step.width, "step_depth": step.depth, "step_s": step_s, "step_epoch_s": step_epoch_s,
                  "step_calibration": tried, "step_vs_load_batch": step_s / load_batch_s,
                  "time_vs_bound": res["seconds"] / bound, "bound": "step alone" if name == "long" else "load alone",
                  "time_vs_max_load_step": res["seconds"] / max(load["seconds"], step_epoch_s)}
        write(f"step_{name}", f"device={dev.device} + {name} step ({step_s / load_batch_s:.2f}x a batch load)",
              {**res, **fields})
        summary[f"{name}_time_vs_bound"] = fields["time_vs_bound"]
        summary[f"{name}_step_vs_load_batch"] = fields["step_vs_load_batch"]
    summary["targets"] = {
        "copy": None if copy["copy_vs_pinned"] is None else copy["copy_vs_pinned"] >= COPY_TARGET,
        "long": summary["long_time_vs_bound"] <= OVERLAP_TARGET,
        "short": summary["short_time_vs_bound"] <= OVERLAP_TARGET}
    _common.write_record(NAME, {**common, "role": "device_summary", **summary}, args.records)
    for ds in (host, on_dev, timed_ds):
        ds.release_buffers()
    bt.release_memory()



# ---------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Run the GPU benchmark, append its records and regenerate RESULTS.md."""
    p = bt.make_parser(__doc__ or "")
    p.add_argument("--workers", default="0,4", metavar="LIST",
                   help="with --legacy: comma-separated DataLoader num_workers with pin_memory=True (default 0,4)")
    p.add_argument("--records", default=None, metavar="DIR",
                   help="append the records to DIR/gpu.jsonl (default benchmarks/records/)")
    p.add_argument("--no-report", action="store_true", help="do not regenerate RESULTS.md")
    p.add_argument("--cpu", action="store_true", help="ignore CUDA: the smoke-test path on any machine")
    p.add_argument("--datasets", default="tab,img", help="the device= path on these (comma-separated, tab,img)")
    p.add_argument("--legacy", action="store_true",
                   help="also the manual variants of the first run (pin+copy, serial, async, overlap, DataLoader)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    try:
        workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        p.error(f"--workers: expected a comma-separated list of integers, got {args.workers!r}")
    if any(w < 0 for w in workers):
        p.error("--workers: values must be >= 0")

    dev = Device(force_cpu=args.cpu)
    if not dev.cuda:
        bt.log("CUDA is not available: SKIPPING the GPU parts (pin_memory, host-to-device copies, CUDA "
               "streams). The variants run their loops on the CPU device as a smoke test of this script; "
               "the figures are not GPU measurements.")
        # The stand-in step's matmuls run in the loading thread: one intra-op thread keeps OpenMP's
        # spinning workers from fighting the reader threads (seconds per step on a busy 2-core box).
        torch.set_num_threads(1)
    dev.warm_up()
    run_id = bt.new_run_id()
    common = {**bt.base_record(args, run_id, "bench_gpu.py"), "cache": "warm",
              **dev.info(), **h2d_bandwidth(dev)}
    if dev.cuda:
        bt.log(f"{common['gpu_name']}: host-to-device copy {common['h2d_pinned_gb_per_s']:.1f} GB/s pinned, "
               f"{common['h2d_pageable_gb_per_s']:.1f} GB/s pageable")
    kinds = [k.strip() for k in args.datasets.split(",") if k.strip()]
    for kind in kinds:
        try:
            device_path(kind, args, dev, common)
        except Exception as exc:  # one dataset's failure must not cost the other's
            bt.log(f"  FAILED device path on {kind}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
            _common.write_record(NAME, {**common, "dataset": kind, "role": "failed", "variant": "device",
                                        "error": f"{type(exc).__name__}: {exc}"}, args.records)
    if args.legacy:
        legacy(args, dev, common, workers)

    if not args.no_report and args.records is None:
        import report

        report.main()
    return 0


def legacy(args: Any, dev: Device, common: dict[str, Any], workers: list[int]) -> None:
    """The manual variants of the first GPU run (``--legacy``): pin+copy, serial, async and
    side-stream overlap in the loop, DataLoader(pin_memory=True), on ``tab``."""
    from streambatch import StreamDataset

    common = {**common, "dataset": KIND}
    root = bt.data_root(args.data, args.quick)
    rows = bt.rows_for(KIND, args.quick)
    npy = bt.ensure_npy(root, KIND, rows)
    store = bt.ensure_store(npy, bt.store_path(root, KIND, FMT, CODEC), FMT, CODEC, rows)
    budget = bt.budget_for(KIND, args.quick)
    torch.manual_seed(0)

    def write(variant: str, fields: Mapping[str, Any]) -> None:
        rec = {**common, "role": "variant", "variant": variant, **fields}
        _common.write_record(NAME, rec, args.records)

    bt.warm(store)
    ds = StreamDataset(store, batch_size=bt.BATCH, shuffle=True, seed=0, memory_budget=budget)
    config = bt.store_config(store, ds)
    common.update(config)
    n = ds.manifest.rows

    def epochs(fn: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for _ in range(args.repeats):
            ds.set_epoch(MEASURED_EPOCH)
            out.append(fn())
        return out

    bt.log(f"{KIND}: warm-up epoch (epoch 1 of a fresh dataset, {n:,} rows, device {dev.device})")
    ds.set_epoch(0)
    cpu_epoch(ds)

    # -- the CPU baseline (its first run is the reference order and x sum)
    bt.log(f"{KIND}: cpu baseline")
    cpu_runs = epochs(lambda: cpu_epoch(ds))
    ref = cpu_runs[0]
    cpu = summarise(cpu_runs, ref, n, exact_order=True)
    base_sps = cpu["samples_per_s"]
    load_s = cpu["seconds"]
    write("cpu", {"label": VARIANTS["cpu"], **cpu, "vs_cpu": 1.0})
    bt.log(f"  cpu: {base_sps:,.0f} samples/s, {load_s:.2f} s per epoch, {cpu['batches']} batches")
    results: dict[str, dict[str, Any]] = {"cpu": cpu}

    def record_variant(key: str, res: dict[str, Any], **extra: Any) -> None:
        res = {**res, "vs_cpu": bt.ratio(res["samples_per_s"], base_sps), **extra}
        results[key] = res
        write(key, {"label": VARIANTS.get(key, key), **res})
        bt.log(f"  {key}: {res['samples_per_s']:,.0f} samples/s = {res['vs_cpu']:.2f}x cpu, "
               f"correct {res['correct']} (missing/dup {res['missing']}/{res['duplicated']}, "
               f"order equal {res.get('order_equal_cpu')}, x rel err {res.get('x_sum_rel_err', 0):.1e})")

    failures: list[dict[str, Any]] = []

    def attempt(key: str, fn: Callable[[], None]) -> None:
        """Run one variant; a failure is logged and recorded (role ``failed``) and the run goes on."""
        bt.log(f"{KIND}: {VARIANTS.get(key, key)}")
        try:
            fn()
        except Exception as exc:  # one broken variant must not cost the others
            error = f"{type(exc).__name__}: {exc}"
            bt.log(f"  FAILED {key}: {error}")
            traceback.print_exc()
            failures.append({"variant": key, "error": error})
            _common.write_record(NAME, {**common, "role": "failed", "variant": key, "error": error},
                                 args.records)

    attempt("pin_copy", lambda: record_variant(
        "pin_copy", summarise(epochs(lambda: device_epoch(ds, n, dev, copy="default")), ref, n, True)))

    # -- the simulated step, calibrated to one batch load
    batch_s = load_s / max(cpu["batches"], 1)
    stepped: dict[str, Any] = {}

    def step_alone() -> None:
        x0 = torch.from_numpy(np.array(np.load(npy / "x.npy", mmap_mode="r")[: bt.BATCH])).to(dev.device)
        step, step_s, tried = calibrate_step(batch_s, x0, dev, args.quick)
        fields = {
            "step_width": step.width, "step_depth": STEP_DEPTH, "step_s": step_s,
            "step_flops": step.flops(bt.BATCH), "step_tflops_per_s": step.flops(bt.BATCH) / step_s / 1e12,
            "step_calibration": tried, "load_batch_s": batch_s, "load_epoch_s": load_s,
            "step_epoch_s": step_s * cpu["batches"],
        }
        rate = bt.BATCH / step_s
        results["step_alone"] = {"samples_per_s": rate, "seconds": fields["step_epoch_s"], **fields}
        write("step_alone", {"label": VARIANTS["step_alone"], "samples_per_s": rate,
                             "seconds": fields["step_epoch_s"], "vs_cpu": bt.ratio(rate, base_sps),
                             "correct": True, **fields})
        bt.log(f"  step alone: width {step.width} x depth {STEP_DEPTH}, {step_s * 1e6:,.0f} us per step "
               f"(one batch loads in {batch_s * 1e6:,.0f} us), {rate:,.0f} samples/s, "
               f"{fields['step_tflops_per_s']:.2f} TFLOP/s")
        stepped.update(step=step, fields=fields)

    attempt("step_alone", step_alone)

    def with_step(key: str, kwargs: dict[str, Any]) -> None:
        fields = stepped["fields"]
        res = summarise(epochs(lambda: device_epoch(ds, n, dev, step=stepped["step"], **kwargs)), ref, n, True)
        record_variant(key, res, **fields,
                       time_vs_max_load_step=res["seconds"] / max(load_s, fields["step_epoch_s"]),
                       time_vs_sum_load_step=res["seconds"] / (load_s + fields["step_epoch_s"]))

    if stepped:
        for key, kwargs in (("serial", {"copy": "blocking", "sync_each": True}),
                            ("async", {"copy": "default"}),
                            ("overlap", {"copy": "side" if dev.cuda else "default"})):
            attempt(key, lambda key=key, kwargs=kwargs: with_step(key, kwargs))

    # -- DataLoader(pin_memory=True): in process over the same dataset, then with fresh workers
    if 0 in workers:
        def dl_w0() -> None:
            loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0, pin_memory=dev.cuda)
            res = summarise(epochs(lambda: device_epoch(loader, n, dev, pinned=dev.cuda)), ref, n, True)
            record_variant("dl_w0", res, num_workers=0, pin_memory=dev.cuda, dl_threads=config["threads"])

        attempt("dl_w0", dl_w0)

    attempt("cpu_after", lambda: record_variant(
        "cpu_after", summarise(epochs(lambda: cpu_epoch(ds)), ref, n, exact_order=True)))
    ds.release_buffers()  # the in-process variants are done: free the window buffers
    bt.release_memory()

    def dl_workers(nw: int) -> None:
        budget_w = bs.worker_budget(budget, args.quick, nw)
        dsw = StreamDataset(store, batch_size=bt.BATCH, shuffle=True, seed=0, memory_budget=budget_w)
        threads = dsw.describe(num_workers=nw)["threads"]
        loader = torch.utils.data.DataLoader(dsw, batch_size=None, num_workers=nw, pin_memory=dev.cuda)
        runs = []
        for _ in range(args.repeats):
            dsw.set_epoch(MEASURED_EPOCH)
            runs.append(device_epoch(loader, n, dev, pinned=dev.cuda))
        record_variant(f"dl_w{nw}", summarise(runs, ref, n, exact_order=False), num_workers=nw,
                       pin_memory=dev.cuda, dl_threads=threads, dl_budget_bytes=budget_w)

    for nw in (w for w in workers if w > 0):
        VARIANTS.setdefault(f"dl_w{nw}", f"DataLoader num_workers={nw}, pin_memory=True + to(cuda, non_blocking)")
        attempt(f"dl_w{nw}", lambda nw=nw: dl_workers(nw))
        bt.release_memory()

    def ratio_of(key: str) -> float | None:
        return results.get(key, {}).get("time_vs_max_load_step")

    summary = {
        "cpu_samples_per_s": base_sps,
        "cpu_after_samples_per_s": results.get("cpu_after", {}).get("samples_per_s"),
        "load_epoch_s": load_s,
        "step_epoch_s": stepped["fields"]["step_epoch_s"] if stepped else None,
        "overlap_time_vs_max_load_step": ratio_of("overlap"),
        "serial_time_vs_max_load_step": ratio_of("serial"),
        "async_time_vs_max_load_step": ratio_of("async"),
        "variants": {k: {"samples_per_s": v["samples_per_s"], "vs_cpu": v.get("vs_cpu"),
                         "correct": v.get("correct")} for k, v in results.items()},
        "failed": failures,
        "all_correct": not failures and all(v.get("correct", True) for v in results.values()),
        "workers": workers,
    }
    _common.write_record(NAME, {**common, "role": "summary", **summary}, args.records)
    bt.log(f"overlapped load+copy+step: {times(summary['overlap_time_vs_max_load_step'])} max(load, step) "
           f"(serial {times(summary['serial_time_vs_max_load_step'])}, async "
           f"{times(summary['async_time_vs_max_load_step'])}); all correct: {summary['all_correct']}"
           + (f"; FAILED: {', '.join(f['variant'] for f in failures)}" if failures else ""))


# ---------------------------------------------------------------------------- report
def times(value: float | None, sign: str = "x") -> str:
    """``1.23x`` (``n/a`` for a variant that did not run)."""
    return "n/a" if value is None or value != value else f"{value:.2f}{sign}"


def render(records: list[dict[str, Any]]) -> str:
    """Markdown sections for the records of this benchmark: the device= path, then the manual variants."""
    device = render_device(records)
    rows = [r for r in records if r.get("role") == "variant"]
    if not rows:
        return device or "## GPU\n\nNo records in the latest run.\n"
    return (device + "\n" if device else "") + render_legacy(records, rows)


def render_device(records: list[dict[str, Any]]) -> str:
    """The ``StreamDataset(device=...)`` section ('' without its records)."""
    rows = [r for r in records if r.get("role") == "device"]
    if not rows:
        return ""
    first = rows[0]
    quick = " (**--quick smoke run: tiny datasets, not a measurement**)" if first.get("quick") else ""
    gpu = (f"{first.get('gpu_name')}, CUDA {first.get('cuda_version')}" if first.get("cuda")
           else "**no CUDA: the copies ran on the CPU stand-in (device='cpu'); not a GPU measurement**")
    lines = ["## GPU: the device= path (pinned ring, copy thread, overlap with the step)", "",
             f"`StreamDataset(device=...)` on {gpu}{quick}: zarr/none, warm cache, budget as the throughput "
             f"benchmark, batch {first.get('batch_size')}, epoch 2, medians of {first.get('repeats')} repeats. "
             "Load alone = the same dataset with device=None; a long step takes >= "
             f"{LONG_STEP}x a batch's load (bound: step alone = step x batches), a short one <= {SHORT_STEP}x "
             f"(bound: load alone); target: epoch <= {OVERLAP_TARGET}x the bound. Copy throughput = bytes / "
             "the copies' own time (CUDA events on the copy stream), against copies of the same size from "
             f"one pinned buffer in the same run (target >= {COPY_TARGET}x) and against one 256 MiB copy.", ""]
    table = []
    for r in rows:
        table.append({
            "dataset": r["dataset"], "variant": r.get("label", r["variant"]),
            "samples/s": bt._num(r.get("samples_per_s"), ",.0f"), "epoch s": bt._num(r.get("seconds"), ".2f"),
            "step µs": "" if "step_s" not in r else bt._num(r["step_s"] * 1e6, ",.0f"),
            "time ÷ bound": "" if "time_vs_bound" not in r else f"{bt._num(r['time_vs_bound'], '.2f')} ({r['bound']})",
            "copy GB/s": "" if "copy_gb_per_s" not in r else bt._num(r["copy_gb_per_s"], ".1f"),
            "÷ pinned same size": "" if r.get("copy_vs_pinned") is None else bt._num(r["copy_vs_pinned"], ".2f"),
            "÷ pinned 256 MiB": "" if r.get("copy_vs_pinned_256mib") is None else bt._num(r["copy_vs_pinned_256mib"], ".2f"),
            "correct": "yes" if r.get("correct") else "**no**",
        })
    lines.append(_common.format_table(table, list(table[0])))
    for r in (r for r in records if r.get("role") == "device_summary"):
        t = r.get("targets", {})
        verdict = ", ".join(f"{k} {'met' if v else 'missed' if v is not None else 'n/a'}" for k, v in t.items())
        lines += ["", f"{r['dataset']}: targets {verdict}."]
    for r in (r for r in records if r.get("role") == "failed" and r.get("variant") == "device"):
        lines += ["", f"**Failed** on {r.get('dataset')}: `{r['error']}`"]
    lines += ["", f"Command: `{first['command']}`", "", bt.machine_line(first)]
    return "\n".join(lines) + "\n"


def render_legacy(records: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    """The manual variants' section (``--legacy``)."""
    first = rows[0]
    summary = next((r for r in records if r.get("role") == "summary" and r.get("run_id") == first.get("run_id")),
                   None)
    quick = " (**--quick smoke run: tiny dataset, not a measurement**)" if first.get("quick") else ""
    gpu = (f"{first.get('gpu_name')}, CUDA {first.get('cuda_version')}" if first.get("cuda")
           else "**no CUDA: the GPU parts were skipped and the variants ran on the CPU; not a GPU measurement**")
    lines = [
        "## GPU: pinned memory, host-to-device copies and overlap with a training step",
        "",
        "What does moving every batch to the GPU cost, and does loading hide behind a training step "
        f"(`{first['dataset']}` {first['format']}/{first['codec']}, {first['rows']:,} rows, warm cache, "
        f"budget {bt._mib(first['budget_bytes'])} MiB, batch {first['batch_size']}, epoch 2 of one "
        f"dataset for every in-process variant, medians of {first.get('repeats')} repeats; {gpu}){quick}?",
        "",
    ]
    table = []
    for r in rows:
        bound = r.get("time_vs_max_load_step")
        table.append({
            "variant": r.get("label", r["variant"]),
            "samples/s": bt._num(r["samples_per_s"], ",.0f"),
            "× cpu in process": bt._num(r.get("vs_cpu"), ".2f"),
            "epoch s": bt._num(r.get("seconds"), ".2f"),
            "time ÷ max(load, step)": "" if bound is None else bt._num(bound, ".2f"),
            "missing / dup": "" if "missing" not in r else f"{r['missing']} / {r['duplicated']}",
            "same order as cpu": ("" if "order_equal_cpu" not in r
                                  else ("yes" if r["order_equal_cpu"] else
                                        ("no" if r.get("order_checked") else "no (workers: not expected)"))),
            "correct": "yes" if r.get("correct") else "**no**",
        })
    lines.append(_common.format_table(table, list(table[0])))
    step = next((r for r in rows if r["variant"] == "step_alone"), None)
    if step is not None:
        lines += [
            "",
            f"Simulated step: MLP {step.get('step_depth')} hidden matmuls of width {step.get('step_width')} "
            f"(float32, forward only), {bt._num(step['step_s'] * 1e6, ',.0f')} µs per batch "
            f"({bt._num(step.get('step_tflops_per_s'), '.2f')} TFLOP/s), calibrated to the CPU baseline's "
            f"{bt._num(step['load_batch_s'] * 1e6, ',.0f')} µs per batch load. Load alone = the cpu epoch "
            f"({bt._num(step['load_epoch_s'], '.2f')} s), step alone = step × batches "
            f"({bt._num(step['step_epoch_s'], '.2f')} s); time ÷ max(load, step) = 1.00 is perfect overlap, "
            "about (load + step) / max(load, step) is none.",
        ]
    if summary is not None:
        lines += [
            "",
            f"Overlapped load+copy+step: {times(summary['overlap_time_vs_max_load_step'], '×')} max(load, "
            f"step) (serial {times(summary['serial_time_vs_max_load_step'], '×')}, async on one stream "
            f"{times(summary['async_time_vs_max_load_step'], '×')}). CPU baseline "
            f"{bt._num(summary['cpu_samples_per_s'], ',.0f')} samples/s before, "
            f"{bt._num(summary['cpu_after_samples_per_s'], ',.0f')} after.",
        ]
    else:
        lines += ["", "**Partial run**: no summary record (the run stopped before the end)."]
    if first.get("h2d_pinned_gb_per_s"):
        pin = next((r for r in rows if r["variant"] == "pin_copy"), None)
        share = (f"; the pin+copy variant moves {bt._num(pin['mb_per_s'], ',.0f')} MB/s"
                 if pin and pin.get("mb_per_s") else "")
        lines += ["", f"Copy limit measured in the same run: one 256 MiB host-to-device copy at "
                  f"{bt._num(first['h2d_pinned_gb_per_s'], '.1f')} GB/s from pinned memory, "
                  f"{bt._num(first.get('h2d_pageable_gb_per_s'), '.1f')} GB/s from pageable memory{share}."]
    failed = [r for r in records if r.get("role") == "failed" and r.get("run_id") == first.get("run_id")]
    for r in failed:
        lines += ["", f"**Failed**: {VARIANTS.get(r['variant'], r['variant'])}: `{r['error']}`"]
    correct = not failed and all(r.get("correct") for r in rows)
    lines += [
        "",
        "Correct = every id exactly once, the sum of `x` equal to the CPU baseline's (relative "
        f"{X_SUM_RTOL:g}) and, in process, the CPU baseline's exact order: "
        f"{'**holds**' if correct else '**fails**'}.",
        "",
        f"Command: `{first['command']}`",
        "",
        bt.machine_line(first),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
