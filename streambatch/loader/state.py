"""Resume state, and the control block that carries ``set_epoch`` to DataLoader workers.

A state is a small versioned JSON dict (no pickle)::

    {"version": 1, "fingerprint": ..., "seed": ..., "epoch": ..., "batch_size": ...,
     "shuffle": ..., "drop_last": ..., "rank": ..., "batches": N,
     "phases": [{"world_size", "num_workers", "window_rows", "batches", "piece_rows"}, ...],
     "worker": {"id", "num_workers", "share", "batches"}}      <- only inside a DataLoader worker

``phases`` lists the layouts the epoch ran under (an elastic resume adds one); the last one's
``batches`` is how many batches the rank's training loop took; ``piece_rows`` is the epoch's
shuffle piece size (absent in states saved before pieces: whole units).  Inside a DataLoader worker
(``torchdata``'s ``StatefulDataLoader`` asks every worker for its state) the worker only knows
its own batches, so the state names the worker and the share of the epoch it serves instead.

DataLoader workers hold a copy of the dataset made when they started; with
``persistent_workers=True`` they keep it across epochs.  :class:`Shared` is a few bytes of shared
memory that the main process writes (epoch, a loaded resume state) and every worker reads when
it starts an iteration, so that ``set_epoch`` and ``load_state_dict`` reach live workers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..errors import StateError
from ..plan import Phase, next_worker, split_consumed
from .sizing import Sizing

__all__ = ["STATE_VERSION", "Shared", "Run", "WorkerPosition", "parse_state", "make_state", "resolve",
           "continue_share", "check_worker_state"]

STATE_VERSION = 1
_HEADER = 3  # int64 slots: epoch, workers of the last iteration, length of the resume JSON (-1: none)
_CAPACITY = 16384  # bytes of resume JSON: about 200 elastic phases


@dataclass(frozen=True)
class WorkerPosition:
    """Where one DataLoader worker is in its share of an epoch (a state saved inside a worker)."""

    worker: int
    num_workers: int
    share: int
    batches: int


@dataclass
class Run:
    """One iteration over the dataset in this process: the plan it follows and the batches it gave."""

    epoch: int
    history: tuple[Phase, ...]
    window_rows: int
    piece_rows: int
    worker: int
    num_workers: int
    share: int  # the worker share of the epoch this process serves
    start: int  # batches of that share served before this iteration (a resume)
    consumed: int = 0  # batches handed out by this iteration
    pack_start: dict[str, Any] | None = None  # packed batches: the loaded state's packer part, resumed from
    pack_state: dict[str, Any] | None = None  # packed batches: the packer's state after the last one served


class Shared:
    """Epoch, loaded resume phases and the worker count of the last iteration, in shared memory.

    A ``torch`` tensor in shared memory: a forked worker shares its pages, and a spawned one gets
    it by file descriptor (torch's multiprocessing reductions), so both see later writes.  The
    main process writes before it starts an iteration (``set_epoch``, ``load_state_dict``);
    workers read when they start one, after the DataLoader has told them to: no lock is needed.
    """

    def __init__(self) -> None:
        import torch

        self._t = torch.zeros(8 * _HEADER + _CAPACITY, dtype=torch.uint8).share_memory_()
        self.publish(0, None)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if not self._t.is_shared():  # a plain copy (deepcopy, pickle): a block of its own
            self._t.share_memory_()

    def _header(self) -> np.ndarray:
        return self._t.numpy()[: 8 * _HEADER].view(np.int64)

    def publish(self, epoch: int, phases: list[Phase] | None) -> None:
        """Set what the next iteration of every process (main or worker) starts from."""
        head = self._header()
        if phases is None:
            head[2] = -1
        else:
            raw = json.dumps([p._asdict() for p in phases]).encode()
            if len(raw) > _CAPACITY:
                raise StateError(f"resume state of {len(phases)} phases is too long ({len(raw)} bytes)")
            self._t.numpy()[8 * _HEADER:8 * _HEADER + len(raw)] = np.frombuffer(raw, np.uint8)
            head[2] = len(raw)
        head[0] = epoch

    def read(self) -> tuple[int, list[Phase] | None]:
        head = self._header()
        epoch, n = int(head[0]), int(head[2])
        if n < 0:
            return epoch, None
        raw = self._t.numpy()[8 * _HEADER:8 * _HEADER + n].tobytes()
        return epoch, [Phase(**p) for p in json.loads(raw)]

    def set_workers(self, n: int) -> None:
        """Record who runs the current iteration: 0 the main process, else the worker count."""
        self._header()[1] = n

    def workers(self) -> int:
        return int(self._header()[1])


def make_state(identity: dict[str, Any], epoch: int, phases: list[Phase],
               worker: WorkerPosition | None = None) -> dict[str, Any]:
    """The JSON-able state dict (see the module docstring)."""
    state = {"version": STATE_VERSION, **identity, "epoch": epoch,
             "batches": phases[-1].batches if worker is None else worker.batches,
             "phases": [p._asdict() for p in phases]}
    if worker is not None:
        state["worker"] = {"id": worker.worker, "num_workers": worker.num_workers, "share": worker.share,
                           "batches": worker.batches}
    return state


def parse_state(state: Mapping[str, Any], identity: dict[str, Any], root: Any, batch_size: int
                ) -> tuple[int, list[Phase], WorkerPosition | None]:
    """Validate a state against this dataset's ``identity``; ``StateError`` naming what differs."""
    try:
        state = dict(json.loads(json.dumps(state)))
        version = state["version"]
        if version != STATE_VERSION:
            raise StateError(f"state version {version} is not supported (expected {STATE_VERSION})")
        for key, mine in identity.items():
            if key != "rank" and state[key] != mine:
                raise StateError(f"{root}: state was saved with {key}={state[key]!r}, this dataset has {mine!r}")
        epoch = int(state["epoch"])
        phases = [Phase(int(p["world_size"]), int(p["num_workers"]), int(p["window_rows"]), int(p["batches"]),
                        int(p.get("piece_rows", 0))) for p in state["phases"]]
        w = state.get("worker")
        worker = None if w is None else WorkerPosition(int(w["id"]), int(w["num_workers"]), int(w["share"]),
                                                       int(w["batches"]))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        if isinstance(e, StateError):
            raise
        raise StateError(f"{root}: malformed resume state ({type(e).__name__}: {e})") from None
    if epoch < 0 or not phases or any(p.world_size < 1 or p.num_workers < 1 or p.window_rows < batch_size
                                      or p.batches < 0 or p.piece_rows < 0
                                      or p.piece_rows != phases[0].piece_rows for p in phases):
        raise StateError(f"{root}: resume state out of range ({phases})")
    if worker is not None and not (0 <= worker.worker < worker.num_workers and 0 <= worker.share < worker.num_workers
                                   and worker.batches >= 0 and worker.num_workers == phases[-1].num_workers):
        raise StateError(f"{root}: resume state out of range (worker {state.get('worker')})")
    return epoch, phases, worker


def resolve(phases: list[Phase] | None, sizing: Sizing, num_workers: int
            ) -> tuple[tuple[Phase, ...], int, int, int]:
    """(earlier phases, window rows, piece rows, batches already taken in the current phase) for a resume.

    The saved layout is continued where it is this one's (world size, workers) and its window
    still fits the budget; otherwise the rest of the epoch is planned for this layout (elastic).
    An epoch keeps the piece size it started with.
    """
    lay = sizing.layout(num_workers)
    if not phases:
        return (), lay.window_rows, lay.piece_rows, 0
    last = phases[-1]
    if (last.world_size, last.num_workers) == (sizing.world_size, num_workers) and sizing.fits(last.window_rows,
                                                                                               num_workers):
        return tuple(phases[:-1]), last.window_rows, last.piece_rows, last.batches
    return tuple(phases), lay.window_rows, phases[0].piece_rows, 0  # elastic: plan what earlier phases left


def continue_share(counts: list[int], taken: int, worker: int, num_workers: int) -> tuple[int, int]:
    """(share, batches of it already served) for ``worker`` when a DataLoader whose workers serve
    ``counts`` batches has yielded ``taken``: the same plan continues, skipping arithmetically."""
    share = (next_worker(counts, taken) + worker) % num_workers
    return share, split_consumed(counts, taken)[share]


def check_worker_state(pos: WorkerPosition, phases: list[Phase], here: tuple[int, int] | None, sizing: Sizing) -> None:
    """A worker's state (``StatefulDataLoader``) resumes only in that worker (``here``: this
    process's (worker, num_workers), None outside a worker), with the same layout and a budget
    its windows fit; ``StateError`` otherwise."""
    where = f"{sizing.root}: the state of DataLoader worker {pos.worker} of {pos.num_workers}"
    if here is None:
        raise StateError(f"{where} resumes in that worker: restore it with StatefulDataLoader.load_state_dict")
    if (*here, sizing.world_size) != (pos.worker, pos.num_workers, phases[-1].world_size):
        raise StateError(f"{where} and world size {phases[-1].world_size} cannot resume in worker {here[0]} of "
                         f"{here[1]} with world size {sizing.world_size}: resume with the same num_workers "
                         "and world size, or save the rank's state with ds.state_dict(batches=...)")
    if not sizing.fits(phases[-1].window_rows, pos.num_workers):
        raise StateError(f"{where} follows windows of {phases[-1].window_rows} rows, which do not fit "
                         f"memory_budget {sizing.memory_budget} with {pos.num_workers} worker(s): resume with the "
                         "budget it was saved under (a worker's share cannot be re-planned alone)")
