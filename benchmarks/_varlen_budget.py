"""The ``varlen`` rows of the memory and quality benchmarks (``bench_memory.py --varlen``,
``bench_quality.py --varlen``): the dataset of ``_varlen.py`` (label-sorted token documents, 1% of
them over 100x the median length) under budgets that are fractions of its decoded bytes.

* memory: one epoch per configuration in a fresh process (``bench_memory.py --child-varlen``),
  peak RSS the kernel's (``VmHWM``) against the RSS after ``import torch, streambatch`` plus the
  budget plus the benchmark's 64 MiB margin; jagged nested tensors at 1/4 and 1/16 of the data,
  and padded batches (``collate={"tokens": "pad"}``) at :data:`PAD_BUDGET`, where a batch padded
  to its longest document (up to [256, 51,200] int32 + mask: 66 MB) fits beside the windows;
* quality: one loader per budget (1/4, 1/16, 1/64 of the data), every column read (the window
  holds whole units of ragged columns: no load-time pieces), SHUFFLE.md's figures of the served
  ``_row`` order next to ``describe()``'s prediction.  The labels served are checked against the
  label-sorted rule, so the label KL computed from the served rows is that of the served labels.

Not a test module; pytest never collects it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common
import _varlen
import _wide

__all__ = ["PAD_BUDGET", "memory_child", "memory_run", "render_memory", "quality_run", "render_quality"]

MiB = 2**20
PAD_BUDGET = 256 * MiB
MIN_BUDGET = 8 * MiB
MEMORY_CONFIGS = (("nested", 4, ""), ("nested", 16, ""), ("nested", 16, "system"), ("pad", 0, ""))
"""(collate, fraction of the data (0: :data:`PAD_BUDGET`), pyarrow's memory pool: "" its default
(mimalloc), "system" malloc (``ARROW_DEFAULT_MEMORY_POOL=system``), to show what the default pool keeps)."""
QUALITY_FRACTIONS = (4, 16, 64)


def _budget(decoded: int, frac: int) -> int:
    return PAD_BUDGET if frac == 0 else max(decoded // frac, MIN_BUDGET)


def memory_child(path: str, budget: int, collate: str) -> dict[str, Any]:
    """One epoch in this fresh process: RSS after the imports, peak, the loader's accounting, or
    the loader's refusal (a ``ValueError`` naming what does not fit); ``arrow_pool``: the backend
    of pyarrow's default pool (``ARROW_DEFAULT_MEMORY_POOL``, set by the parent before pyarrow's import)."""
    import pyarrow as pa  # noqa: PLC0415
    import streambatch  # noqa: PLC0415
    import torch  # noqa: PLC0415

    stream_dataset = streambatch.StreamDataset  # the lazy import of the torch part
    # torch.nested's first use imports and sets up ~44 MiB of torch (fx, dispatch tables): a fixed
    # overhead of the nested tensor API, taken before the imports' RSS like the imports themselves
    torch.nested.nested_tensor_from_jagged(torch.arange(3), torch.tensor([0, 1, 3])).values()
    # and the Parquet reader's first int64 column imports pandas in a reader thread (pyarrow's
    # ChunkedArray.to_numpy, storage/_parquet_read.py): ~40 MiB more, also taken before
    import pandas  # noqa: F401, PLC0415

    imports = _wide._rss()
    ds = stream_dataset(path, batch_size=_varlen.BATCH, memory_budget=budget, return_index=True,
                        collate={"tokens": collate})
    d = ds.describe()
    out: dict[str, Any] = {"rss_after_imports": imports, "arrow_pool_backend": pa.default_memory_pool().backend_name, "window_rows": int(d["window_rows"]),
                           "window_units": float(d["window_units"]), "predicted_peak_bytes": int(d["predicted_peak_bytes"])}
    try:
        res = _varlen.consume(ds, rows=int(ds.manifest.rows))
    except ValueError as e:
        return {**out, "refused": str(e), "peak_rss": _wide._peak()}
    comp = _common.check_complete(res.pop("ids"), int(ds.manifest.rows))
    return {**out, **comp, "peak_rss": _wide._peak(), "accounted": int(ds.last_peak_accounted_bytes),
            **{k: res[k] for k in ("samples", "seconds", "token_bytes", "largest_batch_bytes", "wrong_labels")}}


def memory_run(data: Path, quick: bool, repeats: int, common: dict[str, Any], write: Callable[[dict[str, Any]], Any],
               margin: int) -> None:
    """Every configuration of :data:`MEMORY_CONFIGS` in ``repeats`` fresh processes; one record each
    (``kind`` varlen-loader, the median by peak RSS)."""
    _, dst = _varlen.ensure(data, quick)
    facts = _varlen.dataset_facts(dst)
    for collate, frac, pool in MEMORY_CONFIGS:
        budget = _budget(facts["decoded_bytes"], frac)
        args = ["--child-varlen", str(dst), "--budget-bytes", str(budget), "--collate", collate, "--arrow-pool", pool]
        med, runs = _common.median_of(lambda: _wide._child(args, 900), repeats=repeats, key="peak_rss")
        rec = {**common, **facts, **med, "kind": "varlen-loader", "role": f"{collate} 1/{frac or 'pad'} {pool}".strip(),
               "collate": collate, "fraction": frac, "arrow_pool": pool, "budget_bytes": budget, "margin_bytes": margin,
               "peak_rss_all": [r["peak_rss"] for r in runs], "repeats": repeats,
               "complete_all": all(r.get("missing") == r.get("duplicated") == r.get("foreign") == 0 for r in runs)}
        write(rec)
        print(f"  varlen {collate} {pool} budget {budget / MiB:.0f} MiB: peak {med['peak_rss'] / MiB:.0f} MiB (imports "
              f"{med['rss_after_imports'] / MiB:.0f} MiB)" + (f" refused: {med['refused']}" if "refused" in med else ""),
              flush=True)


def render_memory(records: list[dict[str, Any]]) -> list[str]:
    """Markdown lines for the varlen-loader records (none if there are none)."""
    mine = [r for r in records if r.get("kind") == "varlen-loader"]
    if not mine:
        return []
    latest = mine[-1].get("run_id")  # a --varlen run after the full one replaces its varlen rows
    recs = sorted((r for r in mine if r.get("run_id") == latest),
                  key=lambda r: (r["collate"] != "nested", -r["budget_bytes"], r.get("arrow_pool", "")))
    rows = []
    for r in recs:
        own = r["peak_rss"] - r["rss_after_imports"]
        limit = r["budget_bytes"] + r["margin_bytes"]
        verdict = "refused" if "refused" in r else ("holds" if own <= limit else "FAILS")
        rows.append({
            "collate": r["collate"], "pyarrow pool": r.get("arrow_pool_backend", "?"), "budget": f"{r['budget_bytes'] / MiB:.0f} MiB"
            + (f" (1/{r['fraction']} of the data)" if r["fraction"] else ""),
            "imports RSS MiB": f"{r['rss_after_imports'] / MiB:.0f}", "peak RSS MiB": f"{r['peak_rss'] / MiB:.0f}",
            "peak - imports MiB": f"{own / MiB:.0f}", "accounted MiB": f"{r.get('accounted', 0) / MiB:.0f}",
            "predicted MiB": f"{r['predicted_peak_bytes'] / MiB:.0f}",
            "largest batch MiB": f"{r.get('largest_batch_bytes', 0) / MiB:.1f}",
            "window rows (units)": f"{r['window_rows']:,} ({r['window_units']:.1f})",
            "epoch s": f"{r.get('seconds', float('nan')):.1f}",
            "missing/dup/wrong": f"{r.get('missing', '–')}/{r.get('duplicated', '–')}/{r.get('wrong_labels', '–')}",
            "budget + 64 MiB": verdict})
    first = recs[0]
    refused = [f"{r['collate']} at {r['budget_bytes'] / MiB:.0f} MiB: `{r['refused']}`" for r in recs if "refused" in r]
    return [
        "### Variable-length rows: varlen",
        "",
        _varlen.describe_data(first) + ". One epoch per configuration, each in a fresh process "
        f"(`StreamDataset(path, batch_size={_varlen.BATCH}, memory_budget=B, return_index=True, collate=...)`), "
        f"median of {first['repeats']} processes by peak RSS; peak RSS is the kernel's (`VmHWM`); the limit is "
        "the budget plus this benchmark's 64 MiB margin above the RSS after the imports (and after a first tiny "
        "nested tensor and `import pandas`: torch.nested's first use costs ~44 MiB of torch set-up, and the Parquet "
        "reader imports pandas for the int64 label column, through pyarrow's `ChunkedArray.to_numpy`, ~40 MiB; both "
        "whatever the data). Padded batches are measured "
        f"at {PAD_BUDGET // MiB} MiB: a batch padded to its longest document (up to [256, 51,200] tokens, 66 MB "
        "with its mask while it is made) must fit beside the windows. largest batch = the most bytes one served "
        "batch's `tokens` held (what the consumer holds, outside the budget).",
        "",
        _common.format_table(rows, list(rows[0])),
        "",
        *([f"Refused: {'; '.join(refused)}", ""] if refused else []),
        _accounted_line(recs),
        "",
        f"Reproduce: `{first.get('command')}`",
        "",
    ]


def _accounted_line(recs: list[dict[str, Any]]) -> str:
    """The verdict on the loader's own accounting (``last_peak_accounted_bytes``) against the budget."""
    ran = [r for r in recs if "refused" not in r]
    over = [r["role"] for r in ran if r["accounted"] > r["budget_bytes"]]
    return (("holds" if ran and not over else "FAILS") + ": the loader's accounted bytes (window buffers and batches "
            "in flight, `last_peak_accounted_bytes`) within the budget in every run"
            + (f" (over: {', '.join(over)})" if over else "") + "; the RSS above them is what the allocators keep"
            + (": pyarrow's default pool (mimalloc), in which the reader threads decode each unit's lists (compare "
               "the `system` row, same run otherwise), glibc's per-thread arenas (by hand, at 24 MiB: "
               "MALLOC_ARENA_MAX=1 and fixed mmap/trim thresholds of 128 KiB with the system pool left +47 MiB above "
               "the imports), the Parquet reader's code pages (about 21 MiB of file-backed RSS at the first read) "
               "and, with padding, the batches the consumer holds. A fixed-column Parquet dataset (tab, 200,000 "
               "rows) peaks at +35 MiB at 24 MiB and +107 MiB at 96 MiB the same way (by hand)."
               if recs[0].get("format") == "parquet" else
               " (glibc's heap and per-thread arenas), the reader threads' chunk buffers, and, with padding, the "
               "batches the consumer holds; the pyarrow pool column does not apply to Zarr, which pyarrow does not "
               "read."))


