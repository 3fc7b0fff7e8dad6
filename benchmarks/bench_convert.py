#!/usr/bin/env python
"""Convert benchmark: how fast is conversion, against a plain file copy of the input?

Inputs are the label-sorted ``tab`` dataset (2,000,000 rows, ~1.05 GB) as a folder of ``.npy``
columns (``tools/make_datasets.py``) and as Parquet (made once from the ``.npy`` folder with
``streambatch.convert(..., format="parquet")``, no compression). Each conversion runs as the
user runs it, ``streambatch convert SRC DST --format F --codec C --memory M --overwrite -q`` in a
subprocess, timed on the wall clock (interpreter start-up included) while its peak RSS is
sampled every 20 ms with psutil (the child and its descendants).
In the same run, before each conversion, the input's files are copied with
``_common.copy_file`` into a scratch folder on the same file system: the copy's MB/s is the
baseline. Warm cache: the inputs are read once before each configuration. Scratch outputs are
deleted after each repeat (dirty pages of deleted files are never written back, so one run's
write-back does not slow the next). Figures are medians of ``--repeats`` (default 3).

The codec-choice table measures what justifies the default codec: ``tab`` (random floats) and
``tabz`` (quantised, compressible) converted with none / lz4 / zstd, their compression ratio and
the read throughput of a ``StreamDataset`` epoch in this process (256 MiB budget, batch 256;
epoch 1 separately, then the median of the next ``--repeats`` epochs), against the in-RAM limit.

Usage::

    python benchmarks/bench_convert.py             # full size (~1 GB inputs), ~15 minutes on 2 cores
    python benchmarks/bench_convert.py --quick     # 50,000 rows under data/quick/, 2 repeats, ~1 minute
    python benchmarks/bench_convert.py --only 'npy -> zarr (none)' --no-codec   # one conversion
    python benchmarks/bench_convert.py --scheduler local:1 --scheduler local:2   # on Dask clusters only

With ``--scheduler local:N`` (repeatable) only the Dask table runs: ``npy -> zarr (zstd)``
(CPU-bound) converted in this process with ``convert(..., client=)`` on a ``LocalCluster`` of N
single-threaded worker processes, started before the clock and reused across repeats; each
figure is the median of ``--repeats`` (the clusters take turns within each repeat) and its ratio
to the first scheduler's (records of kind ``cluster``, in RESULTS.md's convert section).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
from make_datasets import make_dataset  # noqa: E402

import streambatch  # noqa: E402
from streambatch._sizes import format_size, parse_size  # noqa: E402
from streambatch.convert import DEFAULT_CODEC, DEFAULT_MEMORY, DEFAULT_SHARD_BYTES, DEFAULT_UNIT_BYTES  # noqa: E402

NAME = "convert"
FULL_ROWS = 2_000_000
QUICK_ROWS = 50_000
SAMPLE_S = 0.02
COPY_TARGET = 0.5
"""Uncompressed conversions must reach this fraction of the copy's MB/s."""
READ_BUDGET = "256MiB"
"""StreamDataset budget for the codec read test (BENCHMARKS.md's default for the 1 GB sets)."""
CODECS = ("none", "lz4", "zstd")


class Config(NamedTuple):
    """One conversion: input kind, output format, codec, ``--memory`` and ``--shuffle``.

    (A NamedTuple, not a dataclass: report.py loads this module without registering it in
    ``sys.modules``, which ``@dataclass`` needs.)
    """

    src: str  # "npy" | "parquet"
    fmt: str  # "zarr" | "parquet"
    codec: str = "none"
    memory: str = "1GiB"
    shuffle: int | None = None

    @property
    def label(self) -> str:
        extra = []
        if self.memory != "1GiB":
            extra.append(f"--memory {self.memory}")
        if self.shuffle is not None:
            extra.append(f"--shuffle {self.shuffle}")
        return f"{self.src} -> {self.fmt} ({self.codec})" + (f" {' '.join(extra)}" if extra else "")


