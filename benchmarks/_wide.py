"""The wide-row part of the memory benchmark (``python benchmarks/bench_memory.py --wide``).

3 rows x float32[2,000,000] (8 MB a row): the manifest's size, ``convert``'s peak RSS against
``--memory`` and the loader's peak RSS against its budget (batch 1, 400 MiB), each in a fresh
process.  Peaks are the kernel's (``VmHWM``), so nothing between samples is missed.  The
fixed overheads allowed on top of the budget: for convert, the RSS after its imports plus
``_SMALL_BUFFERS`` (16 MiB, see streambatch/convert/plan.py); for the loader, the RSS after
``import torch, streambatch`` plus the 64 MiB margin of the other rows of this benchmark.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

MiB = 2**20
ROWS, WIDTH = 3, 2_000_000
LOADER_BUDGET = 400 * MiB
CONVERT_SLACK = 16 * MiB  # streambatch.convert.plan._SMALL_BUFFERS
LOADER_MARGIN = 64 * MiB  # bench_memory.MARGIN


def _rss() -> int:
    import os

    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    """This process's peak RSS (``VmHWM``: unlike ``ru_maxrss``, which keeps the peak of the
    process that forked this one, it starts again at ``exec``)."""
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def convert_child(src: str, dst: str, memory: str, shuffle: bool) -> dict[str, Any]:
    """One ``convert`` in this fresh process: RSS after imports, peak, sizes, or the refusal."""
    import streambatch  # noqa: PLC0415
    import streambatch.convert  # noqa: F401, PLC0415
    import streambatch.storage.zarr_store  # noqa: F401, PLC0415

    imports = _rss()
    out: dict[str, Any] = {"memory": memory, "shuffle": shuffle, "rss_after_imports": imports}
    try:
        m = streambatch.convert(src, dst, memory=memory, shuffle=0 if shuffle else None, overwrite=True,
                                progress=False)
    except streambatch.errors.InputError as e:
        return {**out, "refused": str(e), "peak_rss": _peak()}
    root = Path(dst)
    out.update(peak_rss=_peak(), manifest_bytes=(root / "_streambatch.json").stat().st_size,
               stats_file_bytes=sum(p.stat().st_size for p in (root / "_stats").glob("*")), rows=m.rows)
    return out


def loader_child(path: str, normalize: bool) -> dict[str, Any]:
    """Two epochs of ``StreamDataset(path, batch_size=1, memory_budget=400 MiB)`` in this process."""
    import streambatch  # noqa: PLC0415

    stream_dataset = streambatch.StreamDataset  # the lazy import of the torch part
    imports = _rss()
    ds = stream_dataset(path, batch_size=1, memory_budget=LOADER_BUDGET, normalize=normalize)
    served = 0
    for epoch in range(2):
        ds.set_epoch(epoch)
        served += sum(int(b["wide"].shape[0]) for b in ds)
    return {"normalize": normalize, "rss_after_imports": imports, "peak_rss": _peak(), "served": served,
            "accounted": int(ds.last_peak_accounted_bytes)}


def _child(args: list[str], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "bench_memory.py"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


def run(folder: Path, repeats: int, common: dict[str, Any], write: Any, median_of: Any) -> None:
    """Make the dataset, measure, and write the records (``kind`` wide-convert / wide-loader)."""
    import numpy as np  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    src, dst = folder / "wide.npy", folder / "wide.zarr"
    if not src.exists():
        np.save(src, np.random.default_rng(0).standard_normal((ROWS, WIDTH), dtype=np.float32))
    refused = _child(["--child-wide-convert", str(src), str(dst), "4MiB"], 600)
    need = re.search(r"give at least (\d+)MiB", refused.get("refused", ""))
    if need is None:
        raise RuntimeError(f"convert --memory 4MiB was not refused with a minimum: {refused}")
    memory = f"{need.group(1)}MiB"
    base = {**common, "dataset": f"wide ({ROWS} x float32[{WIDTH:,}])",
            "refused_4mib": refused["refused"].replace(str(src), src.name)}
    for shuffle in (False, True):
        args = ["--child-wide-convert", str(src), str(dst), memory] + (["--shuffle"] if shuffle else [])
        med, runs = median_of(lambda: _child(args, 600), repeats=repeats, key="peak_rss")
        write({**base, **med, "kind": "wide-convert", "role": "shuffle" if shuffle else "plain",
               "memory_bytes": int(need.group(1)) * MiB, "overhead_bytes": med["rss_after_imports"] + CONVERT_SLACK,
               "peak_rss_all": [r["peak_rss"] for r in runs]})
        print(f"  convert --memory {memory}{' --shuffle 0' if shuffle else ''}: peak {med['peak_rss'] / MiB:.0f} MiB"
              f" (imports {med['rss_after_imports'] / MiB:.0f} MiB), manifest {med['manifest_bytes']:,} B", flush=True)
    for normalize in (False, True):
        args = ["--child-wide-load", str(dst)] + (["--normalize"] if normalize else [])
        med, runs = median_of(lambda: _child(args, 600), repeats=repeats, key="peak_rss")
        write({**base, **med, "kind": "wide-loader", "role": "normalize" if normalize else "plain",
               "budget_bytes": LOADER_BUDGET, "overhead_bytes": med["rss_after_imports"] + LOADER_MARGIN,
               "peak_rss_all": [r["peak_rss"] for r in runs]})
        print(f"  loader{' normalize' if normalize else ''}: peak {med['peak_rss'] / MiB:.0f} MiB"
              f" (imports {med['rss_after_imports'] / MiB:.0f} MiB)", flush=True)


def render(records: list[dict[str, Any]]) -> list[str]:
    """Markdown lines for the wide-row records (none if there are none)."""
    conv = [r for r in records if r.get("kind") == "wide-convert"]
    load = [r for r in records if r.get("kind") == "wide-loader"]
    if not conv and not load:
        return []
    rows = []
    for r in conv + load:
        limit = r.get("memory_bytes", r.get("budget_bytes", 0)) + r["overhead_bytes"]
        what = (f"convert --memory {r['memory_bytes'] // MiB} MiB" + (" --shuffle 0" if r["role"] == "shuffle" else "")
                if r["kind"] == "wide-convert" else
                f"StreamDataset(batch_size=1, memory_budget=400 MiB"
                f"{', normalize=True' if r['role'] == 'normalize' else ''}), 2 epochs")
        rows.append(f"| {what} | {r['rss_after_imports'] / MiB:.0f} | {r['peak_rss'] / MiB:.0f} | "
                    f"{(r['peak_rss'] - r['rss_after_imports']) / MiB:.0f} | {limit / MiB:.0f} | "
                    f"{'holds' if r['peak_rss'] <= limit else 'FAILS'} |")
    first = (conv or load)[0]
    manifest = next((r["manifest_bytes"] for r in conv if "manifest_bytes" in r), None)
    stats = next((r["stats_file_bytes"] for r in conv if "stats_file_bytes" in r), None)
    return [
        f"### Wide rows: {first['dataset']}",
        "",
        "Peak RSS is the kernel's (`VmHWM`) of a fresh process per run, median of "
        f"{len(first.get('peak_rss_all', [0]))}. The limit is the budget plus the stated fixed overhead: for "
        "convert the RSS after its imports plus 16 MiB of small buffers (`_SMALL_BUFFERS`), for the loader "
        "the RSS after `import torch, streambatch` plus this benchmark's 64 MiB margin.",
        "",
        "| run | imports RSS MiB | peak RSS MiB | peak - imports MiB | limit MiB | |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Manifest {manifest:,} bytes; per-feature statistics in `_stats/` {stats:,} bytes. Before them "
        "(main at 9626258, measured the same way by hand) the statistics were inline: a 156 MB manifest, "
        "`convert --memory 4MiB` peaking at 938 MiB, the loader at 826 MiB (605 MiB above its imports) with "
        "or without `normalize`." if manifest is not None else "",
        f"`convert --memory 4MiB` refuses: `{first.get('refused_4mib', '?')}`; the runs above give it that minimum.",
        "",
        f"Reproduce: `{first.get('command', 'python benchmarks/bench_memory.py --wide')}`",
        "",
    ]
