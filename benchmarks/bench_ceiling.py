#!/usr/bin/env python
"""Ceiling benchmark: the best possible path of the loader's design, measured in isolation.

Before a speed target is chased, what could *any* implementation of the current design reach on
this machine?  For ``tab`` (400,000 rows) and ``img`` (20,000 rows) from ``tools/make_datasets.py``,
converted to Zarr with codec none, warm page cache, batch 256, a memory budget of a quarter of
the data, and a consumer that only touches each batch (``_common.consume(touch=True)``: one
element of every tensor, ids kept for the completeness check), this script measures in one run,
alternating the paths within every repeat:

* ``gather``: the in-RAM gather (``_common.ram_limit``: ``x[perm[i:i+B]]`` per column);
* ``units 1T``: one thread, no Python per row: whole units (in a random order) read with one
  ``os.preadv`` per unit and column into a window buffer of half the budget, then batches
  ``np.take``-n from the window in a random order of its rows;
* ``pieces 1T``: the same reading shuffle pieces of the size ``StreamDataset.describe()`` chooses
  (one ``preadv`` per piece and column, a window's pieces in storage order);
* ``units 2T`` / ``pieces 2T``: the same with 2 threads, one reading the next window while the
  other gathers (two windows of half the budget: the budget);
* ``mapped pieces 1T`` / ``2T``: a one-copy design: the same windows of pieces, each batch
  gathered (numpy fancy indexing) straight from the shard files memory-mapped read-only (an
  uncompressed shard's units lie back to back, so a file is an array of rows), the pages a window
  touched unmapped after it (``MADV_DONTNEED``: RSS stays near a window); 2T: two threads each
  gathering every other batch;
* ``mapped C 1T`` / ``2T``: the same with each group of batches (about a megabyte) copied from the
  maps by one C call per column, the GIL released (``_kernels.copy_from``).  The mapped paths
  record the file pages mapped at each window's end (``RssFile``, column "mapped MiB"): the
  kernel's fault-around maps up to 64 KiB of cached neighbours per fault, so a window of small
  pieces maps most of the file, not its own pages;
* ``direct rows 1T`` / ``2T``: one copy without mappings: columns of rows of at least
  ``DIRECT_BYTES`` read row by row straight into each group of batches (a ``pread`` per row, one C
  call per group, the GIL released), the small columns into a window buffer by pieces (one C
  call per column and window); 2T: two threads each serving every other group;
* ``crc32c``: CRC-32C (``streambatch.io.checksum``, as the loader verifies) of every unit and
  column, the bytes already in RAM: the price of ``verify``;
* ``streambatch``: the loader itself, default settings and ``piece_rows=0`` (whole units), a
  warm-up epoch first;
* ``DataLoader IPC w2``: the ceiling of ``num_workers=2`` (issue 16): batches of the dataset's
  shapes made in the workers by one copy of a template (no reads, no gathers) and handed through
  ``DataLoader(num_workers=2, persistent_workers=True)``: what crossing the process boundary
  alone allows, as torch sends tensors (a shared-memory block made, passed and mapped per
  batch); ``DataLoader slots w2``: the same batches made in slots of shared memory that the main
  process maps once, as the loader's workers make theirs (``loader/handoff.py``);
  ``streambatch w2``: the loader through that same DataLoader.

Figures per path: samples/s, process CPU seconds (user+sys) per GB served, CPU / wall, and the
ratio to the in-RAM gather of the same repeat (median of the paired ratios).  Usage::

    python benchmarks/bench_ceiling.py [--data DIR] [--repeats 5] [--datasets tab,img] [--quick]

Datasets are made under ``DIR/ceiling/`` (default ``data/``) when missing.
"""

from __future__ import annotations

import mmap
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import DataLoader

from streambatch import _kernels as kernels
from streambatch.loader import handoff

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import bench_throughput as bt  # noqa: E402

NAME = "ceiling"
BATCH = 256
ROWS = {"tab": 400_000, "img": 20_000}
QUICK_ROWS = {"tab": 20_000, "img": 5_000}
# The issue's targets: speed (touching consumer, 2 cores) as a fraction of the in-RAM gather,
# and loader CPU per GB at most this multiple of the gather's.
SPEED_TARGET = 0.7
CPU_TARGET = 1.5


