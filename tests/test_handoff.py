"""Batches that DataLoader workers assemble in slots of shared memory (loader/handoff.py): they
reach the main process whole and right, a slot is never reused while a batch in the main process
still views it, whatever the loop keeps, transforms do, or the DataLoader's habits are
(``pin_memory``, ``persistent_workers``, ``spawn``), and the main process lets the memory go."""

from __future__ import annotations

import copy
import gc
import pickle
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import streambatch
from streambatch import StreamDataset
from streambatch.loader import handoff
from streambatch.loader.handoff import SlotBatch, BatchRing

from conftest import write_sorted_npy

ROWS = 3001
BATCH = 32

pytestmark = pytest.mark.skipif(not handoff.available(), reason="shared memory files are Linux only")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    root = tmp_path_factory.mktemp("handoff")
    src = write_sorted_npy(root / "src", ROWS, width=6)
    streambatch.convert(src, root / "d.zarr", unit_rows=101, label="y")
    return root / "d.zarr", np.load(src / "x.npy")


def loader(path: Path, num_workers: int = 2, **kw: Any) -> torch.utils.data.DataLoader:
    dl_kw = {k: kw.pop(k) for k in ("pin_memory", "persistent_workers", "multiprocessing_context") if k in kw}
    ds = StreamDataset(path, batch_size=BATCH, memory_budget=200_000, return_index=True, **kw)
    return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers, **dl_kw)


