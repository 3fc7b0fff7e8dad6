#!/usr/bin/env python
"""Training benchmark: does a model trained through streambatch match one trained on a full
in-RAM shuffle?

Two models (../shared/BENCHMARKS.md): softmax regression (``torch.nn.Linear(32, 10)``) and a
small MLP with BatchNorm (``Linear(32, 64) -> BatchNorm1d(64) -> ReLU -> Linear(64, 10)``: batch
statistics are what a poor shuffle breaks first; evaluated in eval mode, on its running
statistics), on the label-sorted ``learn`` dataset of ``tools/make_datasets.py`` (200,000 rows,
x float32[32] = class mean + N(0, 1), y in 0..9, a held-out split in ``test/``), SGD with
momentum 0.9, the same initial weights, epochs and learning-rate schedule for every feed, once
with a constant learning rate (where the order of the batches shows most, as in SHUFFLE.md's toy
SGD run) and once with a per-step cosine decay to 0 (where even a label-sorted feed recovers in
its last, tiny steps):

- ``in-RAM shuffle``: the arrays in RAM, a fresh ``torch.randperm`` every epoch (the reference);
- ``streambatch``: ``StreamDataset`` over the converted Zarr at its default ``memory_budget``
  (the learn set, ~29 MB, fits in it);
- ``streambatch 1/8``: a budget of 1/8 of the dataset's bytes, so the loader really works out of
  core; a window holds only a few shuffle units' worth of rows, which the loader mixes as pieces
  sized from the budget at load time (``describe()["piece_rows"]``);
- ``streambatch 1/8, whole units``: the same with ``piece_rows=0`` (a window mixes whole stored
  units, the loader before load-time pieces), so before and after sit in one run;
- ``streambatch 1/8 pre-shuffled``: the same budget over a copy converted with
  ``shuffle=0`` (the converter's one-time offline shuffle), the remedy for sorted inputs;
- ``no shuffle``: storage (label-sorted) order, the failure case.

Each model is trained on each feed with ``--repeats`` seeds (default 3) (the seed fixes the initial
weights and the shuffle seed); the report gives the mean and spread of the final test accuracy
and loss, the difference to the in-RAM shuffle, the per-epoch training loss, the piece size and
the shuffle quality of each feed's first epoch (SHUFFLE.md metrics). Target: for each model,
``streambatch`` and ``streambatch 1/8`` (no pre-shuffle) within 1 point of the in-RAM shuffle.

Usage::

    python benchmarks/bench_training.py            # full size, ~10 minutes on 2 cores
    python benchmarks/bench_training.py --quick    # 50,000 rows, 1 seed, 3 epochs
    python benchmarks/bench_training.py --models mlp --schedules constant   # a part (it replaces
                                                   # the whole section of RESULTS.md)

``--data DIR`` holds the datasets (made on first use); ``--records DIR`` writes the records
elsewhere (tests) and ``--no-report`` skips regenerating RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
from make_datasets import make_dataset  # noqa: E402

import streambatch  # noqa: E402
from streambatch.quality import summarize  # noqa: E402

NAME = "training"
BATCH = 256
N_CLASSES = 10
FEEDS = ("in-RAM shuffle", "streambatch", "streambatch 1/8", "streambatch 1/8, whole units",
         "streambatch 1/8 pre-shuffled", "no shuffle")
"""Feeds in table order; the first is the reference the targets compare against."""
TARGET_PP = 1.0
"""Streambatch's final test accuracy must be within this many percentage points of the reference."""
MODELS = {
    "softmax": "softmax regression: Linear(32, 10)",
    "mlp": "MLP with BatchNorm: Linear(32, 64) -> BatchNorm1d(64) -> ReLU -> Linear(64, 10)",
}
"""Models in table order: ``--models`` key -> "name: architecture" (records and report)."""
HIDDEN = 64
"""Hidden width of the MLP."""
SCHEDULES = ("constant", "cosine")
"""Learning-rate schedules: constant shows the order's effect most (SHUFFLE.md's toy SGD run);
a cosine decay to 0 lets even a label-sorted feed recover in its last, tiny steps."""
NO_SHUFFLE_GAP_PP = 5.0
"""'Clearly worse': no-shuffle accuracy at least this many points below the reference."""

Batches = Iterable[tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]]
"""One epoch of (x, y, ids, storage rows) batches."""


# ----------------------------------------------------------------------------- data


