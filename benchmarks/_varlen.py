"""The ``varlen`` benchmark dataset and what the throughput, memory and quality benchmarks share
about it.

``varlen``: label-sorted token documents of heavy-tailed length, the variable-length counterpart
of ``tab`` and ``img``: an int64 ``label`` (10 classes, sorted ascending, ``row * 10 // rows``, the
rule ``streambatch.quality`` assumes for its label-sorted worst case) and ``tokens`` (int32, a
``large_list``), lengths from ``_tokens.doc_lengths`` (lognormal, median 128 tokens, 99th
percentile 100x the median, at most 400x), 3 x 2**25 tokens (384 MiB of token bytes, about
125,000 documents: the smallest size at which 1/64 of the data still holds the loader's minimum
budget for batches of 256 rows) or 2**22 with ``--quick``.  It is written by pyarrow to ``DIR/varlen/varlen_<N>.parquet``
(``_tokens.write_token_parquet``) and converted once with ``streambatch.convert(..., label="label")``
(Parquet storage, default unit size), so the manifest has the label statistics and the row lengths.
It lives here and in ``_tokens.py`` rather than in ``tools/make_datasets.py``, which writes
``.npy`` folders of fixed-shape columns with numpy only (no pyarrow, no streambatch).

Served rows are identified by ``return_index=True`` (``_row``, the storage row = the row of the
Parquet file, since convert keeps source order): completeness and shuffle quality are computed on
them as on ``tab``'s ``id``.

Not a test module; pytest never collects it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

import _common
import _tokens

import streambatch
from streambatch.loader.tensors import RaggedOutput
from streambatch.ragged import Ragged

__all__ = ["TOKENS", "QUICK_TOKENS", "CLASSES", "BATCH", "ensure", "dataset_facts", "consume",
           "in_ram_batches", "read_rows", "order_quality"]

TOKENS = 3 * 2**25
QUICK_TOKENS = 2**22
MEDIAN = 128
CAP = 400 * MEDIAN
CLASSES = 10
BATCH = 256


def ensure(data: str | Path, quick: bool) -> tuple[Path, Path]:
    """``(parquet file, converted dataset)`` under ``data/varlen/``, each made only if missing."""
    total = QUICK_TOKENS if quick else TOKENS
    folder = Path(data) / "varlen"
    src, dst = folder / f"varlen_{total}.parquet", folder / f"varlen_{total}.sb"
    if not src.exists():
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        _tokens.write_token_parquet(src, total, seed=0, median=MEDIAN, classes=CLASSES, cap=CAP)
        print(f"wrote {src} in {time.perf_counter() - t0:.1f} s", flush=True)
    try:
        m = streambatch.load_manifest(dst)
        ok = m.label == "label" and m.options.get("shuffle") is None
    except Exception:  # noqa: BLE001 - missing or stale: convert again
        ok = False
    if not ok:
        t0 = time.perf_counter()
        streambatch.convert(src, dst, label="label", overwrite=True, progress=False)
        print(f"converted {dst} in {time.perf_counter() - t0:.1f} s", flush=True)
    return src, dst


def dataset_facts(dst: Path) -> dict[str, Any]:
    """Rows, bytes, units and the token lengths' statistics, from the manifest."""
    m = streambatch.load_manifest(dst)
    st = m.stats.get("tokens", {}).get("lengths", {})
    unit_rows = np.asarray(m.unit_rows, dtype=np.int64)
    return {"dataset": "varlen", "store": str(dst), "format": m.storage, "codec": m.codec, "rows": int(m.rows),
            "decoded_bytes": int(m.decoded_nbytes), "token_bytes": int(m.layout["ragged_nbytes"]["tokens"].sum()),
            "units": int(m.n_units), "unit_rows": float(unit_rows.mean()),
            "length_stats": {k: st[k] for k in ("min", "mean", "p50", "p99", "max") if k in st}}


def read_rows(src: Path) -> tuple[Ragged, NDArray[np.int64]]:
    """The Parquet file's documents as one ``Ragged`` and its labels, in RAM."""
    import pyarrow.parquet as pq

    return _tokens.read_token_parquet(src), pq.read_table(src, columns=["label"]).column("label").to_numpy()


def in_ram_batches(docs: Ragged, labels: NDArray[np.int64], seed: int, collate: str) -> Iterator[dict[str, Any]]:
    """The in-RAM baseline for ragged rows: one ``np.random.default_rng(seed).permutation``, each
    batch's documents gathered with ``Ragged.take`` and made into the tensors the loader serves
    (``RaggedOutput``, the loader's own code: a jagged nested tensor, or padded + ``tokens_len``),
    with ``label`` and ``_row``."""
    out = RaggedOutput({"tokens": "list"}, {"tokens": collate})
    perm = np.random.default_rng(seed).permutation(len(docs))
    for i in range(0, len(docs), BATCH):
        idx = perm[i:i + BATCH]
        batch, _ = out({"tokens": docs.take(idx)}, None)
        batch.update(label=torch.from_numpy(labels[idx]), _row=torch.from_numpy(idx))
        yield batch