def check_batch(batch: dict[str, torch.Tensor], x: np.ndarray, n: int = ROWS) -> np.ndarray:
    rows = batch["_row"].numpy()
    assert np.array_equal(batch["x"].numpy(), x[rows])
    assert np.array_equal(batch["id"].numpy(), rows)
    assert np.array_equal(batch["y"].numpy(), rows * 10 // n)
    return rows


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_worker_batches_arrive_as_views_of_shared_slots(data: tuple[Path, np.ndarray], context: str) -> None:
    path, x = data
    served, mapped = [], 0
    for batch in loader(path, multiprocessing_context=context):
        served.append(check_batch(batch, x))
        mapped = max(mapped, handoff.mapped_rings())
    assert mapped >= 1  # the batches crossed in slots, not as torch's own shared-memory copies
    assert np.array_equal(np.sort(np.concatenate(served)), np.arange(ROWS))


def test_batches_the_loop_keeps_are_never_overwritten(data: tuple[Path, np.ndarray]) -> None:
    """Keeping every batch (far more than the slots): the workers run out of free slots and
    send the rest as torch does; every kept batch still holds its own rows at the end."""
    path, x = data
    kept = list(loader(path))
    assert len(kept) == -(-ROWS // BATCH)
    assert np.array_equal(np.sort(np.concatenate([check_batch(b, x) for b in kept])), np.arange(ROWS))


def _scale_in_place(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    batch["x"] = batch["x"] * 2  # a new tensor for one column; the others still view the slot
    batch["twice_id"] = batch["id"] * 2
    return batch


def _new_dict(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"x": batch["x"], "_row": batch["_row"]}  # views of the slot in a dict of the transform's own


@pytest.mark.parametrize("transform", [_scale_in_place, _new_dict])
def test_transforms_that_replace_columns_or_the_batch(data: tuple[Path, np.ndarray], transform: Any) -> None:
    path, x = data
    served = []
    for batch in loader(path, transform=transform, multiprocessing_context="fork"):
        rows = batch["_row"].numpy()
        scale = 2 if transform is _scale_in_place else 1
        assert np.array_equal(batch["x"].numpy(), scale * x[rows])
        if transform is _scale_in_place:
            assert list(batch) == ["id", "x", "y", "_row", "twice_id"]
            assert np.array_equal(batch["twice_id"].numpy(), 2 * rows)
            assert np.array_equal(batch["id"].numpy(), rows)
        served.append(rows)
    assert np.array_equal(np.sort(np.concatenate(served)), np.arange(ROWS))


@pytest.mark.filterwarnings("ignore:.*pin_memory.*")  # no accelerator on CI machines: torch then does not pin
def test_pin_memory_persistent_workers_and_a_loop_left_early(data: tuple[Path, np.ndarray]) -> None:
    path, x = data
    dl = loader(path, pin_memory=True, persistent_workers=True, multiprocessing_context="fork")
    ds = dl.dataset
    for i, batch in enumerate(dl):  # left after a few batches: the next epoch still starts clean
        check_batch(batch, x)
        if i == 5:
            break
    orders = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        orders.append(np.concatenate([check_batch(b, x) for b in dl]))
        assert np.array_equal(np.sort(orders[-1]), np.arange(ROWS))
    assert not np.array_equal(orders[0], orders[1])
    del dl, batch
    gc.collect()
    ds.release_buffers()  # the workers are gone: their slots are unmapped here once no batch views them
    assert handoff.mapped_rings() == 0


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_persistent_workers_keep_their_slots_across_epochs(data: tuple[Path, np.ndarray], context: str) -> None:
    """A persistent worker assembles every epoch's batches in the one block it made (its pages
    faulted in once, the main process's map of it made once): the main process maps the same
    blocks in every epoch, each batch right, and lets them go once the workers are gone."""
    path, x = data
    before = set(handoff._mapped)
    dl = loader(path, persistent_workers=True, multiprocessing_context=context)
    ds = dl.dataset
    blocks = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        rows = np.concatenate([check_batch(b, x) for b in dl])
        assert np.array_equal(np.sort(rows), np.arange(ROWS))
        blocks.append(set(handoff._mapped) - before)
    assert len(blocks[0]) == 2 and blocks[0] == blocks[1] == blocks[2]
    del dl
    gc.collect()
    ds.release_buffers()
    assert not set(handoff._mapped) - before


def test_describe_keeps_the_slots_inside_each_workers_budget(data: tuple[Path, np.ndarray]) -> None:
    path, _ = data
    ds = StreamDataset(path, batch_size=BATCH, memory_budget=200_000, return_index=True)
    alone, two = ds.describe(), ds.describe(num_workers=2)
    assert alone["worker_batch_slots"] == 0
    assert two["worker_batch_slots"] >= 1
    assert two["predicted_peak_bytes"] <= 200_000
    assert two["window_rows"] == ds.describe(num_workers=2)["window_rows"]


def _slot_batch(ring: BatchRing, rows: int, fill: int) -> dict[str, torch.Tensor]:
    raw = ring.take(rows * 16 + 64)
    flat = raw[:rows * 16]
    cols = {"a": flat[:rows * 8].view(np.int64), "b": flat[rows * 8:].view(np.float64)}
    cols["a"][:] = np.arange(rows) + fill
    cols["b"][:] = fill
    return ring.make_batch(flat, cols)


def test_a_slot_is_free_again_only_once_the_receivers_views_are_gone(kernels: str) -> None:
    """In one process: pickled as the DataLoader's queue pickles, a slot batch arrives as views
    of the slot; the slot stays taken while they live, and is freed once they are gone (at once
    by the C module's buffer under them; without it, when the receiver next looks: a batch
    arriving, ``forget_done``), never by the sender's views going."""
    ring = BatchRing(2, 1000)
    try:
        sent = _slot_batch(ring, 8, 100)
        assert isinstance(sent, SlotBatch) and ring.free_slots() == 1
        got = pickle.loads(ForkingPickler.dumps(sent))
        assert type(got) is dict and np.array_equal(got["a"].numpy(), np.arange(8) + 100)
        slot = ring.slot_of(sent["a"].numpy())
        del sent
        gc.collect()
        assert ring.free_slots() == 1  # sent: the receiver frees it
        b = got["b"]
        del got
        gc.collect()
        assert ring.free_slots() == 1 and float(b[0]) == 100.0  # one view is enough to keep it
        del b
        gc.collect()
        assert ring.free_slots() == (2 if kernels == "native" else 1)  # without C: seen gone later
        handoff.forget_done()
        assert ring.free_slots() == 2
        # a deep copy is a plain dict of its own; a batch never sent frees its slot when it goes;
        # a second send of one batch is a copy
        kept = _slot_batch(ring, 8, 7)
        deep = copy.deepcopy(kept)
        deep["a"][0] = 99
        assert type(deep) is dict and int(kept["a"][0]) == 7 and ring.free_slots() == 1
        assert ring.slot_of(kept["a"].numpy()) == slot and ring.free_slots() == 1
        again = pickle.loads(ForkingPickler.dumps(kept))
        copied = pickle.loads(ForkingPickler.dumps(kept))
        again["a"][0] = -1  # the slot; the copy does not follow it
        assert int(copied["a"][0]) == 7 and np.array_equal(copied["b"].numpy(), np.full(8, 7.0))
        del again
        gc.collect()
        handoff.forget_done()
        assert ring.free_slots() == 2
        unsent = _slot_batch(ring, 8, 9)
        assert ring.free_slots() == 1
        del unsent
        gc.collect()
        assert ring.free_slots() == 2
    finally:
        ring.close()


def test_a_full_ring_and_a_batch_larger_than_a_slot_get_plain_memory() -> None:
    ring = BatchRing(1, 4096)
    try:
        first = _slot_batch(ring, 8, 1)
        second = _slot_batch(ring, 8, 2)  # no slot free
        assert isinstance(first, SlotBatch) and not isinstance(second, SlotBatch)
        big = ring.take(8192)
        assert ring.slot_of(big) is None and ring.spilled == 2
        del first
        gc.collect()
        assert isinstance(_slot_batch(ring, 8, 3), SlotBatch)
    finally:
        ring.close()
    assert ring.closed and not isinstance(_slot_batch(ring, 8, 4), SlotBatch)  # closed: no more slots


def test_batches_served_here_from_a_private_ring_are_never_overwritten(tmp_path: Path) -> None:
    """Batches of 1 MiB or more served in this process are assembled in a private ring (reused,
    already-faulted pages), kept by the dataset for the next epoch: a loop that keeps every one
    still has each batch's own rows, also once later epochs have reused the ring."""
    src = write_sorted_npy(tmp_path / "src", 700, width=4096)  # 16 KiB rows: batches of 64 are 1 MiB
    streambatch.convert(src, tmp_path / "d.zarr", unit_rows=10, label="y")
    x = np.load(src / "x.npy")
    ds = StreamDataset(tmp_path / "d.zarr", batch_size=64, memory_budget=12 << 20, return_index=True)
    fixed = {c.name: c for c in ds.columns}
    lay = ds._sizing().layout(1)
    _, ring = handoff.batch_ring(ds._sizing(), lay, fixed.values(), ds.normalize, "_row", in_worker=False)
    assert ring is not None and not ring.shared and ring.slots >= 2
    ring.close()
    rings, first = [], None
    for epoch in range(3):
        ds.set_epoch(epoch)
        kept = list(ds)
        assert len(kept) == 11
        rows = np.concatenate([check_batch(b, x, 700) for b in kept])
        assert np.array_equal(np.sort(rows), np.arange(700))
        rings.append(ds._batch_rings[0])
        if epoch == 0:
            first = kept  # held through the next epochs, which take the ring's other slots
        del kept
        assert np.array_equal(np.sort(np.concatenate([check_batch(b, x, 700) for b in first])), np.arange(700))
    assert rings[0] is rings[1] is rings[2] and not rings[0].closed  # one ring, faulted in once
    ds.release_buffers()
    assert ds._batch_rings == []


def test_small_batches_served_here_need_no_ring(data: tuple[Path, np.ndarray]) -> None:
    path, _ = data
    ds = StreamDataset(path, batch_size=BATCH, memory_budget=200_000, return_index=True)
    lay = ds._sizing().layout(1)
    assert handoff.batch_ring(ds._sizing(), lay, ds.columns, ds.normalize, "_row", in_worker=False) == (lay, None)
    ring = BatchRing(2, 4096, shared=False)
    try:
        batch = _slot_batch(ring, 8, 5)
        assert type(batch) is dict and ring.free_slots() == 1  # served here: never pickled as a slot
        del batch
        gc.collect()
        assert ring.free_slots() == 2
    finally:
        ring.close()


def test_no_python_code_runs_as_a_slot_batch_dies(kernels: str) -> None:
    """A Ctrl-C is taken by whatever Python code runs next, and CPython prints and drops an
    exception raised in a finaliser: a batch dying (in a worker or in the training loop) must run
    none, or a worker, or the loop, that takes its ``KeyboardInterrupt`` there serves on."""
    import sys

    ring = BatchRing(2, 4096)
    try:
        for send in (False, True):
            batch = _slot_batch(ring, 8, 1)
            got = pickle.loads(ForkingPickler.dumps(batch)) if send else None
            calls: list[str] = []
            sys.setprofile(lambda frame, event, arg: calls.append(frame.f_code.co_qualname) if event == "call" else None)
            try:
                del batch, got
            finally:
                sys.setprofile(None)
            assert calls == [], f"Python code ran as a slot batch died: {calls}"
            handoff.forget_done()
            assert ring.free_slots() == 2
    finally:
        ring.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pin_memory pins only with one)")
def test_pin_memory_rebuilds_slot_batches_in_its_thread_and_pins_them(data: tuple[Path, np.ndarray]) -> None:
    """With an accelerator, torch's pin_memory thread takes the workers' batches off the queue (so
    the slots are mapped and freed there) and hands on pinned copies: every row once, right."""
    path, x = data
    served = []
    for batch in loader(path, pin_memory=True, multiprocessing_context="fork"):
        assert all(t.is_pinned() for t in batch.values())
        served.append(check_batch(batch, x))
    assert np.array_equal(np.sort(np.concatenate(served)), np.arange(ROWS))
