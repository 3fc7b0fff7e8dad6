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
# long module: the one class users hold, with its resume logic (its stages live in loader/)

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ._sizes import parse_size
from .errors import StateError
from .io.remote import RemoteFiles, RemoteOptions, is_url
from .loader.batches import normalizers
from .loader.direct import direct_columns, epoch_direct, window_row_nbytes
from .loader.device import DeviceFeeder, check_on_device, resolve_device
from .loader.handoff import BatchRing, batch_ring, forget_done, keep_ring
from .loader.ring import Ring
from .loader.prefetch import Prefetcher
from .loader.pool import end_worker_on_ctrl_c
from .loader.packed import PACK_ROWS, check_pack_state, packed_group, packed_state, serve_packed
from .loader.rows import group_read_bytes, ragged_sizing
from .loader.options import check_collate, check_decode, check_pack, check_ragged, padded_batch_nbytes, resolve_rank
from .loader.tensors import RaggedOutput, decoded_row_nbytes, make_batch, make_batches, make_shared_batch
from .loader.readers import epoch_reader
from .loader.sums import PieceSums, SharedSums, piece_sums
from .loader.sizing import Sizing, describe, label_icc_of
from .loader.state import (STATE_VERSION, Run, Shared, WorkerPosition, check_worker_state, continue_share,
                           make_state, parse_state, resolve)
from .manifest import Manifest
from .plan import EpochPlan, Phase, plan_epoch, worker_batch_counts
from .schema import Column
from .storage import FORMATS, load_manifest, open_reader

__all__ = ["StreamDataset", "STATE_VERSION", "INDEX_KEY"]