class Store:
    """The byte ranges of an uncompressed Zarr dataset: per column, each unit's file and offset."""

    def __init__(self, path: Path) -> None:
        import streambatch

        self.path = path
        self.m = streambatch.load_manifest(path)
        if self.m.storage != "zarr" or self.m.codec != "none":
            raise ValueError(f"{path}: the ceiling needs an uncompressed Zarr dataset")
        self.fds = [os.open(self.m.path_of(i), os.O_RDONLY) for i in range(len(self.m.files))]
        self.cols = [(c.name, c.np_dtype, tuple(c.shape), c.row_nbytes) for c in self.m.columns]
        lay = self.m.layout["columns"]
        self.file = {c[0]: np.asarray(lay[c[0]]["file"]) for c in self.cols}
        self.offset = {c[0]: np.asarray(lay[c[0]]["offset"]) for c in self.cols}
        self.row_nbytes = sum(c[3] for c in self.cols)

    def pieces(self, piece_rows: int, rng: np.random.Generator) -> NDArray[np.int64]:
        """``(unit, lo, hi)`` of every piece (whole units for 0), in a random order."""
        out = []
        for u, n in enumerate(self.m.unit_rows.tolist()):
            step = n if piece_rows <= 0 else piece_rows
            out += [(u, lo, min(n, lo + step)) for lo in range(0, n, step)]
        arr = np.asarray(out, dtype=np.int64)
        return arr[rng.permutation(len(arr))]

    def buffers(self, rows: int) -> dict[str, NDArray[Any]]:
        """One window buffer per column, touched once so that no page fault is timed."""
        return {name: np.ones((rows, *shape), dtype=dt) for name, dt, shape, _ in self.cols}

    def read(self, pieces: NDArray[np.int64], bufs: Mapping[str, NDArray[Any]]) -> int:
        """The pieces, in storage order, back to back into ``bufs``: one ``preadv`` per piece and
        column; the rows read."""
        order = pieces[np.lexsort((pieces[:, 1], pieces[:, 0]))].tolist()
        for name, _, _, rb in self.cols:
            flat = memoryview(bufs[name].reshape(-1).view(np.uint8))
            fds, fis, offs, at = self.fds, self.file[name], self.offset[name], 0
            for u, lo, hi in order:
                n = (hi - lo) * rb
                os.preadv(fds[fis[u]], [flat[at:at + n]], int(offs[u]) + lo * rb)
                at += n
        return int((pieces[:, 2] - pieces[:, 1]).sum())

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


def windows(pieces: NDArray[np.int64], window_rows: int) -> list[NDArray[np.int64]]:
    """The pieces cut into consecutive windows of about ``window_rows`` rows (a window ends with the
    piece that crosses a multiple of ``window_rows``: at most one piece more)."""
    ends = np.cumsum(pieces[:, 2] - pieces[:, 1])
    cuts = np.searchsorted(ends, np.arange(window_rows, int(ends[-1]), window_rows), side="right")
    return [w for w in np.split(pieces, cuts) if len(w)]


def gather(bufs: Mapping[str, NDArray[Any]], rows: int, rng: np.random.Generator) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of a window's first ``rows`` rows in a random order (``np.take`` per column)."""
    perm = rng.permutation(rows)
    for i in range(0, rows, BATCH):
        idx = perm[i:i + BATCH]
        yield {k: torch.from_numpy(np.take(b, idx, axis=0)) for k, b in bufs.items()}


def design_path(store: Store, piece_rows: int, window_rows: int, threads: int,
                sets: list[dict[str, NDArray[Any]]], seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """An epoch of the design's best path: read a window, gather it; with 2 threads a reader
    thread fills the other window buffer meanwhile."""
    rng = np.random.default_rng(seed)
    wins = windows(store.pieces(piece_rows, rng), window_rows)
    if threads == 1:
        for w in wins:
            yield from gather(sets[0], store.read(w, sets[0]), rng)
        return
    free: queue.Queue[dict[str, NDArray[Any]]] = queue.Queue()
    ready: queue.Queue[tuple[dict[str, NDArray[Any]], int]] = queue.Queue()
    for s in sets:
        free.put(s)

    def reader() -> None:
        for w in wins:
            s = free.get()
            ready.put((s, store.read(w, s)))

    t = threading.Thread(target=reader, name="ceiling-reader", daemon=True)
    t.start()
    for _ in wins:
        s, n = ready.get()
        yield from gather(s, n, rng)
        free.put(s)
    t.join()


def rss_file_mib() -> float:
    """This process's resident pages of mapped files (``RssFile`` of /proc/self/status), MiB; 0 where unknown."""
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) / 1024 for line in f if line.startswith("RssFile:")), 0.0)
    except OSError:
        return 0.0


