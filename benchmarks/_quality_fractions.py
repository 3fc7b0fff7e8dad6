"""The quality benchmark's section on budgets that are fractions of the data (issue 16's row
"Quality at any budget, no pre-shuffle"): its table and its targets, from the records that
``bench_quality.py`` writes with ``kind == "fraction"``.

Each budget (1/4, 1/16, 1/64 of the dataset's bytes) is measured twice in one run: with the
shuffle pieces the loader sizes at load time (``StreamDataset``'s default) and with
``piece_rows=0`` (whole units, as the loader planned before pieces, in today's windows).
Verdicts are computed from the records, never written by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import _common

from streambatch.loader.sizing import TARGET_DEFF

__all__ = ["piece_cell", "plan_target", "render", "targets"]

MiB = 2**20
DEFF_MAX = 1.25  # measured deff at 1/4, 1/16, 1/64 of the data
KL_MAX = 1.3  # KL of the served labels / ideal, at the budgets of KL_FRACTIONS
KL_FRACTIONS = (16, 64)
PREDICTION_TOLERANCE = 0.10  # |predicted - measured| / measured deff
PIECES = "load-time pieces"
WHOLE = "whole units"
COLUMNS = ["rows", "budget", "pieces", "window rows", "unit rows", "piece rows", "window pieces",
           "deff (pred., error)", "KL/ideal (pred.)", "batches missing a class", "Spearman", "missing/dup"]


def piece_cell(r: dict[str, Any]) -> str:
    """Mean rows of a record's shuffle pieces (describe()) and the rows units are cut at, or "–"
    for a record made before pieces."""
    if "piece_rows" not in r:
        return "–"
    if not r["pieces_split_units"]:
        return f"{r['piece_rows']:.1f} (units)"
    return f"{r['piece_rows']:.1f}" + (f" (cut {r['piece_rows_cut']})" if "piece_rows_cut" in r else "")


def plan_ok(r: dict[str, Any]) -> bool:
    """Whether the id+y loader planned as the full-column one (checks a record has)."""
    return bool(r.get("window_match")) and r.get("piece_match", True) and r.get("plan_match", True)


def plan_target(records: list[dict[str, Any]]) -> str:
    """The verdict on the projection: the same window rows, piece rows and plan in every record."""
    bad = [r["config"] for r in records if not plan_ok(r)]
    explicit = [r["config"] for r in records if r.get("piece_rows_explicit") is not None]
    checked = all("plan_match" in r for r in records)
    what = ("window (describe()['window_rows']), piece rows (describe()['piece_rows']) and plan of every "
            "measured epoch (pieces and windows)" if checked else "window (describe()['window_rows'])")
    return (("holds" if not bad else "FAILS") + f": the id+y loader's {what} equal the full-column loader's in "
            "every configuration" + (f" (fails: {'; '.join(bad)})" if bad else "")
            + (f"; piece_rows passed explicitly from the full-column plan in: {'; '.join(explicit)}" if explicit else ""))


def prediction_error(r: dict[str, Any]) -> float:
    """describe()'s predicted deff relative to the measured one: (predicted - measured) / measured."""
    return float(r["predicted_deff"]) / float(r["deff"]) - 1


def _ordered(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda r: (r["rows"], r["fraction"], r["pieces"] != PIECES))


def _row(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "rows": f"{r['rows']:,}",
        "budget": f"1/{r['fraction']} ({r['budget_bytes'] / MiB:.1f} MiB)",
        "pieces": r["pieces"],
        "window rows": f"{r['window_rows']:,}",
        "unit rows": f"{r['unit_rows']:.0f}",
        "piece rows": piece_cell(r),
        "window pieces": f"{r['window_pieces']:.0f}",
        "deff (pred., error)": f"{r['deff']:.2f} ({r['predicted_deff']:.2f}, {prediction_error(r):+.1%})",
        "KL/ideal (pred.)": f"{r['kl_ratio']:.2f} ({r['predicted_kl_ratio']:.2f})",
        "batches missing a class": f"{r['frac_missing_class']:.1%}",
        "Spearman": f"{r['spearman']:+.4f}",
        "missing/dup": f"{r['ids_missing']}/{r['ids_duplicated']}",
    }


def _check(records: list[dict[str, Any]], ok: Callable[[dict[str, Any]], bool],
           value: Callable[[dict[str, Any]], str], text: str) -> str:
    """"holds"/"FAILS" for ``text`` over ``records``, with each record's value and the failures."""
    bad = [r for r in records if not ok(r)]
    figures = "; ".join(f"{r['rows']:,} rows at 1/{r['fraction']}: {value(r)}" for r in records)
    fails = f" (fails: {'; '.join(f'''{r['rows']:,} rows at 1/{r['fraction']}''' for r in bad)})" if bad else ""
    return ("holds" if records and not bad else "FAILS") + f": {text} ({figures}){fails}"


def _complete(records: list[dict[str, Any]]) -> str:
    bad = [r["config"] for r in records if r["ids_missing"] or r["ids_duplicated"]]
    return (("holds" if not bad else "FAILS") + f": every epoch of the {len(records)} configurations complete "
            "(0 ids missing, 0 duplicated)" + (f" (fails: {'; '.join(bad)})" if bad else ""))


