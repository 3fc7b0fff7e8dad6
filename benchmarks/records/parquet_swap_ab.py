"""The ad-hoc script behind "After the swap" in the Parquet codec decision (benchmarks/RESULTS.md),
kept as the record of how those figures were made; not a benchmark of the suite (it compares two
source trees, which a single checkout does not have).

Paired A/B of two streambatch trees (PQ_BASE: a038cba, the own codec; PQ_NEW: the swap) on
Parquet: npy -> Parquet convert time (codec none, 1 and 2 threads; lz4), Parquet epochs (steady
samples/s, CPU s per GB) and a pyarrow FixedSizeList file -> Zarr convert.  Each measurement runs
in a fresh child process with PYTHONPATH set to one tree; trials alternate (the first tree of each
pair alternates too); medians and the median of per-pair ratios.  Data under /tmp/pqab/data.

    PQ_BASE=/path/to/a038cba PQ_NEW=. python benchmarks/records/parquet_swap_ab.py 7 tab,img convert,t2,epoch,fsl,lz4
"""
import json, os, resource, shutil, statistics, subprocess, sys, time
from pathlib import Path

TREES = {"base": os.environ.get("PQ_BASE", "/work/wt/pq-base"), "new": os.environ.get("PQ_NEW", "/work/wt/pqswap")}
PY = sys.executable
ROOT = Path("/tmp/pqab/data")
ROWS = {"tab": 400_000, "img": 20_000}
BUDGET = {"tab": 50 << 20, "img": 59 << 20}