def consume(batches: Iterable[Mapping[str, Any]], lengths: NDArray[np.int64] | None = None,
            rows: int | None = None) -> dict[str, Any]:
    """The touch consumer for ``varlen`` batches: one element of ``tokens`` (nested or padded) and
    of ``label`` read; ids (``_row``) kept; tokens counted (padding excluded); ``largest_batch_bytes``:
    the most bytes one batch's ``tokens`` held.  With ``lengths`` (every row's length) each served
    row's length is checked (``wrong_lengths``); with ``rows`` (default: ``lengths``' size) every
    served label is checked against the label-sorted rule (``wrong_labels``)."""
    ids: list[np.ndarray] = []
    tokens = touched = batches_n = wrong_len = wrong_label = largest = 0
    n = rows if rows is not None else (lengths.size if lengths is not None else None)
    first = float("nan")
    cpu0, t0 = _common.process_cpu_seconds(), time.perf_counter()
    it = iter(batches)
    try:
        for b in it:
            t, row = b["tokens"], b["_row"].numpy()
            if t.is_nested:
                got = np.diff(t.offsets().numpy())
                touched += int(t.values()[-1]) if t.values().numel() else 0
                largest = max(largest, t.values().nbytes)
            else:
                got = b["tokens_len"].numpy()
                touched += int(t[-1, -1]) if t.numel() else 0
                largest = max(largest, t.nbytes)
            touched += int(b["label"][0])
            tokens += int(got.sum())
            if lengths is not None:
                wrong_len += int(np.count_nonzero(lengths[row] != got))
            if n is not None:
                wrong_label += int(np.count_nonzero(b["label"].numpy() != row * CLASSES // n))
            ids.append(row.copy())
            if batches_n == 0:
                first = time.perf_counter() - t0
            batches_n += 1
        seconds = time.perf_counter() - t0
    finally:  # stops the loader's threads on an error too
        getattr(it, "close", lambda: None)()
        del it
    served = np.concatenate(ids) if ids else np.empty(0, np.int64)
    return {"samples": int(served.size), "batches": batches_n, "tokens": tokens, "token_bytes": 4 * tokens,
            "seconds": seconds, "cpu_seconds": _common.process_cpu_seconds() - cpu0, "first_batch_s": first,
            "wrong_lengths": wrong_len, "wrong_labels": wrong_label, "touched": touched,
            "largest_batch_bytes": largest, "ids": served}


def order_quality(ids: NDArray[np.int64], unit_rows: NDArray[np.int64]) -> dict[str, Any]:
    """Completeness of the served ids and, when complete, SHUFFLE.md's figures of their order."""
    from streambatch.quality import summarize

    n = int(np.sum(unit_rows))
    out: dict[str, Any] = dict(_common.check_complete(ids, n))
    if out["missing"] == out["duplicated"] == out["foreign"] == 0:
        out.update({k: float(v) for k, v in summarize(ids, unit_rows, BATCH, n_labels=CLASSES).items()})
    return out


# ---------------------------------------------------------------------------- throughput
PATHS = ("in-RAM nested", "streambatch nested")
"""The throughput paths, alternated within each repeat (reversed on odd repeats).  Padded batches
(``"in-RAM pad"``, ``"streambatch pad"``) are left out: padding heavy-tailed rows to the longest
of 256 makes batches of up to [256, 51,200] tokens, so both paths measure the padding (about 16 MB/s
of tokens in a --quick run), and such batches do not fit beside the windows at a quarter of the
data (the loader refuses them by name)."""


def _epoch(batches: Iterable[Mapping[str, Any]], lengths: NDArray[np.int64],
           unit_rows: NDArray[np.int64]) -> dict[str, Any]:
    """One consumed epoch under ``PeakRSS``: :func:`consume`'s figures, completeness, quality."""
    with _common.peak_rss_of(batches) as mem:
        res = consume(batches, lengths)
    res.update(order_quality(res.pop("ids"), unit_rows), peak_rss_delta=mem.peak - mem.start)
    return res


def _streambatch_epochs(dst: Path, budget: int, seed: int, collate: str, lengths: NDArray[np.int64],
                        unit_rows: NDArray[np.int64]) -> dict[str, Any]:
    """Two epochs of one ``StreamDataset``: the second is the steady state (the first also pays
    the page faults of fresh window buffers), with the first's time to first batch and rate."""
    ds = streambatch.StreamDataset(dst, batch_size=BATCH, memory_budget=budget, return_index=True, seed=seed,
                                   collate={"tokens": collate})
    first = _epoch(ds, lengths, unit_rows)
    ds.set_epoch(1)
    steady = _epoch(ds, lengths, unit_rows)
    d = ds.describe()
    steady.update(epoch1_seconds=first["seconds"], first_batch_s=first["first_batch_s"],
                  accounted=int(ds.last_peak_accounted_bytes), window_rows=int(d["window_rows"]),
                  window_units=float(d["window_units"]), predicted_deff=float(d["predicted_deff"]),
                  predicted_peak_bytes=int(d["predicted_peak_bytes"]), threads=int(d["threads"]),
                  missing=first["missing"] + steady["missing"], duplicated=first["duplicated"] + steady["duplicated"],
                  wrong_lengths=first["wrong_lengths"] + steady["wrong_lengths"],
                  wrong_labels=first["wrong_labels"] + steady["wrong_labels"])
    del ds
    return steady


def throughput(src: Path, dst: Path, budget: int, repeats: int) -> list[dict[str, Any]]:
    """Every path of :data:`PATHS` ``repeats`` times, alternated; one summary record per path.

    The documents are read into RAM once (outside the clock) and one untimed in-RAM batch of
    each collate is made first (``torch.nested``'s first call costs seconds)."""
    docs, labels = read_rows(src)
    lengths = docs.lengths
    unit_rows = np.asarray(streambatch.load_manifest(dst).unit_rows, dtype=np.int64)
    for collate in {p.split()[-1] for p in PATHS}:
        next(in_ram_batches(docs, labels, 0, collate))
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in PATHS}
    for r in range(repeats):
        for path in (PATHS if r % 2 == 0 else PATHS[::-1]):
            collate = path.split()[-1]
            if path.startswith("in-RAM"):
                runs[path].append(_epoch(in_ram_batches(docs, labels, r, collate), lengths, unit_rows))
            else:
                runs[path].append(_streambatch_epochs(dst, budget, r, collate, lengths, unit_rows))
            x = runs[path][-1]
            print(f"repeat {r} {path:20s} {x['samples'] / x['seconds']:10,.0f} rows/s "
                  f"{x['token_bytes'] / 1e6 / x['seconds']:7.0f} MB/s", flush=True)
    return [_summary(path, runs, budget) for path in PATHS]


def _median(values: Iterable[float]) -> float:
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.median(vals)) if vals else float("nan")