def _npy_rows(folder: Path) -> int | None:
    """Rows of the ``.npy`` dataset in ``folder`` (None if it is missing or incomplete)."""
    try:
        shapes = {c: np.load(folder / f"{c}.npy", mmap_mode="r").shape[0] for c in ("id", "x", "y")}
    except (OSError, ValueError):
        return None
    return shapes["y"] if len(set(shapes.values())) == 1 else None


def prepare(root: Path, rows: int) -> dict[str, Path]:
    """Make ``root/learn-npy`` (train + ``test/``) and its two Zarr conversions if missing.

    ``root/learn.zarr`` is the plain conversion, ``root/learn-shuffled.zarr`` the one written in a
    random order (``shuffle=0``). Existing folders with the right row count are reused.
    """
    npy = root / "learn-npy"
    fresh = False
    if _npy_rows(npy) != rows or _npy_rows(npy / "test") != max(N_CLASSES, rows // 5):
        print(f"making {npy} ({rows:,} rows + test split)", flush=True)
        make_dataset("learn", npy, rows=rows)
        fresh = True
    paths = {"npy": npy, "test": npy / "test"}
    for key, shuffle in (("zarr", None), ("zarr_shuffled", 0)):
        dst = root / ("learn.zarr" if shuffle is None else "learn-shuffled.zarr")
        paths[key] = dst
        try:
            ok = streambatch.load_manifest(dst).rows == rows
        except Exception:  # missing or unreadable: convert again
            ok = False
        if fresh or not ok:
            print(f"converting {npy} -> {dst} (shuffle={shuffle})", flush=True)
            streambatch.convert(npy, dst, format="zarr", label="y", shuffle=shuffle, overwrite=True)
    return paths


def _load(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    cols = _common.load_columns(folder)
    return torch.from_numpy(np.ascontiguousarray(cols["x"])), torch.from_numpy(cols["y"])


# ----------------------------------------------------------------------------- feeds


def in_ram_feed(x: torch.Tensor, y: torch.Tensor, seed: int, shuffle: bool) -> Callable[[int], Batches]:
    """Epoch ``e`` -> batches of a fresh ``torch.randperm`` (or storage order if not ``shuffle``)."""
    n = len(y)

    def epoch(e: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]]:
        if shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 10_000 + e))
        else:
            order = torch.arange(n)
        for i in range(0, n, BATCH):
            idx = order[i : i + BATCH]
            ids = idx.numpy()
            yield x[idx], y[idx], ids, ids

    return epoch


def stream_feed(ds: Any) -> Callable[[int], Batches]:
    """Epoch ``e`` -> ``ds.set_epoch(e)`` then the dataset's batches (in this process)."""

    def epoch(e: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]]:
        ds.set_epoch(e)
        for batch in ds:
            yield batch["x"], batch["y"], batch["id"].numpy(), batch["_row"].numpy()

    return epoch


# ----------------------------------------------------------------------------- training


