#!/usr/bin/env python
"""Image decoding benchmark (issue 17): decode + resize + centre crop to uint8 [3, 224, 224].

    python benchmarks/bench_images.py [--data DIR] [--quick] [--repeats N] [--threads T]
        [--decoders pillow,simplejpeg] [--sample S] [--no-dataloader] [--dl-batches N] [--stages]

On the must-show dataset (``_images.py``: 20,000 generated JPEGs of 256-500 px a side in the
ImageFolder layout, label-sorted; 2,000 with ``--quick``), under ``DIR/images/`` (default
``data/``; generated when missing), this script measures in one run:

* decode, 1 thread: ``streambatch.decode.Image(size=(224, 224), decoder=D).decode_into`` over
  ``S`` encoded images held in RAM (default 2,000), 64 rows a call: the single-thread rate;
* decode, ``T`` threads (default: the CPU count): the same calls spread over ``T`` threads, each
  with its own output buffer; the figure is the rate over ``T`` x the single-thread rate (1.0:
  perfect scaling, which needs the GIL released while decoding) and process CPU / wall;
* DataLoader baseline: a map-style ``Dataset`` over the files that does what a user writes with
  torchvision (read the file, ``PIL.Image.open(...).convert("RGB")``, ``Resize(224)`` of the whole
  image, ``CenterCrop(224)``, a uint8 CHW tensor), ``DataLoader(batch_size=256, shuffle=True,
  num_workers=T)``, one epoch (or its first ``--dl-batches``) with the light consumer
  (``_common.consume(touch=True)``);
* with ``--stages``: milliseconds an image of each stage (:func:`stage_times`);
* streambatch: HOOK, not measured yet (see :func:`measure_streambatch`).

1-thread and T-thread runs alternate within every repeat (the machine is shared: a slow moment
slows both); each figure is the median of the repeats, and every run's rate is recorded.
Records go to ``records/images.jsonl``; ``report.py`` renders them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _common  # noqa: E402
import _images  # noqa: E402
from bench_throughput import base_record, log, new_run_id, warm  # noqa: E402

from streambatch.decode import DECODERS, Image, default_decoder  # noqa: E402
from streambatch.ragged import Ragged  # noqa: E402

NAME = "images"
SIZE = (224, 224)
BATCH = 256
CALL_ROWS = 64
FULL_N, QUICK_N = 20_000, 2_000


# ---------------------------------------------------------------------------- decode rates
def sample_rows(files: list[Path], n: int, seed: int = 0) -> Ragged:
    """``n`` of ``files`` (a seeded random choice, so every class and size shows) as one Ragged."""
    pick = np.sort(np.random.default_rng(seed).choice(len(files), size=min(n, len(files)), replace=False))
    return Ragged.from_rows([files[i].read_bytes() for i in pick], np.uint8)


def decode_rate(spec: Image, rows: Ragged, threads: int) -> dict[str, Any]:
    """Decode every row of ``rows`` in calls of ``CALL_ROWS`` over ``threads`` threads; images/s
    and process CPU / wall."""
    local = threading.local()
    ids = np.arange(len(rows), dtype=np.int64)

    def call(start: int) -> int:
        part = rows[start:start + CALL_ROWS]
        out = getattr(local, "out", None)
        if out is None or out.shape[0] < len(part):
            out = local.out = np.zeros((CALL_ROWS, *spec.shape), np.uint8)
        res = spec.decode_into(part, out[:len(part)], ids[start:], lambda i: "benchmark")
        return len(part) - len(res.failed)

    starts = range(0, len(rows), CALL_ROWS)
    cpu0, t0 = _common.process_cpu_seconds(), time.perf_counter()
    if threads == 1:
        done = sum(call(s) for s in starts)
    else:
        with ThreadPoolExecutor(threads, thread_name_prefix="bench-decode") as pool:
            done = sum(pool.map(call, starts))
    wall = time.perf_counter() - t0
    return {"images": done, "seconds": wall, "samples_per_s": done / wall,
            "cpu_per_wall": (_common.process_cpu_seconds() - cpu0) / wall}


def measure_decoders(rows: Ragged, decoders: list[str], threads: int, repeats: int) -> list[dict[str, Any]]:
    """Per decoder, 1-thread and ``threads``-thread rates, alternated in every repeat; medians."""
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    counts = (1, threads) if threads > 1 else (1,)
    for d in decoders:  # warm-up: imports, first allocations, the page cache of the libraries
        decode_rate(Image(SIZE, decoder=d), rows[:CALL_ROWS], 1)
    for rep in range(repeats):
        for d in decoders:
            for t in counts:
                r = decode_rate(Image(SIZE, decoder=d), rows, t)
                runs.setdefault((d, t), []).append(r)
                log(f"repeat {rep + 1}: {d:<10} {t} thread(s) {r['samples_per_s']:7.0f} images/s"
                    f"  CPU/wall {r['cpu_per_wall']:.2f}")
    out = []
    for (d, t), rs in runs.items():
        single = statistics.median(r["samples_per_s"] for r in runs[(d, 1)])
        rate = statistics.median(r["samples_per_s"] for r in rs)
        out.append({"kind": "decode", "decoder": d, "threads": t, "samples_per_s": rate,
                    "runs_samples_per_s": [r["samples_per_s"] for r in rs],
                    "cpu_per_wall": statistics.median(r["cpu_per_wall"] for r in rs),
                    "images_per_cpu_s": statistics.median(r["samples_per_s"] / r["cpu_per_wall"] for r in rs),
                    "scaling": rate / (t * single), "images": len(rows),
                    "mean_bytes": float(np.mean(rows.lengths)), "default": d == default_decoder()})
    return out


def stage_times(rows: Ragged, n: int = 300) -> dict[str, float]:
    """CPU milliseconds an image (``time.thread_time``: the load of a shared machine hardly
    changes it) of the stages of one decode, one thread, best of 3 passes over ``n`` images:
    where the time goes, and why the defaults are what they are (docs/PERFORMANCE.md)."""
    import io

    from PIL import Image as PILImage

    data = [bytes(rows.row(i)) for i in range(min(n, len(rows)))]
    ims = [PILImage.open(io.BytesIO(b)).convert("RGB") for b in data]
    box = [(0, 0, im.width, im.height) for im in ims]
    small = [im.resize(SIZE) for im in ims]
    stages: dict[str, Any] = {
        "pillow decode + convert RGB": (lambda b: PILImage.open(io.BytesIO(b)).convert("RGB"), data),
        "resize whole image to 224x224, bilinear (antialiased)": (lambda k: ims[k].resize(SIZE, PILImage.Resampling.BILINEAR, box=box[k]), range(len(ims))),
        "the same, bicubic": (lambda k: ims[k].resize(SIZE, PILImage.Resampling.BICUBIC, box=box[k]), range(len(ims))),
        "np.asarray of a 224x224 RGB image": (lambda k: np.asarray(small[k]), range(len(ims))),
    }
    whole = [torch.from_numpy(np.array(im)).permute(2, 0, 1).unsqueeze(0) for im in ims]
    stages["the same, torch's uint8 antialiased bilinear (channels last; the loader's)"] = (
        lambda k: torch.nn.functional.interpolate(whole[k], size=SIZE, mode="bilinear", antialias=True),
        range(len(ims)))
    try:
        import simplejpeg

        def scaled(b: bytes) -> Any:  # the N/8 factor nearest above 224 on the shorter side
            h, w = simplejpeg.decode_jpeg_header(b)[:2]
            k = max(SIZE[0] / h, SIZE[1] / w)
            return simplejpeg.decode_jpeg(b, "RGB", min_height=int(np.ceil(h * k)), min_width=int(np.ceil(w * k)))

        stages["simplejpeg decode"] = (lambda b: simplejpeg.decode_jpeg(b, "RGB"), data)
        stages["simplejpeg decode at N/8 scale"] = (scaled, data)
    except ImportError:
        pass
    out = {}
    for name, (fn, items) in stages.items():
        best = float("inf")
        for _ in range(3):
            t0 = time.thread_time()
            for x in items:
                fn(x)
            best = min(best, time.thread_time() - t0)
        out[name] = best / len(items) * 1e3
        log(f"stage {name}: {out[name]:.3f} CPU ms/image")
    return out


# ---------------------------------------------------------------------------- DataLoader baseline
class FileImages(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """The torchvision way, without torchvision: open the file with PIL, convert to RGB, resize the
    whole image so its shorter side is 224 (``Resize(224)``: the long side ``int(224 * long /
    short)``, bilinear with antialias), crop the centre (``CenterCrop(224)``), uint8 CHW tensor."""

    def __init__(self, files: list[Path], labels: np.ndarray, size: int = SIZE[0]) -> None:
        self.files, self.labels, self.size = [str(f) for f in files], labels, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from PIL import Image as PILImage

        with PILImage.open(self.files[i]) as im:
            im = im.convert("RGB")
        w, h, s = im.width, im.height, self.size
        nw, nh = (int(s * w / h), s) if h <= w else (s, int(s * h / w))
        im = im.resize((nw, nh), PILImage.Resampling.BILINEAR)
        top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
        arr = np.asarray(im.crop((left, top, left + s, top + s)))
        return {"x": torch.from_numpy(arr.transpose(2, 0, 1).copy()), "y": int(self.labels[i]), "id": i}


def measure_dataloader(files: list[Path], labels: np.ndarray, workers: int, repeats: int,
                       max_batches: int | None = None) -> dict[str, Any]:
    """One shuffled epoch of :class:`FileImages` through ``DataLoader(num_workers=workers)`` (its
    first ``max_batches`` batches where given: a slow machine), median of ``repeats``."""
    runs = []
    for rep in range(repeats):
        loader = torch.utils.data.DataLoader(
            FileImages(files, labels), batch_size=BATCH, shuffle=True, num_workers=workers,
            generator=torch.Generator().manual_seed(rep))
        with _common.PeakRSS() as mem:
            res = _common.consume(loader, max_batches=max_batches, touch=True)
        res.pop("ids")
        rate = res["samples"] / res["seconds"]
        cpu = res["cpu_seconds"] / res["wall_seconds"]
        runs.append({"samples_per_s": rate, "first_batch_s": res["first_batch_s"], "peak_rss_bytes": mem.peak,
                     "cpu_per_wall": cpu, "images_per_cpu_s": rate / cpu})
        log(f"repeat {rep + 1}: DataLoader(num_workers={workers}) {rate:7.0f} images/s")
    med = sorted(runs, key=lambda r: r["samples_per_s"])[(len(runs) - 1) // 2]
    return {"kind": "dataloader", "decoder": "pillow (torchvision-style)", "threads": workers,
            **med, "runs_samples_per_s": [r["samples_per_s"] for r in runs], "images": len(files),
            "max_batches": max_batches}


# ---------------------------------------------------------------------------- streambatch (hook)
def measure_streambatch(root: Path, threads: int, repeats: int, budget: str | None = None) -> dict[str, Any]:
    """One shuffled epoch of ``StreamDataset(DST, batch_size=BATCH, decode={"image": Image(SIZE)},
    threads=threads)`` per repeat, DST the image folder ``root`` converted once beside it (the
    files' bytes, an int64 label), warm; the consumer touches one element of each batch.  The
    budget is a quarter of the dataset's bytes (at least 256 MiB: a batch of 256 decoded images is 38 MB) unless given.  Also: peak RSS above the start and
    against the budget, the design effect and label KL of the served labels (the folder is
    label-sorted), every image served once (checked)."""
    import streambatch
    from streambatch import StreamDataset
    from streambatch.quality import design_effect, label_kl
    from streambatch.storage import load_manifest

    dst = root.parent / f"{root.name}.sb"
    if not (dst / "_streambatch.json").exists():
        t0 = time.perf_counter()
        streambatch.convert(root, dst, label="label", progress=False)
        log(f"converted {root} in {time.perf_counter() - t0:.1f} s")
    m = load_manifest(dst)
    from streambatch._sizes import parse_size

    budget_b = parse_size(budget, 'budget') if budget else max(256 << 20, m.decoded_nbytes // 4)
    warm(dst)
    runs = []
    for rep in range(repeats):
        ds = StreamDataset(dst, batch_size=BATCH, memory_budget=budget_b, threads=threads, seed=rep,
                           return_index=True, decode={"image": Image(SIZE)})
        rows, labels = [], []
        cpu0, t0 = _common.process_cpu_seconds(), time.perf_counter()
        with _common.PeakRSS(children=False) as mem:  # threads only: no children to scan
            first = None
            for b in ds:
                _ = int(b["image"][-1, -1, -1, -1])
                first = first or time.perf_counter() - t0
                rows.append(b["_row"].numpy())
                labels.append(b["label"].numpy())
        wall, cpu = time.perf_counter() - t0, _common.process_cpu_seconds() - cpu0
        order = np.concatenate(rows)
        if not np.array_equal(np.sort(order), np.arange(m.rows)):
            raise SystemExit("streambatch: an epoch did not serve every image once")
        rate = m.rows / wall
        runs.append({"samples_per_s": rate, "first_batch_s": first, "peak_rss_bytes": mem.peak,
                     "peak_rss_above_start": mem.peak - mem.start, "cpu_per_wall": cpu / wall,
                     "images_per_cpu_s": m.rows / cpu,
                     "deff": design_effect(order, m.unit_rows, BATCH)["deff"],
                     "kl_ratio": label_kl(np.concatenate(labels), BATCH)["kl_ratio"],
                     "predicted_deff": ds.describe()["predicted_deff"]})
        log(f"repeat {rep + 1}: streambatch (threads={threads}) {rate:7.0f} images/s, deff {runs[-1]['deff']:.2f}")
    med = sorted(runs, key=lambda r: r["samples_per_s"])[(len(runs) - 1) // 2]
    return {"kind": "streambatch", "decoder": default_decoder(), "threads": threads, **med,
            "runs_samples_per_s": [r["samples_per_s"] for r in runs], "images": m.rows, "budget_bytes": budget_b,
            "dataset_bytes": m.decoded_nbytes}


# ---------------------------------------------------------------------------- main and report
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(HERE.parent / "data"))
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_N:,} images instead of {FULL_N:,}")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--decoders", default=",".join(d for d in DECODERS if _installed(d)))
    ap.add_argument("--sample", type=int, default=2_000, help="images held in RAM for the decode rates")
    ap.add_argument("--no-dataloader", action="store_true", help="decode rates only")
    ap.add_argument("--dl-batches", type=int, default=None, help="time the DataLoader's first N batches only")
    ap.add_argument("--stages", action="store_true", help="also time the stages of one decode")
    ap.add_argument("--no-streambatch", action="store_true", help="leave out the streambatch row")
    ap.add_argument("--budget", default=None, help="the loader's memory_budget (default: 1/4 of the dataset)")
    args = ap.parse_args(argv)
    n = QUICK_N if args.quick else FULL_N
    root = _images.ensure_images(Path(args.data) / "images" / f"jpeg-{n}", n=n)
    files, labels = _images.image_files(root)
    base = base_record(args, new_run_id(), "bench_images.py")
    rows = sample_rows(files, args.sample)
    log(f"{len(files):,} JPEGs in {root}; decoding {len(rows):,} in RAM ({rows.nbytes / 1e6:.0f} MB)")
    records = measure_decoders(rows, args.decoders.split(","), args.threads, args.repeats)
    if args.stages:
        records.append({"kind": "stages", "ms_per_image": stage_times(rows)})
    if not args.no_dataloader:
        warm(root)
        records.append(measure_dataloader(files, labels, args.threads, args.repeats, args.dl_batches))
    if not args.no_streambatch:
        records.append(measure_streambatch(root, args.threads, args.repeats, args.budget))
    records = [{**base, "dataset_images": len(files), **r} for r in records]
    for rec in records:
        _common.write_record(NAME, rec)
    print(render([{**r, "machine": _common.machine_info()} for r in records]))
    return 0


def _installed(decoder: str) -> bool:
    try:
        Image(SIZE, decoder=decoder)
        return True
    except ValueError:
        return False


def render(records: list[dict[str, Any]]) -> str:
    """The Markdown section of the latest run."""
    m = records[0].get("machine", {})
    single = {r["decoder"]: r["samples_per_s"] for r in records if r["kind"] == "decode" and r["threads"] == 1}
    dl = next((r["samples_per_s"] for r in records if r["kind"] == "dataloader"), float("nan"))
    lines = ["## Images: decode + resize + centre crop (issue 17)", "",
             "JPEGs of 256-500 px to uint8 [3, 224, 224]. Decode rows: images held in RAM, "
             "`Image.decode_into`; x single: rate / (threads x the decoder's 1-thread rate). "
             "DataLoader: files, PIL, torchvision-style Resize + CenterCrop, shuffle, "
             "`num_workers` = threads. CPU / wall: process CPU (DataLoader: with its workers) over "
             "wall time; images / CPU-s: the rate over that, which the machine's load changes "
             "little (x single does: threads scale only onto free cores).", "",
             "| kind | decoder | threads | images/s | x single | CPU / wall | images / CPU-s | x DataLoader | runs |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    stages = next((r["ms_per_image"] for r in records if r["kind"] == "stages"), {})
    for r in (r for r in records if r["kind"] in ("decode", "dataloader", "streambatch")):
        base = single.get(r["decoder"]) if r["kind"] in ("decode", "streambatch") else None
        x_single = r["samples_per_s"] / (r["threads"] * base) if base else float("nan")
        runs = ", ".join(f"{v:.0f}" for v in r.get("runs_samples_per_s", []))
        lines.append(f"| {r['kind']} | {r['decoder']} | {r['threads']} | {r['samples_per_s']:,.0f} | "
                     f"{x_single:.2f} | {r.get('cpu_per_wall', float('nan')):.2f} | "
                     f"{r.get('images_per_cpu_s', float('nan')):.0f} | "
                     f"{r['samples_per_s'] / dl:.2f} | {runs} |")
    sb = next((r for r in records if r["kind"] == "streambatch"), None)
    if sb is not None:
        lines += ["", f"streambatch: deff {sb['deff']:.2f} (predicted {sb['predicted_deff']:.2f}), label KL "
                  f"{sb['kl_ratio']:.2f}x the ideal, peak RSS {sb['peak_rss_above_start'] / 2**20:.0f} MiB above its "
                  f"start under a budget of {sb['budget_bytes'] / 2**20:.0f} MiB "
                  f"({sb['dataset_bytes'] / 2**20:.0f} MiB of images), first batch {sb['first_batch_s']:.2f} s."]
    if sb is not None and single.get(sb["decoder"]):
        base = single[sb["decoder"]]
        alone = next((r["samples_per_s"] for r in records if r["kind"] == "decode" and r["decoder"] == sb["decoder"]
                      and r["threads"] == sb["threads"]), float("nan"))
        x = sb["samples_per_s"] / (sb["threads"] * base)
        lines += ["", ("holds" if x >= 0.9 else "FAILS") + f": the loader at >= 0.9x its decoder's 1-thread rate x "
                  f"{sb['threads']} threads ({x:.2f}x; decoding alone on {sb['threads']} threads, nothing else: "
                  f"{alone / (sb['threads'] * base):.2f}x); "
                  + ("holds" if sb["samples_per_s"] >= 1.5 * dl else "FAILS")
                  + f": >= 1.5x the DataLoader ({sb['samples_per_s'] / dl:.2f}x)."]
    if stages:
        lines += ["", "Stages, one thread, CPU ms an image: " + "; ".join(f"{k} {v:.2f}" for k, v in stages.items()) + "."]
    lines += ["", f"Command: `{records[0]['command']}` ({records[0].get('dataset_images', 0):,} images). "
              f"Machine: {m.get('cpu_count')} CPUs, Python {m.get('python')}, torch {m.get('torch')}. "
              "streambatch: the folder converted (image bytes as they are), one shuffled epoch with "
              "`decode={'image': Image((224, 224))}` under a budget of a quarter of its bytes."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
