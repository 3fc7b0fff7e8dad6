#!/usr/bin/env python
"""Quality benchmark: what shuffle quality does each memory budget (and unit size) buy?

On the label-sorted ``tab`` dataset (Zarr, codec none) this measures the order one epoch
actually serves, with the metrics of ``SHUFFLE.md`` (design effect, label-sorted KL and its
ratio to the ideal, share of batches missing a class, Spearman of position against id), next to
what ``describe()`` predicts before reading anything (window units, predicted deff and KL):

* the memory budget varies (16 ... 512 MiB) at the default unit size (256 KiB);
* the unit size varies (64 KiB, 256 KiB, 1 MiB, 4 MiB; converted copies) at 256 MiB;
* the converter's one-off pre-shuffle (``convert(..., shuffle=0)``) at a small budget (16 MiB);
* references: a full in-RAM shuffle (``np.random.permutation``) and no shuffle;
* budgets of 1/4, 1/16 and 1/64 of the dataset's bytes, on 400,000 and 2,000,000 rows, each with
  the shuffle pieces the loader sizes at load time and with ``piece_rows=0`` (whole units, as
  the loader planned before pieces), so that the before/after is in one run (``_quality_fractions.py``).

Fast and faithful: the served order depends only on the window size in rows (the plan is a
pure function of unit sizes, seed, epoch, window rows and piece rows), and the window size in rows is the
budget divided by the bytes of the *selected* columns. So each epoch is iterated with
``columns=["id", "y"]`` under a budget scaled by ``row bytes(id, y) / row bytes(all)``, which
gives the same ``window_rows`` as the full-column loader at the nominal budget (checked for every
configuration via ``describe()``; the default configuration is also iterated once with all
columns and its served ids compared).  Pieces are sized from the window rows and the units, not
from the bytes, so the projected loader cuts the same pieces: every configuration checks that its
``describe()['piece_rows']`` and its plan of each measured epoch (pieces and windows) equal the
full-column loader's, and would pass ``piece_rows`` explicitly from the full-column loader (the
piece size its state records) if the piece sizes differed (recorded as ``piece_rows_explicit``).

Usage::

    python benchmarks/bench_quality.py [--data DIR] [--quick] [--repeats N]
                                       [--fraction-rows N [N ...]] [--only-fractions] [--varlen]

``--varlen``: only the variable-length rows (``_varlen_budget.py``: token documents at 1/4, 1/16
and 1/64 of their bytes, whole units).

``--repeats N`` measures epochs 0..N-1 of every configuration (median reported).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import shlex
import statistics
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _common  # noqa: E402
import _quality_fractions  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import streambatch  # noqa: E402
from streambatch import quality  # noqa: E402

NAME = "quality"
MiB = 2**20
KiB = 2**10
BATCH_SIZE = 256
N_LABELS = 10
IDEAL_KL = (N_LABELS - 1) / (2 * BATCH_SIZE)
DEFAULT_UNIT = 256 * KiB
PROJECTED = ["id", "y"]
FULL = {"rows": 2_000_000, "budgets": [16, 32, 64, 128, 256, 512], "unit_budget": 256, "pre_budget": 16,
        "fraction_rows": [400_000, 2_000_000]}
QUICK = {"rows": 250_000, "budgets": [4, 8, 16, 32, 64], "unit_budget": 32, "pre_budget": 4,
         "fraction_rows": [250_000]}
UNITS = [64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB]
FRACTIONS = [4, 16, 64]  # budgets as fractions of the dataset's bytes (rows x bytes of all columns)
DEFF_TOLERANCE = 0.15  # measured deff within 15% of describe()'s prediction


# --------------------------------------------------------------------------- datasets


def _make_dataset(kind: str, out: Path, rows: int) -> None:
    if str(ROOT / "tools") not in sys.path:
        sys.path.insert(0, str(ROOT / "tools"))
    from make_datasets import make_dataset  # noqa: PLC0415

    print(f"generating {kind} ({rows:,} rows) in {out}", flush=True)
    make_dataset(kind, out, rows=rows, seed=0)


def ensure_npy(out: Path, rows: int) -> Path:
    """``out`` (a ``tab`` folder of .npy files with ``rows`` rows), generated if missing."""
    try:
        have = np.load(out / "id.npy", mmap_mode="r").shape[0]
        if have == rows and all((out / f"{c}.npy").exists() for c in ("x", "y")):
            return out
    except (OSError, ValueError):
        pass
    _make_dataset("tab", out, rows)
    return out


def ensure_store(npy: Path, dst: Path, rows: int, unit_bytes: int, shuffle: int | None) -> Path:
    """``dst``: Zarr, label ``y``, codec none, ``unit_bytes`` units, pre-shuffled with seed ``shuffle``."""
    row_bytes = sum(np.load(npy / f"{c}.npy", mmap_mode="r")[:1].nbytes for c in ("id", "x", "y"))
    want_unit_rows = max(1, unit_bytes // row_bytes)
    try:
        m = streambatch.load_manifest(dst)
        if (m.storage == "zarr" and m.codec == "none" and m.rows == rows and m.label == "y"
                and m.options.get("unit_rows") == min(want_unit_rows, rows) and m.options.get("shuffle") == shuffle):
            return dst
    except Exception:  # noqa: BLE001 - missing or stale: convert again
        pass
    print(f"converting {npy} -> {dst} (unit {unit_bytes // KiB} KiB, shuffle {shuffle})", flush=True)
    t0 = time.perf_counter()
    streambatch.convert(npy, dst, format="zarr", label="y", codec="none", unit_bytes=unit_bytes,
                        shuffle=shuffle, overwrite=True)
    print(f"  {time.perf_counter() - t0:.1f}s", flush=True)
    return dst


def _unit_tag(nbytes: int) -> str:
    return f"{nbytes // MiB}MiB" if nbytes % MiB == 0 else f"{nbytes // KiB}KiB"


def _default_store(data: Path, quick: bool, rows: int) -> tuple[Path, Path]:
    """(base folder, label-sorted store at the default unit size) for ``rows`` rows: the shared
    full-size tab dataset of BENCHMARKS.md (as the other benchmarks name it) at its size, a copy
    of ``rows`` rows under ``quality/`` otherwise."""
    cfg = QUICK if quick else FULL
    base = data / "quick" / "quality" if quick else data / "quality"
    if rows != cfg["rows"]:
        npy = ensure_npy(base / f"tab-r{rows}-npy", rows)
        return base, ensure_store(npy, base / f"tab-r{rows}.zarr", rows, DEFAULT_UNIT, None)
    if quick:
        npy = ensure_npy(base / "tab-npy", rows)
        return base, ensure_store(npy, base / "tab.zarr", rows, DEFAULT_UNIT, None)
    npy = ensure_npy(data / "tab-npy", rows)
    return base, ensure_store(npy, data / "tab.zarr", rows, DEFAULT_UNIT, None)


def prepare(data: Path, quick: bool, fraction_rows: Sequence[int] = (), sweeps: bool = True) -> dict[str, Any]:
    """Generate/convert what is missing; return the paths by role (``fractions``: rows -> store;
    without ``sweeps``, only those)."""
    cfg = QUICK if quick else FULL
    rows = cfg["rows"]
    out: dict[str, Any] = {"rows": rows, "fractions": {n: _default_store(data, quick, n)[1] for n in fraction_rows}}
    if not sweeps:
        return out
    base, default = _default_store(data, quick, rows)
    npy = base / "tab-npy" if quick else data / "tab-npy"
    units = {DEFAULT_UNIT: default}
    for ub in UNITS:
        if ub != DEFAULT_UNIT:
            units[ub] = ensure_store(npy, base / f"tab-u{_unit_tag(ub)}.zarr", rows, ub, None)
    pre = ensure_store(npy, base / "tab-shuffled.zarr", rows, DEFAULT_UNIT, 0)
    return {**out, "units": units, "preshuffled": pre, "npy": npy}


# --------------------------------------------------------------------------- measuring


def _window_rows(path: Path, budget: int, columns: list[str] | None) -> int | None:
    try:
        ds = streambatch.StreamDataset(path, batch_size=BATCH_SIZE, memory_budget=budget, columns=columns)
    except ValueError:  # budget too small for one window
        return None
    return int(ds.describe()["window_rows"])


def projected_budget(path: Path, budget: int, full_rows: int, full_row_bytes: int,
                     sel_row_bytes: int) -> tuple[int, str]:
    """A budget for ``columns=["id","y"]`` whose window has ``full_rows`` rows, and how it was found.

    First the proportional scaling ``ceil(budget * sel / full)``; if rounding moves the window
    by a batch, the smallest budget that gives ``full_rows`` (bisection over ``describe()``).

    Raises:
        RuntimeError: no budget gives the same window (should not happen).
    """
    b = math.ceil(budget * sel_row_bytes / full_row_bytes)
    if _window_rows(path, b, PROJECTED) == full_rows:
        return b, "proportional"
    lo, hi = 1, budget  # window(hi) >= full_rows: the same budget over fewer bytes per row
    while lo < hi:
        mid = (lo + hi) // 2
        w = _window_rows(path, mid, PROJECTED)
        if w is not None and w >= full_rows:
            hi = mid
        else:
            lo = mid + 1
    if _window_rows(path, lo, PROJECTED) != full_rows:
        raise RuntimeError(f"{path}: no projected budget gives a window of {full_rows} rows")
    return lo, "bisection"


def _as_consumable(ds: Any, rows_out: list[np.ndarray]) -> Iterator[Mapping[str, torch.Tensor]]:
    """Batches of a projected dataset shaped for ``consume`` (``x`` := ``y``); keeps ``_row``."""
    it = iter(ds)
    try:
        for b in it:
            rows_out.append(b["_row"].numpy().copy())
            yield {"x": b["y"], "id": b["id"]}
    finally:
        close = getattr(it, "close", None)
        if callable(close):
            close()


def _plan_piece_rows(ds: Any) -> int:
    """The rows ``ds`` cuts units at (0: whole units), from the state it would save before iterating
    (a plan's pieces cannot tell: pieces of one unit side by side in a window are merged)."""
    return int(ds.state_dict(batches=0, num_workers=1)["phases"][-1]["piece_rows"])


def _same_plan(a: Any, b: Any, epochs: int) -> bool:
    """Whether two loaders plan epochs ``0..epochs-1`` alike: windows and pieces (unit, lo, hi)."""
    for e in range(epochs):
        pa, pb = a.plan(epoch=e), b.plan(epoch=e)
        if pa.window_rows != pb.window_rows or not np.array_equal(pa.win_start, pb.win_start):
            return False
        if not all(np.array_equal(getattr(pa.pieces, k), getattr(pb.pieces, k)) for k in ("unit", "lo", "hi")):
            return False
    return True


def projected(path: Path, pbudget: int, full: Any, piece_rows: int | None, epochs: int
              ) -> tuple[Any, dict[str, Any]]:
    """The ``columns=["id","y"]`` loader at ``pbudget`` planned like ``full``, and the plan checks.

    If its ``describe()['piece_rows']`` differs from the full-column loader's, it is made again
    with ``piece_rows`` passed explicitly: the rows the full-column loader cuts units at
    (``piece_rows_explicit``; ``piece_rows_cut`` is recorded in any case).
    """
    def make(pieces: int | None) -> Any:
        return streambatch.StreamDataset(path, batch_size=BATCH_SIZE, memory_budget=pbudget, columns=PROJECTED,
                                         return_index=True, piece_rows=pieces)

    want, plan_pieces = float(full.describe()["piece_rows"]), _plan_piece_rows(full)
    ds, explicit = make(piece_rows), None
    if float(ds.describe()["piece_rows"]) != want:
        explicit = plan_pieces
        ds = make(explicit)
    got = float(ds.describe()["piece_rows"])
    return ds, {"piece_rows_projected": got, "piece_match": got == want, "piece_rows_explicit": explicit,
                "piece_rows_cut": plan_pieces, "plan_match": _same_plan(full, ds, epochs)}


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def measure(path: Path, budget: int, epochs: int, *, preshuffled: bool = False,
            verify_full: bool = False, piece_rows: int | None = None) -> dict[str, Any]:
    """Quality of the served order of ``epochs`` epochs at ``budget`` (nominal, all columns),
    with ``piece_rows`` passed to the loader (None: its load-time pieces; 0: whole units)."""
    full = streambatch.StreamDataset(path, batch_size=BATCH_SIZE, memory_budget=budget, piece_rows=piece_rows)
    desc = full.describe()
    m = full.manifest
    sel_bytes = sum(m.column(c).row_nbytes for c in PROJECTED)
    pbudget, how = projected_budget(path, budget, int(desc["window_rows"]), full.row_nbytes, sel_bytes)
    ds, plan_check = projected(path, pbudget, full, piece_rows, epochs)
    pdesc = ds.describe()
    n = int(m.rows)
    unit_rows = np.asarray(m.unit_rows, dtype=np.int64)
    per_epoch: list[dict[str, Any]] = []
    first_ids: np.ndarray | None = None
    for e in range(epochs):
        ds.set_epoch(e)
        rows_served: list[np.ndarray] = []
        res = _common.consume(_as_consumable(ds, rows_served))
        ids = res["ids"]
        storage = np.concatenate(rows_served) if rows_served else np.empty(0, np.int64)
        comp = _common.check_complete(ids, n)
        fig: dict[str, Any] = {"epoch": e, "seconds": res["seconds"], "ids_missing": comp["missing"],
                               "ids_duplicated": comp["duplicated"], "ids_foreign": comp["foreign"]}
        if comp["missing"] == comp["duplicated"] == comp["foreign"] == 0:
            fig.update(quality.summarize(ids, unit_rows, BATCH_SIZE, n_labels=N_LABELS))
            # deff of the storage positions: chunk collisions whatever the chunks hold
            fig["deff_storage"] = quality.design_effect(storage, unit_rows, BATCH_SIZE)["deff"]
        fig["row_equals_id"] = bool(np.array_equal(storage, ids))
        per_epoch.append(fig)
        if e == 0:
            first_ids = ids
    out: dict[str, Any] = {
        "path": str(path), "rows": n, "units": int(m.n_units), "unit_rows": float(desc["unit_rows"]),
        "unit_bytes": round(float(desc["unit_rows"]) * full.row_nbytes),
        "shard_bytes": m.options.get("shard_bytes"), "codec": m.codec, "format": m.storage,
        "preshuffled": preshuffled, "label_icc": float(desc["label_icc"]),
        "budget_bytes": budget, "projected_budget_bytes": pbudget, "projected_budget_method": how,
        "row_bytes_full": full.row_nbytes, "row_bytes_projected": sel_bytes,
        "window_rows": int(desc["window_rows"]), "window_rows_projected": int(pdesc["window_rows"]),
        "window_match": int(desc["window_rows"]) == int(pdesc["window_rows"]),
        "window_units": float(desc["window_units"]), "threads": int(pdesc["threads"]),
        "piece_rows_asked": piece_rows, "piece_rows": float(desc["piece_rows"]),
        "piece_bytes": float(desc["piece_bytes"]), "window_pieces": float(desc["window_pieces"]),
        "pieces_split_units": bool(desc["pieces_split_units"]), **plan_check,
        "predicted_peak_bytes": int(desc["predicted_peak_bytes"]),
        "predicted_deff": float(desc["predicted_deff"]), "predicted_kl": float(desc["predicted_kl"]),
        "predicted_kl_ratio": float(desc["predicted_kl"]) / IDEAL_KL,
        "epochs": epochs, "per_epoch": per_epoch,
        "ids_missing": max(f["ids_missing"] for f in per_epoch),
        "ids_duplicated": max(f["ids_duplicated"] for f in per_epoch),
        "row_equals_id": all(f["row_equals_id"] for f in per_epoch),
        "projected_epoch_s": _median([f["seconds"] for f in per_epoch]),
    }
    for key in ("deff", "kl", "kl_ratio", "frac_missing_class", "spearman", "deff_storage"):
        out[key] = _median([f[key] for f in per_epoch if key in f])
    if verify_full:
        full.set_epoch(0)
        res = _common.consume(full)
        out["order_equals_full_columns"] = bool(first_ids is not None and np.array_equal(res["ids"], first_ids))
        out["full_columns_epoch_s"] = res["seconds"]
        out["full_columns_samples_per_s"] = res["samples"] / max(res["seconds"], 1e-12)
    return out


def reference(kind: str, n: int, unit_rows: np.ndarray, epochs: int) -> dict[str, Any]:
    """Full in-RAM shuffle (``np.random.default_rng(e).permutation``) or no shuffle (``arange``)."""
    per_epoch = []
    for e in range(epochs if kind == "full shuffle" else 1):
        order = np.random.default_rng(e).permutation(n) if kind == "full shuffle" else np.arange(n)
        fig = quality.summarize(order, unit_rows, BATCH_SIZE, n_labels=N_LABELS)
        fig["epoch"] = e
        per_epoch.append(fig)
    out: dict[str, Any] = {"rows": n, "units": int(unit_rows.size), "unit_rows": float(unit_rows.mean()),
                           "epochs": len(per_epoch), "per_epoch": per_epoch, "ids_missing": 0, "ids_duplicated": 0}
    for key in ("deff", "kl", "kl_ratio", "frac_missing_class", "spearman"):
        out[key] = _median([f[key] for f in per_epoch])
    out["deff_storage"] = out["deff"]
    return out


# --------------------------------------------------------------------------- main


def _sweeps(paths: dict[str, Any], cfg: dict[str, Any], args: argparse.Namespace, emit: Any) -> None:
    """The budget and unit-size sweeps, the pre-shuffled copy and the references."""
    default = paths["units"][DEFAULT_UNIT]
    for mib in cfg["budgets"]:
        verify = (mib == cfg["unit_budget"]) and not args.no_verify
        rec = measure(default, mib * MiB, args.repeats, verify_full=verify)
        emit("budget", f"budget {mib} MiB, unit 256 KiB", rec)
    for ub in UNITS:
        if ub == DEFAULT_UNIT and cfg["unit_budget"] in cfg["budgets"]:
            continue  # measured in the budget sweep
        rec = measure(paths["units"][ub], cfg["unit_budget"] * MiB, args.repeats)
        emit("unit", f"unit {_unit_tag(ub).replace('KiB', ' KiB').replace('MiB', ' MiB')}, "
                     f"budget {cfg['unit_budget']} MiB", rec)
    rec = measure(paths["preshuffled"], cfg["pre_budget"] * MiB, args.repeats, preshuffled=True)
    emit("preshuffle", f"pre-shuffled, budget {cfg['pre_budget']} MiB", rec)
    unit_rows = np.asarray(streambatch.load_manifest(default).unit_rows, dtype=np.int64)
    for kind in ("full shuffle", "no shuffle"):
        emit("reference", "full in-RAM shuffle" if kind == "full shuffle" else "no shuffle",
             reference(kind, paths["rows"], unit_rows, args.repeats))


def _fractions(paths: dict[str, Any], args: argparse.Namespace, emit: Any) -> None:
    """Budgets of 1/4, 1/16, 1/64 of each fraction dataset's bytes: load-time pieces, then whole units."""
    for rows, path in paths["fractions"].items():
        data_bytes = rows * sum(c.row_nbytes for c in streambatch.load_manifest(path).columns)
        for frac in FRACTIONS:
            for pieces, tag in ((None, "load-time pieces"), (0, "whole units")):
                verify = frac == 16 and pieces is None and not args.no_verify
                rec = measure(path, data_bytes // frac, args.repeats, verify_full=verify, piece_rows=pieces)
                emit("fraction", f"{rows:,} rows, 1/{frac} of the data, {tag}",
                     {**rec, "kind": "fraction", "fraction": frac, "data_bytes": data_bytes, "pieces": tag})


def main(argv: Sequence[str] | None = None) -> int:
    """Run every configuration, write one record each, regenerate RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data", help="dataset folder (default: data/)")
    parser.add_argument("--quick", action="store_true", help="250,000 rows and budgets scaled down")
    parser.add_argument("--repeats", type=int, default=3, help="epochs measured per configuration (median)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the full-column epochs that check the projected order")
    parser.add_argument("--fraction-rows", type=int, nargs="+", default=None, metavar="N",
                        help="rows of the datasets measured at 1/4, 1/16, 1/64 of their bytes "
                             "(default: 400000 2000000; quick: 250000)")
    parser.add_argument("--only-fractions", action="store_true",
                        help="measure only the fractions of the data (RESULTS.md keeps the sweeps of the last full run)")
    parser.add_argument("--varlen", action="store_true", help="measure only the variable-length rows (_varlen_budget.py)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    cfg = QUICK if args.quick else FULL
    fraction_rows = args.fraction_rows or cfg["fraction_rows"]
    if min(fraction_rows) < 1:
        parser.error("--fraction-rows must be positive")
    run_id = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    command = shlex.join(["python", "benchmarks/bench_quality.py", *(argv if argv is not None else sys.argv[1:])])
    common = {"run_id": run_id, "command": command, "quick": bool(args.quick), "dataset": "tab",
              "batch_size": BATCH_SIZE, "n_labels": N_LABELS, "ideal_kl": IDEAL_KL,
              "cache": "warm (order only: timing is not a result here)"}
    paths = None if args.varlen else prepare(args.data, args.quick, fraction_rows, sweeps=not args.only_fractions)
    t_start = time.perf_counter()

    def emit(group: str, config: str, rec: Mapping[str, Any]) -> None:
        _common.write_record(NAME, {**common, "group": group, "config": config, **rec})
        if "refused" in rec:
            print(f"{config:32s} refused: {rec['refused']}", flush=True)
            return
        deff_p = rec.get("predicted_deff")
        print(f"{config:32s} deff {rec['deff']:8.2f}" + (f" (pred {deff_p:7.2f})" if deff_p else " " * 14)
              + f"  KL/ideal {rec['kl_ratio']:7.2f}  missing-class {rec['frac_missing_class']:.3f}"
              f"  spearman {rec['spearman']:+.4f}  missing/dup {rec['ids_missing']}/{rec['ids_duplicated']}",
              flush=True)

    if paths is not None and not args.only_fractions:
        _sweeps(paths, cfg, args, emit)
    if paths is not None:
        _fractions(paths, args, emit)
    import _varlen_budget  # noqa: PLC0415

    _varlen_budget.quality_run(args.data / "quick" if args.quick else args.data, args.quick, args.repeats,
                               lambda group, config, rec: emit(group, config, {**rec, "dataset": "varlen"}))
    print(f"measured in {time.perf_counter() - t_start:.0f}s", flush=True)

    import report  # noqa: PLC0415

    report.main()
    return 0


# --------------------------------------------------------------------------- report


def _tier(deff: float) -> str:
    if deff <= 2:
        return "good"
    if deff <= 5:
        return "acceptable"
    return "poor" if deff > 10 else "5 < deff <= 10"


def _ordered(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rank = {"budget": 0, "unit": 1, "preshuffle": 2, "reference": 3}
    return sorted(records, key=lambda r: (rank.get(r.get("group"), 9), r.get("budget_bytes") or 0,
                                          r.get("unit_bytes") or 0, r.get("config")))


def _targets(records: list[dict[str, Any]]) -> list[str]:
    loaders = [r for r in records if r.get("group") != "reference"]
    lines = []
    bad = [r["config"] for r in loaders if r["ids_missing"] or r["ids_duplicated"]]
    lines.append(("holds" if not bad else "FAILS") + ": every epoch complete (0 ids missing, 0 duplicated)"
                 + (f" (fails: {'; '.join(bad)})" if bad else ""))
    lines.append(_quality_fractions.plan_target(loaders))
    ver = [r for r in loaders if "order_equals_full_columns" in r]
    if ver:
        ok = all(r["order_equals_full_columns"] for r in ver)
        lines.append(("holds" if ok else "FAILS") + ": served ids identical to a full-column epoch ("
                     + ", ".join(r["config"] for r in ver) + ")")
    sorted_rows = [r for r in loaders if not r.get("preshuffled")]
    bad = [f"{r['config']} ({r['deff']:.2f} vs {r['predicted_deff']:.2f})" for r in sorted_rows
           if abs(r["deff"] / r["predicted_deff"] - 1) > DEFF_TOLERANCE]
    lines.append(("holds" if not bad else "FAILS") + f": measured deff within {DEFF_TOLERANCE:.0%} of"
                 " describe()'s prediction (label-sorted copies)" + (f"; off: {'; '.join(bad)}" if bad else ""))
    kl_rows = [r for r in sorted_rows if r.get("window_pieces", r["window_units"]) >= 2 * N_LABELS]
    bad = [r["config"] for r in kl_rows if r["kl_ratio"] > 1.2 * r["deff"]]
    lines.append(("holds" if not bad else "FAILS") + ": KL <= 1.2 x ideal x deff where the window holds >= 20"
                 " pieces (SHUFFLE.md)" + (f" (fails: {'; '.join(bad)})" if bad else ""))
    bad = [f"{r['config']} ({r['spearman']:+.4f})" for r in loaders
           if abs(r["spearman"]) >= 4 / math.sqrt(max(1, r["units"] - 1))]
    lines.append(("holds" if not bad else "FAILS") + ": |Spearman| < 4/sqrt(units-1)"
                 + (f" (fails: {'; '.join(bad)})" if bad else ""))
    tiers = {r["config"]: _tier(r["deff"]) for r in sorted_rows if r.get("group") == "budget"}
    good = [c for c, t in tiers.items() if t == "good"]
    lines.append("tiers (SHUFFLE.md, label-sorted): good (deff <= 2) from "
                 + (good[0] if good else "none of the budgets") + "; "
                 + ", ".join(f"{c.split(',')[0]}: {t}" for c, t in tiers.items()))
    pre = [r for r in loaders if r.get("preshuffled")]
    if pre:
        p = pre[0]
        same = [r for r in sorted_rows if r.get("budget_bytes") == p["budget_bytes"]
                and round(r.get("unit_bytes", 0) / KiB) == round(p.get("unit_bytes", 0) / KiB)]
        vs = f" vs {same[0]['kl_ratio']:.1f}x without it" if same else ""
        ok = p["kl_ratio"] <= 2 and (not same or p["kl_ratio"] < same[0]["kl_ratio"])
        lines.append(("holds" if ok else "FAILS") + f": one offline pre-shuffle at {p['budget_bytes'] / MiB:.0f} MiB"
                     f" gives KL <= 2x ideal ({p['kl_ratio']:.2f}x{vs})")
    return lines


def render(records: list[dict[str, Any]]) -> str:
    """Markdown section for the records of the latest run of this benchmark (the fractions of the
    data and the sweeps each from the latest run that measured them)."""
    sweeps = _ordered([r for r in records if r.get("kind") not in ("fraction", "varlen")])
    fractions = [r for r in records if r.get("kind") == "fraction"]
    varlen = [r for r in records if r.get("kind") == "varlen"]
    parts = ["## Quality: shuffle quality per memory budget and unit size", ""]
    if fractions:
        parts += [_quality_fractions.render(fractions), ""]
    if varlen:
        import _varlen_budget  # noqa: PLC0415

        parts += [_varlen_budget.render_quality(varlen, IDEAL_KL), ""]
    if sweeps:
        parts += _render_sweeps(sweeps)
    return "\n".join(parts).rstrip("\n") + "\n"


def _render_sweeps(recs: list[dict[str, Any]]) -> list[str]:
    """The budget and unit-size sweeps' table, how they are measured, and their targets."""
    first = recs[0]
    table = []
    for r in recs:
        ref = r.get("group") == "reference"
        table.append({
            "configuration": r["config"],
            "budget MiB": "–" if ref else f"{r['budget_bytes'] / MiB:g}",
            "unit rows": f"{r['unit_rows']:.0f}",
            "window rows": "all" if r["config"].startswith("full") else ("–" if ref else f"{r['window_rows']:,}"),
            "window units": "–" if ref else f"{r['window_units']:.1f}",
            "piece rows": "–" if ref else _quality_fractions.piece_cell(r),
            "deff (pred.)": f"{r['deff']:.2f}" + ("" if ref else f" ({r['predicted_deff']:.2f})"),
            "KL/ideal (pred.)": f"{r['kl_ratio']:.2f}" + ("" if ref else f" ({r['predicted_kl_ratio']:.2f})"),
            "batches missing a class": f"{r['frac_missing_class']:.1%}",
            "Spearman": f"{r['spearman']:+.4f}",
            "tier": _tier(r["deff"]),
            "missing/dup": f"{r['ids_missing']}/{r['ids_duplicated']}",
        })
    cols = ["configuration", "budget MiB", "unit rows", "window rows", "window units", "piece rows", "deff (pred.)",
            "KL/ideal (pred.)", "batches missing a class", "Spearman", "tier", "missing/dup"]
    pre = [r for r in recs if r.get("preshuffled")]
    ver = [r for r in recs if "order_equals_full_columns" in r]
    m = first.get("machine", {})
    return [
        "### Budget and unit-size sweeps",
        "",
        "What shuffle quality does each memory budget (and each shuffle-unit size) buy on the label-sorted "
        f"`tab` dataset ({first.get('rows', 0):,} rows, Zarr, codec none, batch {first.get('batch_size', BATCH_SIZE)})? "
        f"Metrics of SHUFFLE.md on the order actually served, median of {first.get('epochs', '?')} epochs, "
        "next to describe()'s prediction made before any read; KL ideal = "
        f"{IDEAL_KL:.4f} nats.",
        "",
        _common.format_table(table, cols),
        "",
        "How it is measured: the served order depends only on the window size in rows (and the piece size, "
        "which the loader derives from the window rows and the units), and a window holds "
        "budget / (bytes of the selected columns) rows; each epoch is therefore iterated with "
        "`columns=[\"id\", \"y\"]` under the budget scaled by 16/528 (row bytes of id+y over all columns), "
        "which gives the same `describe()[\"window_rows\"]` as the full-column loader at the nominal budget "
        "(checked for every row above, with the piece rows and the plan where the records have them)"
        + (f"; the {ver[0]['config']} configuration was also iterated once with all columns and served "
           + ("the identical id sequence" if ver[0]["order_equals_full_columns"] else "a DIFFERENT id sequence")
           + f" (full-column epoch {ver[0]['full_columns_epoch_s']:.1f} s against "
           f"{ver[0]['projected_epoch_s']:.1f} s projected)" if ver else "")
        + ". deff is computed on the served ids against units of the label-sorted order; for the pre-shuffled "
        "copy (whose ids are the original row numbers) that is the *effective* design effect relative to the "
        "source's blocks" + (f", while its chunk collisions in storage (deff of `_row`) stay at "
                             f"{pre[0]['deff_storage']:.2f}: the chunks are mixed as little as without the "
                             f"pre-shuffle, but each chunk now holds every label (label ICC "
                             f"{pre[0]['label_icc']:.3f})" if pre else "") + ".",
        "",
        f"Reproduce: `{first.get('command', 'python benchmarks/bench_quality.py')}`"
        + (" (quick: 250,000 rows and budgets scaled down, not the real figures)" if first.get("quick") else ""),
        "",
        f"Machine: {m.get('cpu_count')} cores, Python {m.get('python')}, numpy {m.get('numpy')}, zarr {m.get('zarr')}, "
        f"torch {m.get('torch')}, streambatch {m.get('streambatch')}; run {first.get('run_id')}.",
        "",
        "Targets:",
        "",
        *[f"- {line}" for line in _targets(recs)],
    ]


def plot(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """``quality_budget.png`` (deff, KL/ideal against budget) and ``quality_unit.png`` (against unit size)."""
    recs = _ordered(records)
    quick = " (quick)" if recs and recs[0].get("quick") else ""
    refs = {r["config"]: r for r in recs if r.get("group") == "reference"}
    out = []
    budget = [r for r in recs if r.get("group") == "budget"]
    if budget:
        xs = [r["budget_bytes"] / MiB for r in budget]
        series = {
            "deff measured": (xs, [r["deff"] for r in budget]),
            "deff predicted": (xs, [r["predicted_deff"] for r in budget]),
            "KL/ideal measured": (xs, [r["kl_ratio"] for r in budget]),
        }
        if "full in-RAM shuffle" in refs:
            series["full in-RAM shuffle (deff)"] = (xs, [refs["full in-RAM shuffle"]["deff"]] * len(xs))
        pre = [r for r in recs if r.get("preshuffled")]
        if pre:
            series["pre-shuffled copy (KL/ideal)"] = ([pre[0]["budget_bytes"] / MiB], [pre[0]["kl_ratio"]])
        out.append(_common.plot_lines(out_dir / "quality_budget.png", series, "memory budget (MiB)",
                                      "deff, KL / ideal (log)", "Shuffle quality against budget, label-sorted tab"
                                      + quick, logx=True, logy=True))
    ub = budget[0]["budget_bytes"] if budget else None
    units = [r for r in recs if r.get("group") == "unit"]
    units += [r for r in budget if units and r["budget_bytes"] == units[0]["budget_bytes"]]
    units.sort(key=lambda r: r["unit_bytes"])
    if len(units) > 1 and ub is not None:
        xs = [r["unit_bytes"] / KiB for r in units]
        series = {
            "deff measured": (xs, [r["deff"] for r in units]),
            "deff predicted": (xs, [r["predicted_deff"] for r in units]),
            "KL/ideal measured": (xs, [r["kl_ratio"] for r in units]),
        }
        out.append(_common.plot_lines(out_dir / "quality_unit.png", series, "shuffle unit (KiB, decoded)",
                                      "deff, KL / ideal (log)",
                                      f"Quality against unit size at {units[0]['budget_bytes'] / MiB:.0f} MiB"
                                      + quick, logx=True, logy=True))
    return out


if __name__ == "__main__":
    sys.exit(main())
