"""StreamDataset end to end on real Zarr and Parquet datasets made by the real converter."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streambatch
from streambatch import StateError, StreamDataset
from streambatch.quality import label_sorted_kl, summarize
from streambatch.storage import FORMATS

from conftest import fail_batched_checks_of, interrupt_epochs, streambatch_threads, write_sorted_npy

ROWS = 5003


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ds")
    src = write_sorted_npy(root / "src", ROWS)
    out = {}
    for fmt in FORMATS:
        out[fmt] = root / f"d.{fmt}"
        streambatch.convert(src, out[fmt], format=fmt, unit_rows=97, label="y")
    out["zarr-lz4"] = root / "d-lz4.zarr"
    streambatch.convert(src, out["zarr-lz4"], codec="lz4", unit_rows=97)
    return out


def epoch_rows(ds: StreamDataset) -> list[np.ndarray]:
    return [b["_row"].numpy().copy() for b in ds]


def small(path: Path, **kw) -> StreamDataset:
    kw.setdefault("batch_size", 64)
    kw.setdefault("memory_budget", 120_000)  # four windows over the 5003 rows
    kw.setdefault("return_index", True)
    return StreamDataset(path, **kw)


@pytest.mark.parametrize("fmt", [*FORMATS, "zarr-lz4"])
def test_epoch_is_a_permutation_with_correct_values(datasets, fmt):
    ds = small(datasets[fmt])
    x = np.load(datasets["zarr"].parent / "src" / "x.npy")
    seen = []
    for b in ds:
        rows = b["_row"].numpy()
        assert np.array_equal(b["id"].numpy(), rows)
        assert np.array_equal(b["x"].numpy(), x[rows])
        assert np.array_equal(b["y"].numpy(), rows * 10 // ROWS)
        assert b["x"].dtype == torch.float32 and b["x"].shape[1:] == (4,)
        seen.append(rows)
    order = np.concatenate(seen)
    assert np.array_equal(np.sort(order), np.arange(ROWS))
    assert len(seen) == len(ds) == -(-ROWS // 64)
    assert ds.describe()["window_units"] < ds.manifest.n_units / 2  # several windows: out of core


def test_one_and_four_threads_give_identical_batches(datasets):
    a = list(small(datasets["zarr"], threads=1))
    b = list(small(datasets["zarr"], threads=4))
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k])


def test_order_is_deterministic_and_fresh_every_epoch(datasets):
    ds = small(datasets["zarr"], seed=5)
    e0 = np.concatenate(epoch_rows(ds))
    assert np.array_equal(e0, np.concatenate(epoch_rows(small(datasets["zarr"], seed=5))))
    ds.set_epoch(1)
    e1 = np.concatenate(epoch_rows(ds))
    assert not np.array_equal(e0, e1)
    assert np.array_equal(np.sort(e1), np.arange(ROWS))
    assert not np.array_equal(e0, np.concatenate(epoch_rows(small(datasets["zarr"], seed=6))))


def test_no_shuffle_is_storage_order(datasets):
    order = np.concatenate(epoch_rows(small(datasets["parquet"], shuffle=False)))
    assert np.array_equal(order, np.arange(ROWS))


def test_drop_last_and_columns_projection(datasets):
    ds = small(datasets["zarr"], drop_last=True, columns=["y"])
    batches = list(ds)
    assert len(batches) == len(ds) == ROWS // 64
    assert all(set(b) == {"y", "_row"} and len(b["y"]) == 64 for b in batches)


def test_ranks_are_disjoint_cover_the_data_and_have_equal_lengths(datasets):
    per_rank = [np.concatenate(epoch_rows(small(datasets["zarr"], rank=r, world_size=3))) for r in range(3)]
    lens = {len(small(datasets["zarr"], rank=r, world_size=3)) for r in range(3)}
    assert len(lens) == 1
    allrows = np.concatenate(per_rank)
    assert set(allrows.tolist()) == set(range(ROWS))
    assert allrows.size - ROWS < 3  # wrap padding to ceil(N/W) per rank


@pytest.mark.parametrize(("fmt", "num_workers"), [("zarr", 3), *((fmt, 2) for fmt in FORMATS)])
def test_dataloader_workers_deliver_every_sample_once_in_a_deterministic_order(datasets, fmt, num_workers):
    ds = small(datasets[fmt])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*worker processes in total.*")  # 3 workers on 2 cores
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers)
        a = [b["_row"].numpy() for b in loader]
        b = [b["_row"].numpy() for b in loader]
    order = np.concatenate(a)
    assert np.array_equal(np.sort(order), np.arange(ROWS))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert len(a) == len(ds)


def test_dataloader_with_pin_memory(datasets):
    ds = small(datasets["parquet"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pin_memory.*")  # no accelerator on CI machines
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, pin_memory=True)
        order = np.concatenate([b["_row"].numpy() for b in loader])
    assert np.array_equal(np.sort(order), np.arange(ROWS))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stop=st.integers(0, -(-ROWS // 64)), epoch=st.integers(0, 3), fmt=st.sampled_from(list(FORMATS)))
def test_resume_at_any_point_serves_exactly_the_rest(datasets, stop, epoch, fmt):
    ds = small(datasets[fmt], seed=2)
    ds.set_epoch(epoch)
    full = epoch_rows(ds)
    ds = small(datasets[fmt], seed=2)
    ds.set_epoch(epoch)
    it = iter(ds)
    for _ in range(stop):
        next(it)
    state = json.loads(json.dumps(ds.state_dict()))
    it.close()
    fresh = small(datasets[fmt], seed=2)
    fresh.load_state_dict(state)
    rest = epoch_rows(fresh)
    assert len(rest) == len(full) - stop
    assert all(np.array_equal(x, y) for x, y in zip(rest, full[stop:]))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_resume_with_dataloader_workers(datasets, fmt):
    ds = small(datasets[fmt], seed=4)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    full = [b["_row"].numpy() for b in loader]
    stop = 23
    state = ds.state_dict(batches=stop, num_workers=2)
    fresh = small(datasets[fmt], seed=4)
    fresh.load_state_dict(state)
    rest = [b["_row"].numpy() for b in torch.utils.data.DataLoader(fresh, batch_size=None, num_workers=2)]
    assert len(rest) == len(full) - stop
    assert all(np.array_equal(x, y) for x, y in zip(rest, full[stop:]))


def test_bad_resume_state_is_a_state_error(datasets):
    ds = small(datasets["zarr"])
    state = ds.state_dict()
    other = small(datasets["zarr"], seed=99)
    with pytest.raises(StateError, match="seed"):
        other.load_state_dict(state)
    with pytest.raises(StateError):
        ds.load_state_dict({"version": 1})
    with pytest.raises(StateError, match="version"):
        ds.load_state_dict({**state, "version": 99})
    with pytest.raises(StateError, match="fingerprint"):
        ds.load_state_dict({**state, "fingerprint": "0" * 32})


def test_byte_accounting_never_exceeds_the_budget(datasets):
    for budget in (60_000, 120_000, 1_000_000):
        ds = small(datasets["zarr"], memory_budget=budget)
        n = sum(1 for _ in ds)
        assert n == len(ds)
        assert 0 < ds.last_peak_accounted_bytes <= budget
        assert ds.last_peak_accounted_bytes <= ds.describe()["predicted_peak_bytes"]


def test_budget_too_small_is_a_clear_error(datasets):
    with pytest.raises(ValueError, match="memory_budget .* too small"):
        small(datasets["zarr"], memory_budget=1000)


def test_transform_runs_in_reader_threads_and_normalize_uses_manifest_stats(datasets):
    names = set()

    def transform(batch):
        names.add(threading.current_thread().name)
        batch["x2"] = batch["x"] * 2
        return batch

    ds = small(datasets["zarr"], transform=transform, normalize=["x"])
    xs = torch.cat([b["x"] for b in ds])
    assert names and all(n.startswith("streambatch-") for n in names)
    stats = ds.manifest.stats["x"]
    raw = np.load(datasets["zarr"].parent / "src" / "x.npy")
    assert np.allclose(np.asarray(stats["mean"]), raw.mean(axis=0))
    assert np.allclose(xs.numpy().mean(axis=0), 0, atol=1e-4)
    assert np.allclose(xs.numpy().std(axis=0), 1, atol=1e-3)


class Boom(Exception):
    pass


def test_worker_error_reaches_the_consumer_with_its_type_and_a_note(datasets):
    def transform(batch):
        raise Boom("bad batch")

    ds = small(datasets["zarr"], transform=transform)
    with pytest.raises(Boom, match="bad batch") as info:
        next(iter(ds))
    assert any("while assembling batches" in n for n in info.value.__notes__)


def test_reader_error_keeps_its_type_and_names_the_unit(datasets, monkeypatch):
    from streambatch.storage import zarr_store

    original = zarr_store.Reader.read_into

    def failing(self, unit, lo, hi, out):
        if unit == 7:
            raise Boom(f"cannot read unit {unit}")
        return original(self, unit, lo, hi, out)

    monkeypatch.setattr(zarr_store.Reader, "read_into", failing)
    fail_batched_checks_of(monkeypatch, zarr_store.Reader, {7})
    with pytest.raises(Boom) as info:
        for _ in small(datasets["zarr"]):
            pass
    assert any("unit 7" in n and str(datasets["zarr"]) in n for n in info.value.__notes__)


def test_break_del_and_gc_stop_every_thread(datasets):
    for b in small(datasets["zarr"]):
        break
    it = iter(small(datasets["parquet"]))
    next(it)
    assert streambatch_threads()
    del it
    gc.collect()
    assert not streambatch_threads()  # the iterator's finalisation joined them


def test_prefetcher_close_is_idempotent(datasets):
    from streambatch.loader.prefetch import Prefetcher
    from streambatch.storage import open_reader

    ds = small(datasets["zarr"])
    reader = open_reader(ds.manifest)
    pf = Prefetcher(reader, ds.plan(), ds.columns, ds.manifest.unit_start, threads=2, budget_bytes=120_000,
                    batches_ahead=4)
    it = iter(pf)
    next(it)
    pf.close()
    pf.close()
    it.close()
    reader.close()
    reader.close()


def test_ctrl_c_stops_the_epoch_promptly(datasets, tmp_path):
    code, out, seconds = interrupt_epochs(f"{str(datasets['zarr'])!r}, batch_size=16, memory_budget=100_000")
    assert seconds < 15.0, "promptly: benchmarks/bench_sigint.py measures how fast"
    assert code == 0, out
    assert "interrupted []" in out


def test_served_quality_agrees_with_the_prediction(tmp_path):
    # Label-sorted data, many windows per epoch: deff and KL within 10% of describe().  Whole
    # units (piece_rows=0), where the window mixes few of them; pieces: tests/test_pieces.py.
    src = write_sorted_npy(tmp_path / "src", 120_000, width=1)
    streambatch.convert(src, tmp_path / "d.zarr", unit_rows=50, label="y")
    ds = StreamDataset(tmp_path / "d.zarr", batch_size=128, memory_budget=60_000, return_index=True,
                       columns=["y"], piece_rows=0)
    pred = ds.describe()
    assert 1.5 < pred["predicted_deff"] < 20
    deffs, kls = [], []
    for e in range(4):
        ds.set_epoch(e)
        order = np.concatenate(epoch_rows(ds))
        q = summarize(order, ds.manifest.unit_rows, 128)
        deffs.append(q["deff"])
        kls.append(label_sorted_kl(order, 120_000, 128, 10)["kl_mean"])
    assert abs(np.mean(deffs) / pred["predicted_deff"] - 1) < 0.10
    assert abs(np.mean(kls) / pred["predicted_kl"] - 1) < 0.10


def test_len_and_describe_need_no_data(datasets, tmp_path):
    ds = small(datasets["zarr"])
    d = ds.describe()
    for key in ("window_units", "read_ahead_units", "predicted_peak_bytes", "predicted_deff", "predicted_kl"):
        assert d[key] > 0
    assert d["predicted_peak_bytes"] <= ds.memory_budget
    assert json.loads(json.dumps(d)) == d


def test_rank_from_environment(datasets, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ds = small(datasets["zarr"])
    assert (ds.rank, ds.world_size) == (1, 2)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert os.environ.get("RANK") is None


@pytest.mark.parametrize(("cpus", "workers", "want"), [(16, 0, 2), (2, 0, 2), (1, 0, 1), (16, 4, 2), (4, 4, 1)])
def test_default_threads(datasets: dict[str, Path], monkeypatch: pytest.MonkeyPatch, cpus: int, workers: int,
                         want: int) -> None:
    """Two reader threads by default (more only contend for the GIL), never more than the cores
    per DataLoader worker; an explicit ``threads`` is taken up to the cores per worker for local
    files (more ran slower), and ``describe()`` says what was asked."""
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    ds = StreamDataset(datasets["zarr"], batch_size=64)
    assert ds.describe(num_workers=workers)["threads"] == want
    assert ds.describe(num_workers=workers)["threads_asked"] is None
    five = StreamDataset(datasets["zarr"], batch_size=64, threads=5).describe(num_workers=workers)
    assert five["threads"] == min(5, max(1, cpus // max(1, workers))) and five["threads_asked"] == 5


_RSS_CHILD = """
import sys, psutil, streambatch
ds = streambatch.StreamDataset(sys.argv[1], batch_size=256, memory_budget="64MiB", threads=2)
d = ds.describe()
window = d["window_rows"] * ds.row_nbytes
proc = psutil.Process()
before = proc.memory_info().rss
for _ in ds:
    pass