CONFIGS = (
    Config("npy", "zarr", "none"),
    Config("npy", "zarr", "lz4"),
    Config("npy", "zarr", "zstd"),
    Config("npy", "parquet", "none"),
    Config("npy", "zarr", "none", memory="256MiB"),
    Config("npy", "zarr", "none", shuffle=0),
    Config("parquet", "zarr", "none"),
    Config("parquet", "zarr", "lz4"),
    Config("parquet", "zarr", "zstd"),
    Config("parquet", "parquet", "none"),
)


# ----------------------------------------------------------------------------- helpers


def _files(path: Path) -> list[Path]:
    """Regular files under ``path`` (the file itself for a file), sorted."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in _files(path))


def _npy_rows(folder: Path) -> int | None:
    """Rows of the ``.npy`` dataset in ``folder`` (None if missing or inconsistent)."""
    try:
        shapes = {c: np.load(folder / f"{c}.npy", mmap_mode="r").shape[0] for c in ("id", "x", "y")}
    except (OSError, ValueError):
        return None
    return shapes["y"] if len(set(shapes.values())) == 1 else None


def ensure_npy(root: Path, kind: str, rows: int) -> Path:
    """``root/<kind>-npy`` with ``rows`` rows, generated with ``make_dataset`` if missing."""
    out = root / f"{kind}-npy"
    if _npy_rows(out) != rows:
        print(f"making {out} ({rows:,} rows)", flush=True)
        make_dataset(kind, out, rows=rows)
    return out


def _npy_decoded_bytes(folder: Path) -> int:
    """Rows x bytes per row of the ``.npy`` columns in ``folder`` (what a conversion decodes)."""
    total = 0
    for f in sorted(folder.glob("*.npy")):
        a = np.load(f, mmap_mode="r")
        total += a.size * a.dtype.itemsize
    return total


def ensure_parquet(root: Path, npy: Path, rows: int) -> Path:
    """``root/tab_src.parquet``: the Parquet input, converted once from ``npy`` if missing."""
    out = root / "tab_src.parquet"
    try:
        m = streambatch.load_manifest(out)
        # FixedSizeBinary tensors with value offsets: what this streambatch writes (older
        # FixedSizeList inputs would measure the reader of earlier datasets)
        ok = m.rows == rows and m.codec == "none" and Path(m.source["path"]) == npy.resolve() and "values" in m.layout
        ok = ok and m.layout.get("tensors") == "fixed_size_binary"
        ok = ok and os.path.getmtime(out / m.files[0]) >= os.path.getmtime(npy / "x.npy")
    except Exception:  # missing, partial or from another input: make it again
        ok = False
    if not ok:
        print(f"making {out} from {npy}", flush=True)
        streambatch.convert(npy, out, format="parquet", codec="none", label="y", overwrite=True)
    return out


def _cli() -> list[str]:
    """The ``streambatch`` console script of this interpreter (or ``python -m streambatch.cli``)."""
    script = Path(sys.executable).parent / "streambatch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "streambatch.cli"]


def run_child(cmd: list[str]) -> dict[str, Any]:
    """Run ``cmd``; return ``seconds`` (wall), ``peak_rss`` (bytes), ``rc`` and ``stderr``.

    Peak RSS is the largest psutil sample of the child and its descendants (every
    :data:`SAMPLE_S` seconds). ``ru_maxrss`` is not used: Linux carries the high-water mark of
    the forking parent (this benchmark, with torch loaded: ~340 MiB) across ``exec`` into the
    child's figure, so it would report the parent, not the conversion.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ps = psutil.Process(proc.pid)
    sampled = 0
    status = 0
    while True:
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            seconds = time.perf_counter() - t0
            break
        total = 0
        try:
            for p in (ps, *ps.children(recursive=True)):
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    continue
        except psutil.Error:
            pass
        sampled = max(sampled, total)
        time.sleep(SAMPLE_S)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    return {
        "seconds": seconds,
        "peak_rss": sampled,
        "rc": proc.returncode,
        "stderr": stderr.strip()[-500:],
    }