def quality_run(data: Path, quick: bool, epochs: int, emit: Callable[[str, str, dict[str, Any]], Any],
                fractions: tuple[int, ...] = QUALITY_FRACTIONS) -> None:
    """Budgets of 1/4, 1/16 and 1/64 (``fractions``) of the data: ``epochs`` epochs each, every column read."""
    import numpy as np  # noqa: PLC0415
    import streambatch  # noqa: PLC0415

    _, dst = _varlen.ensure(data, quick)
    facts = _varlen.dataset_facts(dst)
    unit_rows = np.asarray(streambatch.load_manifest(dst).unit_rows, dtype=np.int64)
    for frac in fractions:
        budget = facts["decoded_bytes"] // frac
        base = {**facts, "kind": "varlen", "fraction": frac, "budget_bytes": budget, "epochs": epochs}
        try:
            ds = streambatch.StreamDataset(dst, batch_size=_varlen.BATCH, memory_budget=budget, return_index=True)
            d = ds.describe()
            per = []
            for e in range(epochs):
                ds.set_epoch(e)
                res = _varlen.consume(ds, rows=facts["rows"])
                per.append({**_varlen.order_quality(res.pop("ids"), unit_rows), "wrong_labels": res["wrong_labels"],
                            "seconds": res["seconds"]})
        except ValueError as e:  # a budget too small for batches of 256 of these rows: named by the loader
            emit("varlen", f"varlen, 1/{frac} of the data", {**base, "refused": str(e)})
            continue
        rec = {**base, **{k: _median([p.get(k, float("nan")) for p in per])
                          for k in ("deff", "kl_ratio", "frac_missing_class", "spearman", "seconds")},
               **{f"ids_{k}": int(sum(p[k] for p in per)) for k in ("missing", "duplicated", "foreign")},
               "wrong_labels": int(sum(p["wrong_labels"] for p in per)),
               **{k: float(d[k]) for k in ("window_rows", "window_units", "piece_rows", "predicted_deff",
                                           "predicted_kl", "predicted_peak_bytes")},
               "pieces_split_units": bool(d["pieces_split_units"]), "per_epoch": per}
        emit("varlen", f"varlen, 1/{frac} of the data", rec)