INDEX_KEY = "_row"


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
            divided among workers; 8 or the cores for a dataset at a URL).  For local files
            never more than the cores divided among workers, even when asked: more only ran
            slower (``describe()`` gives ``threads`` and ``threads_asked``).
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
        piece_rows: rows per shuffle piece (an epoch is a random order of pieces, mixed a window
            at a time).  Default: sized from the budget, the largest piece predicted to reach a
            design effect of 1.2 where the storage reads a unit's rows alone (uncompressed local
            data), else whole units.  0: whole units; ``N``: pieces of ``N`` rows (a compressed
            or remote unit is then read whole for each piece: slow).  The order of an epoch
            depends on it, as on the budget.
        remote: for a URL (``s3://``, ``gs://``, ``https://``): ``RemoteOptions`` (fsspec
            options, a local disk cache, retries); the defaults when not given, unused for a local path.
        device: serve batches on this device (``"cuda"``, ``"cuda:N"``, a ``torch.device``, ``"cpu"``;
            ``"auto"``: the local rank's GPU under torch.distributed (``LOCAL_RANK``), else cuda:0,
            else the CPU).  Batches are assembled into a ring of reused pinned buffers inside the
            budget and copied by one thread on its own CUDA stream while the loop steps on the
            previous batch; the loop's current stream waits for each copy.  In-process only
            (``DataLoader(num_workers=0)``, no ``pin_memory``).  None: batches stay on the CPU.
        on_device: steps run on the device after the copy: ``("normalize",)`` normalises there
            (integers become float32 there), so the host moves the stored bytes (uint8 images).

    Raises:
        ManifestError: the dataset's manifest is missing or invalid.
        DataError: ``normalize`` needs a statistics file that is missing or damaged.
        ValueError: an unknown column, a budget too small for one batch window (or for the
            device path's buffers), an unknown or unavailable device, or ``on_device`` without ``device``.
        TypeError: ``remote`` is not a ``RemoteOptions``.
    """

    _sums: list[PieceSums]  # with verify: each piece's checksum (readers.VerifyOnce)
    _direct_sums: list[PieceSums]  # and each row's of the direct columns (loader/direct.py)
    _rings: list[Ring]  # the device path's host buffers (loader/device.py)
    _batch_rings: list[BatchRing]  # the buffers of large batches (loader/handoff.py)

    def __init__(self, path: str | os.PathLike[str], batch_size: int = 256, shuffle: bool = True, seed: int = 0,
                 memory_budget: int | str = "512MiB", columns: list[str] | None = None, drop_last: bool = False,
                 threads: int | None = None, transform: Callable[[Any], Any] | None = None,
                 rank: int | None = None, world_size: int | None = None,
                 normalize: bool | list[str] = False, return_index: bool = False, verify: bool = True,
                 timeout: float | None = None, remote: RemoteOptions | None = None,
                 piece_rows: int | None = None, collate: Mapping[str, str] | None = None, pack: Any = None,
                 decode: Mapping[str, Any] | None = None, device: Any = None, on_device: tuple[str, ...] = ()) -> None:
        super().__init__()
        if remote is not None and not isinstance(remote, RemoteOptions):
            raise TypeError(f"remote must be a streambatch.RemoteOptions, got {type(remote).__name__}")
        self.remote: RemoteOptions | None = (remote or RemoteOptions()) if is_url(path) else None
        self._url = str(path)
        self.manifest: Manifest = load_manifest(path, remote=self._remote_files())
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
        self.pack = check_pack(self.columns, pack)
        if self.pack is not None:  # only the tokens are read: other columns have no per-token meaning
            self.columns = self.manifest.select([self.pack.column])
        self.drop_last = bool(drop_last)
        self.threads = threads
        self.transform = transform
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.return_index = return_index
        self.verify = verify
        self.timeout = timeout
        if piece_rows is not None and piece_rows < 0:
            raise ValueError(f"piece_rows must be >= 0 (0: whole units), got {piece_rows}")
        self.piece_rows = piece_rows
        self.normalize = normalizers(self.manifest, self.columns, normalize, self._remote_files)
        self.collate = check_collate(self.columns, collate)
        self.decode = check_decode(self.columns, decode)
        check_ragged(self.manifest, self.columns, self.memory_budget, piece_rows=piece_rows, device=device)
        self._target = resolve_device(device)
        self.device: torch.device | None = None if self._target is None else self._target.device
        self.on_device = check_on_device(on_device, self._target, self.normalize)
        self._rings, self._batch_rings = [], []  # kept between epochs: pinned once, faulted in once
        self.epoch = 0
        self.skipped_rows = 0  # rows this process dropped: images that did not decode (on_error="skip")
        self._resume: list[Phase] | None = None  # phases of a loaded state, used by the next iteration
        self._pack_resume: dict[str, Any] | None = None  # the packer's part of a loaded state
        self._run: Run | None = None  # this process's current (or last) iteration of the epoch
        # a state loaded inside a DataLoader worker: (earlier phases, window rows, position)
        self._worker_resume: tuple[tuple[Phase, ...], int, int, WorkerPosition] | None = None
        self._shared = Shared()  # epoch and resume state as DataLoader workers see them
        self.last_peak_accounted_bytes = 0
        self._buffers: list[dict[str, np.ndarray]] = []  # window buffers kept between epochs
        self._sums, self._direct_sums = [], []  # kept between epochs, shared with DataLoader workers too
        self._shared_sums = SharedSums() if verify and SharedSums.available() else None
        self._sizing().layout(1)  # fail now, not in a worker, if the budget is too small

    # ------------------------------------------------------------------ sizing
    @property
    def row_nbytes(self) -> int:
        return sum(c.row_nbytes for c in self.columns)

    def _sizing(self) -> Sizing:
        m, ragged = self.manifest, any(c.ragged for c in self.columns)
        partial = FORMATS[m.storage].partial_reads(m, [c.name for c in self.columns])
        return Sizing(self.memory_budget, self._row_batch, self.row_nbytes, m.rows, self.world_size,
                      self.drop_last and self.pack is None, self.threads, self.remote is not None, m.root,
                      int(m.unit_rows.max()), m.n_units, partial, label_icc_of(m),
                      self.piece_rows if self.shuffle and not ragged else 0, **ragged_sizing(m, self.columns),
                      device=self._target is not None, batch_extra=decoded_row_nbytes(self.decode), ragged=ragged,
                      padded_batch=padded_batch_nbytes(m, self.columns, self.collate, self._row_batch),
                      window_row_nbytes=window_row_nbytes(self.row_nbytes,
                                                          [c for c in self.columns if c.name in self._direct]))

    @functools.cached_property
    def _direct(self) -> tuple[str, ...]:
        """The columns whose rows are read straight into the batches (loader/direct.py)."""
        return direct_columns(self.manifest, self.columns, remote=self.remote is not None, verify=self.verify)

    @property
    def _row_batch(self) -> int:
        """Rows a batch of the row stream holds: ``batch_size``, or documents fed to the packer."""
        return self.batch_size if self.pack is None else PACK_ROWS

    def _remote_files(self) -> RemoteFiles | None:
        """A fresh ``RemoteFiles`` for a dataset at a URL (one per iteration: it holds a lock)."""
        return None if self.remote is None else self.remote.open(self._url)

    # ------------------------------------------------------------------ planning
    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration serves (call before each epoch).

        It reaches DataLoader workers that are already running (``persistent_workers=True``).
        """
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch != self.epoch:
            self._resume = self._pack_resume = None
            self._run = None
        self.epoch = int(epoch)
        self._shared.publish(self.epoch, self._resume)

    def plan(self, worker: int = 0, num_workers: int = 1, epoch: int | None = None,
             window_rows: int | None = None, history: tuple[Phase, ...] = (), piece_rows: int | None = None
             ) -> EpochPlan:
        """The epoch plan for one DataLoader worker of this rank (pure; reads nothing).

        ``history`` lists earlier phases of the epoch (an elastic resume) whose rows are done.
        ``window_rows`` and ``piece_rows`` default to what the memory budget gives.
        """
        lay = self._sizing().layout(num_workers)
        return plan_epoch(self.manifest.unit_rows, seed=self.seed, epoch=self.epoch if epoch is None else epoch,
                          batch_size=self._row_batch, window_rows=window_rows or lay.window_rows, rank=self.rank,
                          world_size=self.world_size, worker=worker, num_workers=num_workers,
                          shuffle=self.shuffle, drop_last=self.drop_last and self.pack is None, history=history,
                          piece_rows=lay.piece_rows if piece_rows is None else piece_rows)

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank, for any number of workers)."""
        return self._sizing().batches

    def describe(self, num_workers: int = 0) -> dict[str, Any]:
        """Sizes and predicted quality, computed before any data is read: window and piece sizes,
        the epoch plan's memory (outside the budget), threads, budget and predicted peak bytes,
        predicted design effect and label KL (``loader.sizing.describe`` lists every key), and
        ``direct_columns``: the columns whose rows are read straight into the batches, not through
        the windows (``loader.direct``).
        """
        out = describe(self._sizing(), self.manifest, num_workers, shuffle=self.shuffle, rank=self.rank)
        out["direct_columns"] = list(self._direct)
        return out

    # ------------------------------------------------------------------ iteration
    def _pending(self, worker: int, num_workers: int, in_worker: bool) -> Run:
        """The plan of the iteration that would start now (pure: nothing is consumed)."""
        if in_worker:
            if self._worker_resume is not None:  # loaded in this worker (StatefulDataLoader)
                history, window_rows, piece_rows, pos = self._worker_resume
                return Run(self.epoch, history, window_rows, piece_rows, worker, num_workers, pos.share, pos.batches)
            # the main process's set_epoch / load_state_dict, also those made after this worker started
            epoch, phases = self._shared.read()
        else:
            epoch, phases = self.epoch, self._resume
        history, window_rows, piece_rows, offset = resolve(phases, self._sizing(), num_workers)
        share, start = worker, 0
        if offset:  # same layout as when saved: continue the same plan
            counts = worker_batch_counts(self.plan(0, num_workers, epoch=epoch, window_rows=window_rows,
                                                   history=history, piece_rows=piece_rows))
            share, start = continue_share(counts, offset, worker, num_workers)
        return Run(epoch, history, window_rows, piece_rows, worker, num_workers, share, start)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # Planned now, not at the first next(): a DataLoader worker's state is asked for in between.
        run = self._run = self._pending(worker, num_workers, info is not None)
        self.epoch = run.epoch
        if info is not None:
            end_worker_on_ctrl_c()
            self._worker_resume = None
            self._shared.set_workers(num_workers)
        else:
            self._resume = None  # served from here on; state_dict() counts from the run
            run.pack_start, self._pack_resume = self._pack_resume, None
            self._shared.publish(self.epoch, None)
            self._shared.set_workers(0)
        return self._serve(run)

    def _serve(self, run: Run) -> Iterator[dict[str, torch.Tensor]]:
        sizing = self._sizing()
        lay = sizing.layout(run.num_workers)
        plan = self.plan(run.share, run.num_workers, epoch=run.epoch, window_rows=run.window_rows,
                         history=run.history, piece_rows=run.piece_rows)
        ragged = {c.name: c.kind for c in self.columns if c.ragged}
        opener = lambda verify: open_reader(self.manifest, verify=verify, remote=self._remote_files())  # noqa: E731
        direct = epoch_direct(self.manifest, self._direct, verify=self.verify, open_reader=opener,
                              keep=self._direct_sums, shared=self._shared_sums)
        # Units read a piece at a time keep each piece's sum (whole units: a piece each), so that a
        # later epoch reads and checks a task's pieces in one C call; whole units checked unit by
        # unit went through Python one unit at a time (img at a quarter of the data, whole-unit
        # pieces: 214k samples/s and 0.62 CPU-s/GB, against 335k and 0.44 summed)
        summed = self.verify and sizing.partial and not ragged
        reader = epoch_reader(opener, ragged=bool(ragged), partial=sizing.partial, verify=self.verify,
                              pieces=summed, threads=lay.threads,
                              sums=piece_sums(self._sums, self.manifest.unit_rows,
                                              run.piece_rows or int(self.manifest.unit_rows.max()),
                                              tuple(c.name for c in self.columns if c.name not in self._direct),
                                              self._shared_sums) if summed else None)
        packed, in_worker = self.pack is not None, get_worker_info() is not None
        tensors = make_shared_batch if in_worker else make_batch
        index_key = INDEX_KEY if self.return_index or packed else None
        lay, ring = batch_ring(sizing, lay, self.columns, self.normalize, index_key, in_worker, self._batch_rings) \
            if not packed and self._target is None else (lay, None)
        pf = Prefetcher(
            reader, plan, self.columns, self.manifest.unit_start, threads=lay.threads,
            budget_bytes=lay.budget - lay.outside, batches_ahead=lay.ahead, start_batch=run.start,
            index_key=index_key, normalize=self.normalize,
            make_batch=None if packed else tensors if ring is None else ring.make_batch,
            transform=None if packed else self.transform, ragged_views=packed,
            timeout=self.timeout, name=f"r{self.rank}w{run.worker}", buffers=self._buffers,
            finish_ragged=RaggedOutput(ragged, self.collate, self.decode, self.manifest.unit_start)
            if ragged and not packed else None, read_scratch=group_read_bytes(lay.outside, lay.threads),
            alloc=None if ring is None else ring.take, direct=direct)
        batches: Iterator[Any] = pf
        if packed:
            start = run.pack_start
            batches = serve_packed(pf, self.pack, self.batch_size, self.drop_last, self.columns[0].np_dtype,
                                   INDEX_KEY, tensors, start, (start or {}).get("skip", 0),
                                   lambda st: setattr(run, "pack_state", st),
                                   packed_group(lay.outside, tensors is make_batch), make_batches)
        try:
            if self._target is not None:  # copied to the device by a thread; counted below when handed out
                batches = DeviceFeeder(pf, self._target, self.on_device, lay, self._rings)
            for batch in batches:
                run.consumed += 1  # counted as delivered once handed out
                yield batch if not packed or self.transform is None else self.transform(batch)
        finally:
            batches.close()
            pf.close()
            reader.close()
            if direct is not None:
                direct.close()
            if ring is not None:
                keep_ring(ring, self._batch_rings)
            self.last_peak_accounted_bytes = pf.peak_accounted_bytes
            self.skipped_rows += getattr(pf.finish_ragged, "skipped", 0)

    def release_buffers(self) -> None:
        """Free the window buffers and large batches' buffers kept for the next epoch (they are
        reused to avoid page faults), the piece sums kept for verify (the next epoch checks its
        units whole again), and the shared memory of DataLoader workers that are done."""
        self._buffers.clear()
        self._rings.clear()
        self._batch_rings.clear()
        self._sums.clear()
        self._direct_sums.clear()
        if self._shared_sums is not None:
            self._shared_sums.forget()
        forget_done()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_buffers"] = []  # never ship buffers to DataLoader worker processes
        state["_rings"] = []
        state["_batch_rings"] = []
        state["_sums"] = []
        state["_direct_sums"] = []
        return state

    # ------------------------------------------------------------------ resume
    def _identity(self) -> dict[str, Any]:
        pack = {} if self.pack is None else {"pack": [self.pack.column, self.pack.seq_len, self.pack.pad_id, PACK_ROWS]}
        return {"fingerprint": self.manifest.fingerprint, "seed": self.seed, "batch_size": self.batch_size,
                "shuffle": self.shuffle, "drop_last": self.drop_last, "rank": self.rank, **pack}

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
        if self.pack is not None:
            if info is not None or self._shared.workers() or num_workers:
                raise StateError(f"{self.manifest.root}: packed batches resume only when served in this process "
                                 "(num_workers=0)")
            return packed_state(self._run, self._resume, self._pack_resume, self._sizing(), self.world_size,
                                self._identity(), self.epoch)
        if info is not None:
            run = self._run or self._pending(info.id, info.num_workers, in_worker=True)
            pos = WorkerPosition(run.worker, run.num_workers, run.share, run.start + run.consumed)
            phases = [*run.history, Phase(self.world_size, run.num_workers, run.window_rows, 0, run.piece_rows)]
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
            history, window_rows, piece_rows, offset = resolve(self._resume, self._sizing(), nw)
            taken = int(batches or 0)
        else:  # iterated here: the batches this iteration handed out
            history, window_rows, piece_rows, offset = run.history, run.window_rows, run.piece_rows, run.start
            taken = run.consumed if batches is None else int(batches)
        phases = [*history, Phase(self.world_size, nw, window_rows, offset + taken, piece_rows)]
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
        epoch, phases, pos = parse_state(state, self._identity(), root, self._row_batch)
        info = get_worker_info()
        self._pack_resume = check_pack_state(state, self.pack, root)
        if self._pack_resume is not None and (info is not None or  # the saved plan must continue as it was
                                              len(resolve(phases, self._sizing(), 1)[0]) != len(phases) - 1):
            raise StateError(f"{root}: a packed epoch resumes in one process with the memory budget, world size "
                             "and workers it was saved with")
        if pos is None and info is not None:
            raise StateError(f"{root}: a rank's resume state is loaded in the main process, before the DataLoader "
                             "starts its workers (ds.load_state_dict(state), then iterate)")
        if pos is not None:
            check_worker_state(pos, phases, None if info is None else (info.id, info.num_workers), self._sizing())
            self._worker_resume = (tuple(phases[:-1]), phases[-1].window_rows, phases[-1].piece_rows, pos)
        else:
            self._resume = phases
            self._shared.publish(epoch, phases)
        self.epoch = epoch
        self._run = None

    def __repr__(self) -> str:
        return (f"StreamDataset({str(self.manifest.root)!r}, rows={self.manifest.rows}, batch_size={self.batch_size}, "
                f"memory_budget={self.memory_budget}, columns={[c.name for c in self.columns]})")