def copy_input(src: Path, scratch: Path) -> dict[str, Any]:
    """Copy every file of ``src`` into ``scratch`` with ``_common.copy_file``; total MB/s."""
    scratch.mkdir(parents=True, exist_ok=True)
    nbytes = 0
    seconds = 0.0
    files = _files(src)
    for i, f in enumerate(files):
        r = _common.copy_file(f, scratch / f"{i:04d}-{f.name}")
        nbytes += r["bytes"]
        seconds += r["seconds"]
    shutil.rmtree(scratch)
    return {"bytes": nbytes, "files": len(files), "seconds": seconds, "mb_per_s": nbytes / 1e6 / max(seconds, 1e-12)}


def convert_command(cfg: Config, src: Path, dst: Path) -> list[str]:
    """The ``streambatch convert`` command line of ``cfg``."""
    cmd = [*_cli(), "convert", str(src), str(dst), "--format", cfg.fmt, "--codec", cfg.codec]
    cmd += ["--memory", cfg.memory, "--overwrite", "-q"]
    if cfg.shuffle is not None:
        cmd += ["--shuffle", str(cfg.shuffle)]
    return cmd


# ----------------------------------------------------------------------------- measurements


def measure_config(
    cfg: Config, src: Path, scratch: Path, repeats: int, decoded_bytes: int, startup_s: float | None = None
) -> dict[str, Any]:
    """Median of ``repeats`` (copy of the input, then the conversion) for one configuration.

    ``startup_s`` (interpreter start-up and imports) is subtracted for the
    ``ratio_to_copy_excl_startup`` figure only.
    """
    _common.sequential_read(src)  # warm the page cache
    input_bytes = _size(src)
    copies: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    out_bytes: list[int] = []
    dst = scratch / f"out.{cfg.fmt}"
    for _ in range(repeats):
        # Each timed step starts with no dirty pages in flight: writeback of the previous step's
        # output (or of a deleted file's journal) otherwise lands in the next one (copies here
        # ranged 0.8-2.2 GB/s without this).
        os.sync()
        copies.append(copy_input(src, scratch / "copy"))
        os.sync()
        run = run_child(convert_command(cfg, src, dst))
        if run["rc"] != 0:
            raise RuntimeError(f"{cfg.label}: streambatch convert failed (rc {run['rc']}): {run['stderr']}")
        out_bytes.append(_size(dst))
        runs.append(run)
        shutil.rmtree(dst)
    seconds = statistics.median(r["seconds"] for r in runs)
    copy_mb_s = statistics.median(c["mb_per_s"] for c in copies)
    input_mb_s = input_bytes / 1e6 / seconds
    budget = parse_size(cfg.memory, "memory")
    peak = max(r["peak_rss"] for r in runs)
    return {
        "kind": "convert",
        "config": cfg.label,
        "input": cfg.src,
        "format": cfg.fmt,
        "codec": cfg.codec,
        "memory": cfg.memory,
        "memory_bytes": budget,
        "shuffle": cfg.shuffle,
        "unit_bytes": DEFAULT_UNIT_BYTES,
        "shard_bytes": DEFAULT_SHARD_BYTES,
        "warm": True,
        "repeats": repeats,
        "input_bytes": input_bytes,
        "decoded_bytes": decoded_bytes,
        "seconds": seconds,
        "seconds_all": [r["seconds"] for r in runs],
        "input_mb_per_s": input_mb_s,
        "decoded_mb_per_s": decoded_bytes / 1e6 / seconds,
        "copy_mb_per_s": copy_mb_s,
        "copy_mb_per_s_all": [c["mb_per_s"] for c in copies],
        "copy_seconds": statistics.median(c["seconds"] for c in copies),
        "ratio_to_copy": input_mb_s / copy_mb_s,
        "ratio_to_copy_excl_startup": (
            None if startup_s is None or seconds <= startup_s else input_bytes / 1e6 / (seconds - startup_s) / copy_mb_s
        ),
        "output_bytes": int(statistics.median(out_bytes)),
        "peak_rss_bytes": peak,
        "peak_rss_all": [r["peak_rss"] for r in runs],
        "under_budget": peak <= budget,
        "command_line": " ".join(shlex.quote(c) for c in ["streambatch", *convert_command(cfg, src, dst)[len(_cli()):]]),
    }


