"""The device path (loader/device.py): batches copied to a device by one thread through a ring of
reused host buffers.  ``device="cpu"`` runs the same code as CUDA (ring, thread, recycling,
stop) with a plain copy; the CUDA-only checks are skipped without a GPU."""

from __future__ import annotations

import queue
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import streambatch
from streambatch import StreamDataset
from streambatch.errors import DataError
from streambatch.loader.device import DONE, Target, auto_device

from conftest import flip_byte, interrupt_epochs, streambatch_threads, unit_range, write_sorted_npy

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
ROWS = 5003


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tabular dataset (id, x float32[4], y) and an image-like one (uint8 img[3, 16, 16], y)."""
    root = tmp_path_factory.mktemp("device")
    src = write_sorted_npy(root / "src", ROWS)
    streambatch.convert(src, root / "tab.zarr", label="y", unit_rows=256)
    img = root / "img-src"
    img.mkdir()
    rng = np.random.default_rng(1)
    np.save(img / "img.npy", rng.integers(0, 256, (3001, 3, 16, 16), dtype=np.uint8))
    np.save(img / "y.npy", np.arange(3001) % 10)
    streambatch.convert(img, root / "img.zarr", label="y", unit_rows=256)
    return {"tab": root / "tab.zarr", "img": root / "img.zarr"}


def epoch(ds: Any) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in b.items()} for b in ds]


def assert_same(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype and torch.equal(x[k].cpu(), y[k].cpu()), k


def copy_threads() -> list[str]:
    return [t.name for t in streambatch_threads() if t.name.endswith("-copy")]


# ---------------------------------------------------------------------------- the CPU device path
def test_device_cpu_serves_the_same_batches_in_the_same_order(data):
    kw = dict(batch_size=64, memory_budget="1MiB", return_index=True, normalize=True)
    plain = StreamDataset(data["tab"], **kw)
    dev = StreamDataset(data["tab"], device="cpu", **kw)
    assert dev.device == torch.device("cpu")
    for e in range(2):  # the second epoch reuses the ring
        plain.set_epoch(e)
        dev.set_epoch(e)
        assert_same(epoch(plain), epoch(dev))
    assert dev.describe()["window_rows"] == plain.describe()["window_rows"]  # same plan
    assert dev._rings and dev._rings[0].spilled == 0  # every batch was assembled in the ring


def test_describe_counts_the_ring_in_the_budget(data):
    ds = StreamDataset(data["tab"], batch_size=64, memory_budget="1MiB", device="cpu")
    d = ds.describe()
    assert d["device_buffers"] > 0 and d["device_buffer_bytes"] == d["device_buffers"] * 64 * ds.row_nbytes
    assert d["predicted_peak_bytes"] <= ds.memory_budget
    assert StreamDataset(data["tab"], batch_size=64, memory_budget="1MiB").describe()["device_buffers"] == 0


def test_a_budget_too_small_for_the_device_ring_is_refused_at_construction(data):
    kw = dict(batch_size=64, memory_budget=16_384)  # 8 batches of 2 KiB: 2 kept besides the windows
    StreamDataset(data["tab"], **kw)
    with pytest.raises(ValueError, match="too small for device="):
        StreamDataset(data["tab"], device="cpu", **kw)


def test_on_device_normalize_equals_the_host_normalisation_and_moves_uint8(data):
    kw = dict(batch_size=50, memory_budget="1MiB", normalize=["img"])
    host = StreamDataset(data["img"], device="cpu", **kw)
    dev = StreamDataset(data["img"], device="cpu", on_device=("normalize",), **kw)
    a, b = epoch(host), epoch(dev)
    assert_same(a, b)
    assert b[0]["img"].dtype == torch.float32
    # the ring holds the stored uint8 bytes, not float32: about a quarter of the buffer
    assert dev._rings[0].slot_bytes < host._rings[0].slot_bytes / 3


def test_resume_mid_epoch_never_counts_a_copied_batch_not_taken(data):
    copies = []

    def counting_copy(dst: torch.Tensor, src: torch.Tensor) -> Any:
        dst.copy_(src)
        copies.append(1)
        return DONE

    kw = dict(batch_size=64, memory_budget="1MiB", return_index=True)
    full = epoch(StreamDataset(data["tab"], **kw))
    ds = StreamDataset(data["tab"], device=Target(torch.device("cpu"), copy=counting_copy), **kw)
    it = iter(ds)
    taken = [{k: v.clone() for k, v in next(it).items()} for _ in range(7)]
    deadline = time.monotonic() + 30
    while len(copies) < 9 and time.monotonic() < deadline:  # the copy thread runs ahead
        time.sleep(0.01)
    assert len(copies) >= 9
    state = ds.state_dict()
    assert state["batches"] == 7
    it.close()
    again = StreamDataset(data["tab"], device="cpu", **kw)
    again.load_state_dict(state)
    assert_same(full, taken + epoch(again))


# ---------------------------------------------------------------------------- recycling
class FakeHandle:
    """A copy handle like torch.cuda.Event: finished once the fake stream has run the copy."""

    def __init__(self) -> None:
        self.finished = threading.Event()

    def query(self) -> bool:
        return self.finished.is_set()

    def synchronize(self) -> None:
        self.finished.wait()

    def wait(self, stream: Any) -> None:
        self.finished.wait()


class SlowStream:
    """An asynchronous, slow copy engine: ``copy`` returns at once and the bytes move ``delay``
    seconds later, as a CUDA copy on a busy stream would.  It checks that the source buffer still
    holds what it held when the copy was issued: a ring buffer handed out again before its copy
    ran would have been overwritten by the next batch."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.jobs: queue.Queue[Any] = queue.Queue()
        self.overwritten = 0
        self.copies = 0
        self.thread = threading.Thread(target=self._run, name="test-slow-stream", daemon=True)
        self.thread.start()

    def copy(self, dst: torch.Tensor, src: torch.Tensor) -> FakeHandle:
        h = FakeHandle()
        self.jobs.put((dst, src, zlib.crc32(src.numpy().tobytes()), h))
        return h

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            dst, src, crc, h = job
            time.sleep(self.delay)
            if zlib.crc32(src.numpy().tobytes()) != crc:
                self.overwritten += 1
            dst.copy_(src)
            self.copies += 1
            h.finished.set()

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join()


