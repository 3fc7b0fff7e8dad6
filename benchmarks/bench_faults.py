#!/usr/bin/env python
"""Faults: what verify-on-read costs, and a soak of kills and restarts where nothing is lost.

Three measurements, each written as a record with ``_common.write_record("faults", ...)``:

- ``verify``: one shuffled epoch with ``verify=True`` and with ``verify=False``, alternated,
  median of ``--repeats``, for Zarr (none, lz4) and Parquet (none): the throughput ratio
  decides the loader's default (``StreamDataset(verify=True)``).
- ``soak``: a training subprocess iterates the dataset in-process and commits, after every
  batch, one line ``{"epoch", "state": ds.state_dict(), "ids"}`` to an append-only log
  (written in one ``write``, flushed and fsynced); the parent SIGKILLs it at random times and
  restarts it, and the child resumes from the last complete line (a torn last line is cut
  off).  A batch counts as delivered when its line is committed, so a kill between "batch
  handed out" and "line written" re-serves exactly that batch after the restart.  Every epoch
  must hold each sample exactly once and in the order of an uninterrupted run.
- ``rss``: the same child, never killed, 20 epochs; RSS after each epoch (after
  ``gc.collect()``); its growth (the median of the last 5 epochs' RSS less the median of
  epochs 2-6: a single epoch's RSS moves by up to 2.7 MiB either way with the allocator, so
  two single epochs compared would be noise) must stay under ``RSS_GROWTH_BOUND``.

Usage::

    python benchmarks/bench_faults.py            # full size: tab dataset, 20-epoch soak
    python benchmarks/bench_faults.py --quick    # tiny, under a minute

``tests/test_faults.py`` runs a small soak and the RSS check through ``run_soak`` and
``run_rss`` in the default test run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RSS_GROWTH_BOUND = 4 * 2**20  # bytes of RSS growth allowed from epochs 2-6 to the last 5 (medians)
FAULT_TABLE = REPO / "docs" / "FAULTS.md"


# --------------------------------------------------------------------------- datasets


def make_soak_dataset(folder: Path, rows: int, width: int = 8, fmt: str = "zarr", unit_rows: int = 50) -> Path:
    """A converted dataset of ``rows`` rows (id, x float32[width], y) at ``folder``/ds (made once)."""
    import streambatch

    dst = folder / f"ds-{fmt}"
    if not (dst / "_streambatch.json").exists():
        src = folder / "src"
        src.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        np.save(src / "id.npy", np.arange(rows, dtype=np.int64))
        np.save(src / "x.npy", rng.standard_normal((rows, width)).astype(np.float32))
        np.save(src / "y.npy", (np.arange(rows, dtype=np.int64) * 10) // rows)
        streambatch.convert(src, dst, format=fmt, unit_rows=unit_rows, overwrite=True, progress=False)
    return dst


# --------------------------------------------------------------------------- the training child


def read_log(path: Path) -> list[dict[str, Any]]:
    """The committed records of a soak log; a torn last line (killed mid-write) is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    return [json.loads(line) for line in data[:end].splitlines() if line]


def _status(cfg: dict[str, Any], line: str) -> None:
    with open(cfg["status"], "a") as f:
        f.write(line + "\n")


def child_main(cfg: dict[str, Any]) -> int:
    """The training process: resume from the log, commit every batch, report RSS per epoch.

    Progress goes to the ``cfg["status"]`` file: ``ready TOKEN`` once resumed, then one JSON
    line ``{"epoch", "rss"}`` per finished epoch.
    """
    try:
        return _child(cfg)
    except BaseException:
        import traceback

        _status(cfg, "error " + json.dumps(traceback.format_exc()))
        raise