after = proc.memory_info().rss  # the window buffers stay with the dataset for the next epoch
print(window, ds.manifest.rows * ds.row_nbytes, after - before)
"""


def test_window_buffers_are_resident_whatever_the_dataset_length(tmp_path: Path) -> None:
    """A dataset of 1.5 windows (ramp windows, then a short one) leaves parts of both buffers
    unread; they are touched anyway, so RSS after an epoch holds both whole buffers, as it does
    for a long dataset, and memory does not depend on the dataset's length."""
    row = 8 + 64 * 4 + 8  # id, x float32[64], y
    window_guess = (64 * 2**20 - 16 * 256 * row) // 2
    src = write_sorted_npy(tmp_path / "src", int(1.5 * window_guess / row), width=64)
    streambatch.convert(src, tmp_path / "d.zarr", progress=False)
    out = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(tmp_path / "d.zarr")], capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    window, data, grown = map(int, out)
    assert data < 2 * window  # the dataset is shorter than the two buffers
    assert grown >= 0.97 * 2 * window, (grown / 2**20, window / 2**20)


_EXIT_CHILD = """
import atexit, sys, threading
# registered first, so it runs after the loader's exit-time finalizer (atexit runs last-in first-out)
atexit.register(lambda: print("alive", sum(t.name.startswith("streambatch-") and t.is_alive()
                                           for t in threading.enumerate()), flush=True))
import streambatch
ds = streambatch.StreamDataset(sys.argv[1], batch_size=64, threads=3)
it = iter(ds)
next(it)  # mid-epoch, never closed, still referenced: the program just ends
print("reader threads", sum(t.name.startswith("streambatch-") for t in threading.enumerate()), flush=True)
print("described", ds.describe()["threads"], flush=True)  # 3, or the cores if fewer (local files)
"""