def test_a_ring_buffer_is_never_handed_out_while_its_copy_is_pending(data):
    stream = SlowStream(delay=0.004)
    try:
        kw = dict(batch_size=32, memory_budget="1MiB", return_index=True)
        ds = StreamDataset(data["tab"], device=Target(torch.device("cpu"), copy=stream.copy), **kw)
        got = epoch(ds)
        assert stream.overwritten == 0
        assert stream.copies == len(got)
        assert_same(epoch(StreamDataset(data["tab"], **kw)), got)
        assert ds._rings[0].spilled == 0 and ds._rings[0].free() == ds._rings[0].slots
    finally:
        stream.stop()


# ---------------------------------------------------------------------------- stopping and errors
def test_break_close_and_del_stop_the_copy_thread(data):
    ds = StreamDataset(data["tab"], batch_size=32, memory_budget="1MiB", device="cpu")
    for i, _ in enumerate(ds):
        if i == 0:
            assert copy_threads()
        if i == 3:
            break
    assert not copy_threads()  # the for loop dropped the generator: its finally stopped the thread
    it = iter(ds)
    next(it)
    it.close()
    assert not copy_threads()
    it = iter(ds)
    next(it)
    del it
    assert not copy_threads()


class CopyBroke(RuntimeError):
    pass


def test_an_exception_of_the_copy_thread_reaches_the_consumer_with_its_type(data):
    n = []

    def failing_copy(dst: torch.Tensor, src: torch.Tensor) -> Any:
        n.append(1)
        if len(n) == 5:
            raise CopyBroke("copy 5 failed")
        dst.copy_(src)
        return DONE

    ds = StreamDataset(data["tab"], batch_size=32, memory_budget="1MiB",
                       device=Target(torch.device("cpu"), copy=failing_copy))
    got = 0
    with pytest.raises(CopyBroke, match="copy 5 failed"):
        for _ in ds:
            got += 1
    assert got == 4