def make_model(model: str, n_in: int) -> torch.nn.Module:
    """A fresh model of kind ``model`` (a key of :data:`MODELS`) for ``n_in`` features.

    Raises:
        ValueError: an unknown ``model``.
    """
    if model == "softmax":
        return torch.nn.Linear(n_in, N_CLASSES)
    if model == "mlp":
        return torch.nn.Sequential(
            torch.nn.Linear(n_in, HIDDEN), torch.nn.BatchNorm1d(HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, N_CLASSES)
        )
    raise ValueError(f"model must be one of {tuple(MODELS)}, got {model!r}")


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``, in eval mode (BatchNorm on its
    running statistics, as at inference); the model is left in training mode."""
    model.eval()
    try:
        with torch.no_grad():
            logits = model(x)
            loss = float(torch.nn.functional.cross_entropy(logits, y))
            acc = float((logits.argmax(1) == y).double().mean())
    finally:
        model.train()
    return loss, acc


def train(
    feed: Callable[[int], Batches],
    n_rows: int,
    test: tuple[torch.Tensor, torch.Tensor],
    unit_rows: np.ndarray,
    seed: int,
    epochs: int,
    lr: float,
    schedule: str = "constant",
    model_kind: str = "softmax",
) -> dict[str, Any]:
    """Train a fresh model of kind ``model_kind`` (a key of :data:`MODELS`) on ``feed``; return
    per-epoch figures.

    The same ``seed`` gives the same initial weights for every feed. ``schedule`` is
    ``"constant"`` (``lr`` throughout) or ``"cosine"`` (per step from ``lr`` to 0 over
    ``epochs * ceil(n_rows / BATCH)`` steps).

    Raises:
        ValueError: an unknown ``schedule`` or ``model_kind``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    torch.manual_seed(seed)
    model = make_model(model_kind, test[0].shape[1])
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    steps = epochs * math.ceil(n_rows / BATCH)

    def factor(step: int) -> float:
        if schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    train_loss: list[float] = []
    test_loss: list[float] = []
    test_acc: list[float] = []
    epoch_s: list[float] = []
    quality: dict[str, float] = {}
    complete: dict[str, int] = {}
    for e in range(epochs):
        t0 = time.perf_counter()
        total = 0.0
        seen = 0
        ids: list[np.ndarray] = []
        rows: list[np.ndarray] = []
        for xb, yb, idb, rowb in feed(e):
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(yb)
            seen += len(yb)
            if e == 0:
                ids.append(np.array(idb, dtype=np.int64))
                rows.append(np.array(rowb, dtype=np.int64))
        epoch_s.append(time.perf_counter() - t0)
        train_loss.append(total / max(1, seen))
        tl, ta = evaluate(model, *test)
        test_loss.append(tl)
        test_acc.append(ta)
        if e == 0:
            served = np.concatenate(ids)
            stored = np.concatenate(rows)
            complete = _common.check_complete(served, n_rows)
            # Labels are a function of the original id (label-sorted data): KL and missing classes
            # from the ids; chunk collisions (deff) from the storage rows actually read.
            by_id = summarize(served, unit_rows, BATCH, N_CLASSES)
            by_row = summarize(stored, unit_rows, BATCH, N_CLASSES)
            quality = {
                "deff": by_row["deff"],
                "kl": by_id["kl"],
                "kl_ratio": by_id["kl_ratio"],
                "frac_missing_class": by_id["frac_missing_class"],
                "spearman": by_id["spearman"],
            }
    return {
        "train_loss": train_loss,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "epoch_s": epoch_s,
        "final_test_loss": test_loss[-1],
        "final_test_acc": test_acc[-1],
        "train_s": sum(epoch_s),
        "epoch0_missing": complete.get("missing"),
        "epoch0_duplicated": complete.get("duplicated"),
        **quality,
    }


# ----------------------------------------------------------------------------- main


def _list_arg(parser: argparse.ArgumentParser, flag: str, value: str, choices: Iterable[str]) -> list[str]:
    """A comma-separated ``value`` of ``flag`` as a list, each one of ``choices`` (else a parser error)."""
    allowed = list(choices)
    items = [s.strip() for s in value.split(",") if s.strip()]
    if not items or any(s not in allowed for s in items):
        parser.error(f"{flag}: choose from {', '.join(allowed)}")
    return items


def _stream_feeds(paths: dict[str, Path], small_budget: int) -> dict[str, dict[str, Any]]:
    """``{feed: StreamDataset keyword arguments}`` for the streambatch feeds."""
    return {
        "streambatch": {"path": paths["zarr"]},  # the StreamDataset default budget
        "streambatch 1/8": {"path": paths["zarr"], "memory_budget": small_budget},
        "streambatch 1/8, whole units": {"path": paths["zarr"], "memory_budget": small_budget, "piece_rows": 0},
        "streambatch 1/8 pre-shuffled": {"path": paths["zarr_shuffled"], "memory_budget": small_budget},
    }


def _make_feed(
    name: str, seed: int, streams: dict[str, dict[str, Any]], x: torch.Tensor, y: torch.Tensor
) -> tuple[Callable[[int], Batches], dict[str, Any]]:
    """Feed ``name`` for ``seed`` and the record's figures about it: format, the ``describe()``
    sizes (None for an in-RAM feed) and, once it has run, the dataset's accounted peak."""
    if name not in streams:
        return in_ram_feed(x, y, seed, shuffle=name != "no shuffle"), {"format": "in-RAM"}
    ds = streambatch.StreamDataset(batch_size=BATCH, seed=seed, return_index=True, **streams[name])
    desc = ds.describe()
    keys = ("budget_bytes", "window_rows", "window_units", "piece_rows", "window_pieces", "pieces_split_units",
            "predicted_deff", "threads")
    info = {"format": "zarr", "codec": ds.manifest.codec, "ds": ds, **{k: desc.get(k) for k in keys}}
    return stream_feed(ds), info


