"""``StreamDataset``: a ``torch.utils.data.IterableDataset`` over a streambatch dataset.

::

    ds = streambatch.StreamDataset("train.zarr", batch_size=256, memory_budget="512MiB")
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, pin_memory=True)
    for epoch in range(10):
        ds.set_epoch(epoch)
        for batch in loader:          # {"x": tensor[256, 128], "y": tensor[256], ...}
            ...

One knob sizes everything: ``memory_budget``.  The loader holds at most two windows (the
one being served and the next being read) plus a few batches, and each window mixes as
many shuffle units as fit: ``describe()`` tells the window, the read-ahead, the predicted
peak bytes and the predicted shuffle quality before any data is read.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ._prefetch import Prefetcher
from ._sizes import parse_size
from ._state import STATE_VERSION, Run, Shared, WorkerPosition, make_state, parse_state
from .errors import ManifestError, StateError
from .io.remote import RemoteFiles, is_url
from .manifest import Manifest
from .schema import Column
from .plan import (
    EpochPlan,
    Phase,
    next_worker,
    plan_epoch,
    split_consumed,
    window_bounds,
    window_rows_for,
    worker_batch_counts,
)
from .quality import predict_deff, predict_kl
from .storage import load_manifest, open_reader

__all__ = ["StreamDataset", "STATE_VERSION", "INDEX_KEY"]

INDEX_KEY = "_row"
# Batches assembled ahead of the consumer: 8 per thread (two groups of 4), at most this many.  The budget
# always reserves room for the maximum, so the plan (and every batch) does not depend on
# the thread count.
_BATCHES_AHEAD_MAX = 16
_LOCAL_THREADS = 2  # default reader threads per process for local files (see _threads)


def _resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None or world_size is not None:
        r, w = (0 if rank is None else rank), (1 if world_size is None else world_size)
        if w < 1:
            raise ValueError(f"world_size must be at least 1, got {w}")
    else:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            r, w = dist.get_rank(), dist.get_world_size()
        else:
            r, w = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= r < w:
        raise ValueError(f"rank {r} outside world size {w}")
    return r, w


class StreamDataset(IterableDataset):  # type: ignore[type-arg]
    """Shuffled, memory-bounded batches from a dataset made by ``streambatch.convert``.

    Args:
        path: the dataset folder.
        batch_size: rows per batch; use ``DataLoader(ds, batch_size=None)``.
        shuffle: a fresh unit order and row mix every epoch (``set_epoch``); else storage order.
        seed: the shuffle seed; the order is a function of (seed, epoch) only.
        memory_budget: bytes the loader may hold (``"512MiB"``, an int), split evenly
            between DataLoader worker processes.
        columns: the columns to load (all by default).
        drop_last: drop each rank's last short batch (and the ``N mod world_size`` rows).
        threads: reader threads per process (default: 2 for local files, at most the cores
            divided among workers; 8 or the cores for a dataset at a URL).
        transform: called on each batch dict (tensors) in the reader threads.
        rank, world_size: this process's share; from ``torch.distributed`` when it is
            initialised, else from ``RANK``/``WORLD_SIZE``, else 0 and 1.
        normalize: ``True`` (every float tensor column) or a list of columns to standardise
            with the per-feature mean and std stored at conversion (``Manifest.feature_stats``).
        return_index: add ``"_row"``, the global row number of every sample.
        verify: check each unit's checksum as it is read (default on: it costs about 5-10% of throughput,
            benchmarks/bench_faults.py), so a damaged byte raises ``DataError`` naming the
            dataset, column, unit and file instead of reaching the model.
        timeout: seconds without progress before ``TimeoutError`` names the stuck unit.
        storage_options: for a URL (``s3://``, ``gs://``, ``https://``): fsspec options
            (endpoint, anonymous access); credentials come from the environment and config files.
        cache_dir, cache_bytes: for a URL: keep the byte ranges read in this folder, at most
            ``cache_bytes`` (least recently used evicted), so later epochs read locally.
        retries, backoff: for a URL: attempts after a transient error, and the first delay.

    Raises:
        ManifestError: the dataset's manifest is missing or invalid.
        DataError: ``normalize`` needs a statistics file that is missing or damaged.
        ValueError: an unknown column or a budget too small for one batch window.
    """

    def __init__(self, path: str | os.PathLike[str], batch_size: int = 256, shuffle: bool = True, seed: int = 0,
                 memory_budget: int | str = "512MiB", columns: list[str] | None = None, drop_last: bool = False,
                 threads: int | None = None, transform: Callable[[Any], Any] | None = None,
                 rank: int | None = None, world_size: int | None = None,
                 normalize: bool | list[str] = False, return_index: bool = False, verify: bool = True,
                 timeout: float | None = None, storage_options: dict[str, Any] | None = None,
                 cache_dir: str | os.PathLike[str] | None = None, cache_bytes: int | str = "1GiB",
                 retries: int = 5, backoff: float = 0.2) -> None:
        super().__init__()
        self._remote_options: dict[str, Any] | None = None
        if is_url(path):
            self._remote_options = dict(url=str(path), retries=retries, backoff=backoff, storage_options=storage_options,
                                        cache_dir=cache_dir, cache_bytes=parse_size(cache_bytes, "cache_bytes"))
            self.manifest: Manifest = load_manifest(path, remote=self._remote_files())
        else:
            self.manifest = load_manifest(path)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.seed = int(seed)
        self.memory_budget = parse_size(memory_budget, "memory_budget")
        if columns is not None and len(columns) == 0:
            raise ValueError(f"{self.manifest.root}: columns=[] selects no column; leave it out to load all of "
                             f"{[c.name for c in self.manifest.columns]}")
        self.columns: tuple[Column, ...] = self.manifest.select(columns)
        self.drop_last = bool(drop_last)
        self.threads = threads
        self.transform = transform
        self.rank, self.world_size = _resolve_rank(rank, world_size)
        self.return_index = return_index
        self.verify = verify
        self.timeout = timeout
        self.normalize = self._normalizers(normalize)
        self.epoch = 0
        self._resume: list[Phase] | None = None  # phases of a loaded state, used by the next iteration
        self._run: Run | None = None  # this process's current (or last) iteration of the epoch
        # a state loaded inside a DataLoader worker: (earlier phases, window rows, position)
        self._worker_resume: tuple[tuple[Phase, ...], int, WorkerPosition] | None = None
        self._shared = Shared()  # epoch and resume state as DataLoader workers see them
        self.last_peak_accounted_bytes = 0
        self._buffers: list[dict[str, np.ndarray]] = []  # window buffers kept between epochs
        self._layout(1)  # fail now, not in a worker, if the budget is too small

    # ------------------------------------------------------------------ sizing
    @property
    def row_nbytes(self) -> int:
        return sum(c.row_nbytes for c in self.columns)

    def _threads(self, num_workers: int) -> int:
        if self.threads is not None:
            return max(1, int(self.threads))
        if self._remote_options is not None:  # waiting on the network: more requests in flight
            return max(8, (os.cpu_count() or 1)) // max(1, num_workers)
        # Two reader threads locally: on 16 cores 1-2 threads were fastest for every layout
        # measured (tab/img, Zarr none/lz4, Parquet) and 16 ran 0.57-0.84x as fast: more threads
        # only contend for the GIL with the consumer (benchmarks/RESULTS.md, Scaling).
        return max(1, min(_LOCAL_THREADS, (os.cpu_count() or 1) // max(1, num_workers)))

    def _remote_files(self) -> Any:
        """A fresh ``RemoteFiles`` for a dataset at a URL (one per iteration: it holds a lock)."""
        if self._remote_options is None:
            return None
        return RemoteFiles(**self._remote_options)

    def _layout(self, num_workers: int) -> dict[str, int]:
        """Budget per process -> batches ahead, window rows; ValueError if a window won't fit."""
        budget = self.memory_budget // max(1, num_workers)
        threads = self._threads(num_workers)
        ahead = min(_BATCHES_AHEAD_MAX, 8 * threads)
        batch_bytes = self.batch_size * self.row_nbytes
        window_bytes = (budget - _BATCHES_AHEAD_MAX * batch_bytes) // 2
        if window_bytes < batch_bytes:
            need = (2 + _BATCHES_AHEAD_MAX) * batch_bytes
            raise ValueError(f"{self.manifest.root}: memory_budget {self.memory_budget} bytes is too small for "
                             f"batches of {self.batch_size} rows x {self.row_nbytes} bytes with {num_workers} "
                             f"worker(s); give at least {need * max(1, num_workers)} bytes")
        rows = window_rows_for(window_bytes, self.row_nbytes, self.batch_size, self._rank_rows())
        return {"budget": budget, "threads": threads, "ahead": ahead, "window_rows": rows}

    def _rank_rows(self) -> int:
        n = self.manifest.rows
        return n // self.world_size if self.drop_last else -(-n // self.world_size)

    def _normalizers(self, normalize: bool | list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if normalize is False:
            return {}
        names = ([c.name for c in self.columns if c.np_dtype.kind == "f"] if normalize is True
                 else list(normalize))
        out = {}
        for name in names:
            self.manifest.column(name)
            wide = name in self.manifest.stats_files  # its statistics are in a file: read it now
            if not wide and not self.manifest.stats.get(name):
                raise ManifestError(f"{self.manifest.root}: no statistics for column {name!r} to normalise with")
            st = self.manifest.feature_stats(name, remote=self._remote_files() if wide else None)
            mean, std = st["mean"], st["std"]
            del st
            if not (np.isfinite(mean).all() and np.isfinite(std).all()):
                raise ManifestError(f"{self.manifest.root}: column {name!r} has non-finite statistics (NaN or inf "
                                    "in the data); it cannot be normalised")
            mean, std = mean.astype(np.float32), std.astype(np.float32)
            out[name] = (mean, np.where(std > 0, 1.0 / np.where(std > 0, std, 1), 1.0).astype(np.float32))
        return out

    # ------------------------------------------------------------------ planning
    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration serves (call before each epoch).

        It reaches DataLoader workers that are already running (``persistent_workers=True``).
        """
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch != self.epoch:
            self._resume = None
            self._run = None
        self.epoch = int(epoch)
        self._shared.publish(self.epoch, self._resume)

    def plan(self, worker: int = 0, num_workers: int = 1, epoch: int | None = None,
             window_rows: int | None = None, history: tuple[Phase, ...] = ()) -> EpochPlan:
        """The epoch plan for one DataLoader worker of this rank (pure; reads nothing).

        ``history`` lists earlier phases of the epoch (an elastic resume) whose rows are done.
        """
        rows = window_rows or self._layout(num_workers)["window_rows"]
        return plan_epoch(self.manifest.unit_rows, seed=self.seed, epoch=self.epoch if epoch is None else epoch,
                          batch_size=self.batch_size, window_rows=rows, rank=self.rank,
                          world_size=self.world_size, worker=worker, num_workers=num_workers,
                          shuffle=self.shuffle, drop_last=self.drop_last, history=history)

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank, for any number of workers)."""
        r = self._rank_rows()
        return r // self.batch_size if self.drop_last else -(-r // self.batch_size)

    def describe(self, num_workers: int = 0) -> dict[str, Any]:
        """Sizes and predicted quality, computed before any data is read.

        Keys: window_rows, window_units (mean shuffle units mixed per window), read_ahead_windows,
        read_ahead_units, threads, budget_bytes, predicted_peak_bytes, predicted_deff,
        predicted_kl (label-sorted KL, SHUFFLE.md M2), label_icc (from the manifest when a
        label was given, else the worst case 1), batches, units, unit_rows.
        """
        lay = self._layout(max(1, num_workers))
        m = self.manifest
        mean_unit = m.rows / m.n_units
        window_rows = lay["window_rows"]
        k = window_rows / mean_unit
        icc = 1.0
        if m.label and isinstance(m.stats.get(m.label, {}).get("histogram"), dict):
            icc = m.stats[m.label]["histogram"].get("icc")
            icc = 1.0 if icc is None else float(icc)
        # a batch holds at most the rank's rows; batches of one row have nothing to correlate
        b = min(self.batch_size, self._rank_rows())
        deff = 1.0 if b < 2 else self._predicted_deff(window_rows, mean_unit, icc, b) if self.shuffle else float(b)
        n_labels = 10
        if m.label and isinstance(m.stats.get(m.label, {}).get("histogram"), dict):
            n_labels = max(2, len(m.stats[m.label]["histogram"].get("values", [])))
        # a one-row batch holds one label: its KL against balanced labels is ln(L) however it is shuffled
        kl = math.log(n_labels) if b < 2 else predict_kl(deff, b, n_labels)
        peak = (2 * window_rows + lay["ahead"] * self.batch_size) * self.row_nbytes
        return {
            "batches": len(self), "batch_size": self.batch_size, "units": m.n_units, "unit_rows": mean_unit,
            "window_rows": window_rows, "window_units": k, "read_ahead_windows": 1, "read_ahead_units": k,
            "threads": lay["threads"], "budget_bytes": self.memory_budget,
            "budget_bytes_per_process": lay["budget"], "predicted_peak_bytes": peak * max(1, num_workers),
            "predicted_deff": deff, "predicted_kl": kl,
            "label_icc": icc, "rank": self.rank, "world_size": self.world_size,
        }

    def _predicted_deff(self, window_rows: int, mean_unit: float, icc: float, batch: int) -> float:
        """Batch-weighted mean of the tumbling-window prediction over the epoch's windows, for
        batches of ``batch`` rows (the batch size, or the rank's rows where it holds fewer)."""
        bounds = window_bounds(self._rank_rows(), window_rows, self.batch_size)
        sizes, counts = np.unique(np.diff(bounds), return_counts=True)
        total = weight = 0.0
        for size, count in zip(sizes.tolist(), counts.tolist()):
            batches = count * (size // self.batch_size if self.drop_last else -(-size // self.batch_size))
            d = predict_deff(mean_unit, max(1.0, size / mean_unit), self.manifest.n_units, batch, icc=icc)
            total += batches * d
            weight += batches
        return total / weight if weight else float(batch)

    # ------------------------------------------------------------------ iteration
    def _resolve(self, phases: list[Phase] | None, num_workers: int) -> tuple[tuple[Phase, ...], int, int]:
        """(earlier phases, window rows, batches already taken in the current phase) for a resume.

        The saved layout is continued where it is this one's (world size, workers) and its window
        still fits the budget; otherwise the rest of the epoch is planned for this layout (elastic).
        """
        rows = self._layout(num_workers)["window_rows"]
        if not phases:
            return (), rows, 0
        last = phases[-1]
        if (last.world_size, last.num_workers) == (self.world_size, num_workers) and self._fits(last.window_rows,
                                                                                             num_workers):
            return tuple(phases[:-1]), last.window_rows, last.batches
        return tuple(phases), rows, 0  # elastic: plan what every earlier phase left

    def _fits(self, window_rows: int, num_workers: int) -> bool:
        lay = self._layout(num_workers)
        return 2 * window_rows * self.row_nbytes + lay["ahead"] * self.batch_size * self.row_nbytes <= lay["budget"]

    def _pending(self, worker: int, num_workers: int, in_worker: bool) -> Run:
        """The plan of the iteration that would start now (pure: nothing is consumed)."""
        if in_worker:
            if self._worker_resume is not None:  # loaded in this worker (StatefulDataLoader)
                history, window_rows, pos = self._worker_resume
                return Run(self.epoch, history, window_rows, worker, num_workers, pos.share, pos.batches)
            # the main process's set_epoch / load_state_dict, also those made after this worker started
            epoch, phases = self._shared.read()
        else:
            epoch, phases = self.epoch, self._resume
        history, window_rows, offset = self._resolve(phases, num_workers)
        share, start = worker, 0
        if offset:
            # Same layout as when saved: continue the same plan, skipping arithmetically.
            counts = worker_batch_counts(self.plan(0, num_workers, epoch=epoch, window_rows=window_rows,
                                                   history=history))
            share = (next_worker(counts, offset) + worker) % num_workers
            start = split_consumed(counts, offset)[share]
        return Run(epoch, history, window_rows, worker, num_workers, share, start)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # Planned now, not at the first next(): a DataLoader worker's state is asked for in between.
        run = self._run = self._pending(worker, num_workers, info is not None)
        self.epoch = run.epoch
        if info is not None:
            self._worker_resume = None
            self._shared.set_workers(num_workers)
        else:
            self._resume = None  # served from here on; state_dict() counts from the run
            self._shared.publish(self.epoch, None)
            self._shared.set_workers(0)
        return self._serve(run)

    def _serve(self, run: Run) -> Iterator[dict[str, torch.Tensor]]:
        lay = self._layout(run.num_workers)
        plan = self.plan(run.share, run.num_workers, epoch=run.epoch, window_rows=run.window_rows,
                         history=run.history)
        reader = open_reader(self.manifest, verify=self.verify, remote=self._remote_files())
        pf = Prefetcher(
            reader, plan, self.columns, self.manifest.unit_start, threads=lay["threads"],
            budget_bytes=lay["budget"], batches_ahead=lay["ahead"], start_batch=run.start,
            index_key=INDEX_KEY if self.return_index else None, normalize=self.normalize,
            to_tensor=torch.from_numpy, transform=self.transform, timeout=self.timeout,
            name=f"r{self.rank}w{run.worker}", buffers=self._buffers)
        try:
            for batch in pf:
                run.consumed += 1  # counted as delivered once handed out
                yield batch
        finally:
            pf.close()
            reader.close()
            self.last_peak_accounted_bytes = pf.peak_accounted_bytes

    def release_buffers(self) -> None:
        """Free the window buffers kept for the next epoch (they are reused to avoid page faults)."""
        self._buffers.clear()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_buffers"] = []  # never ship buffers to DataLoader worker processes
        return state

    # ------------------------------------------------------------------ resume
    def _identity(self) -> dict[str, Any]:
        return {"fingerprint": self.manifest.fingerprint, "seed": self.seed, "batch_size": self.batch_size,
                "shuffle": self.shuffle, "drop_last": self.drop_last, "rank": self.rank}

    def state_dict(self, batches: int | None = None, num_workers: int | None = None) -> dict[str, Any]:
        """A small JSON-able state: where this rank is in the epoch (``load_state_dict`` resumes it).

        Args:
            batches: batches the training loop has taken from the DataLoader since its
                iteration (re)started, i.e. since ``set_epoch`` or ``load_state_dict``.  Iterated
                in this process (``num_workers=0``), the dataset counts them itself and this may
                be omitted.  Served by DataLoader worker processes, it cannot see what the loop
                took (workers read ahead), so it must be given, or use torchdata's
                ``StatefulDataLoader``, whose ``state_dict`` asks every worker for its own state.
            num_workers: the DataLoader's ``num_workers`` (default: what the last iteration used).

        Called inside a DataLoader worker (as ``StatefulDataLoader`` does), the state is that
        worker's position in its share of the epoch.

        Raises:
            StateError: the epoch is served by DataLoader workers and ``batches`` was not given.
        """
        info = get_worker_info()
        if info is not None:
            run = self._run or self._pending(info.id, info.num_workers, in_worker=True)
            pos = WorkerPosition(run.worker, run.num_workers, run.share, run.start + run.consumed)
            phases = [*run.history, Phase(self.world_size, run.num_workers, run.window_rows, 0)]
            return make_state(self._identity(), run.epoch, phases, pos)
        seen = self._shared.workers()  # DataLoader workers that ran this epoch (0: this process)
        if batches is None and seen:
            raise StateError(f"{self.manifest.root}: this epoch is served by {seen} DataLoader worker(s), which read "
                             "ahead, so the dataset cannot tell how many batches your loop took: call "
                             "state_dict(batches=<batches taken since the epoch (re)started>), or use "
                             "torchdata.stateful_dataloader.StatefulDataLoader and its state_dict()")
        nw = max(1, num_workers if num_workers is not None else seen)
        run = self._run
        if self._resume is not None or run is None or seen or num_workers:
            history, window_rows, offset = self._resolve(self._resume, nw)
            taken = int(batches or 0)
        else:  # iterated here: the batches this iteration handed out
            history, window_rows, offset = run.history, run.window_rows, run.start
            taken = run.consumed if batches is None else int(batches)
        phases = [*history, Phase(self.world_size, nw, window_rows, offset + taken)]
        return make_state(self._identity(), self.epoch, phases)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume: the next iteration serves exactly the samples of the epoch not yet delivered.

        The state may come from another world size, number of DataLoader workers or memory
        budget (elastic resume): every rank of the saved run must have taken the same number of
        batches, as ranks of a DistributedDataParallel job do.  A state saved inside a DataLoader
        worker (``StatefulDataLoader``) resumes that worker's share, in the same worker of a
        DataLoader with the same ``num_workers``.

        Raises:
            StateError: the state belongs to another dataset, seed, batch size or shuffle
                setting, is malformed, or is a worker's state that this process cannot resume.
        """
        root = self.manifest.root
        epoch, phases, pos = parse_state(state, self._identity(), root, self.batch_size)
        info = get_worker_info()
        if pos is None and info is not None:
            raise StateError(f"{root}: a rank's resume state is loaded in the main process, before the DataLoader "
                             "starts its workers (ds.load_state_dict(state), then iterate)")
        if pos is not None:
            self._check_worker_state(pos, phases, info)
            self._worker_resume = (tuple(phases[:-1]), phases[-1].window_rows, pos)
        else:
            self._resume = phases
            self._shared.publish(epoch, phases)
        self.epoch = epoch
        self._run = None

    def _check_worker_state(self, pos: WorkerPosition, phases: list[Phase], info: Any) -> None:
        root = self.manifest.root
        where = f"{root}: the state of DataLoader worker {pos.worker} of {pos.num_workers}"
        if info is None:
            raise StateError(f"{where} resumes in that worker: restore it with StatefulDataLoader.load_state_dict")
        if (info.id, info.num_workers, self.world_size) != (pos.worker, pos.num_workers, phases[-1].world_size):
            raise StateError(f"{where} and world size {phases[-1].world_size} cannot resume in worker {info.id} of "
                             f"{info.num_workers} with world size {self.world_size}: resume with the same num_workers "
                             "and world size, or save the rank's state with ds.state_dict(batches=...)")
        if not self._fits(phases[-1].window_rows, pos.num_workers):
            raise StateError(f"{where} follows windows of {phases[-1].window_rows} rows, which do not fit "
                             f"memory_budget {self.memory_budget} with {pos.num_workers} worker(s): resume with the "
                             "budget it was saved under (a worker's share cannot be re-planned alone)")

    def __repr__(self) -> str:
        return (f"StreamDataset({str(self.manifest.root)!r}, rows={self.manifest.rows}, batch_size={self.batch_size}, "
                f"memory_budget={self.memory_budget}, columns={[c.name for c in self.columns]})")