def _summary(path: str, runs: dict[str, list[dict[str, Any]]], budget: int) -> dict[str, Any]:
    """The record of one path: medians over repeats, ratios paired with the in-RAM path of the
    same collate and repeat."""
    rs, base = runs[path], runs["in-RAM " + path.split()[-1]]
    out: dict[str, Any] = {
        "role": path, "collate": path.split()[-1], "repeats": len(rs),
        "samples_per_s": _median(x["samples"] / x["seconds"] for x in rs),
        "token_mb_per_s": _median(x["token_bytes"] / 1e6 / x["seconds"] for x in rs),
        "cpu_s_per_gb": _median(x["cpu_seconds"] / (x["token_bytes"] / 1e9) for x in rs),
        "vs_in_ram": _median(b["seconds"] / x["seconds"] for x, b in zip(rs, base)),
        "cpu_vs_in_ram": _median(x["cpu_seconds"] / b["cpu_seconds"] for x, b in zip(rs, base)),
        "first_batch_s": _median(x["first_batch_s"] for x in rs),
        "peak_rss_delta_bytes": max(x["peak_rss_delta"] for x in rs),
        "runs_seconds": [x["seconds"] for x in rs],
    }
    for key in ("deff", "kl_ratio", "frac_missing_class", "spearman"):
        out[key] = _median(x.get(key, float("nan")) for x in rs)
    for key in ("missing", "duplicated", "wrong_lengths", "wrong_labels"):
        out[key] = int(sum(x[key] for x in rs))
    if path.startswith("streambatch"):
        out.update(budget_bytes=budget, epochs_checked=2 * len(rs),
                   epoch1_samples_per_s=_median(x["samples"] / x["epoch1_seconds"] for x in rs),
                   accounted_bytes=max(x["accounted"] for x in rs),
                   **{k: rs[0][k] for k in ("window_rows", "window_units", "predicted_deff", "predicted_peak_bytes",
                                             "threads")})
    return out