STARTUP_IMPORTS = "import streambatch.cli, streambatch.convert"
"""What ``streambatch convert`` imports before it reads a byte (zarr and pyarrow load only when
a format needs them, and that is conversion work)."""


def measure_startup(repeats: int) -> dict[str, Any]:
    """Median wall time and peak RSS of a child that only imports what a conversion needs."""
    runs = [run_child([sys.executable, "-c", STARTUP_IMPORTS]) for _ in range(repeats)]
    return {
        "seconds": statistics.median(r["seconds"] for r in runs),
        "peak_rss_bytes": statistics.median(r["peak_rss"] for r in runs),
    }


def measure_codec(kind: str, npy: Path, codec: str, scratch: Path, epochs: int) -> dict[str, Any]:
    """Convert ``npy`` with ``codec`` in process, then read it: compression ratio and MB/s."""
    dst = scratch / f"{kind}-{codec}.zarr"
    t0 = time.perf_counter()
    m = streambatch.convert(npy, dst, format="zarr", codec=codec, label="y", overwrite=True)
    convert_s = time.perf_counter() - t0
    decoded = m.rows * m.row_nbytes
    stored_units = int(np.asarray(m.unit_stored_nbytes).sum())
    stored_total = _size(dst)
    ds = streambatch.StreamDataset(dst, batch_size=256, memory_budget=READ_BUDGET, seed=0)
    desc = ds.describe()
    results = []
    complete = {"missing": 0, "duplicated": 0, "foreign": 0}
    for e in range(epochs + 1):
        ds.set_epoch(e)
        r = _common.consume(ds)
        c = _common.check_complete(r["ids"], m.rows)
        complete = {k: max(complete[k], c[k]) for k in complete}
        results.append(r)
    ds.release_buffers()
    del ds
    shutil.rmtree(dst)
    steady = sorted(results[1:], key=lambda r: r["seconds"])[(len(results) - 2) // 2]
    return {
        "kind": "codec",
        "dataset": kind,
        "format": "zarr",
        "codec": codec,
        "rows": m.rows,
        "decoded_bytes": decoded,
        "stored_bytes": stored_units,
        "stored_bytes_total": stored_total,
        "compression_ratio": decoded / max(1, stored_units),
        "convert_s": convert_s,
        "convert_mb_per_s": _size(npy) / 1e6 / convert_s,
        "budget": READ_BUDGET,
        "window_rows": desc["window_rows"],
        "window_units": desc["window_units"],
        "threads": desc["threads"],
        "unit_rows": desc["unit_rows"],
        "epochs_timed": epochs,
        "epoch1_mb_per_s": results[0]["bytes"] / 1e6 / results[0]["seconds"],
        "epoch1_samples_per_s": results[0]["samples"] / results[0]["seconds"],
        "first_batch_s": results[0]["first_batch_s"],
        "steady_mb_per_s": steady["bytes"] / 1e6 / steady["seconds"],
        "steady_samples_per_s": steady["samples"] / steady["seconds"],
        "steady_mb_per_s_all": [r["bytes"] / 1e6 / r["seconds"] for r in results[1:]],
        "missing": complete["missing"],
        "duplicated": complete["duplicated"],
        "warm": True,
    }


def measure_ram_limit(npy: Path, repeats: int) -> dict[str, Any]:
    """``_common.ram_limit`` over ``npy`` loaded in RAM, median of ``repeats``."""
    cols = _common.load_columns(npy)
    best, _ = _common.median_of(lambda: _common.ram_limit(cols), repeats, key="mb_per_s")
    del cols
    return best


def run_clusters(schedulers: list[str], npy: Path, scratch: Path, repeats: int, base: dict[str, Any]) -> None:
    """The Dask table: converting ``npy`` to Zarr (zstd) on each cluster, the clusters taking
    turns within each repeat (every cluster started first: a load from elsewhere falls on all of
    them alike); each scheduler's median and its speed-up over the first one's."""
    from contextlib import ExitStack

    from streambatch.convert.cluster import open_client

    dst = scratch / "cluster.zarr"
    times: dict[str, list[float]] = {s: [] for s in schedulers}
    with ExitStack() as stack:
        clients = {s: stack.enter_context(open_client(s)) for s in schedulers}
        for _ in range(repeats):
            for scheduler, client in clients.items():
                os.sync()
                t0 = time.perf_counter()
                streambatch.convert(npy, dst, codec="zstd", progress=False, client=client)
                times[scheduler].append(time.perf_counter() - t0)
                shutil.rmtree(dst)
    first = statistics.median(times[schedulers[0]])
    for scheduler in schedulers:
        seconds = statistics.median(times[scheduler])
        rec = {"kind": "cluster", "scheduler": scheduler, "config": "npy -> zarr (zstd)", "repeats": repeats,
               "seconds": seconds, "seconds_all": times[scheduler], "input_mb_per_s": _size(npy) / 1e6 / seconds,
               "speedup_to_first": first / seconds, "load_avg": os.getloadavg(),
               "command_line": f"streambatch convert {npy} DST --codec zstd --scheduler {scheduler}"}
        _common.write_record(NAME, {**base, **rec})
        print(f"{rec['config']} --scheduler {scheduler:<12} {seconds:6.2f} s {rec['input_mb_per_s']:7.0f} MB/s"
              f" ({rec['speedup_to_first']:.2f}x {schedulers[0]}; all {', '.join(f'{t:.2f}' for t in times[scheduler])};"
              f" load average {', '.join(f'{x:.1f}' for x in rec['load_avg'])})", flush=True)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Measure every conversion and the codec choice; write records; regenerate RESULTS.md."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=REPO / "data", help="dataset folder (default: data/; DIR/quick/ with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows: a smoke run under a minute")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per figure (default 3; 2 with --quick)")
    parser.add_argument("--no-codec", action="store_true", help="skip the codec-choice table")
    parser.add_argument(
        "--only", action="append", default=None, metavar="LABEL",
        help="measure only this conversion, named by its label in the table (e.g. 'npy -> zarr (none)');"
        " repeatable; default: every conversion",
    )
    parser.add_argument("--scheduler", action="append", default=None, metavar="local:N",
                        help="only the Dask table, on these clusters (repeatable; e.g. local:1 and local:2)")
    args = parser.parse_args(argv)
    configs = CONFIGS
    if args.only:
        labels = [c.label for c in CONFIGS]
        unknown = [o for o in args.only if o not in labels]
        if unknown:
            parser.error(f"unknown --only {unknown}; choose from: {'; '.join(labels)}")
        configs = tuple(c for c in CONFIGS if c.label in args.only)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 3
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    run_id = time.strftime("%Y%m%dT%H%M%S")
    command = " ".join(["python benchmarks/bench_convert.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    root = args.data / "quick" if args.quick else args.data
    rows = QUICK_ROWS if args.quick else FULL_ROWS
    base = {"run_id": run_id, "command": command, "quick": args.quick, "dataset": "tab", "rows": rows}
    t_start = time.perf_counter()

    npy = ensure_npy(root, "tab", rows)
    if args.scheduler:
        scratch = root / ".convert-scratch"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        try:
            run_clusters(args.scheduler, npy, scratch, args.repeats, base)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return 0
    inputs = {"npy": npy}
    if any(c.src == "parquet" for c in configs):
        parquet = ensure_parquet(root, npy, rows)
        inputs["parquet"] = parquet
        decoded = streambatch.load_manifest(parquet).rows * streambatch.load_manifest(parquet).row_nbytes
    else:  # --only without a Parquet input: the same figure from the .npy columns
        decoded = _npy_decoded_bytes(npy)
    scratch = root / ".convert-scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        startup = measure_startup(args.repeats)
        memcpy = _common.memcpy(min(2**30, max(2**26, decoded)))
        _common.write_record(
            NAME,
            {
                **base,
                "kind": "baseline",
                "cli_startup_s": startup["seconds"],
                "cli_startup_rss_bytes": startup["peak_rss_bytes"],
                "memcpy_gb_per_s": memcpy["gb_per_s"],
                "memcpy_bytes": memcpy["bytes"],
                "default_codec": DEFAULT_CODEC,
                "default_memory": DEFAULT_MEMORY,
            },
        )
        print(f"start-up + imports {startup['seconds']:.2f} s, memcpy {memcpy['gb_per_s']:.1f} GB/s", flush=True)
        for cfg in configs:
            rec = measure_config(cfg, inputs[cfg.src], scratch, args.repeats, decoded, startup["seconds"])
            _common.write_record(NAME, {**base, **rec})
            print(
                f"{cfg.label:<40} {rec['seconds']:6.2f} s {rec['input_mb_per_s']:7.0f} MB/s"
                f" ({rec['ratio_to_copy']:.2f}x copy {rec['copy_mb_per_s']:.0f} MB/s)"
                f" out {rec['output_bytes'] / 1e6:.0f} MB peak RSS {rec['peak_rss_bytes'] / 2**20:.0f} MiB",
                flush=True,
            )
        if not args.no_codec:
            for kind in ("tab", "tabz"):
                src = ensure_npy(root, kind, rows)
                ram = measure_ram_limit(src, args.repeats)
                for codec in CODECS:
                    rec = measure_codec(kind, src, codec, scratch, args.repeats)
                    rec["ram_limit_mb_per_s"] = ram["mb_per_s"]
                    rec["ratio_to_ram_limit"] = rec["steady_mb_per_s"] / ram["mb_per_s"]
                    _common.write_record(NAME, {**base, **rec, "dataset": kind})
                    print(
                        f"codec {kind:<4} {codec:<4} ratio {rec['compression_ratio']:.2f}"
                        f" read {rec['steady_mb_per_s']:.0f} MB/s ({rec['ratio_to_ram_limit']:.2f}x ram-limit)"
                        f" convert {rec['convert_s']:.1f} s",
                        flush=True,
                    )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"convert benchmark took {time.perf_counter() - t_start:.0f} s", flush=True)
    import report

    report.main()
    return 0


# ----------------------------------------------------------------------------- report


def _mib(n: float | None) -> str:
    return "–" if n is None else f"{n / 2**20:.0f}"


def render(records: list[dict[str, Any]]) -> str:
    """The markdown section: conversions against the copy, then the codec choice."""
    conv = [r for r in records if r.get("kind") == "convert"]
    codec = [r for r in records if r.get("kind") == "codec"]
    base = next((r for r in records if r.get("kind") == "baseline"), {})
    if not conv and not codec:
        return "## Convert\n\nNo records.\n" + _render_clusters(records)
    first = (conv or codec)[0]
    m = first.get("machine", {})
    quick = " **(quick run: small dataset, not a result)**" if first.get("quick") else ""
    out = [
        "## Convert",
        "",
        f"How fast is conversion, against a plain file copy of the input?{quick}",
        "",
    ]
    if conv:
        rows = []
        for r in conv:
            rows.append(
                {
                    "conversion": r["config"],
                    "input MB": f"{r['input_bytes'] / 1e6:,.0f}",
                    "seconds": r["seconds"],
                    "input MB/s": f"{r['input_mb_per_s']:,.0f}",
                    "copy MB/s": f"{r['copy_mb_per_s']:,.0f}",
                    "× copy": f"{r['ratio_to_copy']:.2f}",
                    "× copy excl. start-up": "–"
                    if r.get("ratio_to_copy_excl_startup") is None
                    else f"{r['ratio_to_copy_excl_startup']:.2f}",
                    "output MB": f"{r['output_bytes'] / 1e6:,.0f}",
                    "peak RSS MiB": _mib(r["peak_rss_bytes"]),
                    "--memory MiB": _mib(r["memory_bytes"]),
                    "under budget": "yes" if r["under_budget"] else "**no**",
                }
            )
        out += [
            f"`tab` ({first['rows']:,} rows, id int64 + x float32[128] + y int64, label-sorted) as a folder of"
            " .npy columns and as uncompressed Parquet (made once by streambatch), converted by"
            " `streambatch convert SRC DST --format F --codec C --memory M --overwrite -q` in a subprocess"
            f" (default unit {format_size(first['unit_bytes'])}, shards {format_size(first['shard_bytes'])});"
            " wall time includes the interpreter's start-up and imports"
            + (
                f" (a child that only runs `{STARTUP_IMPORTS}`: {base['cli_startup_s']:.2f} s,"
                f" {base['cli_startup_rss_bytes'] / 2**20:.0f} MiB; `excl. start-up` subtracts it)"
                if base
                else ""
            )
            + ". Copy = `shutil.copyfile` of every input file to the same file system, measured before each"
            " conversion; warm page cache, no fsync in either (an `os.sync()` before each timed step, untimed). Peak RSS:"
            " the child process tree, sampled with psutil every"
            f" 20 ms, the largest of {first['repeats']} repeats; other figures are medians"
            f" of {first['repeats']}.",
            "",
            _common.format_table(rows, list(rows[0].keys())),
            "",
        ]
    if codec:
        rows = []
        none_speed = {r["dataset"]: r["steady_mb_per_s"] for r in codec if r["codec"] == "none"}
        for r in codec:
            ref = none_speed.get(r["dataset"])
            rows.append(
                {
                    "dataset": r["dataset"],
                    "codec": r["codec"] + (" (default)" if base and r["codec"] == base.get("default_codec") else ""),
                    "compression ratio": f"{r['compression_ratio']:.2f}",
                    "stored MB": f"{r['stored_bytes'] / 1e6:,.0f}",
                    "convert s": r["convert_s"],
                    "epoch 1 MB/s": f"{r['epoch1_mb_per_s']:,.0f}",
                    "steady MB/s": f"{r['steady_mb_per_s']:,.0f}",
                    "× none": "–" if not ref else f"{r['steady_mb_per_s'] / ref:.2f}",
                    "× ram-limit": f"{r['ratio_to_ram_limit']:.2f}",
                    "missing/dup": f"{r['missing']}/{r['duplicated']}",
                }
            )
        c0 = codec[0]
        out += [
            "### Codec choice",
            "",
            "Why the default codec: `tab` (random floats) and `tabz` (the same, quantised to 1/8: compressible)"
            " converted to Zarr with each codec (in process), then read by `StreamDataset` in this process"
            f" ({c0['budget']} budget, batch 256, {c0['threads']} threads, window {c0['window_units']:.0f} units);"
            f" steady = median of epochs 2-{c0['epochs_timed'] + 1} (epoch 1 also pays page faults on fresh"
            " window buffers). Compression ratio = decoded bytes / stored unit bytes; ram-limit = the arrays in"
            " RAM, one permutation and a gather per batch, measured in the same run.",
            "",
            _common.format_table(rows, list(rows[0].keys())),
            "",
        ]
    out += [
        f"Reproduce: `{first['command'].strip()}`",
        "",
        f"Machine: {m.get('cpu_count')} cores ({m.get('cpus_usable')} usable),"
        f" {m.get('memory_total', 0) / 2**30:.0f} GiB RAM, Python {m.get('python')}, numpy {m.get('numpy')},"
        f" pyarrow {m.get('pyarrow')}, zarr {m.get('zarr')}, torch {m.get('torch')}, streambatch"
        f" {m.get('streambatch')}"
        + (f"; memcpy {base['memcpy_gb_per_s']:.1f} GB/s" if base else "")
        + ".",
        "",
    ]
    if codec:
        default = base.get("default_codec", DEFAULT_CODEC)
        notes = []
        for kind in dict.fromkeys(r["dataset"] for r in codec):
            rs = [r for r in codec if r["dataset"] == kind]
            fastest = max(rs, key=lambda r: r["steady_mb_per_s"])
            smallest = max(rs, key=lambda r: r["compression_ratio"])
            notes.append(
                f"{kind}: fastest read {fastest['codec']}, smallest {smallest['codec']}"
                f" ({smallest['compression_ratio']:.2f}× at"
                f" {smallest['steady_mb_per_s'] / max(1e-9, fastest['steady_mb_per_s']):.2f}× the fastest read)"
            )
        out += [f"Codec choice (default `{default}`): " + "; ".join(notes) + ".", ""]
    if conv:
        plain = [r for r in conv if r["codec"] == "none" and r["shuffle"] is None]
        slow = [r["config"] for r in plain if r["ratio_to_copy"] < COPY_TARGET]
        over = [r["config"] for r in conv if not r["under_budget"]]
        line = [
            f"Targets: uncompressed output ≥ {COPY_TARGET}× the copy's MB/s: "
            + (f"holds for all {len(plain)}" if not slow else f"**fails** for {', '.join(slow)}")
            + "; peak RSS under `--memory`: "
            + (f"holds for all {len(conv)}" if not over else f"**fails** for {', '.join(over)}")
            + "."
        ]
        copies = [r["copy_mb_per_s"] for r in conv]
        line.append(f" The copy ran at {min(copies):,.0f}-{max(copies):,.0f} MB/s across this run's configurations"
                    " (each a median of 3), so each ratio also moves with its own copy's speed.")
        shuf = next((r for r in conv if r["shuffle"] is not None), None)
        plain_npy = next(
            (r for r in plain if r["input"] == "npy" and r["format"] == "zarr" and r["memory"] == "1GiB"), None
        )
        if shuf and plain_npy:
            line.append(
                f" The offline shuffle (`--shuffle {shuf['shuffle']}`, two passes) costs"
                f" {shuf['seconds'] / plain_npy['seconds']:.1f}× the time of the plain npy -> zarr conversion."
            )
        out += ["".join(line), ""]
    return "\n".join(out) + _render_clusters(records)


def _render_clusters(records: list[dict[str, Any]]) -> str:
    """The Dask table (``--scheduler``): one row a scheduler, a block a machine's CPU count."""
    rows = [r for r in records if r.get("kind") == "cluster"]
    if not rows:
        return ""
    out = ["", "### Convert on a Dask cluster (`--scheduler local:N`)", "",
           "npy -> zarr (zstd, CPU-bound), `convert(..., client=)` on a LocalCluster of N single-threaded worker"
           " processes; the clusters take turns within each repeat. Target: 2 workers ≥ 1.6× one worker on 2 cores,"
           " 16 workers ≥ 8× one on 16.", "",
           "| cores | scheduler | seconds (median) | all | input MB/s | × the first | load average | command |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        load = ", ".join(f"{x:.1f}" for x in r.get("load_avg", ())) or "–"
        out.append(f"| {r.get('machine', {}).get('cpu_count', '?')} | `{r['scheduler']}` | {r['seconds']:.2f} |"
                   f" {', '.join(f'{t:.2f}' for t in r['seconds_all'])} | {r['input_mb_per_s']:.0f} |"
                   f" {r['speedup_to_first']:.2f}× | {load} | `{r['command']}` |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
