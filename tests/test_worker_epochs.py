"""DataLoader workers as users set them up by habit: persistent workers that must reshuffle every
epoch, and mid-epoch resume with workers (README's ``ds.state_dict()``, torchdata's
``StatefulDataLoader``), in fresh processes, under the same and other memory budgets."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import streambatch
from streambatch import StateError, StreamDataset

from conftest import write_sorted_npy

ROWS = 5003
BATCH = 64
BATCHES = -(-ROWS // BATCH)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workers")
    streambatch.convert(write_sorted_npy(root / "src", ROWS), root / "d.zarr", unit_rows=97, label="y")
    return root / "d.zarr"


def small(path: Path, **kw: object) -> StreamDataset:
    kw.setdefault("batch_size", BATCH)
    kw.setdefault("memory_budget", 120_000)  # four windows over the 5003 rows
    kw.setdefault("return_index", True)
    return StreamDataset(path, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_persistent_workers_reshuffle_every_epoch(dataset: Path, context: str) -> None:
    ds = small(dataset)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True,
                                         multiprocessing_context=context)
    orders = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        orders.append(np.concatenate([b["_row"].numpy() for b in loader]))
    for order in orders:
        assert np.array_equal(np.sort(order), np.arange(ROWS))  # each epoch an exact permutation
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    assert not np.array_equal(orders[0], orders[2])
    # and the last is that epoch's order, as fresh workers serve it
    fresh = small(dataset)
    fresh.set_epoch(2)
    again = torch.utils.data.DataLoader(fresh, batch_size=None, num_workers=2, multiprocessing_context="fork")
    assert np.array_equal(orders[2], np.concatenate([b["_row"].numpy() for b in again]))


def test_persistent_workers_see_a_state_loaded_after_they_started(dataset: Path) -> None:
    ds = small(dataset, seed=3)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    ds.set_epoch(1)
    full = [b["_row"].numpy() for b in loader]
    ds.load_state_dict(ds.state_dict(batches=10))  # workers are alive: the state must reach them
    rest = [b["_row"].numpy() for b in loader]
    assert len(rest) == len(full) - 10
    assert all(np.array_equal(x, y) for x, y in zip(rest, full[10:]))


def test_state_dict_without_batches_fails_loudly_with_workers(dataset: Path) -> None:
    ds = small(dataset)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    it = iter(loader)
    for _ in range(5):
        next(it)
    with pytest.raises(StateError, match="batches=.*StatefulDataLoader"):
        ds.state_dict()
    state = ds.state_dict(batches=5)  # num_workers taken from the iteration
    del it
    assert state["phases"][-1]["num_workers"] == 2
    fresh = small(dataset)
    fresh.load_state_dict(state)
    rest = np.concatenate([b["_row"].numpy() for b in torch.utils.data.DataLoader(fresh, batch_size=None,
                                                                                  num_workers=2)])
    full = np.concatenate([b["_row"].numpy() for b in torch.utils.data.DataLoader(small(dataset), batch_size=None,
                                                                                  num_workers=2)])
    assert np.array_equal(rest, full[5 * BATCH:])


_STATEFUL = textwrap.dedent("""
    import json, sys
    import numpy as np
    import torch
    from torchdata.stateful_dataloader import StatefulDataLoader
    from streambatch import StreamDataset

    path, workers, budget, stop, state_in, out = sys.argv[1:7]
    ds = StreamDataset(path, batch_size=64, memory_budget=int(budget), return_index=True, seed=5)
    kw = dict(num_workers=int(workers))
    if int(workers):
        kw["multiprocessing_context"] = "fork"
    loader = StatefulDataLoader(ds, batch_size=None, **kw)
    ds.set_epoch(2)
    if state_in != "-":
        loader.load_state_dict(json.loads(open(state_in).read()))
    rows = []
    try:
        for i, b in enumerate(loader):
            rows.append(b["_row"].numpy().tolist())
            if i + 1 == int(stop):
                with open(out + ".state", "w") as f:
                    f.write(json.dumps(loader.state_dict()))
                break
    except Exception as e:
        rows = f"{type(e).__name__}: {e}"
    with open(out, "w") as f:
        f.write(json.dumps(rows))