def child(argv):
    mode = argv[0]
    import numpy as np
    import streambatch
    if mode == "convert":
        npy, out, threads = Path(argv[1]), Path(argv[2]), int(argv[3])
        shutil.rmtree(out, ignore_errors=True)
        for f in npy.glob("*.npy"):
            f.read_bytes()
        os.sync()
        t0 = time.perf_counter()
        streambatch.convert(npy, out, format=argv[4] if len(argv) > 4 else "parquet", progress=False,
                            threads=threads or None, codec=argv[5] if len(argv) > 5 else "none")
        dt = time.perf_counter() - t0
        print(json.dumps({"s": dt, "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}))
    elif mode == "epoch":
        store, budget = Path(argv[1]), int(argv[2])
        for p in store.glob("*.parquet"):
            p.read_bytes()
        from streambatch import StreamDataset
        ds = StreamDataset(store, batch_size=256, shuffle=True, seed=0, memory_budget=budget)
        n = ds.manifest.rows
        row_bytes = ds.manifest.row_nbytes
        res = []
        for e in range(3):
            ds.set_epoch(e)
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            seen, touched = 0, 0.0
            for b in ds:
                touched += float(b["x"].reshape(-1)[0])
                seen += len(b["id"])
            dt = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            assert seen == n, (seen, n)
            res.append({"sps": n / dt, "cpu": r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime})
        steady = statistics.median(r["sps"] for r in res[1:])
        cpu = statistics.median(r["cpu"] for r in res[1:])
        print(json.dumps({"epoch1": res[0]["sps"], "steady": steady, "cpu_s_per_gb": cpu / (n * row_bytes / 1e9),
                          "mb_s": steady * row_bytes / 1e6}))


def run(tree, *args):
    env = {**os.environ, "PYTHONPATH": TREES[tree]}
    out = subprocess.run([PY, __file__, "child", *map(str, args)], env=env, cwd=TREES[tree], capture_output=True,
                         text=True, check=False)
    if out.returncode:
        sys.exit(f"{tree} {args}: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def paired(a, b):
    return statistics.median(x / y for x, y in zip(a, b))


def main():
    repeats = int(sys.argv[1])
    kinds = sys.argv[2].split(",")
    parts = sys.argv[3].split(",")
    sys.path.insert(0, str(Path(TREES["new"]) / "benchmarks"))
    import bench_throughput as bt
    results = {}
    for kind in kinds:
        npy = bt.ensure_npy(ROOT, kind, ROWS[kind])
        if "fsl" in parts:  # a pyarrow-written FixedSizeList file of the same rows, for Parquet -> Zarr
            fsl = ROOT / f"{kind}-fsl.parquet"
            if not fsl.exists():
                import numpy as np, pyarrow as pa, pyarrow.parquet as pq
                cols = {p.stem: np.load(p) for p in sorted(npy.glob("*.npy"))}
                arrays, fields = [], []
                for k, v in cols.items():
                    if v.ndim > 1:
                        t = pa.list_(pa.field("element", pa.from_numpy_dtype(v.dtype), nullable=False), int(np.prod(v.shape[1:])))
                        a = pa.FixedSizeListArray.from_arrays(pa.Array.from_buffers(t.value_type, v.size, [None, pa.py_buffer(np.ascontiguousarray(v).reshape(-1))]), type=t)
                        fields.append(pa.field(k, t, nullable=False, metadata={"streambatch.shape": json.dumps(list(v.shape[1:]))}))
                    else:
                        a = pa.Array.from_buffers(pa.from_numpy_dtype(v.dtype), len(v), [None, pa.py_buffer(v)])
                        fields.append(pa.field(k, a.type, nullable=False))
                    arrays.append(a)
                pq.write_table(pa.Table.from_arrays(arrays, schema=pa.schema(fields)), fsl, compression="none",
                               row_group_size=(6 << 20) // sum(v[0].nbytes for v in cols.values()))
        r = {t: {"convert": [], "convert_t2": [], "epoch": [], "fsl2zarr": [], "convert_lz4": [], "epoch_lz4": []} for t in TREES}
        for i in range(repeats):
            order = ["base", "new"] if i % 2 == 0 else ["new", "base"]
            for t in order:
                if "convert" in parts:
                    r[t]["convert"].append(run(t, "convert", npy, ROOT / f"{kind}-{t}.parquet", 1))
                if "t2" in parts:
                    r[t]["convert_t2"].append(run(t, "convert", npy, ROOT / f"{kind}-{t}-t2.parquet", 2))
                if "lz4" in parts:
                    r[t]["convert_lz4"].append(run(t, "convert", npy, ROOT / f"{kind}-{t}-lz4.parquet", 1, "parquet", "lz4"))
            for t in order:
                if "epoch" in parts:
                    r[t]["epoch"].append(run(t, "epoch", ROOT / f"{kind}-{t}.parquet", BUDGET[kind]))
                if "lz4" in parts:
                    r[t]["epoch_lz4"].append(run(t, "epoch", ROOT / f"{kind}-{t}-lz4.parquet", BUDGET[kind]))
                if "fsl" in parts:
                    r[t]["fsl2zarr"].append(run(t, "convert", ROOT / f"{kind}-fsl.parquet", ROOT / f"{kind}-{t}-fsl.zarr", 0, "zarr"))
            print(kind, i, json.dumps({t: {k: v[-1] for k, v in r[t].items() if v} for t in TREES}), flush=True)
        results[kind] = r
        summary = {}
        for key, field in (("convert", "s"), ("convert_t2", "s"), ("fsl2zarr", "s"), ("epoch", "steady"), ("epoch", "cpu_s_per_gb"), ("epoch", "epoch1"),
                           ("convert_lz4", "s"), ("epoch_lz4", "steady"), ("epoch_lz4", "cpu_s_per_gb")):
            if not r["base"][key]:
                continue
            a = [x[field] for x in r["base"][key]]
            b = [x[field] for x in r["new"][key]]
            summary[f"{key}.{field}"] = {"base": statistics.median(a), "new": statistics.median(b),
                                         "new/base": paired(b, a), "range": [min(x / y for x, y in zip(b, a)), max(x / y for x, y in zip(b, a))]}
        if r["base"]["convert"]:
            summary["stored_bytes"] = {t: r[t]["convert"][0]["bytes"] for t in TREES}
        print(kind, "SUMMARY", json.dumps(summary, indent=1), flush=True)
    (ROOT.parent / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    if sys.argv[1] == "child":
        child(sys.argv[2:])
    else:
        main()