def _median(values: list[float]) -> float:
    import numpy as np  # noqa: PLC0415

    vals = [v for v in values if np.isfinite(v)]
    return float(np.median(vals)) if vals else float("nan")


def render_quality(records: list[dict[str, Any]], ideal_kl: float) -> str:
    """The markdown subsection for the varlen quality records of the latest run among
    ``records`` (older runs, of another store, are kept beside it by ``report.load_records``)."""
    latest = records[-1].get("run_id")
    recs = sorted((r for r in records if r.get("run_id") == latest), key=lambda r: r["fraction"])
    rows = []
    for r in recs:
        if "refused" in r:
            rows.append({"budget": f"1/{r['fraction']} ({r['budget_bytes'] / MiB:.1f} MiB)",
                         "window rows (units)": "refused: " + r["refused"]})
            continue
        rows.append({
            "budget": f"1/{r['fraction']} ({r['budget_bytes'] / MiB:.1f} MiB)",
            "window rows (units)": f"{r['window_rows']:,.0f} ({r['window_units']:.1f})",
            "piece rows": f"{r['piece_rows']:.0f}" + ("" if r["pieces_split_units"] else " (whole units)"),
            "deff (pred., error)": f"{r['deff']:.2f} ({r['predicted_deff']:.2f}, {r['predicted_deff'] / r['deff'] - 1:+.1%})",
            "KL/ideal (pred.)": f"{r['kl_ratio']:.2f} ({r['predicted_kl'] / ideal_kl:.2f})",
            "batches missing a class": f"{r['frac_missing_class']:.1%}", "Spearman": f"{r['spearman']:+.4f}",
            "missing/dup/wrong label": f"{r['ids_missing']}/{r['ids_duplicated']}/{r['wrong_labels']}"})
    cols = list(dict.fromkeys(k for row in rows for k in row))
    first = recs[0]
    return "\n".join([
        "### Variable-length rows: varlen at 1/4, 1/16 and 1/64 of the data",
        "",
        _varlen.describe_data(first) + f"; batch {_varlen.BATCH}, every column read, budgets as fractions of the "
        f"decoded bytes ({first['decoded_bytes'] / MiB:.0f} MiB), median of {first['epochs']} epochs. A ragged "
        "column is read in whole units (no load-time pieces), so the quality is what the number of units a window "
        "holds buys; the prediction is `describe()`'s, made before any read. Metrics of SHUFFLE.md on the served "
        "`_row` order; every served label was checked against the label-sorted rule (wrong label = rows that "
        "failed), so the KL is that of the labels served.",
        "",
        _common.format_table([{c: row.get(c, "") for c in cols} for row in rows], cols),
        "",
        f"Reproduce: `{first.get('command')}`" + (" (quick: not the real figures)" if first.get("quick") else ""),
    ]) + "\n"
