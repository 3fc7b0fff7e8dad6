"""Regenerate ``benchmarks/RESULTS.md`` (and the PNG plots) from the JSON records.

Every benchmark ``bench_<name>.py`` in this folder appends records to
``records/<name>.jsonl`` (via ``_common.write_record``), each carrying a ``run_id``; it
exposes ``render(records) -> str`` (a markdown section for the records of its latest run)
and optionally ``plot(records, out_dir) -> list[Path]``.  This script stitches the sections
together in a fixed order::

    python benchmarks/report.py
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SECTIONS = ["convert", "throughput", "tokens", "ceiling", "contention", "memory", "quality", "cold", "scaling", "gpu", "training", "remote", "faults", "images",
            "parquet_codec", "refactor_issue15"]

_HEADER = """# Benchmark results

Measured on the machine named in each section (figures are medians of repeated runs;
speed is a ratio to a baseline measured in the same run, as ../shared/BENCHMARKS.md asks).
Regenerate this page with `python benchmarks/report.py`; each section names the command
that produced its figures.  Datasets come from `tools/make_datasets.py` (label-sorted,
`tab`: 2,000,000 rows x (id int64, x float32[128], y int64), `img`: 100,000 rows x
(id int64, x uint8[3,64,64], y int64)).
"""


def _group(rec: dict[str, Any]) -> tuple[Any, ...]:
    return (rec.get("kind"), rec.get("role"), rec.get("dataset"), rec.get("format"), rec.get("codec"),
            rec.get("machine", {}).get("cpu_count"), rec.get("task_bytes"))


def load_records(name: str) -> list[dict[str, Any]]:
    """The records of the latest run of benchmark ``name`` (empty if it never ran).

    A run that measured only part of a benchmark (``--datasets tab``, ``--no-codec``) keeps
    the other parts from the latest earlier full-size run that had them: records are grouped
    by (kind, role, dataset, format, codec, CPU count, ablation) and each group comes from the newest run
    that has it, so runs on another machine (the 16-core device) sit beside this machine's.
    """
    path = HERE / "records" / f"{name}.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return []
    last = rows[-1]
    keep = [r for r in rows if r.get("run_id") == last.get("run_id")]
    have = {_group(r) for r in keep}
    runs = [r.get("run_id") for r in rows if not r.get("quick")]
    for run in reversed(list(dict.fromkeys(runs))):
        older = [r for r in rows if r.get("run_id") == run and _group(r) not in have]
        keep = older + keep
        have |= {_group(r) for r in older}
    return keep


def _module(name: str) -> Any:
    path = HERE / f"bench_{name}.py"
    if not path.exists():
        return None
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses in a bench module look themselves up here
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    parts = [_HEADER]
    for name in SECTIONS:
        kept = HERE / "records" / f"{name}.md"  # a retired benchmark's section, kept as the record
        if kept.exists():
            parts.append(kept.read_text().strip() + "\n")
            continue
        records = load_records(name)
        mod = _module(name) if records else None
        if mod is None:
            continue
        parts.append(mod.render(records).strip() + "\n")
        if hasattr(mod, "plot"):
            for png in mod.plot(records, HERE):
                parts.append(f"![{png.stem}]({png.name})\n")
    (HERE / "RESULTS.md").write_text("\n".join(parts))
    print(f"wrote {HERE / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