def _child(cfg: dict[str, Any]) -> int:
    import psutil

    import streambatch

    log = Path(cfg["log"])
    records = read_log(log)
    ds = streambatch.StreamDataset(cfg["dataset"], batch_size=cfg["batch_size"], memory_budget=cfg["budget"],
                                   seed=cfg["seed"], return_index=True, threads=cfg.get("threads", 2))
    if records:
        ds.load_state_dict(records[-1]["state"])
        epoch = int(records[-1]["state"]["epoch"])
    else:
        epoch = 0
        ds.set_epoch(0)
    _status(cfg, f"ready {cfg['token']}")
    proc = psutil.Process()
    with open(log, "ab") as f:
        while epoch < cfg["epochs"]:
            for batch in ds:
                ids = batch["_row"].tolist()
                line = json.dumps({"epoch": epoch, "state": ds.state_dict(), "ids": ids}).encode() + b"\n"
                f.write(line)  # one write: a kill leaves the line whole or torn, never half-counted
                f.flush()
                if cfg.get("fsync", True):
                    os.fsync(f.fileno())
                if cfg.get("sleep"):
                    time.sleep(cfg["sleep"])
            gc.collect()
            _status(cfg, json.dumps({"epoch": epoch, "rss": proc.memory_info().rss}))
            epoch += 1
            ds.set_epoch(epoch)
    return 0


def _context() -> Any:
    """A forkserver that has imported torch and streambatch once: a restart takes milliseconds, not seconds."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "psutil", "streambatch.dataset", "bench_faults"])
    return ctx


def _spawn(cfg: dict[str, Any]) -> Any:
    p = _context().Process(target=child_main, args=(cfg,), name="streambatch-soak-child")
    p.start()
    return p


def _wait_ready(proc: Any, cfg: dict[str, Any], timeout: float = 120.0) -> None:
    """Poll the status file until the child reports ``ready`` (or dies)."""
    want = f"ready {cfg['token']}"
    deadline = time.monotonic() + timeout
    path = Path(cfg["status"])
    while time.monotonic() < deadline and proc.is_alive():
        if path.exists() and want in path.read_text().splitlines():
            return
        time.sleep(0.002)


def _wait_commits(proc: Any, log: Path, n: int, timeout: float = 120.0) -> None:
    """Wait until the child has committed ``n`` more lines to ``log`` than now (or dies)."""
    def lines() -> int:
        return log.read_bytes().count(b"\n") if log.exists() else 0  # read only: the child may be writing

    want = lines() + n
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.is_alive() and lines() < want:
        time.sleep(0.002)


def _status_lines(cfg: dict[str, Any]) -> list[str]:
    path = Path(cfg["status"])
    return path.read_text().splitlines() if path.exists() else []


def _failure(cfg: dict[str, Any]) -> str:
    errors = [json.loads(line[6:]) for line in _status_lines(cfg) if line.startswith("error ")]
    return errors[-1][-3000:] if errors else "(no traceback)"


def reference_orders(dataset: Path, epochs: int, batch_size: int, budget: int, seed: int) -> list[np.ndarray]:
    """The ids of each epoch served by an uninterrupted in-process run."""
    import streambatch

    ds = streambatch.StreamDataset(dataset, batch_size=batch_size, memory_budget=budget, seed=seed,
                                   return_index=True, threads=2)
    out = []
    for e in range(epochs):
        ds.set_epoch(e)
        out.append(np.concatenate([b["_row"].numpy() for b in ds]))
    return out


def run_soak(dataset: Path, workdir: Path, *, epochs: int, kills: int, batch_size: int = 64, budget: int = 256 * 1024,
             sleep: float = 0.005, seed: int = 0, kill_window: tuple[float, float] = (0.0, 1.0),
             kill_commits: tuple[int, int] | None = None) -> dict[str, Any]:
    """Run the child, SIGKILL it ``kills`` times at random points, restart it; check every epoch.

    Each kill lands ``kill_window`` seconds (uniform) after the child has resumed, or, one time
    in four, at a random point while it is still starting up.  With ``kill_commits=(a, b)``
    the kills after resuming land instead once the child has committed a random number in
    ``[a, b]`` of batches since, so where they land does not depend on the machine's speed.

    Returns ``kills``, ``restarts``, ``kills_mid_epoch`` (kills that landed after the first
    commit of an epoch and before its last), ``seconds`` and ``epochs``: for each epoch
    ``missing``, ``duplicated``, ``foreign`` (all 0 when nothing is lost or repeated) and
    ``same_order`` (the served ids equal an uninterrupted run's).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "soak.log"
    log.unlink(missing_ok=True)
    (workdir / "status").unlink(missing_ok=True)
    cfg: dict[str, Any] = {"dataset": str(dataset), "log": str(log), "status": str(workdir / "status"),
                           "epochs": epochs, "batch_size": batch_size, "budget": budget, "seed": seed, "sleep": sleep}
    rng = random.Random(seed)
    done_kills = restarts = mid = 0
    t0 = time.monotonic()
    per_epoch = _epoch_batches(dataset, batch_size)
    committed = 0
    while True:
        cfg["token"] = restarts
        proc = _spawn(cfg)
        try:
            if done_kills < kills:
                if rng.random() < 0.25:  # now and then, kill it while it starts up
                    deadline = time.monotonic() + rng.uniform(0.0, 0.05)
                elif kill_commits is None:  # mostly mid-epoch: a random time after it has resumed
                    _wait_ready(proc, cfg)
                    deadline = time.monotonic() + rng.uniform(*kill_window)
                else:  # or after a random number of batches since it resumed
                    _wait_ready(proc, cfg)
                    _wait_commits(proc, log, rng.randint(*kill_commits))
                    deadline = time.monotonic()
                while time.monotonic() < deadline and proc.is_alive():
                    time.sleep(0.002)
                if proc.is_alive():
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.join(30)
                    done_kills += 1
                    restarts += 1
                    recs = read_log(log)
                    # mid-epoch: this run committed batches and stopped inside an epoch
                    if len(recs) > committed and 0 < int(recs[-1]["state"]["batches"]) < per_epoch:
                        mid += 1
                    committed = len(recs)
                    continue
            proc.join(600)
        finally:
            if proc.is_alive():
                proc.kill()
                proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"soak child failed (exit code {proc.exitcode}): {_failure(cfg)}")
        break
    seconds = time.monotonic() - t0
    refs = reference_orders(dataset, epochs, batch_size, budget, seed)
    records = read_log(log)
    checks = []
    n = int(json.loads((dataset / "_streambatch.json").read_text())["rows"])
    for e in range(epochs):
        ids = np.asarray([i for r in records if r["epoch"] == e for i in r["ids"]], dtype=np.int64)
        c: dict[str, Any] = _common.check_complete(ids, n)
        c["same_order"] = bool(np.array_equal(ids, refs[e]))
        checks.append(c)
    return {"kills": done_kills, "restarts": restarts, "kills_mid_epoch": mid, "seconds": seconds, "epochs": checks,
            "rows": n, "batch_size": batch_size, "budget": budget}


