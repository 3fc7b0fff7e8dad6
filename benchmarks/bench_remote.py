"""Remote (loopback HTTP and S3-compatible) against local read throughput.

    python benchmarks/bench_remote.py [--data DIR] [--quick] [--repeats N]

A tab-like Zarr dataset (400,000 rows, 211 MB; 50,000 with --quick) is served by
``tools/range_server.py`` (HTTP with Range requests) and by moto's S3 server, both on
127.0.0.1, and read for one shuffled epoch by ``StreamDataset`` at a 64 MiB budget: locally,
over HTTP, over HTTP with the local disk cache (second epoch, served from the cache), and
over S3.  Figures: samples/s and the ratio to the local epoch measured in the same run,
requests and retries.  Loopback has no network latency or bandwidth limit, so this measures
the cost of the request path (fsspec, HTTP parsing, copies), not a real network.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tools"))

import _common  # noqa: E402
import report  # noqa: E402
from range_server import RangeServer, free_port  # noqa: E402

import streambatch  # noqa: E402

BUDGET = "64MiB"


def _epoch(path: str | Path, **kw: Any) -> dict[str, Any]:
    ds = streambatch.StreamDataset(path, batch_size=256, memory_budget=BUDGET, **kw)
    res = _common.consume(ds, count_ids=ds.manifest.rows)
    res["samples_per_s"] = res["samples"] / res["seconds"]
    res["threads"] = ds.describe()["threads"]
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(HERE.parent / "data"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = 50_000 if args.quick else 400_000
    data = Path(args.data) / ("quick" if args.quick else "") / "remote"
    src = data / "tab-npy"
    if not (src / "y.npy").exists():
        sys.path.insert(0, str(HERE.parent / "tools"))
        from make_datasets import make_dataset  # noqa: PLC0415

        make_dataset("tab", src, rows=rows)
    local = data / "served" / "tab.zarr"
    if not (local / "_streambatch.json").exists():
        streambatch.convert(src, local, label="y", overwrite=True)
    run_id = time.strftime("%Y%m%dT%H%M%S")
    cmd = "python benchmarks/bench_remote.py" + (" --quick" if args.quick else "")
    http = RangeServer(local.parent)
    threading.Thread(target=http.serve_forever, name="bench-http", daemon=True).start()
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        from moto.server import ThreadedMotoServer  # noqa: PLC0415

        port = free_port()
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        moto.start()
        os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
        import fsspec  # noqa: PLC0415

        fsspec.filesystem("s3").mkdir("bench")
        streambatch.convert(src, "s3://bench/tab.zarr", label="y", overwrite=True)
        s3_url: str | None = "s3://bench/tab.zarr"
    except ImportError:
        moto, s3_url = None, None
    cache = Path(tempfile.mkdtemp(prefix="sb-cache-"))
    cached = streambatch.RemoteOptions(cache_dir=cache, cache_bytes=1 << 30)
    try:
        _epoch(local)  # warm the page cache
        for _ in range(args.repeats):
            results.setdefault("local", []).append(_epoch(local))
            results.setdefault("http", []).append(_epoch(f"{http.url}/tab.zarr"))
            shutil.rmtree(cache, ignore_errors=True)
            _epoch(f"{http.url}/tab.zarr", remote=cached)
            results.setdefault("http, cached (2nd epoch)", []).append(_epoch(f"{http.url}/tab.zarr", remote=cached))
            if s3_url:
                results.setdefault("s3 (moto)", []).append(_epoch(s3_url))
    finally:
        http.shutdown()
        if moto is not None:
            moto.stop()
        shutil.rmtree(cache, ignore_errors=True)
    local_rate = statistics.median(r["samples_per_s"] for r in results["local"])
    for name, runs in results.items():
        rate = statistics.median(r["samples_per_s"] for r in runs)
        rec = {"run_id": run_id, "command": cmd, "quick": args.quick, "source": name, "rows": rows,
               "budget": BUDGET, "samples_per_s": rate, "ratio_to_local": rate / local_rate,
               "first_batch_s": statistics.median(r["first_batch_s"] for r in runs),
               "threads": runs[0]["threads"], "missing": max(r["missing"] for r in runs),
               "duplicated": max(r["duplicated"] for r in runs), "repeats": len(runs)}
        _common.write_record("remote", rec)
        print(f"{name:<26} {rate:12,.0f} samples/s  {rate / local_rate:5.2f}x local", flush=True)
    report.main()
    return 0


def render(records: list[dict[str, Any]]) -> str:
    m = records[0]["machine"]
    lines = ["## Remote datasets (loopback)", "",
             "How much does reading over HTTP or S3 cost against local files? Loopback servers (no "
             "network limits), one shuffled epoch, 64 MiB budget, median of the repeats.", "",
             "| source | samples/s | x local | first batch s | reader threads | missing | duplicated |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['source']} | {r['samples_per_s']:,.0f} | {r['ratio_to_local']:.2f} | "
                     f"{r['first_batch_s']:.3f} | {r['threads']} | {r['missing']} | {r['duplicated']} |")
    lines += ["", f"Command: `{records[0]['command']}` ({records[0]['rows']:,} rows). Machine: "
              f"{m.get('cpu_count')} CPUs, Python {m.get('python')}, torch {m.get('torch')}."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