def main(argv: list[str] | None = None) -> int:
    """Run every model on every feed for every seed and schedule, write one record each,
    regenerate RESULTS.md."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=REPO / "data", help="dataset folder (default: data/; DIR/quick/ with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="50,000 rows, 1 seed, 3 epochs")
    parser.add_argument("--repeats", type=int, default=None, help="seeds (default 3; quick 1)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 5; quick 3)")
    parser.add_argument("--lr", type=float, default=0.05, help="peak learning rate (default 0.05)")
    parser.add_argument(
        "--schedules", default=",".join(SCHEDULES), help="comma-separated: constant, cosine (default both)"
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: softmax, mlp (default both)")
    parser.add_argument("--records", type=Path, default=None, metavar="DIR",
                        help="append the records to DIR/training.jsonl (default benchmarks/records/)")
    parser.add_argument("--no-report", action="store_true", help="do not regenerate RESULTS.md")
    args = parser.parse_args(argv)
    schedules = _list_arg(parser, "--schedules", args.schedules, SCHEDULES)
    models = _list_arg(parser, "--models", args.models, MODELS)
    rows = 50_000 if args.quick else 200_000
    seeds = args.repeats or (1 if args.quick else 3)
    epochs = args.epochs or (3 if args.quick else 5)
    run_id = time.strftime("%Y%m%dT%H%M%S")
    command = " ".join(["python benchmarks/bench_training.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    # Models this small gain nothing from intra-op threads; one keeps them deterministic and
    # leaves the other cores to streambatch's reader threads.
    torch.set_num_threads(1)

    paths = prepare(args.data / "quick" if args.quick else args.data, rows)
    x, y = _load(paths["npy"])
    test = _load(paths["test"])
    manifest = streambatch.load_manifest(paths["zarr"])
    unit_rows = np.asarray(manifest.unit_rows)
    dataset_bytes = manifest.rows * manifest.row_nbytes
    streams = _stream_feeds(paths, dataset_bytes // 8)
    common = {
        "run_id": run_id, "command": command, "quick": args.quick, "kind": "run", "dataset": "learn",
        "rows": rows, "test_rows": len(test[1]), "dataset_bytes": dataset_bytes,
        "unit_rows": int(unit_rows.max()), "units": int(len(unit_rows)), "optimizer": "SGD momentum 0.9",
        "lr": args.lr, "epochs": epochs, "batch_size": BATCH, "seeds": seeds, "warm": True,
    }
    t_start = time.perf_counter()
    for model in models:
        for schedule in schedules:
            for seed in range(seeds):
                for name in FEEDS:
                    feed, info = _make_feed(name, seed, streams, x, y)
                    result = train(feed, rows, test, unit_rows, seed, epochs, args.lr, schedule, model)
                    ds = info.pop("ds", None)
                    record = {
                        **common,
                        "feed": name,
                        "seed": seed,
                        "pre_shuffled": name.endswith("pre-shuffled"),
                        **info,
                        "peak_accounted_bytes": ds.last_peak_accounted_bytes if ds is not None else None,
                        "model_kind": model,
                        "model": MODELS[model],
                        "schedule": schedule,
                        **result,
                    }
                    _common.write_record(NAME, record, args.records)
                    print(
                        f"{model:<7} {schedule:<8} seed {seed} {name:<30} test acc {result['final_test_acc']:.4f}"
                        f" loss {result['final_test_loss']:.4f}  pieces {info.get('piece_rows')}  deff {result['deff']:.2f}"
                        f" KL/ideal {result['kl_ratio']:.2f}  {result['train_s']:.1f} s",
                        flush=True,
                    )
    print(f"training runs took {time.perf_counter() - t_start:.0f} s", flush=True)
    if not args.no_report and args.records is None:
        import report

        report.main()
    return 0


# ----------------------------------------------------------------------------- report


Group = tuple[str, str]
"""(model key, schedule)."""


def _groups(records: list[dict[str, Any]]) -> dict[Group, dict[str, list[dict[str, Any]]]]:
    """``{(model, schedule): {feed: [record per seed]}}`` in the order of MODELS, SCHEDULES and
    FEEDS (records from before the MLP are softmax regression)."""
    out: dict[Group, dict[str, list[dict[str, Any]]]] = {}
    for r in records:
        if r.get("kind") == "run":
            key = (r.get("model_kind", "softmax"), r.get("schedule", "cosine"))
            out.setdefault(key, {}).setdefault(r["feed"], []).append(r)
    forder = {f: i for i, f in enumerate(FEEDS)}
    gorder = {(m, s): i for i, (m, s) in enumerate((m, s) for m in MODELS for s in SCHEDULES)}
    return {
        g: dict(sorted(feeds.items(), key=lambda kv: forder.get(kv[0], len(forder))))
        for g, feeds in sorted(out.items(), key=lambda kv: gorder.get(kv[0], len(gorder)))
    }


def _fmt_pm(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± half-range`` of ``values * scale`` (just the mean for one value)."""
    vals = [v * scale for v in values]
    mean = statistics.fmean(vals)
    if len(vals) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {(max(vals) - min(vals)) / 2:.{digits}f}"


