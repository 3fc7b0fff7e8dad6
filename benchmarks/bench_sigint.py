#!/usr/bin/env python
"""Ctrl-C mid-epoch: how long until every thread and worker process is gone, and until exit.

A child iterates a small dataset forever, in-process or through a DataLoader with workers,
printing a line per batch; after a few batches the parent sends SIGINT to the child's process
group, as Ctrl-C at a terminal does.  The child catches ``KeyboardInterrupt``, waits until no
streambatch thread and no live child process is left (at most ``--wait`` seconds), prints
what is left and exits (0 when nothing is).  ``stopped``: seconds from the signal to that
line; ``exited``: to the child's exit (which includes unloading torch).

``tests/test_faults.py`` runs ``run_sigint`` once per worker count and checks what is left
behind; the times are measured here, not in the tests.  Records go to
``benchmarks/records/sigint.jsonl``.

Usage::

    python benchmarks/bench_sigint.py --runs 20
    python benchmarks/bench_sigint.py --workers 2 --lose   # workers that lose their KeyboardInterrupt
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

# A child started in the background by a non-interactive shell inherits SIGINT as ignored;
# a user at a terminal always has Python's handler, which the first line restores.
CHILD = """\
import signal; signal.signal(signal.SIGINT, signal.default_int_handler)
import sys, threading, time
import psutil, torch
import streambatch
path, workers, wait, lose = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "lose"

def losing(batch):  # a worker's main thread that loses its KeyboardInterrupt, as a finaliser does
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        try:
            time.sleep(0.05)
        except KeyboardInterrupt:
            print("lost a KeyboardInterrupt", file=sys.stderr, flush=True)
    return batch

ds = streambatch.StreamDataset(path, batch_size=16, memory_budget=200_000, threads=2,
                               transform=lambda b: (time.sleep(0.01), b)[1])
loader = ds if workers == 0 else torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers,
                                                             **({"collate_fn": losing} if lose else {}))

def left_behind():
    threads = [t.name for t in threading.enumerate() if t.name.startswith("streambatch-")]
    kids = []  # workers got the SIGINT too; exited ones are zombies until reaped
    for k in psutil.Process().children(recursive=True):
        try:
            if k.status() != psutil.STATUS_ZOMBIE:
                kids.append(k.pid)
        except psutil.NoSuchProcess:
            pass
    return threads, kids

try:
    while True:
        # lose: the DataLoader's iterator is held through the except block below (as a notebook's
        # last traceback holds it), so that its workers never get shut down by the main process
        it = iter(loader)
        for b in it:
            print("batch", flush=True)
except KeyboardInterrupt:
    if not lose:
        it = None
    deadline = time.monotonic() + wait
    threads, kids = left_behind()
    while (threads or kids) and time.monotonic() < deadline:
        time.sleep(0.02)
        threads, kids = left_behind()
    print("interrupted", threads, len(kids), flush=True)
    sys.exit(3 if threads or kids else 0)
"""


def run_sigint(dataset: Path, workers: int, tmpdir: Path, *, batches: int = 3, wait: float = 60.0,
               timeout: float = 120.0, lose: bool = False) -> dict[str, Any]:
    """Start the child on ``dataset`` with ``workers`` DataLoader workers (0: in-process) and
    temporary folder ``tmpdir``, send SIGINT to its process group after ``batches`` batches.
    ``lose``: the workers' main threads spend most of their time in a ``collate_fn`` that catches
    and drops ``KeyboardInterrupt``, as CPython does with one raised in a finaliser.

    Returns ``stopped`` and ``exited`` (seconds after the signal; ``inf`` where the child was
    still serving batches, or still running, ``timeout`` seconds after it), ``returncode``,
    ``out`` (the child's output from its line after the signal on) and ``err`` (its stderr).

    Raises:
        RuntimeError: the child failed before it served ``batches`` batches.
    """
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(dataset), str(workers), str(wait),
                             "lose" if lose else "keep"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    assert proc.stdout is not None
    stopped = exited = float("inf")
    line = out = err = ""
    try:
        for _ in range(batches):
            line = proc.stdout.readline()
            if line.strip() != "batch":
                proc.kill()
                raise RuntimeError(f"child failed before the signal: {line!r} {proc.communicate()[1][-3000:]}")
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C does: the whole process group, workers included
        line = proc.stdout.readline()
        while line.strip() == "batch" and time.monotonic() - t0 < timeout:
            line = proc.stdout.readline()
        if line.strip() != "batch":
            stopped = time.monotonic() - t0
            out, err = proc.communicate(timeout=max(1.0, timeout - stopped))
            exited = time.monotonic() - t0
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
    return {"stopped": stopped, "exited": exited, "returncode": proc.returncode, "out": line + out, "err": err}


def _dataset(folder: Path) -> Path:
    import numpy as np

    import streambatch

    src = folder / "src"
    src.mkdir()
    np.save(src / "x.npy", np.random.default_rng(0).standard_normal((3001, 4)).astype(np.float32))
    np.save(src / "y.npy", np.arange(3001, dtype=np.int64) % 10)
    return streambatch.convert(src, folder / "ds", unit_rows=50, shard_bytes=16 * 1024, progress=False).root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10, help="runs per worker count")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--wait", type=float, default=60.0, help="the child's limit for its threads and workers to go")
    p.add_argument("--lose", action="store_true",
                   help="workers whose main thread loses its KeyboardInterrupt (as in a finaliser)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        dataset = _dataset(Path(d))
        for workers in args.workers:
            runs = []
            for _ in range(args.runs):
                tmp = Path(tempfile.mkdtemp(dir=d))
                r = run_sigint(dataset, workers, tmp, wait=args.wait, lose=args.lose)
                runs.append(r)
                print(f"workers={workers}: stopped {r['stopped']:.2f} s, exited {r['exited']:.2f} s, "
                      f"exit code {r['returncode']}, {r['out'].strip().splitlines()[0] if r['out'].strip() else ''}",
                      flush=True)
            stopped = sorted(r["stopped"] for r in runs)
            exited = sorted(r["exited"] for r in runs)
            rec = {"workers": workers, "lose": args.lose, "runs": len(runs), "stopped_median_s": statistics.median(stopped),
                   "stopped_max_s": stopped[-1], "exited_median_s": statistics.median(exited),
                   "exited_max_s": exited[-1], "clean": sum(r["returncode"] == 0 for r in runs)}
            print(rec, flush=True)
            _common.write_record("sigint", rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