def with_mapped_rss(mapped: "Mapped", run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run()``'s record with the peak of mapped file pages over its windows (``Mapped.drop``)."""
    mapped.peak_file_mib = 0.0
    res = run()
    res["peak_mapped_mib"] = mapped.peak_file_mib
    return res


class Mapped:
    """The same dataset's shard files memory-mapped read-only: an uncompressed shard's units lie
    back to back from byte 0, so each file is an array of one column's rows."""

    def __init__(self, store: Store) -> None:
        self.maps = [mmap.mmap(fd, 0, prot=mmap.PROT_READ) for fd in store.fds]
        self.peak_file_mib = 0.0
        self.starts = np.concatenate([[0], np.cumsum(store.m.unit_rows)]).astype(np.int64)
        self.cols = []  # (name, dtype, shape, file of each unit, first row of each unit in its file, {file: rows})
        for name, dt, shape, rb in store.cols:
            fis, offs = store.file[name], store.offset[name]
            rows = {}
            for f in np.unique(fis).tolist():
                n = int((offs[fis == f] // rb + store.m.unit_rows[fis == f]).max())
                rows[f] = np.frombuffer(self.maps[f], dt, n * int(np.prod(shape, dtype=np.int64)), 0).reshape(n, *shape)
            self.cols.append((name, dt, shape, fis, offs // rb, rows))
        # columns whose units lie in the same files at the same rows share one lookup
        self.group = [next(j for j, c in enumerate(self.cols) if np.array_equal(c[3], col[3])
                           and np.array_equal(c[4], col[4])) for col in self.cols]

    def locate(self, rows: NDArray[np.int64], u: NDArray[np.int64]) -> list[Any]:
        """Per column group: each row's file and its row within that file (``u``: each row's unit)."""
        return [(fis[u], first[u] + rows - self.starts[u]) if self.group[j] == j else None
                for j, (_, _, _, fis, first, _) in enumerate(self.cols)]

    def batch(self, where: list[Any], idx: NDArray[np.int64]) -> dict[str, torch.Tensor]:
        """The rows ``idx`` of a window (``where`` from :meth:`locate`) gathered from the maps: one copy."""
        out, picked = {}, {}
        for j, (name, dt, shape, _, _, rows) in enumerate(self.cols):
            g = self.group[j]
            if g not in picked:
                f, loc = where[g]
                fi, li = f[idx], loc[idx]
                picked[g] = (fi, li, {k: fi == k for k in rows} if len(rows) > 1 else None)
            fi, li, masks = picked[g]
            if masks is None:
                out[name] = torch.from_numpy(next(iter(rows.values()))[li])
                continue
            o = np.empty((len(idx), *shape), dt)
            for k, arr in rows.items():
                m = masks[k]
                o[m] = arr[li[m]]
            out[name] = torch.from_numpy(o)
        return out

    def locate_bytes(self, rows: NDArray[np.int64], u: NDArray[np.int64]) -> list[tuple[NDArray[np.int64], ...]]:
        """Per column: each row's file and the byte offset of the row in it (``u``: each row's unit)."""
        out = []
        for _, _, _, fis, first, rows_of in self.cols:
            rb = next(iter(rows_of.values()))[0].nbytes
            out.append((fis[u].astype(np.int64), (first[u] + rows - self.starts[u]) * rb))
        return out

    def batch_native(self, where: list[tuple[NDArray[np.int64], ...]], i: int, j: int) -> dict[str, torch.Tensor]:
        """Rows ``i:j`` (a group of batches) of a window (``where`` from :meth:`locate_bytes`) copied
        from the maps by one C call per column, the GIL released (``_kernels.copy_from``): one copy."""
        out = {}
        for (name, dt, shape, _, _, _), (fi, at) in zip(self.cols, where):
            o = np.empty((j - i, *shape), dt)
            rb = o[0].nbytes if j > i else 0
            if kernels.copy_from(self.maps, fi[i:j], at[i:j], np.full(j - i, rb, np.int64),
                                 o.reshape(-1).view(np.uint8), np.arange(0, (j - i) * rb, rb, dtype=np.int64)) >= 0:
                raise OSError(f"column {name!r}: a mapped file became shorter (SIGBUS)")
            out[name] = torch.from_numpy(o)
        return out

    def drop(self) -> None:
        """Unmap the pages touched so far (they stay in the page cache).  The file pages mapped just
        before (``RssFile``) are sampled first: ``peak_file_mib`` is what the budget would count."""
        self.peak_file_mib = max(self.peak_file_mib, rss_file_mib())
        for m in self.maps:
            m.madvise(mmap.MADV_DONTNEED)


def in_turn(parts: list[Callable[[], Iterator[Any]]], depth: int, name: str) -> Iterator[Any]:
    """The items of ``parts``, each iterated on a thread of its own (a queue of ``depth`` each),
    taken in turn from each until one ends: part ``t`` serves every ``len(parts)``-th item."""
    qs: list[queue.Queue[Any]] = [queue.Queue(depth) for _ in parts]

    def run(t: int) -> None:
        for item in parts[t]():
            qs[t].put(item)
        qs[t].put(None)

    ts = [threading.Thread(target=run, args=(t,), name=f"{name}-{t}", daemon=True) for t in range(len(parts))]
    for t in ts:
        t.start()
    k = 0
    while (item := qs[k % len(parts)].get()) is not None:
        yield item
        k += 1
    for t in ts:
        t.join()


def mapped_path(store: Store, mapped: Mapped, piece_rows: int, window_rows: int, threads: int,
                seed: int, native: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """An epoch of a one-copy design: the same windows of pieces, each batch gathered straight
    from the memory-mapped files (no window buffer); the pages a window touched are unmapped
    after it.  With 2 threads, each gathers every other batch.  ``native``: a C copy per column
    (:meth:`Mapped.batch_native`) instead of numpy gathers per file."""
    rng = np.random.default_rng(seed)
    plan = []
    for w in windows(store.pieces(piece_rows, rng), window_rows):
        first, lens = mapped.starts[w[:, 0]] + w[:, 1], w[:, 2] - w[:, 1]
        rows = np.repeat(first - (np.cumsum(lens) - lens), lens) + np.arange(int(lens.sum()))
        order = rng.permutation(len(rows))
        plan.append((rows[order], np.repeat(w[:, 0], lens)[order]))

    def batches(part: int, parts: int) -> Iterator[dict[str, torch.Tensor]]:
        k = 0
        for rows, units in plan:
            if native:  # a group of batches (about a megabyte, as the loader's tasks) per C call and column
                where = mapped.locate_bytes(rows, units)
                step = BATCH * max(1, (1 << 20) // (BATCH * store.row_nbytes))
                for i in range(0, len(rows), step):
                    if k % parts == part:
                        group = mapped.batch_native(where, i, min(i + step, len(rows)))
                        for a in range(0, min(step, len(rows) - i), BATCH):
                            yield {name: t[a:a + BATCH] for name, t in group.items()}
                    k += 1
            else:
                where = mapped.locate(rows, units)
                for i in range(0, len(rows), BATCH):
                    if k % parts == part:
                        yield mapped.batch(where, np.arange(i, min(i + BATCH, len(rows))))
                    k += 1
            if part == 0:
                mapped.drop()

    if threads == 1:
        yield from batches(0, 1)
        return
    yield from in_turn([lambda t=t: batches(t, threads) for t in range(threads)], 4, "ceiling-mapped")


DIRECT_BYTES = 4096  # direct_path: columns of rows at least this large are read row by row into the batch


def direct_path(store: Store, piece_rows: int, window_rows: int, threads: int,
                sets: list[dict[str, NDArray[Any]]], seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """An epoch of a one-copy design without mappings: the same windows of pieces; a column of large
    rows (``DIRECT_BYTES``) is read row by row straight into each group of batches (one C call of
    ``pread`` per row, the GIL released: ``_kernels.pread_ranges``), the small columns into a window
    buffer by pieces and gathered from it.  The page cache is the only place the large rows are
    between the file and the batch, and it is not the process's memory.  With 2 threads, each
    serves every other group of batches."""
    rng = np.random.default_rng(seed)
    big = [c for c in store.cols if c[3] >= DIRECT_BYTES]
    group = BATCH * max(1, (1 << 20) // (BATCH * store.row_nbytes))
    plan = []
    for w in windows(store.pieces(piece_rows, rng), window_rows):
        w = w[np.lexsort((w[:, 1], w[:, 0]))]  # storage order, as Store.read puts them in the buffer
        lens = w[:, 2] - w[:, 1]
        unit = np.repeat(w[:, 0], lens)
        row = np.repeat(w[:, 1] - (np.cumsum(lens) - lens), lens) + np.arange(int(lens.sum()))
        plan.append((w, unit, row, rng.permutation(len(unit))))

    def serve(part: int, parts: int, bufs: dict[str, NDArray[Any]]) -> Iterator[list[dict[str, torch.Tensor]]]:
        """Every ``parts``-th group of batches from ``part``, a list each (each thread reads every
        window's small columns into its own buffer: a few bytes a row)."""
        fds, k = np.asarray(store.fds, np.int64), 0
        for w, unit, row, perm in plan:
            for name, _, _, rb in store.cols:  # the small columns: one C call per column, a pread per piece
                sizes = (w[:, 2] - w[:, 1]) * rb
                if name in bufs and kernels.pread_ranges(
                        fds[store.file[name][w[:, 0]]], store.offset[name][w[:, 0]] + w[:, 1] * rb, sizes,
                        bufs[name].reshape(-1).view(np.uint8), np.cumsum(sizes) - sizes) >= 0:
                    raise OSError(f"{store.path}: column {name!r}: a short read")
            places = {name: (fds[store.file[name][unit]], store.offset[name][unit] + row * rb)
                      for name, _, _, rb in big}
            for i in range(0, len(perm), group):
                k += 1
                if (k - 1) % parts != part:
                    continue
                idx = perm[i:i + group]
                out = {k2: np.take(b, idx, axis=0) for k2, b in bufs.items()}
                for name, dt, shape, rb in big:
                    o = out[name] = np.empty((len(idx), *shape), dt)
                    fd, off = places[name]
                    if kernels.pread_ranges(fd[idx], off[idx], np.full(len(idx), rb, np.int64),
                                            o.reshape(-1).view(np.uint8),
                                            np.arange(0, len(idx) * rb, rb, dtype=np.int64)) >= 0:
                        raise OSError(f"{store.path}: column {name!r}: a short read")
                group_t = {k2: torch.from_numpy(v) for k2, v in out.items()}
                yield [{k2: t[a:a + BATCH] for k2, t in group_t.items()} for a in range(0, len(idx), BATCH)]

    small = [{k: v for k, v in s.items() if k not in {c[0] for c in big}} for s in sets]
    groups = serve(0, 1, small[0]) if threads == 1 else in_turn(
        [lambda t=t: serve(t, threads, small[t]) for t in range(threads)], 2, "ceiling-direct")
    for g in groups:
        yield from g


def crc_all(store: Store, data: Mapping[int, bytes]) -> dict[str, Any]:
    """CRC-32C of every unit and column of ``data`` (file bytes in RAM), timed alone."""
    from streambatch.io.checksum import checksum_fn

    crc = checksum_fn(store.m.layout.get("checksum", "crc32"))
    lay = store.m.layout["columns"]
    ranges = [(int(f), int(o), int(s)) for name, *_ in store.cols
              for f, o, s in zip(lay[name]["file"], lay[name]["offset"], lay[name]["size"])]
    views = {i: memoryview(b) for i, b in data.items()}
    cpu0, t0 = _common.process_cpu_seconds(), time.perf_counter()
    for f, o, s in ranges:
        crc(views[f][o:o + s])
    wall = time.perf_counter() - t0
    nbytes = sum(r[2] for r in ranges)
    return {"samples": store.m.rows, "seconds": wall, "wall_seconds": wall, "bytes": nbytes,
            "cpu_seconds": _common.process_cpu_seconds() - cpu0, "ids": np.arange(store.m.rows)}


class Prebuilt(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    """Batches of ``template``'s columns (one batch's tensors) for rows ``0..n-1``, each one copy of
    the template into one fresh buffer, its columns and ``id`` views of it (one shared-memory block
    crosses to the main process, as the loader's batches do): what a DataLoader worker serves when
    reading and gathering cost nothing.  Workers split the batches round-robin.  ``slots``: each
    buffer is a slot of a worker's ``handoff.BatchRing`` (what crosses is its place)."""

    def __init__(self, template: Mapping[str, torch.Tensor], n: int, slots: bool = False) -> None:
        cols = {**{k: v.contiguous() for k, v in template.items()}, "id": torch.zeros(BATCH, dtype=torch.int64)}
        self.spec, at = [], 0
        for name, t in cols.items():
            self.spec.append((name, at, t.dtype, tuple(t.shape)))
            at += -(-t.numel() * t.element_size() // 64) * 64
        self.flat = torch.zeros(at, dtype=torch.uint8)
        for name, a, _, _ in self.spec:
            raw = cols[name].reshape(-1).view(torch.uint8)
            self.flat[a:a + raw.numel()] = raw
        self.n, self.slots = n, slots

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        w, k = (info.id, info.num_workers) if info is not None else (0, 1)
        ring = handoff.BatchRing(16, self.flat.numel()) if self.slots else None
        try:
            for b in range(w, -(-self.n // BATCH), k):
                a0, rows = b * BATCH, min(BATCH, self.n - b * BATCH)
                flat = self.flat.clone() if ring is None else torch.from_numpy(ring.take(self.flat.numel()))
                if ring is not None:
                    flat.copy_(self.flat)
                out = {}
                for name, a, dtype, shape in self.spec:
                    size = int(np.prod(shape)) * torch.empty(0, dtype=dtype).element_size()
                    out[name] = flat[a:a + size].view(dtype).reshape(shape)[:rows]
                out["id"].copy_(torch.arange(a0, a0 + rows))
                yield out if ring is None else ring.make_batch(flat.numpy(), {n: v.numpy() for n, v in out.items()})
        finally:
            if ring is not None:
                ring.close()


def touch_run(batches: Iterator[Mapping[str, torch.Tensor]] | None, n: int, result: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    """An epoch through the touching consumer (or a ready ``result``): rates, CPU, completeness."""
    res = dict(result) if result is not None else _common.consume(batches, touch=True)  # type: ignore[arg-type]
    res.update(_common.check_complete(res.pop("ids"), n))
    gb = res["bytes"] / 1e9
    res.update(samples_per_s=res["samples"] / res["seconds"], cpu_s_per_gb=res["cpu_seconds"] / gb,
               cpu_per_wall=res["cpu_seconds"] / res["wall_seconds"])
    return res


def paths_for(kind: str, npy: Path, store_dir: Path, budget: int) -> tuple[dict[str, Callable[[int], Any]], dict[str, Any],
                                                                          Callable[[], None]]:
    """``{path name: run(seed)}`` for one dataset, its configuration, and a function freeing it all."""
    from streambatch import StreamDataset

    columns = _common.load_columns(npy)
    store = Store(store_dir)
    mapped = Mapped(store)
    n = store.m.rows
    sbs = {v: StreamDataset(store_dir, batch_size=BATCH, seed=0, memory_budget=budget, **kw)
           for v, kw in (("default", {}), ("piece_rows=0", {"piece_rows": 0}))}
    d = sbs["default"].describe()
    per_unit = max(1, round(d["unit_rows"] / d["piece_rows"]))
    piece = 0 if per_unit == 1 else -(-int(store.m.unit_rows.max()) // per_unit)
    window_rows = budget // 2 // store.row_nbytes
    sets = [store.buffers(window_rows + int(store.m.unit_rows.max())) for _ in range(2)]
    data = {i: store.m.path_of(i).read_bytes() for i in range(len(store.m.files))}
    epochs = {v: 0 for v in sbs}

    def sb(v: str) -> Any:
        epochs[v] += 1
        sbs[v].set_epoch(epochs[v])
        return touch_run(iter(sbs[v]), n)

    for v in sbs:  # a warm-up epoch: steady state, as the design paths reuse their buffers
        sb(v)
    template = {k: torch.from_numpy(np.ascontiguousarray(c[:BATCH])) for k, c in columns.items() if k != "id"}
    loaders = {"ipc": DataLoader(Prebuilt(template, n), batch_size=None, num_workers=2, persistent_workers=True),
               "slots": DataLoader(Prebuilt(template, n, slots=True), batch_size=None, num_workers=2,
                                   persistent_workers=True),
               "sb": DataLoader(sbs["default"], batch_size=None, num_workers=2, persistent_workers=True)}

    def sb_w2(s: int) -> Any:
        sbs["default"].set_epoch(1000 + s)  # workers take the epoch when their iterator is made
        return touch_run(iter(loaders["sb"]), n)

    paths: dict[str, Callable[[int], Any]] = {
        "in-RAM gather": lambda s: touch_run(None, n, _common.ram_limit(columns, BATCH, s, keep_ids=True, touch=True)),
        "units 1T": lambda s: touch_run(design_path(store, 0, window_rows, 1, sets, s), n),
        "pieces 1T": lambda s: touch_run(design_path(store, piece, window_rows, 1, sets, s), n),
        "units 2T": lambda s: touch_run(design_path(store, 0, window_rows, 2, sets, s), n),
        "pieces 2T": lambda s: touch_run(design_path(store, piece, window_rows, 2, sets, s), n),
        **{f"mapped {how} {t}T": (lambda s, t=t, c=c: with_mapped_rss(mapped, lambda: touch_run(
            mapped_path(store, mapped, piece, window_rows, t, s, native=c), n)))
           for how, c in (("pieces", False), ("C", True)) if not c or kernels.native() for t in (1, 2)},
        "direct rows 1T": lambda s: touch_run(direct_path(store, piece, window_rows, 1, sets, s), n),
        "direct rows 2T": lambda s: touch_run(direct_path(store, piece, window_rows, 2, sets, s), n),
        "crc32c alone": lambda s: touch_run(None, n, crc_all(store, data)),
        "streambatch default": lambda s: sb("default"),
        "streambatch piece_rows=0": lambda s: sb("piece_rows=0"),
        "DataLoader IPC w2": lambda s: touch_run(iter(loaders["ipc"]), n),
        "DataLoader slots w2": lambda s: touch_run(iter(loaders["slots"]), n),
        "streambatch w2": sb_w2,
    }
    config = {"dataset": kind, "rows": n, "row_bytes": store.row_nbytes, "budget_bytes": budget,
              "window_rows": window_rows, "unit_rows": int(store.m.unit_rows.max()), "piece_rows": piece,
              "sb_window_rows": d["window_rows"], "sb_piece_rows": d["piece_rows"], "sb_threads": d["threads"],
              "format": "zarr", "codec": "none", "batch_size": BATCH}

    def free() -> None:
        loaders.clear()  # persistent workers stop with their DataLoader
        store.close()
        for ds in sbs.values():
            ds.release_buffers()
        sbs.clear(), sets.clear(), data.clear(), columns.clear()
        bt.release_memory()

    return paths, config, free


def measure(kind: str, npy: Path, store_dir: Path, repeats: int, only: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Every path of one dataset (or those in ``only``, and the in-RAM gather), alternated within
    each of ``repeats`` repeats; a record per path."""
    budget = data_bytes(npy) // 4
    bt.warm(npy), bt.warm(store_dir)
    paths, config, free = paths_for(kind, npy, store_dir, budget)
    unknown = set(only) - set(paths)
    if unknown:
        free()
        raise ValueError(f"unknown path(s) {sorted(unknown)}; choose from {', '.join(paths)}")
    if only:
        paths = {p: fn for p, fn in paths.items() if p in only or p == "in-RAM gather"}
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in paths}
    try:
        for rep in range(repeats):
            for name, fn in paths.items():
                runs[name].append(fn(rep))
            bt.log(f"{kind}: repeat {rep + 1}: " + ", ".join(
                f"{p} {r[-1]['samples_per_s']:,.0f}/s" for p, r in runs.items()))
    finally:
        free()
    base = runs["in-RAM gather"]
    out = []
    for name, rs in runs.items():
        out.append({**config, "role": "ceiling", "path": name,
                    "samples_per_s": bt.median([r["samples_per_s"] for r in rs]),
                    "cpu_s_per_gb": bt.median([r["cpu_s_per_gb"] for r in rs]),
                    "cpu_per_wall": bt.median([r["cpu_per_wall"] for r in rs]),
                    "vs_ram": bt.median([r["samples_per_s"] / b["samples_per_s"] for r, b in zip(rs, base)]),
                    "cpu_vs_ram": bt.median([r["cpu_s_per_gb"] / b["cpu_s_per_gb"] for r, b in zip(rs, base)]),
                    "runs_samples_per_s": [r["samples_per_s"] for r in rs],
                    "missing": sum(r["missing"] for r in rs), "duplicated": sum(r["duplicated"] for r in rs),
                    **({"peak_mapped_mib": max(r["peak_mapped_mib"] for r in rs)} if "peak_mapped_mib" in rs[0]
                       else {})})
    return out


def data_bytes(npy: Path) -> int:
    """Decoded bytes of the dataset in ``npy`` (every column)."""
    return sum(int(a.nbytes) for a in _common.load_columns(npy, mmap=True).values())


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the ceiling of every dataset asked for, append the records, regenerate RESULTS.md."""
    p = bt.make_parser(__doc__ or "")
    p.add_argument("--datasets", default="tab,img", help="comma-separated subset of tab,img")
    p.add_argument("--paths", default="", help="comma-separated subset of the paths (the in-RAM gather always runs)")
    p.set_defaults(repeats=5)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    kinds = [k.strip() for k in args.datasets.split(",") if k.strip()]
    if set(kinds) - set(ROWS):
        p.error(f"unknown dataset(s) {sorted(set(kinds) - set(ROWS))}; choose from tab, img")
    run_id = bt.new_run_id()
    common = bt.base_record(args, run_id, "bench_ceiling.py")
    root = (Path(args.data) if args.data else bt.ROOT / "data") / ("quick/ceiling" if args.quick else "ceiling")
    for kind in kinds:
        rows = (QUICK_ROWS if args.quick else ROWS)[kind]
        npy = bt.ensure_npy(root, kind, rows)
        store = bt.ensure_store(npy, bt.store_path(root, kind, "zarr", "none"), "zarr", "none", rows)
        load0 = os.getloadavg()[0]
        recs = measure(kind, npy, store, args.repeats, [x.strip() for x in args.paths.split(",") if x.strip()])
        for rec in recs:
            _common.write_record(NAME, {**common, **rec, "loadavg_before": load0, "loadavg_after": os.getloadavg()[0]})
    import report

    report.main()
    return 0


# ---------------------------------------------------------------------------- report
WORKERS_TARGET = 0.6  # issue 16: num_workers=2 at least 0.6x of num_workers=0


def _f(v: Any, fmt: str) -> str:
    return bt._num(v, fmt)


def verdicts(recs: Sequence[Mapping[str, Any]]) -> str:
    """Which targets the ceiling of one dataset allows: the best design path against 0.7x the
    gather's samples/s, and the cheapest against 1.5x its CPU per GB (with the CRC when verifying)."""
    by = {r["path"]: r for r in recs}
    kind = recs[0]["dataset"]
    if not {"pieces 1T", "streambatch default"} <= by.keys():
        return f"**{kind}**: a run of some paths only (--paths): no verdict." + _mapped_verdict(by)
    design = [p for p in ("units 1T", "pieces 1T", "units 2T", "pieces 2T") if p in by]
    fast = max(design, key=lambda p: by[p]["vs_ram"])
    cheap = min(design, key=lambda p: by[p]["cpu_vs_ram"])
    crc = by["crc32c alone"]["cpu_s_per_gb"] if "crc32c alone" in by else 0.0
    gather_cpu = by["in-RAM gather"]["cpu_s_per_gb"]
    verify_ratio = (by["pieces 1T"]["cpu_s_per_gb"] + crc) / gather_cpu
    speed_ok = by[fast]["vs_ram"] >= SPEED_TARGET
    cpu_ok = by[cheap]["cpu_vs_ram"] <= CPU_TARGET
    return (f"**{kind}**: speed ≥ {SPEED_TARGET}× the gather is {'allowed' if speed_ok else '**ruled out**'} on "
            f"this machine for the design (best design path: {fast}, {_f(by[fast]['vs_ram'], '.2f')}×)"
            + _mapped_verdict(by) + f"; CPU/GB ≤ {CPU_TARGET}× "
            f"the gather's is {'allowed' if cpu_ok else '**ruled out**'} (cheapest: {cheap}, "
            f"{_f(by[cheap]['cpu_vs_ram'], '.2f')}×; pieces 1T plus a CRC-32C of every byte, what verify adds: "
            f"{_f(verify_ratio, '.2f')}×); streambatch default reaches {_f(by['streambatch default']['vs_ram'], '.2f')}× "
            f"at {_f(by['streambatch default']['cpu_vs_ram'], '.2f')}× the gather's CPU/GB." + _workers_verdict(by))


def _mapped_verdict(by: Mapping[str, Mapping[str, Any]]) -> str:
    """What the one-copy designs allow: batches gathered straight from memory-mapped files (with the
    file pages they held mapped, which the budget counts), or large rows read row by row."""
    out = ""
    mapped = [p for p in by if p.startswith("mapped ")]
    if mapped:
        best = max(mapped, key=lambda p: by[p]["vs_ram"])
        over = by[best].get("peak_mapped_mib", 0.0) * (1 << 20) > by[best]["budget_bytes"]
        ok = by[best]["vs_ram"] >= SPEED_TARGET and not over
        out += (f"; {'allowed' if ok else '**ruled out**'} for a one-copy design that gathers batches straight from "
                f"memory-mapped files ({best}, {_f(by[best]['vs_ram'], '.2f')}× at "
                f"{_f(by[best]['cpu_vs_ram'], '.2f')}× the gather's CPU/GB, with "
                f"{_f(by[best].get('peak_mapped_mib', float('nan')), ',.0f')} MiB of file pages mapped at a window's "
                f"end against a budget of {bt._mib(by[best]['budget_bytes'])} MiB)")
    direct = [p for p in by if p.startswith("direct rows")]
    if direct:
        best = max(direct, key=lambda p: by[p]["vs_ram"])
        out += (f"; large rows read row by row into the batches (no mapping): {best}, "
                f"{_f(by[best]['vs_ram'], '.2f')}× at {_f(by[best]['cpu_vs_ram'], '.2f')}× the gather's CPU/GB")
    return out


def _workers_verdict(by: Mapping[str, Mapping[str, Any]]) -> str:
    """Whether ``num_workers=2`` at 0.6x of the loader in process is within what the DataLoader's
    process boundary alone allows (issue 16)."""
    if "DataLoader IPC w2" not in by:
        return ""
    way = max((p for p in ("DataLoader IPC w2", "DataLoader slots w2") if p in by), key=lambda p: by[p]["samples_per_s"])
    ipc, inproc = by[way]["samples_per_s"], by["streambatch default"]["samples_per_s"]
    ok = ipc >= WORKERS_TARGET * inproc
    w2 = by["streambatch w2"]["samples_per_s"] / ipc if "streambatch w2" in by else float("nan")
    return (f" num_workers=2 at ≥ {WORKERS_TARGET}× the loader in process is {'allowed' if ok else '**ruled out**'}: "
            f"batches made for free cross the DataLoader's process boundary at {_f(ipc / inproc, '.2f')}× the "
            f"loader's in-process rate ({way}), and streambatch through it reaches {_f(w2, '.2f')}× that ceiling.")


def render(records: list[dict[str, Any]]) -> str:
    """Markdown section for the latest run of this benchmark."""
    rows = [r for r in records if r.get("role") == "ceiling"]
    if not rows:
        return "## Ceiling of the design\n\nNo records.\n"
    first = rows[0]
    lines = ["## Ceiling of the design: the best possible path, in isolation", "",
             "What could any implementation of the current design (windows of half the budget mixing units or "
             "pieces, batches gathered from the window) reach on this machine?  Warm page cache, Zarr codec none, "
             f"batch {first['batch_size']}, budget a quarter of the data, a consumer that touches one element of every "
             f"tensor (ids kept: every path served each row once), medians of {first['repeats']} repeats with the "
             "paths alternated within each repeat; × gather = median of the ratios paired within a repeat. "
             "1T/2T: one thread (read a window, then gather it) or two (one reads the next window while the other "
             "gathers); one `os.preadv` per unit (or piece) and column, no Python per row. mapped pieces: the "
             "same windows of pieces, each batch gathered straight from the memory-mapped shard files (one copy, "
             "no window buffer; a window's pages unmapped after it), 2T: two threads each gathering every other "
             "batch. crc32c alone: "
             "CRC-32C of every unit and column already in RAM (samples/s = rows checksummed per second). "
             "CPU s/GB: process user+sys per GB served (the w2 rows count the main process only: their "
             "persistent workers are not reaped within the run, so their CPU columns are too low).", ""]
    if first.get("quick"):
        lines += ["**--quick smoke run: tiny datasets, not a measurement.**", ""]
    for kind in dict.fromkeys(r["dataset"] for r in rows):
        recs = [r for r in rows if r["dataset"] == kind]
        c = recs[0]
        loads = [x for r in recs for x in (r.get("loadavg_before"), r.get("loadavg_after")) if x is not None]
        loaded = max(loads, default=0.0) > (first["machine"].get("cpu_count") or 2)
        lines.append(f"{kind}: {c['rows']:,} rows of {c['row_bytes']} B, budget {bt._mib(c['budget_bytes'])} MiB, "
                     f"window {c['window_rows']:,} rows, units of {c['unit_rows']} rows, pieces of {c['piece_rows']} "
                     f"rows (streambatch: window {c['sb_window_rows']:,} rows, mean piece "
                     f"{_f(c['sb_piece_rows'], '.1f')} rows, {c['sb_threads']} threads); load average "
                     f"{_f(min(loads, default=float('nan')), '.1f')}-{_f(max(loads, default=float('nan')), '.1f')}"
                     + (" (**a loaded machine**: other processes held the cores, so samples/s and CPU / wall are "
                        "low; CPU s/GB holds better)" if loaded else "") + ":")
        table = [{"path": r["path"], "samples/s": _f(r["samples_per_s"], ",.0f"), "× gather": _f(r["vs_ram"], ".2f"),
                  "CPU s/GB": _f(r["cpu_s_per_gb"], ".3f"), "CPU/GB × gather's": _f(r["cpu_vs_ram"], ".2f"),
                  "CPU / wall": _f(r["cpu_per_wall"], ".2f"), "missing / dup": f"{r['missing']} / {r['duplicated']}",
                  "mapped MiB": _f(r.get("peak_mapped_mib", float("nan")), ",.0f")}
                 for r in recs]
        lines += ["", _common.format_table(table, list(table[0])), "", verdicts(recs), ""]
    lines += [f"Command: `{first['command']}`", "", bt.machine_line(first)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
