"""Maintainer helper: compare ways of reading uncompressed Zarr units from a warm page cache.

    python tools/profile_read_paths.py data/tab.zarr [--column x] [--units 1500] [--window-mib 100]

Reads the same random units with ``os.preadv`` into a reused buffer, with a per-unit
``mmap`` copy, and with a whole-file mapping (with and without ``MADV_DONTNEED`` after each
copy, which keeps the process's RSS from growing with the file), three rounds each, and
prints GB/s.  It decided the reader's read path (pread: see streambatch/storage/zarr_store.py).

The loader does not read into one reused buffer: it fills a window buffer of about a third
of its budget, unit after unit, so the copy's destination is not in the CPU cache.  Two more
rows show that case: ``pread`` into successive slices of a ``--window-mib`` buffer, and
``pread`` into the reused buffer followed by numpy's copy into the window.  On the 2-core
development VM (AMD EPYC) the kernel's copy into the cold window ran at 1.3-2.8 GB/s against
4.1-4.8 GB/s for the staged pair in this script, yet staging inside the Zarr reader made img
epochs slower (no consumer, median of 4 epochs, 3 alternating runs each: 68-70k against
94-105k samples/s at about the same CPU time per epoch), so the reader still reads into place.
Note: read the files once first; a machine that pages out idle page cache (DAMON reclaim)
turns a "warm" read into a disk read after a minute or so.
"""

from __future__ import annotations

import argparse
import mmap
import os
import time

import numpy as np

import streambatch as sb


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("--column", default="x")
    ap.add_argument("--units", type=int, default=1500)
    ap.add_argument("--window-mib", type=float, default=100.0, help="window buffer size for the cold-destination rows")
    args = ap.parse_args()
    m = sb.load_manifest(args.dataset)
    loc = m.layout["columns"][args.column]
    col = m.column(args.column)
    fds = {i: os.open(m.path_of(i), os.O_RDONLY) for i in set(loc["file"].tolist())}
    maps: dict[int, mmap.mmap] = {}
    buf = np.zeros(m.layout["unit_rows"] * col.row_nbytes, np.uint8)
    bm = memoryview(buf)
    units = np.random.default_rng(0).permutation(m.n_units)[: args.units]
    window = np.zeros(max(len(buf), int(args.window_mib * 2**20)) // len(buf) * len(buf), np.uint8)

    def pread() -> None:
        for u in units:
            os.preadv(fds[int(loc["file"][u])], [bm], int(loc["offset"][u]))

    def into_window(staged: bool) -> None:
        pos = 0
        for u in units:
            if pos + len(buf) > len(window):
                pos = 0
            fd, off = fds[int(loc["file"][u])], int(loc["offset"][u])
            if staged:
                os.preadv(fd, [bm], off)
                window[pos:pos + len(buf)] = buf
            else:
                os.preadv(fd, [memoryview(window[pos:pos + len(buf)])], off)
            pos += len(buf)

    def mmap_per_unit() -> None:
        for u in units:
            off = int(loc["offset"][u])
            start = off - off % mmap.ALLOCATIONGRANULARITY
            mp = mmap.mmap(fds[int(loc["file"][u])], off + len(bm) - start, prot=mmap.PROT_READ, offset=start)
            v = memoryview(mp)
            bm[:] = v[off - start:off - start + len(bm)]
            v.release()
            mp.close()

    def whole_map(dontneed: bool) -> None:
        for u in units:
            fi, off = int(loc["file"][u]), int(loc["offset"][u])
            mp = maps.setdefault(fi, mmap.mmap(fds[fi], 0, prot=mmap.PROT_READ))
            v = memoryview(mp)
            bm[:] = v[off:off + len(bm)]
            v.release()
            if dontneed:
                start = off - off % mmap.PAGESIZE
                mp.madvise(mmap.MADV_DONTNEED, start, (off + len(bm) - start) // mmap.PAGESIZE * mmap.PAGESIZE)

    ways = {"pread": pread, "pread into window": lambda: into_window(False),
            "pread + copy into window": lambda: into_window(True), "mmap per unit": mmap_per_unit,
            "whole-file map + DONTNEED": lambda: whole_map(True), "whole-file map": lambda: whole_map(False)}
    pread()  # warm the page cache
    for name, fn in ways.items():
        rates = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            rates.append(len(units) * len(bm) / 1e9 / (time.perf_counter() - t))
        print(f"{name:<28} " + " ".join(f"{r:5.2f}" for r in rates) + " GB/s")


if __name__ == "__main__":
    main()