def _mean_acc(rs: list[dict[str, Any]] | None) -> float | None:
    return None if not rs else 100 * statistics.fmean(r["final_test_acc"] for r in rs)


def _row(model: str, schedule: str, name: str, rs: list[dict[str, Any]], ref: float | None) -> dict[str, str]:
    """One table row: feed ``name``'s records ``rs`` (one per seed) against the reference accuracy."""
    acc = [r["final_test_acc"] for r in rs]
    budget = rs[0].get("budget_bytes")
    d = None if ref is None else 100 * statistics.fmean(acc) - ref
    pieces = rs[0].get("piece_rows")
    return {
        "model": model,
        "schedule": schedule,
        "feed": name,
        "budget MiB": f"{budget / 2**20:.2f}" if budget else "–",
        "window units": f"{rs[0]['window_units']:.1f}" if rs[0].get("window_units") else "–",
        "piece rows": "–" if pieces is None else f"{pieces:,.1f}" + ("" if rs[0].get("pieces_split_units") else " (units)"),
        "deff (pred.)": f"{statistics.fmean(r['deff'] for r in rs):.2f}"
        + (f" ({rs[0]['predicted_deff']:.2f})" if rs[0].get("predicted_deff") else ""),
        "KL/ideal": f"{statistics.fmean(r['kl_ratio'] for r in rs):.1f}",
        "batches missing a class": f"{100 * statistics.fmean(r['frac_missing_class'] for r in rs):.0f}%",
        "train loss per epoch": " / ".join(
            f"{statistics.fmean(r['train_loss'][e] for r in rs):.3f}" for e in range(len(rs[0]["train_loss"]))
        ),
        "test loss": _fmt_pm([r["final_test_loss"] for r in rs], digits=3),
        "test acc %": _fmt_pm(acc, 100.0),
        "Δ acc pp": "–" if d is None or name == FEEDS[0] else f"{d:+.2f}",
        "missing/dup": f"{max(r['epoch0_missing'] for r in rs)}/{max(r['epoch0_duplicated'] for r in rs)}",
        "train s": f"{statistics.fmean(r['train_s'] for r in rs):.1f}",
    }


def _verdict(model: str, schedule: str, feeds: dict[str, list[dict[str, Any]]]) -> str | None:
    """The target line of one (model, schedule), from the measured accuracies (None without a reference)."""
    ref = _mean_acc(feeds.get(FEEDS[0]))
    if ref is None:
        return None
    parts = []
    for name in ("streambatch", "streambatch 1/8"):
        acc = _mean_acc(feeds.get(name))
        if acc is not None:
            ok = abs(acc - ref) <= TARGET_PP
            parts.append(f"{name} {acc - ref:+.2f} pp ({'holds' if ok else 'FAILS'})")
    acc = _mean_acc(feeds.get("no shuffle"))
    if acc is not None:
        ok = acc - ref <= -NO_SHUFFLE_GAP_PP
        parts.append(f"no shuffle {acc - ref:+.2f} pp ({'clearly worse: holds' if ok else 'not clearly worse'})")
    for name in ("streambatch 1/8, whole units", "streambatch 1/8 pre-shuffled"):
        acc = _mean_acc(feeds.get(name))
        if acc is not None:
            parts.append(f"for information {name.removeprefix('streambatch ')} {acc - ref:+.2f} pp")
    return f"- {model}, {schedule} lr: " + "; ".join(parts) + "."