def _num(v: Any, fmt: str) -> str:
    return "–" if v is None or not np.isfinite(float(v)) else format(float(v), fmt)


def describe_data(r: Mapping[str, Any]) -> str:
    """One phrase naming the dataset of a record: rows, token bytes, lengths, units."""
    st = r.get("length_stats", {})
    return (f"`varlen`: {r['rows']:,} label-sorted token documents ({r['token_bytes'] / 2**20:,.0f} MiB of int32 tokens, "
            f"{r['format']}, {r['units']} units of {r['unit_rows']:.0f} rows on average), lengths p50 "
            f"{st.get('p50', '?')}, mean {_num(st.get('mean'), '.0f')}, p99 {st.get('p99', '?')}, max {st.get('max', '?')} tokens")


def render_throughput(records: list[dict[str, Any]]) -> str:
    """The varlen subsection of the throughput section (records of ``kind`` varlen)."""
    recs = {r["role"]: r for r in records}
    rows = []
    for path in PATHS:
        r = recs.get(path)
        if r is None:
            continue
        rows.append({"loader": path, "samples/s": _num(r["samples_per_s"], ",.0f"),
                     "token MB/s": _num(r["token_mb_per_s"], ",.0f"),
                     "× in-RAM (same collate)": _num(r["vs_in_ram"], ".2f"),
                     "CPU s/GB": _num(r["cpu_s_per_gb"], ".2f"),
                     "CPU × in-RAM's": _num(r["cpu_vs_in_ram"], ".2f"),
                     "first batch s": _num(r["first_batch_s"], ".3f"),
                     "deff (pred.)": f"{_num(r['deff'], '.2f')}" + (f" ({_num(r['predicted_deff'], '.2f')})"
                                                                   if "predicted_deff" in r else ""),
                     "missing / dup / wrong": f"{r['missing']} / {r['duplicated']} / "
                                              f"{r['wrong_lengths'] + r['wrong_labels']}"})
    if not rows:
        return ""
    sb = recs.get("streambatch nested") or next(iter(recs.values()))
    mib = 2**20
    quick = " (**--quick smoke run: a tiny dataset, not a measurement**)" if sb.get("quick") else ""
    lines = [
        "### varlen: variable-length rows (touch consumer)" + quick,
        "",
        describe_data(sb) + f"; budget {sb.get('budget_bytes', 0) / mib:.0f} MiB (a quarter of the data), window "
        f"{sb.get('window_rows', 0):,} rows ({_num(sb.get('window_units'), '.1f')} units; ragged columns are read "
        f"in whole units), batch {BATCH}, {sb.get('threads')} threads, medians of {sb.get('repeats')} repeats with "
        "the paths alternated within each repeat; load average "
        f"{_num(sb.get('loadavg_before'), '.1f')} before, {_num(sb.get('loadavg_after'), '.1f')} after:",
        "",
        _common.format_table(rows, list(rows[0])),
        "",
        "The consumer reads one token of each batch's `tokens` (jagged nested tensor, or padded `[B, longest]` "
        "with `tokens_len`) and one label, keeps `_row`, and checks every served row's length against the "
        "document's and its label against the label-sorted rule (wrong = rows that failed either). In-RAM: "
        "the documents read into RAM beforehand as one `Ragged` (outside the clock), one "
        "`np.random.permutation`, each batch gathered with `Ragged.take` and made into the same tensors by the "
        "loader's own `RaggedOutput` (nested, or padded); × in-RAM pairs each repeat with the in-RAM path of "
        "the same collate. streambatch: `StreamDataset(ds, batch_size=256, memory_budget=budget, "
        "return_index=True, collate=...)`, epoch 2 of one dataset (epoch 1 pays page faults of fresh buffers; "
        "first batch is epoch 1's). token MB/s and CPU s/GB count token bytes (4 a token; padding and labels "
        "excluded). Loader peak RSS above the epoch's start "
        f"{_num(sb.get('peak_rss_delta_bytes', float('nan')) / mib, '.0f')} MiB (accounted "
        f"{_num(sb.get('accounted_bytes', float('nan')) / mib, '.0f')} MiB, predicted "
        f"{_num(sb.get('predicted_peak_bytes', float('nan')) / mib, '.0f')} MiB). Padded batches "
        "(`collate={\"tokens\": \"pad\"}`) are not timed here: padding these rows to the longest of 256 makes "
        "batches of up to [256, 51,200] tokens, which measures the padding, and at a quarter of the data such a "
        "batch does not fit beside the windows (the loader refuses it by name); the memory table has them.",
        "",
        f"Command: `{sb.get('command')}`",
        "",
    ]
    return "\n".join(lines) + "\n"
