"""Shared harness for the benchmarks in this folder (see ``BENCHMARKS.md``).

Every benchmark measures its loader with :func:`consume`, states its speed as a ratio to the
baselines here (:func:`ram_limit`, :func:`naive_loader`, :func:`sequential_read`,
:func:`copy_file`, :func:`memcpy`) measured in the same run, tracks memory with
:class:`PeakRSS`, takes :func:`median_of` at least 3 repeats, and appends a JSON line with
:func:`write_record`. Cold-cache runs call :func:`evict` first.

Dependencies: numpy, torch and psutil; matplotlib only inside :func:`plot_lines`. This module is
not a test module and pytest never collects it (``testpaths = ["tests"]``).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import itertools
import json
import os
import platform
import resource
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import psutil
import torch
from numpy.typing import NDArray

__all__ = [
    "RECORDS_DIR",
    "PeakRSS",
    "NpyRowDataset",
    "check_complete",
    "consume",
    "copy_file",
    "evict",
    "format_table",
    "load_columns",
    "machine_info",
    "median_of",
    "memcpy",
    "naive_loader",
    "plot_lines",
    "process_cpu_seconds",
    "ram_limit",
    "sequential_read",
    "write_record",
]

RECORDS_DIR = Path(__file__).resolve().parent / "records"
_READ_BLOCK = 8 * 2**20


class PeakRSS:
    """Peak resident set size of this process and all its children, sampled in the background.

    A (non-daemon) thread sums ``metric`` over ``psutil.Process()`` and
    ``children(recursive=True)`` every ``interval`` seconds, plus once on entry and once on exit;
    ``peak`` is the largest sum seen and ``start`` the first, in bytes. With ``metric="rss"``
    (default, cheap) pages shared between processes (fork, shared memory, one memory map read
    by several workers) count once per process: an upper bound on the tree's true use.
    ``"pss"`` (Linux; shares each page among the processes mapping it) and ``"uss"`` (private
    pages only) avoid that, at the cost of reading ``/proc/*/smaps`` on every sample.
    Leaving the ``with`` block, even on an exception, stops and joins the thread.
    ``children=False`` samples this process alone: listing the children scans every process on
    the machine (1.3 ms a sample, with the GIL held), which slows an in-process loader's Python by
    a few percent; a loader without worker processes has no children to count.

    Example::

        with PeakRSS() as mem:
            run_epoch()
        print(mem.peak / 2**20, "MiB")
    """

    def __init__(self, interval: float = 0.02, metric: str = "rss", children: bool = True) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be positive, got {interval}")
        if metric not in ("rss", "pss", "uss"):
            raise ValueError(f"metric must be 'rss', 'pss' or 'uss', got {metric!r}")
        self.interval = interval
        self.metric = metric
        self.children = children
        self.peak = 0
        self.start = 0
        self.samples = 0
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> int:
        """Take one sample now (bytes), updating :attr:`peak`."""
        total = 0
        try:
            procs = [self._proc, *(self._proc.children(recursive=True) if self.children else ())]
        except psutil.Error:
            procs = [self._proc]
        for proc in procs:
            try:
                if self.metric == "rss":
                    total += proc.memory_info().rss
                else:
                    total += getattr(proc.memory_full_info(), self.metric)
            except psutil.Error:  # a child exited between listing and reading
                continue
        self.samples += 1
        self.peak = max(self.peak, total)
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakRSS:
        if self._thread is not None:
            raise RuntimeError("PeakRSS is not re-entrant; make a new one per measurement")
        self.start = self.sample()
        self._thread = threading.Thread(target=self._run, name="PeakRSS", daemon=False)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()


def peak_rss_of(batches: Any, **kwargs: Any) -> PeakRSS:
    """A :class:`PeakRSS` for consuming ``batches``: child processes scanned only when they come
    from a ``DataLoader`` with worker processes.  An in-process loader has no children, and
    scanning for them (every process on the machine, 1.3 ms a sample with the GIL held) slowed a
    GIL-bound loader by about 12% (``tab``: 1.37M against 1.56M samples/s, paired epochs)."""
    return PeakRSS(children=getattr(batches, "num_workers", 0) > 0, **kwargs)


def consume(
    batches: Iterable[Mapping[str, torch.Tensor]], max_batches: int | None = None, count_ids: int | None = None,
    touch: bool = False,
) -> dict[str, Any]:
    """The shared consumption loop: touch every batch the way a training step would.

    For each batch (a mapping with at least ``x`` and ``id`` tensors) sum ``x`` in float64 and
    keep a copy of ``id``.  With ``touch`` (the *light* consumer of BENCHMARKS.md, so that the
    loader is what is measured) read one element of every tensor instead of summing ``x``
    (``x_sum`` then adds those elements). The clock starts before ``iter(batches)``, so loader start-up (worker
    processes, first reads) counts towards ``first_batch_s``. After ``max_batches`` batches the
    iterator is closed (``close()`` where it has one) and released, which stops loader threads or
    worker processes.

    Returns:
        ``samples``, ``batches``, ``seconds`` (to the last batch), ``first_batch_s``, ``bytes``
        (sum of every tensor's ``nbytes`` in the batches), ``x_sum`` (float64 checksum) and
        ``ids``: the ids in served order as one int64 array; ``cpu_seconds``: user + system
        CPU of this process and of its reaped children (DataLoader workers once shut down) from
        before ``iter(batches)`` to after the iterator is closed, and ``wall_seconds`` over the
        same span.

    With ``count_ids=N`` the ids are not kept: a uint8 counter per id (N bytes) is updated
    instead and ``ids`` is left out; ``missing`` and ``duplicated`` are returned directly.
    The memory benchmark uses it so that the harness holds O(N) bytes, not O(8N) plus copies.

    Raises:
        KeyError: a batch without ``x`` or ``id``.
    """
    ids: list[NDArray[np.int64]] = []
    counts = np.zeros(count_ids, dtype=np.uint8) if count_ids is not None else None
    samples = nbatches = nbytes = 0
    x_sum = 0.0
    first_batch_s = float("nan")
    cpu0 = process_cpu_seconds()
    t0 = time.perf_counter()
    it = iter(batches)
    try:
        source = it if max_batches is None else itertools.islice(it, max_batches)
        for batch in source:
            x = batch["x"]
            if touch:
                x_sum += sum(float(t[(0,) * t.dim()]) for t in batch.values()
                             if isinstance(t, torch.Tensor) and t.numel())
            else:
                x_sum += float(x.sum(dtype=torch.float64))
            if counts is not None:
                np.add.at(counts, batch["id"].numpy(), 1)
            else:
                ids.append(np.array(batch["id"].numpy(), dtype=np.int64, copy=True))
            if nbatches == 0:
                first_batch_s = time.perf_counter() - t0
            nbatches += 1
            samples += int(x.shape[0])
            nbytes += sum(int(t.nbytes) for t in batch.values() if isinstance(t, torch.Tensor))
        seconds = time.perf_counter() - t0
    finally:
        close = getattr(it, "close", None)
        if callable(close):
            close()
        del it  # a DataLoader iterator shuts its workers down when released
    out: dict[str, Any] = {
        "samples": samples,
        "batches": nbatches,
        "seconds": seconds,
        "wall_seconds": time.perf_counter() - t0,
        "cpu_seconds": process_cpu_seconds() - cpu0,
        "first_batch_s": first_batch_s,
        "bytes": nbytes,
        "x_sum": x_sum,
    }
    if counts is not None:
        out["missing"] = int(np.count_nonzero(counts == 0))
        out["duplicated"] = int(np.sum(counts[counts > 1].astype(np.int64) - 1))
    else:
        out["ids"] = np.concatenate(ids) if ids else np.empty(0, dtype=np.int64)
    return out


def process_cpu_seconds() -> float:
    """User + system CPU seconds of this process (every thread) and of its reaped children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _rates(result: Mapping[str, Any]) -> dict[str, float]:
    seconds = max(float(result["seconds"]), 1e-12)
    return {
        "samples_per_s": result["samples"] / seconds,
        "mb_per_s": result["bytes"] / 1e6 / seconds,
    }


def _summary(result: Mapping[str, Any], keep_ids: bool) -> dict[str, Any]:
    """A JSON-friendly record from a :func:`consume` result (ids only when asked)."""
    record = {k: v for k, v in result.items() if k != "ids"}
    record.update(_rates(result))
    if keep_ids:
        record["ids"] = result["ids"]
    return record


def ram_limit(
    columns: Mapping[str, NDArray[Any]],
    batch_size: int = 256,
    seed: int = 0,
    *,
    keep_ids: bool = False,
    touch: bool = False,
) -> dict[str, Any]:
    """The in-RAM limit: what a loader could reach if I/O and decode were free.

    One ``np.random.default_rng(seed).permutation(N)`` (inside the timed region), then for each
    batch gather every column ``col[perm[i:i+B]]``, wrap it with ``torch.from_numpy`` and feed
    it to :func:`consume`.

    Args:
        columns: equal-length arrays already in RAM, including ``x`` and ``id``.
        batch_size: rows per batch (the last one may be short).
        seed: permutation seed.
        keep_ids: also return the served ``ids`` array (not JSON-serialisable).
        touch: the light consumer (:func:`consume`).

    Returns:
        ``samples_per_s``, ``mb_per_s``, ``first_batch_s`` and the rest of :func:`consume`'s
        figures except ``ids``.

    Raises:
        ValueError: columns of different lengths, no columns, or a batch size below 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    lengths = {name: len(col) for name, col in columns.items()}
    if not lengths or len(set(lengths.values())) != 1:
        raise ValueError(f"columns must be non-empty and of equal length, got {lengths}")
    n = next(iter(lengths.values()))

    def batches() -> Iterable[dict[str, torch.Tensor]]:
        perm = np.random.default_rng(seed).permutation(n)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            yield {name: torch.from_numpy(col[idx]) for name, col in columns.items()}

    record = _summary(consume(batches(), touch=touch), keep_ids)
    record.update(baseline="ram-limit", rows=n, batch_size=batch_size, seed=seed)
    return record


class NpyRowDataset(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """The naive map-style dataset: one ``np.load(path, mmap_mode="r")`` per column.

    ``ds[i]`` is a dict of per-row tensors (copied out of the memory map). The maps are opened
    lazily in each process and dropped when pickled, so worker processes never receive a copy
    of the data.
    """

    def __init__(self, npy_dir: str | os.PathLike[str]) -> None:
        self.paths = _npy_files(npy_dir)
        self._arrays: dict[str, NDArray[Any]] | None = None
        self._len = len(self._open()["id"])

    def _open(self) -> dict[str, NDArray[Any]]:
        if self._arrays is None:
            self._arrays = {name: np.load(p, mmap_mode="r") for name, p in self.paths.items()}
        return self._arrays

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: torch.as_tensor(np.array(a[index])) for name, a in self._open().items()}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state


def naive_loader(
    npy_dir: str | os.PathLike[str],
    batch_size: int = 256,
    num_workers: int = 0,
    seed: int = 0,
    max_batches: int | None = None,
    *,
    keep_ids: bool = False,
    touch: bool = False,
) -> dict[str, Any]:
    """What a user writes without streambatch, consumed by :func:`consume`.

    :class:`NpyRowDataset` over the ``.npy`` columns in ``npy_dir``, a seeded
    ``RandomSampler``, default collate, ``DataLoader(num_workers=num_workers)``.

    Args:
        npy_dir: folder of ``<column>.npy`` files (as written by ``tools/make_datasets.py``).
        batch_size: rows per batch.
        num_workers: DataLoader worker processes (0: in this process).
        seed: seeds the sampler's ``torch.Generator``.
        max_batches: stop after this many batches (time a prefix when a full epoch is slow);
            nothing is extrapolated: ``samples`` says how many rows were measured and
            ``complete`` whether it was the whole epoch.
        keep_ids: also return the served ``ids`` array (not JSON-serialisable).
        touch: the light consumer (:func:`consume`).

    Returns:
        ``samples_per_s``, ``mb_per_s``, ``first_batch_s``, ``samples``, ``seconds``,
        ``complete`` and the configuration.

    Raises:
        FileNotFoundError: no ``id.npy`` / ``x.npy`` in ``npy_dir``.
    """
    dataset = NpyRowDataset(npy_dir)
    sampler = torch.utils.data.RandomSampler(
        dataset, generator=torch.Generator().manual_seed(seed)
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers
    )
    record = _summary(consume(loader, max_batches=max_batches, touch=touch), keep_ids)
    record.update(
        baseline="naive",
        rows=len(dataset),
        complete=record["samples"] == len(dataset),
        batch_size=batch_size,
        num_workers=num_workers,
        seed=seed,
        max_batches=max_batches,
    )
    return record


def _npy_files(npy_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """``{column: path}`` for the ``*.npy`` files directly under ``npy_dir``."""
    folder = Path(npy_dir)
    paths = {p.stem: p for p in sorted(folder.glob("*.npy"))}
    missing = {"id", "x"} - paths.keys()
    if missing:
        raise FileNotFoundError(
            f"{folder}: no {', '.join(sorted(m + '.npy' for m in missing))}; make one with"
            " `python tools/make_datasets.py tab DIR`"
        )
    return paths


def load_columns(
    npy_dir: str | os.PathLike[str], mmap: bool = False
) -> dict[str, NDArray[Any]]:
    """Every ``<column>.npy`` under ``npy_dir`` as ``{column: array}`` (in RAM unless ``mmap``)."""
    mode = "r" if mmap else None
    return {name: np.load(p, mmap_mode=mode) for name, p in _npy_files(npy_dir).items()}


def check_complete(ids: NDArray[np.integer], n: int) -> dict[str, int]:
    """Completeness of an epoch over rows ``0..n-1``: ``missing``, ``duplicated``, ``foreign``.

    ``duplicated`` counts extra copies (a row served 3 times adds 2); ``foreign`` counts ids
    outside ``0..n-1``. All three must be 0 for a correct epoch.
    """
    ids = np.asarray(ids, dtype=np.int64)
    inside = ids[(ids >= 0) & (ids < n)]
    counts = np.bincount(inside, minlength=n)
    return {
        "missing": int(np.count_nonzero(counts == 0)),
        "duplicated": int((counts[counts > 1] - 1).sum()),
        "foreign": int(len(ids) - len(inside)),
    }


def layouts() -> list[tuple[str, str]]:
    """The (format, codec) pairs the benchmarks measure: every format of
    ``streambatch.storage.FORMATS`` uncompressed, and the default format with ``lz4`` too."""
    from streambatch.storage import DEFAULT_FORMAT, FORMATS

    return [(fmt, codec) for fmt in FORMATS for codec in ("none", *(("lz4",) if fmt == DEFAULT_FORMAT else ()))]


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """Versions and machine facts every record carries (no imports beyond this module's)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pyarrow": _version("pyarrow"),
        "zarr": _version("zarr"),
        "torch": torch.__version__,
        "streambatch": _version("streambatch"),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "memory_total": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "machine": platform.machine(),
    }


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.size <= 1000:
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(
        f"cannot write {type(value).__name__} to a JSON record (large arrays such as ids stay out"
        " of records: summarise them first)"
    )


def write_record(
    name: str, record: Mapping[str, Any], records_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Append ``record`` as one JSON line to ``records_dir/{name}.jsonl``; return the path.

    The line also carries ``benchmark`` (= ``name``), a UTC ``timestamp`` and ``machine``
    (:func:`machine_info`). ``records_dir`` defaults to ``benchmarks/records/`` (created).

    Raises:
        ValueError: ``name`` is empty or contains a path separator.
        TypeError: a value JSON cannot hold (e.g. a large numpy array).
    """
    if not name or os.sep in name or (os.altsep and os.altsep in name):
        raise ValueError(f"record name must be a plain file stem, got {name!r}")
    folder = Path(records_dir) if records_dir is not None else RECORDS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    line = {
        "benchmark": name,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **record,
        "machine": machine_info(),
    }
    text = json.dumps(line, default=_json_default, allow_nan=True) + "\n"
    path = folder / f"{name}.jsonl"
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
    return path


def median_of(
    fn: Callable[[], Mapping[str, Any]], repeats: int = 3, key: str = "samples_per_s"
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run ``fn`` ``repeats`` times; return the median record (by ``key``) and all records.

    The median is one of the measured records (the lower middle for an even count), not an
    average, so its other figures belong to the same run.

    Raises:
        ValueError: ``repeats`` below 1.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    records = [dict(fn()) for _ in range(repeats)]
    ranked = sorted(records, key=lambda r: r[key])
    return ranked[(len(ranked) - 1) // 2], records


def _files_under(path: str | os.PathLike[str]) -> list[Path]:
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or folder")
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def evict(path: str | os.PathLike[str]) -> dict[str, int]:
    """Drop the page cache of every file under ``path`` (cold-cache helper); never system-wide.

    Each file is ``fdatasync``-ed (dirty pages cannot be dropped) and then advised
    ``POSIX_FADV_DONTNEED``. Returns ``files`` and ``bytes`` evicted.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        OSError: the platform has no ``posix_fadvise`` (Linux only).
    """
    if not hasattr(os, "posix_fadvise"):
        raise OSError("evict needs os.posix_fadvise (Linux); cold-cache runs are Linux only")
    files = _files_under(path)
    nbytes = 0
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            nbytes += os.fstat(fd).st_size
        finally:
            os.close(fd)
    return {"files": len(files), "bytes": nbytes}


def sequential_read(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The disk limit: read every file under ``path`` sequentially in 8 MiB blocks.

    Call :func:`evict` first for a cold figure. Returns ``bytes``, ``files``, ``seconds``,
    ``gb_per_s`` and ``mb_per_s``.
    """
    files = _files_under(path)
    buf = bytearray(_READ_BLOCK)
    view = memoryview(buf)
    nbytes = 0
    t0 = time.perf_counter()
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while True:
                got = f.readinto(view)
                if not got:
                    break
                nbytes += got
    seconds = max(time.perf_counter() - t0, 1e-12)
    return {
        "baseline": "disk-limit",
        "bytes": nbytes,
        "files": len(files),
        "seconds": seconds,
        "gb_per_s": nbytes / 1e9 / seconds,
        "mb_per_s": nbytes / 1e6 / seconds,
    }


def copy_file(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], fsync: bool = False
) -> dict[str, Any]:
    """Plain ``shutil.copyfile`` baseline for the convert benchmark.

    With ``fsync`` the copy is flushed to disk inside the timed region. Returns ``bytes``,
    ``seconds`` and ``mb_per_s`` (of the source size).
    """
    nbytes = os.path.getsize(src)
    t0 = time.perf_counter()
    shutil.copyfile(src, dst)
    if fsync:
        fd = os.open(dst, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    seconds = max(time.perf_counter() - t0, 1e-12)
    return {
        "baseline": "copy",
        "bytes": nbytes,
        "seconds": seconds,
        "mb_per_s": nbytes / 1e6 / seconds,
        "fsync": fsync,
    }


def memcpy(nbytes: int = 2**30, repeats: int = 3) -> dict[str, Any]:
    """Copy an ``nbytes`` array in RAM (``np.copyto``), best of ``repeats``: the scale figure."""
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    best = max(best, 1e-12)
    return {"baseline": "memcpy", "bytes": nbytes, "seconds": best, "gb_per_s": nbytes / 1e9 / best}


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table of ``columns`` over ``rows`` (floats with 3 significant digits)."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3g}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def plot_lines(
    path: str | os.PathLike[str],
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    title: str,
    *,
    logx: bool = False,
    logy: bool = False,
) -> Path:
    """Save a line plot of ``{label: (xs, ys)}`` to ``path`` (PNG/SVG by suffix); return it.

    ``logx`` uses a base-2 axis (threads, dataset scale), ``logy`` a base-10 one.

    matplotlib is imported here only, rendering with the Agg canvas directly (no pyplot, no
    global backend switch).

    Raises:
        ModuleNotFoundError: matplotlib is not installed (``pip install matplotlib``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if logx:
        ax.set_xscale("log", base=2)  # threads 1..16, dataset x1..x16
        ax.xaxis.set_major_formatter(ScalarFormatter())
    if logy:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