def render(records: list[dict[str, Any]]) -> str:
    """The markdown section: one row per (model, schedule, feed), mean ± half-range over seeds, targets."""
    groups = _groups(records)
    if not groups:
        return "## Training\n\nNo records.\n"
    first = next(r for r in records if r.get("kind") == "run")
    rows = [
        _row(model, schedule, name, rs, _mean_acc(feeds.get(FEEDS[0])))
        for (model, schedule), feeds in groups.items()
        for name, rs in feeds.items()
    ]
    verdicts = [v for (model, schedule), feeds in groups.items() if (v := _verdict(model, schedule, feeds))]
    models = "; ".join(
        f"`{k}`: {MODELS.get(k, k)}" for k in dict.fromkeys(r.get("model_kind", "softmax") for r in records if r.get("kind") == "run")
    )
    m = first.get("machine", {})
    nseeds = len({r["seed"] for r in records if r.get("kind") == "run"})
    quick = " **(quick run: small dataset, not a result)**" if first.get("quick") else ""
    return "\n".join(
        [
            "## Training",
            "",
            f"Does a model trained through streambatch match one trained on a full in-RAM shuffle?{quick}",
            "",
            f"Models ({models}; the MLP is evaluated in eval mode, on its BatchNorm running statistics) on the"
            f" label-sorted `learn` set ({first['rows']:,} train rows,"
            f" {first['test_rows']:,} test rows, {first['dataset_bytes'] / 1e6:.1f} MB as stored), SGD with"
            f" momentum 0.9 at lr {first['lr']}, constant or cosine-decayed per step to 0, batch"
            f" {first['batch_size']}, {first['epochs']} epochs, {nseeds} seed(s): the seed fixes the initial"
            " weights (the same for every feed) and the shuffle seed; figures are mean ± half-range over seeds."
            " `streambatch` is `StreamDataset` at its default `memory_budget` (the whole set fits);"
            " `streambatch 1/8` gets 1/8 of the dataset's bytes, so it works out of core, and mixes pieces"
            " of the stored units sized from that budget at load time (`piece rows`: `describe()['piece_rows']`);"
            " `whole units` is the same budget with `piece_rows=0` (a window mixes whole stored units: the loader"
            " before load-time pieces); `pre-shuffled` is the same budget over a copy converted with `shuffle=0`."
            f" Shuffle quality is measured on each feed's first epoch (SHUFFLE.md; {first['units']} shuffle units"
            f" of {first['unit_rows']:,} rows): deff counts storage units per batch (for the pre-shuffled copy it"
            " says nothing about labels), KL/ideal and missing classes come from the labels served.",
            "",
            _common.format_table(rows, list(rows[0].keys())),
            "",
            f"Reproduce: `{first['command'].strip()}`",
            "",
            f"Machine: {m.get('cpu_count')} cores, Python {m.get('python')}, numpy {m.get('numpy')},"
            f" torch {m.get('torch')} (1 intra-op thread), zarr {m.get('zarr')}, streambatch"
            f" {m.get('streambatch')}.",
            "",
            f"Targets: final test accuracy within {TARGET_PP:g} pp of the in-RAM shuffle for each model, no shuffle"
            f" at least {NO_SHUFFLE_GAP_PP:g} pp worse (the constant learning rate is the binding case):",
            *verdicts,
            "",
        ]
    )


def plot(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Test accuracy per epoch, one plot per (model, schedule): ``training_curves.png`` (softmax,
    constant lr), ``training_curves_cosine.png``, ``training_curves_mlp.png``, ``training_curves_mlp_cosine.png``."""
    out = []
    for (model, schedule), feeds in _groups(records).items():
        series = {}
        for name, rs in feeds.items():
            n = len(rs[0]["test_acc"])
            series[name] = (
                list(range(1, n + 1)),
                [100 * statistics.fmean(r["test_acc"][e] for r in rs) for e in range(n)],
            )
        suffix = ("" if model == "softmax" else f"_{model}") + ("" if schedule == "constant" else f"_{schedule}")
        out.append(
            _common.plot_lines(
                Path(out_dir) / f"training_curves{suffix}.png",
                series,
                "epoch",
                "test accuracy (%), mean over seeds",
                f"{MODELS.get(model, model).split(':')[0]} on label-sorted data, {schedule} learning rate",
            )
        )
    return out


if __name__ == "__main__":
    sys.exit(main())