def targets(records: list[dict[str, Any]]) -> list[str]:
    """The section's verdicts, computed from the records."""
    after = [r for r in _ordered(records) if r["pieces"] == PIECES]
    whole = {(r["rows"], r["fraction"]): r for r in records if r["pieces"] == WHOLE}
    kl = [r for r in after if r["fraction"] in KL_FRACTIONS]
    lines = [
        _check(after, lambda r: r["deff"] <= DEFF_MAX, lambda r: f"{r['deff']:.2f}",
               f"measured deff <= {DEFF_MAX} with load-time pieces at 1/4, 1/16 and 1/64 of the data"),
        _check(kl, lambda r: r["kl_ratio"] <= KL_MAX, lambda r: f"{r['kl_ratio']:.2f}x",
               f"KL of the served labels <= {KL_MAX}x the ideal with load-time pieces at 1/16 and 1/64"),
        _check(after, lambda r: abs(prediction_error(r)) <= PREDICTION_TOLERANCE,
               lambda r: f"{prediction_error(r):+.1%}",
               f"describe()'s predicted deff within {PREDICTION_TOLERANCE:.0%} of the measurement"),
        _check([r for r in after if (r["rows"], r["fraction"]) in whole],
               lambda r: r["pieces_split_units"] == (whole[r["rows"], r["fraction"]]["predicted_deff"] > TARGET_DEFF),
               lambda r: f"{piece_cell(r)} of {r['unit_rows']:.0f} rows",
               f"pieces are smaller than units exactly where whole units predict deff > {TARGET_DEFF}"),
        _complete(_ordered(records)),
        plan_target(_ordered(records)),
    ]
    ver = [r for r in _ordered(records) if "order_equals_full_columns" in r]
    if ver:
        ok = all(r["order_equals_full_columns"] for r in ver)
        lines.append(("holds" if ok else "FAILS") + ": served ids identical to a full-column epoch ("
                     + "; ".join(r["config"] for r in ver) + ")")
    return lines


def _before_after(records: list[dict[str, Any]]) -> str:
    """One sentence per dataset: KL/ideal and deff with whole units against load-time pieces."""
    out = []
    for rows in sorted({r["rows"] for r in records}):
        pairs = {(r["fraction"], r["pieces"]): r for r in records if r["rows"] == rows}
        cells = [f"1/{f}: KL/ideal {pairs[f, WHOLE]['kl_ratio']:.1f}x -> {pairs[f, PIECES]['kl_ratio']:.2f}x, "
                 f"deff {pairs[f, WHOLE]['deff']:.1f} -> {pairs[f, PIECES]['deff']:.2f}"
                 for f in sorted({f for f, _ in pairs}) if (f, WHOLE) in pairs and (f, PIECES) in pairs]
        if cells:
            out.append(f"on {rows:,} rows, whole units -> load-time pieces: " + "; ".join(cells))
    return "Before and after in the same run: " + ". And ".join(out) + "." if out else ""


def render(records: list[dict[str, Any]]) -> str:
    """The markdown subsection for the fraction records of one run."""
    recs = _ordered(records)
    first = recs[0]
    m = first.get("machine", {})
    ver = [r for r in recs if "order_equals_full_columns" in r]
    parts = [
        "### Quality at 1/4, 1/16 and 1/64 of the data: load-time pieces against whole units",
        "",
        f"Budgets as fractions of the dataset's bytes (rows x {first.get('row_bytes_full')} bytes) on label-sorted `tab` (Zarr, codec "
        f"none, 256 KiB units, batch {first.get('batch_size')}, no pre-shuffle, warm local data), each measured "
        "with the shuffle pieces the loader sizes at load time (the default) and with `piece_rows=0` (whole "
        "units, as the loader planned before pieces). Metrics of SHUFFLE.md on the order actually served, median of "
        f"{first.get('epochs')} epochs; the prediction is `describe()`'s, made before any read, and its error "
        "is (predicted - measured) / measured. piece rows and window pieces are `describe()`'s (mean rows "
        "of a piece; pieces mixed per window); cut is the piece size the plan cuts units at (a unit's last "
        "piece holds what is left).",
        "",
        _common.format_table([_row(r) for r in recs], COLUMNS),
        "",
        _before_after(recs) + " The issue measured 17.7x (1/16) and 92x (1/64) on 400,000 rows before pieces. "
        "`piece_rows=0` keeps today's windows: at 1/4 and 1/16 they are those of the loader before pieces, "
        "but at 1/64 that loader reserved 16 batches ahead and mixed windows of 1,024 rows on 400,000 rows "
        "(describe() at 910a48f: predicted deff 124), where the budget now leaves windows of 2,304 rows "
        "(cd332ae), so whole units fare better there than the issue's 92x.",
        "",
        "Measured as the sweeps below: each epoch iterates `columns=[\"id\", \"y\"]` under the budget scaled "
        "to the same window rows; the pieces are sized from the window rows and the units, and the id+y "
        "loader's piece rows and plan are checked against the full-column loader's for every row"
        + (f"; {ver[0]['config']} was also iterated once with all columns"
           f" ({ver[0]['full_columns_epoch_s']:.1f} s against {ver[0]['projected_epoch_s']:.1f} s projected)"
           if ver else "") + ".",
        "",
        f"Reproduce: `{first.get('command')}`"
        + (" (quick: not the real figures)" if first.get("quick") else ""),
        "",
        f"Machine: {m.get('cpu_count')} cores, Python {m.get('python')}, numpy {m.get('numpy')}, "
        f"zarr {m.get('zarr')}, torch {m.get('torch')}, streambatch {m.get('streambatch')}; run {first.get('run_id')}.",
        "",
        "Targets (issue 16, must show: quality at any budget, no pre-shuffle):",
        "",
        *[f"- {line}" for line in targets(recs)],
    ]
    return "\n".join(parts) + "\n"