def test_threads_stop_at_interpreter_exit_without_close(datasets: dict[str, Path]) -> None:
    """A program that ends mid-epoch without closing its loader exits cleanly: the loader's
    ``weakref.finalize`` (run at exit) stops the reader threads before the interpreter finalizes
    (daemon threads inside C/C++ code at finalization can abort the process)."""
    proc = subprocess.run([sys.executable, "-c", _EXIT_CHILD, str(datasets["zarr"])], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.split("\n")
    described = next(int(line.split()[1]) for line in lines if line.startswith("described"))
    assert f"reader threads {described}" in lines and described == min(3, len(os.sched_getaffinity(0)))
    assert "alive 0" in lines


@pytest.mark.parametrize("workers", [0, 2])
def test_a_batch_is_one_buffer_that_crosses_a_worker_boundary_whole(datasets, workers):
    """Every column of a batch is 64-byte aligned and, after a DataLoader worker sent it, lies in
    one buffer (a slot of the worker's shared memory, or one shared-memory block per batch: not
    one per column); the values are the rows it names, normalised columns too."""
    ds = small(datasets["zarr"], normalize=["x"])
    data = np.load(datasets["zarr"].parent / "src" / "x.npy").astype(np.float64)
    mean, std = data.mean(axis=0), data.std(axis=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
    n = 0
    for b in loader:
        if workers:  # side by side in one span, each column's bytes rounded up to 64
            lo = min(t.data_ptr() for t in b.values())
            hi = max(t.data_ptr() + t.nbytes for t in b.values())
            assert hi - lo <= sum(-(-t.nbytes // 64) * 64 for t in b.values()), {k: t.data_ptr() for k, t in b.items()}
        assert all(t.data_ptr() % 64 == 0 and t.is_contiguous() for t in b.values())
        rows = b["_row"].numpy()
        np.testing.assert_array_equal(b["id"].numpy(), rows)
        np.testing.assert_allclose(b["x"].numpy(), (data[rows] - mean) / std, rtol=1e-4, atol=1e-4)
        n += len(rows)
    assert n == ROWS