def test_a_damaged_unit_raises_data_error_through_the_device_path(data, tmp_path):
    import shutil

    bad = tmp_path / "bad.zarr"
    shutil.copytree(data["tab"], bad)
    m = streambatch.load_manifest(bad)
    path, off, size = unit_range(m, 3, "x")
    flip_byte(path, off + size // 2)
    ds = StreamDataset(bad, batch_size=32, memory_budget="1MiB", device="cpu", shuffle=False)
    with pytest.raises(DataError, match="x"):
        for _ in ds:
            pass


def test_ctrl_c_stops_the_copy_thread(data):
    code, out, _ = interrupt_epochs(f"{str(data['tab'])!r}, batch_size=16, memory_budget='1MiB', device='cpu'")
    assert code == 0, out
    assert "interrupted []" in out


# ---------------------------------------------------------------------------- DataLoader
def test_dataloader_in_process_serves_the_device_batches(data):
    kw = dict(batch_size=64, memory_budget="1MiB", return_index=True)
    ds = StreamDataset(data["tab"], device="cpu", **kw)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0)
    assert_same(epoch(StreamDataset(data["tab"], **kw)), epoch(loader))


def test_dataloader_workers_with_a_device_are_refused_with_a_clear_error(data):
    ds = StreamDataset(data["tab"], batch_size=64, memory_budget="1MiB", device="cpu")
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    with pytest.raises(ValueError, match=r"num_workers=0"):
        for _ in loader:
            pass


# ---------------------------------------------------------------------------- arguments
def test_device_arguments_are_checked(data):
    path = data["tab"]
    with pytest.raises(ValueError, match="only cpu and cuda"):
        StreamDataset(path, device="meta")
    with pytest.raises(ValueError, match="not a device"):
        StreamDataset(path, device="gpu0")
    with pytest.raises(ValueError, match="needs device="):
        StreamDataset(path, normalize=True, on_device=("normalize",))
    with pytest.raises(ValueError, match="tuple"):
        StreamDataset(path, normalize=True, device="cpu", on_device="normalize")
    with pytest.raises(ValueError, match="unknown step"):
        StreamDataset(path, device="cpu", on_device=("decode",))
    with pytest.raises(ValueError, match="needs normalize="):
        StreamDataset(path, device="cpu", on_device=("normalize",))
    if not CUDA:
        with pytest.raises(ValueError, match="CUDA is not available"):
            StreamDataset(path, device="cuda")
        assert StreamDataset(path, device="auto").device == torch.device("cpu")


def test_auto_picks_the_local_rank_gpu():
    assert auto_device(False, "3", True, 0) == "cpu"
    assert auto_device(True, "3", True, 0) == "cuda:3"
    assert auto_device(True, None, True, 2) == "cuda:2"
    assert auto_device(True, None, False, 2) == "cuda:0"


# ---------------------------------------------------------------------------- CUDA only
@needs_cuda
def test_cuda_serves_the_cpu_batches_on_the_gpu_from_a_pinned_ring(data):
    kw = dict(batch_size=64, memory_budget="1MiB", return_index=True, normalize=True)
    ds = StreamDataset(data["tab"], device="cuda", **kw)
    got = epoch(ds)
    assert all(v.is_cuda for b in got for v in b.values())
    assert_same(epoch(StreamDataset(data["tab"], **kw)), got)
    ring = ds._rings[0]
    assert ring.pinned_by and ring.tensor.is_pinned() and ring.spilled == 0


@needs_cuda
def test_cuda_consumer_on_its_own_stream_sees_complete_batches(data):
    kw = dict(batch_size=64, memory_budget="1MiB", return_index=True)
    ref = epoch(StreamDataset(data["tab"], **kw))
    side = torch.cuda.Stream()
    got = []
    with torch.cuda.stream(side):  # the copies must be waited for on the consumer's current stream
        for b in StreamDataset(data["tab"], device="cuda", **kw):
            torch.cuda._sleep(200_000)  # a busy step, so that a missing wait would read early
            got.append({k: v * 1 for k, v in b.items()})
    torch.cuda.synchronize()
    assert_same(ref, got)


@needs_cuda
def test_cuda_on_device_normalize_equals_the_host(data):
    kw = dict(batch_size=50, memory_budget="1MiB", normalize=["img"])
    a = epoch(StreamDataset(data["img"], **kw))
    b = epoch(StreamDataset(data["img"], device="cuda", on_device=("normalize",), **kw))
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x["img"], y["img"].cpu(), rtol=0, atol=1e-6)