""")


def _stateful_run(dataset: Path, tmp_path: Path, name: str, workers: int, budget: int, stop: int,
                  state_in: Path | None) -> tuple[object, Path]:
    out = tmp_path / name
    subprocess.run([sys.executable, "-c", _STATEFUL, str(dataset), str(workers), str(budget), str(stop),
                    str(state_in or "-"), str(out)], check=True, timeout=600)
    return json.loads(out.read_text()), Path(str(out) + ".state")


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_stateful_dataloader_resumes_exactly_the_rest_in_a_fresh_process(dataset: Path, tmp_path: Path,
                                                                          workers: int) -> None:
    pytest.importorskip("torchdata.stateful_dataloader")
    ds = small(dataset, seed=5)
    ds.set_epoch(2)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)  # the uninterrupted epoch
    full = [b["_row"].numpy().tolist() for b in loader]
    head, state = _stateful_run(dataset, tmp_path, "head", workers, 120_000, 29, None)
    tail, _ = _stateful_run(dataset, tmp_path, "tail", workers, 120_000, 0, state)
    assert isinstance(head, list) and isinstance(tail, list), (head, tail)
    assert len(full) == BATCHES and len(head) == 29
    assert head + tail == full  # the same batches in the same order: nothing lost, nothing repeated
    served = np.concatenate([np.asarray(b) for b in head + tail])
    assert np.array_equal(np.sort(served), np.arange(ROWS))


def test_stateful_dataloader_worker_state_under_a_smaller_budget_is_a_state_error(dataset: Path,
                                                                                  tmp_path: Path) -> None:
    pytest.importorskip("torchdata.stateful_dataloader")
    _, state = _stateful_run(dataset, tmp_path, "head", 2, 240_000, 29, None)
    tail, _ = _stateful_run(dataset, tmp_path, "tail", 2, 100_000, 0, state)
    assert isinstance(tail, str) and tail.startswith("StateError:") and "memory_budget" in tail, tail


@pytest.mark.parametrize("budget", [60_000, 480_000])
def test_rank_state_resumes_under_another_budget(dataset: Path, budget: int) -> None:
    ds = small(dataset, seed=7, memory_budget=240_000)
    ds.set_epoch(1)
    it = iter(ds)
    head = [next(it)["_row"].numpy() for _ in range(17)]
    state = ds.state_dict()
    it.close()  # type: ignore[attr-defined]
    fresh = small(dataset, seed=7, memory_budget=budget)
    fresh.load_state_dict(state)
    rest = [b["_row"].numpy() for b in fresh]
    served = np.concatenate(head + rest)
    assert np.array_equal(np.sort(served), np.arange(ROWS))  # exactly the rest, whatever the window


def test_worker_state_cannot_be_loaded_in_the_main_process(dataset: Path, tmp_path: Path) -> None:
    pytest.importorskip("torchdata.stateful_dataloader")
    _, state = _stateful_run(dataset, tmp_path, "head", 2, 120_000, 3, None)
    snapshot = json.loads(state.read_text())
    worker_states = _dataset_states(snapshot)
    assert worker_states, snapshot
    ds = small(dataset, seed=5)
    with pytest.raises(StateError, match="StatefulDataLoader.load_state_dict"):
        ds.load_state_dict(worker_states[0])


def _dataset_states(obj: object) -> list[dict[str, object]]:
    """Every dict in ``obj`` that is a streambatch state saved inside a worker."""
    found = []
    if isinstance(obj, dict):
        if "worker" in obj and "fingerprint" in obj:
            found.append(obj)
        for v in obj.values():
            found += _dataset_states(v)
    elif isinstance(obj, list):
        for v in obj:
            found += _dataset_states(v)
    return found


@pytest.mark.parametrize("rows", [1000, 40])
def test_describe_for_one_row_batches_and_data_smaller_than_a_batch(tmp_path: Path, rows: int) -> None:
    streambatch.convert(write_sorted_npy(tmp_path / "src", rows), tmp_path / "d", label="y")
    for batch in (1, 256):
        ds = StreamDataset(tmp_path / "d", batch_size=batch, memory_budget="1MiB")
        d = ds.describe()
        assert 1.0 <= d["predicted_deff"] <= max(1, min(batch, rows)) and d["predicted_kl"] > 0
        assert d["batches"] == len(ds) == -(-rows // batch) == sum(1 for _ in ds)


def test_world_size_zero_and_no_columns_are_clear_errors(dataset: Path) -> None:
    with pytest.raises(ValueError, match="world_size must be at least 1, got 0"):
        small(dataset, rank=0, world_size=0)
    with pytest.raises(ValueError, match=r"columns=\[\] selects no column"):
        small(dataset, columns=[])