def _epoch_batches(dataset: Path, batch_size: int) -> int:
    rows = int(json.loads((dataset / "_streambatch.json").read_text())["rows"])
    return -(-rows // batch_size)


def run_rss(dataset: Path, *, epochs: int = 20, batch_size: int = 256, budget: int = 4 * 2**20) -> dict[str, Any]:
    """Run the child unkilled for ``epochs`` epochs (no fsync, no sleep); RSS after each epoch."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        cfg = {"dataset": str(dataset), "log": str(Path(d) / "rss.log"), "status": str(Path(d) / "status"),
               "epochs": epochs, "batch_size": batch_size, "budget": budget, "seed": 0, "sleep": 0, "fsync": False,
               "token": 0}
        t0 = time.monotonic()
        proc = _spawn(cfg)
        proc.join(600)
        if proc.is_alive():
            proc.kill()
            proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"rss child failed (exit code {proc.exitcode}): {_failure(cfg)}")
        rss = [json.loads(line)["rss"] for line in _status_lines(cfg) if line.startswith("{")]
        records = read_log(Path(cfg["log"]))
    n = int(json.loads((dataset / "_streambatch.json").read_text())["rows"])
    complete = [_common.check_complete(np.asarray([i for r in records if r["epoch"] == e for i in r["ids"]]), n)
                for e in range(epochs)]
    return {"rss": rss, "seconds": time.monotonic() - t0, "complete": complete, "rows": n,
            "growth_2_to_last": rss_growth(rss)}


def rss_growth(rss: list[int]) -> float:
    """Median RSS of the last 5 epochs less that of epochs 2-6 (epoch 1 warms up): a leak of
    more than ``RSS_GROWTH_BOUND`` over the run shows; the allocator's moves of a single epoch's
    RSS (up to 2.7 MiB either way at a 2 MiB budget) do not."""
    if len(rss) < 2:
        return 0.0
    head, tail = rss[1:6], rss[max(1, len(rss) - 5):]
    return float(statistics.median(tail) - statistics.median(head))


# --------------------------------------------------------------------------- verify-on-read cost


def measure_verify(dataset: Path, repeats: int, budget: int) -> dict[str, Any]:
    """Epoch throughput with verify on and off, alternated; medians and their ratio."""
    import streambatch

    rates: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeats):
        for verify in (False, True):
            ds = streambatch.StreamDataset(dataset, batch_size=256, memory_budget=budget, verify=verify)
            r = _common.consume(ds)
            rates[verify].append(r["samples"] / r["seconds"])
    on, off = statistics.median(rates[True]), statistics.median(rates[False])
    return {"samples_per_s_verify": on, "samples_per_s_plain": off, "ratio": on / off,
            "all_verify": rates[True], "all_plain": rates[False]}


# --------------------------------------------------------------------------- report


def fault_table() -> str:
    """The fault table from docs/FAULTS.md (its first markdown table)."""
    if not FAULT_TABLE.exists():
        return "(docs/FAULTS.md is missing)"
    lines = FAULT_TABLE.read_text().splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("| fault")), None)
    if start is None:
        return "(no table in docs/FAULTS.md)"
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[start:end])


def render(records: list[dict[str, Any]]) -> str:
    """The markdown section: verify cost, the soak, RSS, and the fault table."""
    verify = [r for r in records if r.get("kind") == "verify"]
    soak = [r for r in records if r.get("kind") == "soak"]
    rss = [r for r in records if r.get("kind") == "rss"]
    parts = ["## Faults: verify cost, kill-and-restart soak, fault table\n",
             "Does checking every unit's checksum on every read cost enough to leave it off, and does a "
             "training process killed at random points and resumed from its last saved state lose or repeat "
             "any sample?\n"]
    if verify:
        rows = [{"format": r["format"], "codec": r["codec"], "rows": r["rows"],
                 "plain samples/s": r["samples_per_s_plain"], "verify samples/s": r["samples_per_s_verify"],
                 "verify / plain": r["ratio"]} for r in verify]
        parts.append(_common.format_table(rows, list(rows[0])) + "\n")
    if soak:
        s = soak[0]
        ok = all(e["missing"] == 0 and e["duplicated"] == 0 and e["same_order"] for e in s["epochs"])
        parts.append(f"Soak: {len(s['epochs'])} epochs of {s['rows']:,} rows, {s['kills']} SIGKILLs "
                     f"({s['kills_mid_epoch']} mid-epoch) and restarts in {s['seconds']:.0f} s: every epoch "
                     f"{'served each sample exactly once, in the uninterrupted order' if ok else 'FAILED'}.\n")
    if rss:
        r = rss[0]
        mib = [x / 2**20 for x in r["rss"]]
        parts.append(f"RSS over {len(mib)} unkilled epochs: epoch 2 {mib[1]:.1f} MiB, epoch {len(mib)} "
                     f"{mib[-1]:.1f} MiB, growth {r['growth_2_to_last'] / 2**20:+.2f} MiB "
                     f"(bound {RSS_GROWTH_BOUND / 2**20:.0f} MiB).\n")
    targets = []
    if verify:
        worst = min(r["ratio"] for r in verify)
        targets.append(f"verify costs at most {100 * (1 - worst):.0f}% of throughput "
                       f"({'holds' if worst >= 0.8 else 'fails'}: target at most 20%, the price of having it on "
                       "by default)")
    if soak:
        targets.append("nothing lost or repeated under kills: "
                       + ("holds" if all(e["missing"] == 0 and e["duplicated"] == 0 and e["same_order"]
                                         for e in soak[0]["epochs"]) else "FAILS"))
    if rss:
        targets.append("RSS flat from epoch 2: " + ("holds" if rss[0]["growth_2_to_last"] <= RSS_GROWTH_BOUND
                                                    else "FAILS"))
    if targets:
        parts.append("Targets: " + "; ".join(targets) + ".\n")
    first = records[0]
    m = first.get("machine", {})
    parts.append(f"Command: `{first.get('command')}`{' (quick)' if first.get('quick') else ''}. Machine: "
                 f"{m.get('cpus_usable')} usable cores, Python {m.get('python')}, numpy {m.get('numpy')}, "
                 f"pyarrow {m.get('pyarrow')}, zarr {m.get('zarr')}, torch {m.get('torch')}.\n")
    parts.append("What each fault looks like to the user, and what is lost (docs/FAULTS.md):\n")
    parts.append(fault_table() + "\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO / "data")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=None, help="repeats per measurement (3; 5 with --quick)")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 5 if args.quick else 3  # quick epochs are short and noisier

    import streambatch

    sys.path.insert(0, str(REPO / "tools"))
    from make_datasets import make_dataset

    run_id = time.strftime("%Y%m%dT%H%M%S")
    command = "python benchmarks/bench_faults.py" + (" --quick" if args.quick else "")
    base: dict[str, Any] = {"run_id": run_id, "command": command, "quick": args.quick}
    data = args.data / ("faults-quick" if args.quick else "faults")
    rows = 100_000 if args.quick else None
    src = data / "tab"
    if not src.exists():
        make_dataset("tab", src, rows=rows)
    budget = 16 * 2**20 if args.quick else 256 * 2**20
    for fmt, codec in _common.layouts():
        dst = data / f"tab-{fmt}-{codec}"
        if not (dst / "_streambatch.json").exists():
            streambatch.convert(src, dst, format=fmt, codec=codec, label="y", overwrite=True, progress=False)
        m = streambatch.load_manifest(dst)
        info = streambatch.StreamDataset(dst, batch_size=256, memory_budget=budget).describe()
        r = measure_verify(dst, args.repeats, budget)
        rec = {**base, "kind": "verify", "dataset": "tab", "format": fmt, "codec": codec, "rows": m.rows,
               "unit_rows": int(m.unit_rows.max()), "shard_bytes": m.options.get("shard_bytes"),
               "checksum": m.layout.get("checksum", "crc32"), "budget": budget, "batch_size": 256,
               "threads": info["threads"], "window_rows": info["window_rows"], "cache": "warm",
               "repeats": args.repeats, **r}
        _common.write_record("faults", rec)
        print(f"verify {fmt}/{codec}: {r['samples_per_s_verify']:,.0f} vs {r['samples_per_s_plain']:,.0f} samples/s "
              f"-> ratio {r['ratio']:.3f}", flush=True)

    soak_rows, epochs, kills = (3000, 3, 4) if args.quick else (100_000, 20, 40)
    ds = make_soak_dataset(data / "soak", rows=soak_rows, width=32)
    s = run_soak(ds, data / "soak-run", epochs=epochs, kills=kills, batch_size=64,
                 sleep=0.01 if args.quick else 0.001, seed=1, kill_window=(0.0, 0.6) if args.quick else (0.0, 10.0))
    _common.write_record("faults", {**base, "kind": "soak", **s})
    print(f"soak: {s['kills']} kills ({s['kills_mid_epoch']} mid-epoch), epochs ok: "
          f"{[e['missing'] == 0 and e['duplicated'] == 0 and e['same_order'] for e in s['epochs']]}", flush=True)

    rss_rows = 20_000 if args.quick else 400_000
    ds = make_soak_dataset(data / "rss", rows=rss_rows, width=64)
    r = run_rss(ds, epochs=20, batch_size=256, budget=2 * 2**20 if args.quick else 32 * 2**20)
    _common.write_record("faults", {**base, "kind": "rss", **r})
    print(f"rss: epoch 2 {r['rss'][1] / 2**20:.1f} MiB -> epoch 20 {r['rss'][-1] / 2**20:.1f} MiB "
          f"(growth {r['growth_2_to_last'] / 2**20:+.2f} MiB)", flush=True)

    import report

    report.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
