"""Faults, corruption and hostile input: every fault is one clear error, and nothing is lost.

One test (or parametrised group) per row of the fault table in docs/FAULTS.md:

- a flipped byte, seen by the loader (``verify`` is on by default) and by ``streambatch verify``;
- a truncated, missing or unreadable shard file, an unreadable manifest;
- a write error during conversion: disk full (``/dev/full``) and a file-size limit
  (``RLIMIT_FSIZE`` in a subprocess, with SIGXFSZ ignored so ``write`` raises EFBIG);
- a reader that raises, one that hangs (``timeout`` names the stuck unit), a slow one;
- SIGINT in the middle of an epoch or a conversion, in a subprocess;
- a soak: SIGKILL of a training subprocess at random points and restarts from the last saved
  state (each epoch serves every sample exactly once, in the uninterrupted order), and RSS
  flat over 20 epochs.  The full-size soak is ``benchmarks/bench_faults.py``.

Covered elsewhere and not repeated here: the reader contract on corrupt, truncated and missing
files for every format and codec (test_storage.py ``ReaderContract``); a reader error keeping its
type and naming the unit (test_dataset.py ``test_reader_error_keeps_its_type_and_names_the_unit``);
SIGKILL and exceptions during conversion (test_convert.py); manifests (test_manifest.py).
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

import streambatch
from streambatch import DataError, ManifestError, StreamDataset
from streambatch.cli import main as cli_main
from streambatch.errors import WriteError
from streambatch.manifest import MANIFEST_NAME
from streambatch.storage import FORMATS, load_manifest, zarr_store

from conftest import (SIGINT_HANDLER, column_range, fail_batched_checks_of, flip_byte, streambatch_threads, unit_range,
                      write_sorted_npy)

ROWS = 3001
UNIT = 50
REPO = Path(__file__).resolve().parents[1]
UNCOMPRESSED = [f"{name}-none" for name in FORMATS]  # every format's files, uncompressed
CASES = UNCOMPRESSED + ["zarr-lz4", "parquet-zstd"]  # and compressed ones (parquet-zstd: pyarrow's writer)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 3001 rows in every case of ``CASES`` (format-codec), units of 50 rows, several files."""
    root = tmp_path_factory.mktemp("faults")
    src = write_sorted_npy(root / "src", ROWS)
    out = {"src": src}
    for name in CASES:
        fmt, codec = name.split("-")
        out[name] = root / name
        streambatch.convert(src, out[f"{fmt}-{codec}"], format=fmt, codec=codec, unit_rows=UNIT,
                            shard_bytes=16 * 1024, progress=False)
    return out


@pytest.fixture
def damaged(built: dict[str, Path], tmp_path: Path):  # type: ignore[no-untyped-def]
    """``damaged(name)``: a private copy of dataset ``name`` that the test may break."""

    def make(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(built[name], dst)
        return dst

    return make


def small(path: Path, **kw: Any) -> StreamDataset:
    kw.setdefault("batch_size", 64)
    kw.setdefault("memory_budget", 200_000)  # windows of a few units: several windows per epoch
    kw.setdefault("return_index", True)
    kw.setdefault("threads", 2)
    return StreamDataset(path, **kw)


def one_epoch(ds: StreamDataset) -> np.ndarray:
    return np.concatenate([b["_row"].numpy() for b in ds])


# --------------------------------------------------------------------------- a flipped byte

def test_verify_is_on_by_default(built: dict[str, Path]) -> None:
    assert StreamDataset(built["zarr-none"]).verify is True


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("column", ["x", "y"])
def test_flipped_byte_is_named_by_the_loader_and_by_verify(damaged, name: str, column: str,  # type: ignore[no-untyped-def]
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    ds_path = damaged(name)
    m = load_manifest(ds_path)
    unit = 17
    path, off, size = column_range(m, unit, column)
    flip_byte(path, off + size * 2 // 3, 0x10)
    rel = path.relative_to(ds_path).as_posix()
    want = [f"dataset {ds_path}", f"column {column!r}", f"unit {unit},", f"file {rel}", "checksum mismatch"]

    with pytest.raises(DataError) as ei:
        one_epoch(small(ds_path))  # verify is the default
    for s in want:
        assert s in str(ei.value), (s, str(ei.value))
    assert any(f"unit {unit}" in n for n in ei.value.__notes__)  # the loader adds where it was reading
    assert not streambatch_threads(), "the error reached the caller before every reader thread stopped"

    capsys.readouterr()
    assert cli_main(["verify", str(ds_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "FAILED" in err
    for s in want:
        assert s in err, (s, err)


def test_flipped_byte_without_verify_reaches_the_batch(damaged) -> None:  # type: ignore[no-untyped-def]
    """Why verify is on: an uncompressed unit with a flipped byte decodes fine and is served."""
    ds_path = damaged("zarr-none")
    m = load_manifest(ds_path)
    path, off, _ = unit_range(m, 3, "id")
    flip_byte(path, off, 0x10)  # the low byte of row 150's id
    batches = list(small(ds_path, verify=False))
    ids = np.concatenate([b["id"].numpy() for b in batches])  # the stored id column, damaged
    rows = np.concatenate([b["_row"].numpy() for b in batches])  # the row positions, computed
    assert len(ids) == ROWS and sorted(rows.tolist()) == list(range(ROWS))
    assert 150 not in ids and int(ids[rows == 150][0]) == 150 ^ 0x10
    with pytest.raises(DataError, match="unit 3,"):
        one_epoch(small(ds_path, verify=True))


@pytest.mark.parametrize("name", UNCOMPRESSED)
def test_flipped_byte_in_a_unit_not_served_is_harmless(damaged, name: str) -> None:  # type: ignore[no-untyped-def]
    """Only the damaged unit fails: other ranks (or a column projection) read the rest."""
    ds_path = damaged(name)
    m = load_manifest(ds_path)
    path, off, size = column_range(m, 5, "x")
    flip_byte(path, off + size // 2, 0x10)
    if m.storage != "parquet":  # a column that was not damaged reads cleanly (Parquet checks whole row groups)
        assert len(one_epoch(small(ds_path, columns=["id", "y"]))) == ROWS
    reader_units = [u for u in range(m.n_units) if u != 5]
    from streambatch.storage import open_reader

    r = open_reader(m, verify=True)
    try:
        for u in reader_units:
            r.verify_unit(u)
        with pytest.raises(DataError, match="unit 5,"):
            r.verify_unit(5)
    finally:
        r.close()


# --------------------------------------------------------------------------- truncated, missing, unreadable


@pytest.mark.parametrize("name", [*UNCOMPRESSED, "zarr-lz4"])
@pytest.mark.parametrize("verify", [True, False])
def test_truncated_shard_file(damaged, name: str, verify: bool) -> None:  # type: ignore[no-untyped-def]
    ds_path = damaged(name)
    m = load_manifest(ds_path)
    path, off, size = unit_range(m, 30, "x")
    os.truncate(path, off + size // 2)
    with pytest.raises(DataError) as ei:
        one_epoch(small(ds_path, verify=verify))
    msg = str(ei.value)
    assert str(ds_path) in msg and path.relative_to(ds_path).as_posix() in msg and "unit " in msg
    assert "truncated" in msg or "cannot read" in msg or "not a readable Parquet" in msg, msg


@pytest.mark.parametrize("name", UNCOMPRESSED)
def test_missing_shard_file(damaged, name: str) -> None:  # type: ignore[no-untyped-def]
    ds_path = damaged(name)
    m = load_manifest(ds_path)
    path, _, _ = unit_range(m, 40, "x")
    path.unlink()
    with pytest.raises(DataError) as ei:
        one_epoch(small(ds_path))
    msg = str(ei.value)
    same_file = [u for u in range(m.n_units) if unit_range(m, u, "x")[0] == path]  # any of them may fail first
    assert path.relative_to(ds_path).as_posix() in msg and any(f"unit {u}," in msg for u in same_file), msg
    assert "No such file" in msg, msg


_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


@contextmanager
def permissions_enforced() -> Iterator[None]:
    """Make file permissions bite in this thread (and threads it starts), even for root.

    Root ignores permission bits through CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH; this drops
    them from the calling thread's effective set (capabilities are per thread on Linux) and
    restores them afterwards.  Other users need nothing.
    """
    if os.geteuid() != 0:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    hdr, data = _CapHeader(0x20080522, 0), (_CapData * 2)()
    if libc.capget(ctypes.byref(hdr), data) != 0:  # pragma: no cover - not Linux
        pytest.skip("capget failed: cannot drop root's permission override")
    saved = data[0].effective
    data[0].effective &= ~((1 << _CAP_DAC_OVERRIDE) | (1 << _CAP_DAC_READ_SEARCH))
    if libc.capset(ctypes.byref(hdr), data) != 0:  # pragma: no cover
        pytest.skip("capset failed: cannot drop root's permission override")
    try:
        yield
    finally:
        data[0].effective = saved
        assert libc.capset(ctypes.byref(hdr), data) == 0


@pytest.mark.parametrize("name", UNCOMPRESSED)
def test_shard_file_without_read_permission(damaged, name: str) -> None:  # type: ignore[no-untyped-def]
    ds_path = damaged(name)
    m = load_manifest(ds_path)
    path, _, _ = unit_range(m, 12, "x")
    path.chmod(0)
    with permissions_enforced():
        with pytest.raises(DataError) as ei:
            one_epoch(small(ds_path))
        code = cli_main(["verify", str(ds_path)])
    msg = str(ei.value)
    assert path.relative_to(ds_path).as_posix() in msg and "Permission denied" in msg and "unit " in msg
    assert code == 1


def test_manifest_without_read_permission(damaged) -> None:  # type: ignore[no-untyped-def]
    ds_path = damaged("zarr-none")
    (ds_path / MANIFEST_NAME).chmod(0)
    with permissions_enforced():
        with pytest.raises(ManifestError, match="cannot read manifest: Permission denied") as ei:
            StreamDataset(ds_path)
    assert MANIFEST_NAME in str(ei.value)


# --------------------------------------------------------------------------- write errors during conversion


def temp_folders(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".sbtmp-" in p.name] if parent.exists() else []


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("shuffle", [None, 3])
def test_disk_full_during_conversion(built: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     fmt: str, shuffle: int | None) -> None:
    """Every data file the converter writes goes to /dev/full, which fails with ENOSPC."""
    import builtins
    import errno

    real_open = builtins.open
    failed: list[str] = []

    def full_open(path: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        if "w" in mode and ".sbtmp-" in str(path) and not str(path).endswith(".json"):
            failed.append(str(path))
            return real_open("/dev/full", mode, *args, **kw)
        return real_open(path, mode, *args, **kw)

    monkeypatch.setattr(builtins, "open", full_open)  # data files only: those in the temporary folder
    out = tmp_path / "out"
    with pytest.raises(WriteError) as ei:
        streambatch.convert(built["src"], out / "ds", format=fmt, unit_rows=UNIT, shuffle=shuffle, progress=False)
    assert failed
    assert ei.value.errno == errno.ENOSPC and isinstance(ei.value, OSError)
    assert str(out / "ds") in str(ei.value) and "No space left on device" in str(ei.value)
    assert list(out.iterdir()) == [], "no dataset and no temporary folder may be left"


def _fsize_limit(limit: int) -> Any:
    def pre() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process at the limit
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return pre


@pytest.mark.parametrize(("fmt", "extra", "limit"), [
    ("zarr", [], 20_000),                      # fails in a shard file
    ("parquet", [], 20_000),                   # fails in a Parquet file
    ("arrow", [], 20_000),                     # fails in an Arrow file
    ("zarr", ["--shuffle", "1"], 20_000),      # fails in the pre-shuffle's bucket files
    ("zarr", ["--shard-bytes", "4KiB"], 5000),  # shards of 4 KiB fit: fails writing the manifest (6 KiB), last
])
def test_file_size_limit_during_conversion(built: dict[str, Path], tmp_path: Path, fmt: str, extra: list[str],
                                           limit: int) -> None:
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "streambatch.cli", "convert", str(built["src"]), str(out / "ds"),
                        "--format", fmt, "--unit-rows", str(UNIT), "-q", *extra],
                       preexec_fn=_fsize_limit(limit), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "File too large" in lines[0] and str(out / "ds") in lines[0], r.stderr
    assert r.stdout == ""
    assert list(out.iterdir()) == [] if out.exists() else True, "no dataset and no temporary folder"
    # without the limit the same command succeeds
    ok = subprocess.run([sys.executable, "-m", "streambatch.cli", "convert", str(built["src"]), str(out / "ds"),
                         "--format", fmt, "--unit-rows", str(UNIT), "-q", *extra],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert load_manifest(out / "ds").rows == ROWS and not temp_folders(out)


# --------------------------------------------------------------------------- readers that fail, hang, crawl


class _Broken(RuntimeError):
    pass


def test_reader_raising_a_data_error_stops_the_epoch_with_it(built: dict[str, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    original = zarr_store.Reader.read_into

    def failing(self: Any, unit: int, lo: int, hi: int, out: Any) -> None:
        if unit == 9:
            raise DataError(f"dataset {self.manifest.root}, column 'x', unit 9, file x/c/0/0: read failed: EIO")
        original(self, unit, lo, hi, out)

    monkeypatch.setattr(zarr_store.Reader, "read_into", failing)
    fail_batched_checks_of(monkeypatch, zarr_store.Reader, {9})
    with pytest.raises(DataError, match="unit 9") as ei:
        one_epoch(small(built["zarr-none"]))
    assert any("while reading unit 9" in n for n in ei.value.__notes__)


def test_hanging_reader_times_out_naming_the_unit(built: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The read of unit 11 hangs until the test releases it: the loader raises TimeoutError
    naming it and shuts down while that read is still stuck (it does not wait for it).  The
    timeout is 10 s, far above any healthy read of this dataset on a loaded machine."""
    original = zarr_store.Reader.read_into
    release = threading.Event()
    returned = threading.Event()

    def hanging(self: Any, unit: int, lo: int, hi: int, out: Any) -> None:
        if unit == 11:
            release.wait(120)
            returned.set()
        original(self, unit, lo, hi, out)

    monkeypatch.setattr(zarr_store.Reader, "read_into", hanging)
    fail_batched_checks_of(monkeypatch, zarr_store.Reader, {11})
    ds = small(built["zarr-none"], shuffle=False, timeout=10)
    served = []
    try:
        with pytest.raises(TimeoutError) as ei:
            for b in ds:
                served.append(b["_row"].numpy())
        stuck_at_the_end = not returned.is_set()
    finally:
        release.set()
    assert "unit 11" in str(ei.value) and str(built["zarr-none"]) in str(ei.value) and "10.0s" in str(ei.value)
    assert stuck_at_the_end, "the loader waited for the stuck read instead of giving up on it"
    rows = np.concatenate(served) if served else np.empty(0, np.int64)
    assert np.array_equal(rows, np.arange(len(rows))) and len(rows) <= 11 * UNIT  # correct rows up to the stuck unit


def test_without_timeout_a_slow_reader_is_waited_for(built: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit that takes longer than a poll interval is not an error when no timeout is set."""
    original = zarr_store.Reader.read_into

    def slow(self: Any, unit: int, lo: int, hi: int, out: Any) -> None:
        if unit == 4:
            time.sleep(0.4)
        original(self, unit, lo, hi, out)

    monkeypatch.setattr(zarr_store.Reader, "read_into", slow)
    assert len(one_epoch(small(built["zarr-none"]))) == ROWS


@pytest.mark.parametrize("name", ["zarr-lz4", "parquet-none", "arrow-none"])
def test_slow_and_jittery_reader_serves_the_same_epoch(built: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                       name: str) -> None:
    """Reads finishing late and out of order change nothing: same batches, same order, same values."""
    ref = small(built[name], threads=1)
    ref.set_epoch(2)
    want = [{k: v.numpy().copy() for k, v in b.items()} for b in ref]
    reader = FORMATS[name.split("-")[0]].reader_class
    original = reader.read_into
    rng = np.random.default_rng(0)
    delays = rng.exponential(0.004, size=10_000).tolist()
    lock = threading.Lock()

    def jittery(self: Any, unit: int, lo: int, hi: int, out: Any) -> None:
        with lock:
            d = delays.pop()
        time.sleep(d * (5 if unit % 7 == 0 else 1))
        original(self, unit, lo, hi, out)

    monkeypatch.setattr(reader, "read_into", jittery)
    ds = small(built[name], threads=4)
    ds.set_epoch(2)
    got = [{k: v.numpy().copy() for k, v in b.items()} for b in ds]
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert sorted(np.concatenate([b["_row"] for b in got]).tolist()) == list(range(ROWS))


# --------------------------------------------------------------------------- SIGINT

@pytest.mark.parametrize("workers", [0, 2])
def test_sigint_mid_epoch_exits_promptly_leaving_nothing(built: dict[str, Path], tmp_path: Path,
                                                         workers: int) -> None:
    """Ctrl-C (SIGINT to the process group) mid-epoch: KeyboardInterrupt in the loop, then no
    streambatch thread, no worker process and no temporary file is left, the dataset is as it
    was, and no thread outlived its join (the loader logs "did not stop" for one).  "Promptly"
    here means within 15 s; how long it takes is measured by benchmarks/bench_sigint.py."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    before = sorted(p.relative_to(built["zarr-none"]) for p in built["zarr-none"].rglob("*"))
    run = _bench("bench_sigint").run_sigint(built["zarr-none"], workers, tmpdir)
    assert run["returncode"] == 0 and "interrupted [] 0" in run["out"], run
    assert "did not stop" not in run["err"], run["err"]
    assert run["stopped"] < 15.0, run
    # A DataLoader worker that PyTorch terminates while it shares a tensor can leave the folder of
    # Python's multiprocessing resource sharer (pymp-*, a socket's); not streambatch's (FAULTS.md).
    left = [p for p in tmpdir.iterdir() if not (workers and p.name.startswith("pymp-"))]
    assert left == [], "no temporary files"
    assert sorted(p.relative_to(built["zarr-none"]) for p in built["zarr-none"].rglob("*")) == before


def test_sigint_ends_workers_that_lost_their_keyboard_interrupt(built: dict[str, Path], tmp_path: Path) -> None:
    """Python can lose a worker's KeyboardInterrupt (raised in a finaliser, or hang on it inside
    a queue's or an event's lock: FAULTS.md); such a worker lived on while the loop's
    ``except KeyboardInterrupt:`` held the DataLoader.  Made to happen every time here (a
    ``collate_fn`` that drops it): streambatch's watch ends each worker ``CTRL_C_GRACE`` seconds
    after the signal, says so, and leaves no temporary folder."""
    from streambatch.loader.pool import CTRL_C_GRACE

    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    run = _bench("bench_sigint").run_sigint(built["zarr-none"], 2, tmpdir, lose=True, wait=30.0)
    assert run["returncode"] == 0 and "interrupted [] 0" in run["out"], run
    # a worker whose main thread was not in the collate_fn when the signal came ended by itself
    lost = run["err"].count("lost a KeyboardInterrupt")
    assert lost >= 1, run["err"]  # the collate_fn is 0.3 s of a worker's every batch
    assert run["err"].count("after Ctrl-C (its KeyboardInterrupt was caught or lost): ending it") == lost, run["err"]
    assert CTRL_C_GRACE <= run["stopped"] < 15.0, run  # a worker that lost it did not end by itself
    assert list(tmpdir.iterdir()) == []


def test_ctrl_c_is_put_off_where_python_would_lose_it_or_leave_a_lock_held() -> None:
    """A worker's Ctrl-C is raised later (CTRL_C_RETRY) when the main thread is inside a lock's
    or a queue's own code, a finaliser or ``__del__``; anywhere else at once."""
    import weakref

    from streambatch.loader.pool import fragile

    seen: dict[str, bool] = {"plain": fragile(sys._getframe())}

    class Dying:
        def __del__(self) -> None:
            seen["__del__"] = fragile(sys._getframe())

    class Target:
        pass

    Dying()
    t = Target()
    weakref.finalize(t, lambda: seen.__setitem__("finaliser", fragile(sys._getframe())))
    del t
    cond, entered = threading.Condition(), threading.Event()

    def wait() -> None:
        with cond:
            entered.set()
            cond.wait(10)

    th = threading.Thread(target=wait, daemon=True)
    th.start()
    entered.wait(10)
    time.sleep(0.05)
    seen["waiting on a Condition"] = fragile(sys._current_frames()[th.ident])
    with cond:
        cond.notify()
    th.join(10)
    assert seen == {"plain": False, "__del__": True, "finaliser": True, "waiting on a Condition": True}


def test_a_ctrl_c_another_thread_took_interrupts_the_workers_main_thread_at_once(tmp_path: Path) -> None:
    """The kernel may hand Ctrl-C to any thread that does not block it (PyTorch's queue thread in
    a worker); Python then only sets a flag, and a main thread asleep in a system call (PyTorch
    waits 5 s for the next index) took it once the call returned.  With the worker's watch
    (``end_worker_on_ctrl_c``, here in a plain process's main thread) it is interrupted at once."""
    script = textwrap.dedent("""
        import os, select, signal, threading, time
        from streambatch.loader.pool import end_worker_on_ctrl_c
        end_worker_on_ctrl_c()
        r, w = os.pipe()
        def other():
            time.sleep(0.3)
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # this thread takes it
        threading.Thread(target=other, daemon=True).start()
        t0 = time.monotonic()
        try:
            select.select([r], [], [], 20)
            print("not interrupted")
        except KeyboardInterrupt:
            print(f"interrupted after {time.monotonic() - t0:.2f}")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("interrupted after"), out.stdout
    assert float(out.stdout.split()[-1]) < 3.0, out.stdout  # not the select's 20 s


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the threads' signal masks in /proc (Linux)")
def test_reader_threads_leave_signals_to_the_main_thread(built: dict[str, Path]) -> None:
    """The kernel hands a signal sent to the process to any thread that does not block it, and
    Python handles it only in the main thread: a Ctrl-C taken by a reader thread left a
    DataLoader worker asleep in its 5 s wait for the next index.  Every streambatch thread
    blocks SIGINT, SIGTERM and SIGCHLD; the faults a thread raises itself stay with it."""

    def blocked(native_id: int) -> int:
        status = Path(f"/proc/self/task/{native_id}/status").read_text()
        return int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("SigBlk:")), 16)

    def has(mask: int, sig: int) -> bool:
        return bool(mask >> (sig - 1) & 1)

    ds = small(built["zarr-none"], threads=3)
    it = iter(ds)
    try:
        next(it)
        threads = streambatch_threads()
        assert len(threads) == ds.describe()["threads"] == min(3, len(os.sched_getaffinity(0)))
        deadline = time.monotonic() + 30  # each thread blocks them first thing; give a starved one time
        while not all(has(blocked(t.native_id), signal.SIGINT) for t in threads) and time.monotonic() < deadline:
            time.sleep(0.01)
        for t in threads:
            mask = blocked(t.native_id)  # type: ignore[arg-type]
            assert all(has(mask, s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)), (t.name, hex(mask))
            assert not any(has(mask, s) for s in (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE)), (t.name, hex(mask))
        assert not has(blocked(threading.main_thread().native_id), signal.SIGINT)  # type: ignore[arg-type]
    finally:
        it.close()  # type: ignore[attr-defined]


def test_ctrl_c_right_after_a_python_lock_enter_leaves_no_thread_blocked(built: dict[str, Path],
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """CPython can deliver Ctrl-C inside ``Condition.__enter__`` (Python code) just after it took
    the lock, which then stays held by the interrupted thread.  The loader's consumer side must
    not take such locks: before, a pool thread then blocked on the leaked lock and ``close``
    waited its full 5 s (test_sigint_mid_epoch_exits_promptly_leaving_nothing failed 1 run in
    4-10 with 'stopping took 6.52s'; a thread dump showed both pool threads in Condition.wait).
    Here every such call on the consumer thread is interrupted at that point, while iterating
    and while closing: iteration and close must not notice."""
    enter = threading.Condition.__enter__
    fired: list[str] = []

    def interrupted_enter(self: threading.Condition) -> bool:
        got = enter(self)
        if threading.current_thread() is threading.main_thread():
            fired.append("consumer")
            raise KeyboardInterrupt  # the lock stays held, as when Ctrl-C lands here
        return got

    it = iter(small(built["zarr-none"], transform=lambda b: (time.sleep(0.002), b)[1]))
    next(it)
    monkeypatch.setattr(threading.Condition, "__enter__", interrupted_enter)
    for _ in range(30):
        next(it)
    it.close()  # type: ignore[attr-defined]
    monkeypatch.undo()
    assert fired == []
    # close() joined every pool thread: none was left blocked past its join (which logs "did not stop")
    assert not streambatch_threads()
    assert not [r.getMessage() for r in caplog.records if "did not stop" in r.getMessage()]


@pytest.mark.parametrize("how", ["shuffle", "parallel"])
def test_sigint_mid_conversion_leaves_no_dataset_and_no_temp(built: dict[str, Path], tmp_path: Path,
                                                             how: str) -> None:
    """Ctrl-C in the sequential (pre-shuffle) path and in files written by parallel threads."""
    method, opts = ("write_unit", ["--shuffle", "2", "--memory", "64KiB"]) if how == "shuffle" else \
        ("write_units", ["--shard-bytes", "4KiB", "--threads", "2"])
    script = SIGINT_HANDLER + textwrap.dedent(f"""
        import os, sys, time
        from streambatch.storage import zarr_store
        from streambatch.cli import main
        write = zarr_store.Writer.{method}
        def slow(self, data):
            write(self, data)
            os.write(1, b"unit\\n")  # one write: lines of parallel threads do not interleave
            time.sleep(0.02)
        zarr_store.Writer.{method} = slow
        sys.exit(main(["convert", {str(built['src'])!r}, {str(tmp_path / 'out' / 'ds')!r}, "--unit-rows", "50",
                       *{opts!r}, "-q"]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        for _ in range(5):
            assert proc.stdout.readline().strip() == "unit"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == 130 and "interrupted" in err, (proc.returncode, err)  # stopped mid-way, by the signal
    assert list((tmp_path / "out").iterdir()) == []


# --------------------------------------------------------------------------- soak: kills and restarts


def _bench(name: str) -> Any:
    """benchmarks/<name>.py, imported by name (bench_faults' soak children unpickle its functions)."""
    import importlib

    folder = str(REPO / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


@pytest.mark.slow
def test_soak_kills_and_restarts_lose_and_repeat_nothing(tmp_path: Path) -> None:
    """A small soak: 3 epochs, up to 6 SIGKILLs at random points; the full one is benchmarks/bench_faults.py."""
    bench = _bench("bench_faults")
    ds = bench.make_soak_dataset(tmp_path / "soak", rows=2000)
    # Kills after 1-45 batches since the child resumed (50 an epoch), not after a time: with a
    # time, a loaded machine's slow child was killed before its first batch every time.
    result = bench.run_soak(ds, tmp_path / "run", epochs=3, kills=8, batch_size=40, sleep=0.01, seed=7,
                            kill_commits=(1, 45))
    assert result["kills"] >= 4 and result["restarts"] == result["kills"], result  # 3 kills end at batch 135 of 150
    assert result["kills_mid_epoch"] >= 1, result
    for e, check in enumerate(result["epochs"]):
        assert check == {"missing": 0, "duplicated": 0, "foreign": 0, "same_order": True}, (e, check)


@pytest.mark.slow
def test_rss_growth_sees_a_leak_and_not_the_allocators_moves() -> None:
    """The RSS check compares medians of 5 epochs: 0.5 MiB leaked an epoch shows, a single
    epoch's RSS moving by 2.7 MiB either way (as measured at a 2 MiB budget) does not."""
    bench = _bench("bench_faults")
    base, mib = 190 * 2**20, 2**20
    moves = [0, 0, 1.6, -0.2, -1.4, 0, 0.1, -0.1, 0, 0, 1.5, -1.6, 0, 2.7, 0, 0, 0, 0, 0, 2.7]
    jittery = [int(base + mib * sum(moves[:k + 1])) for k in range(20)]
    leaking = [int(base + k * mib // 2) for k in range(20)]
    assert bench.rss_growth(jittery) <= bench.RSS_GROWTH_BOUND < jittery[19] - jittery[1]
    assert bench.rss_growth(leaking) > bench.RSS_GROWTH_BOUND


def test_rss_is_flat_over_20_epochs(tmp_path: Path) -> None:
    bench = _bench("bench_faults")
    ds = bench.make_soak_dataset(tmp_path / "rss", rows=20_000, width=64)
    result = bench.run_rss(ds, epochs=20, batch_size=256, budget=2 * 2**20)
    rss = result["rss"]
    assert len(rss) == 20
    growth = bench.rss_growth(rss)
    assert growth == result["growth_2_to_last"]
    assert growth <= bench.RSS_GROWTH_BOUND, f"RSS grew {growth / 2**20:.1f} MiB from epochs 2-6 to 16-20: {rss}"


# --------------------------------------------------------------------------- no bad row is ever served


@pytest.mark.parametrize("name", [*UNCOMPRESSED, "zarr-lz4"])
@pytest.mark.parametrize("unit", [0, 17, 59])
def test_no_batch_of_a_failed_window_is_served(built: dict[str, Path], damaged, name: str, unit: int) -> None:  # type: ignore[no-untyped-def]
    """The batches served before the error are all correct: a window whose read failed serves nothing."""
    ds_path = damaged(name)
    m = load_manifest(ds_path)
    path, off, size = column_range(m, unit, "x")
    flip_byte(path, off + size // 2, 0x10)
    x = np.load(built["src"] / "x.npy")
    for epoch in range(3):
        ds = small(ds_path, threads=1 + epoch)
        ds.set_epoch(epoch)
        served = 0
        with pytest.raises(DataError, match=f"unit {unit},"):
            for b in ds:
                rows = b["_row"].numpy()
                np.testing.assert_array_equal(b["x"].numpy(), x[rows])
                served += len(rows)
        assert served < ROWS


def test_soak_log_cuts_a_torn_last_line(tmp_path: Path) -> None:
    """The soak's commit protocol: a line killed mid-write is not a commit, and is cut off on restart."""
    bench = _bench("bench_faults")
    log = tmp_path / "soak.log"
    good = [json.dumps({"epoch": 0, "state": {"batches": i}, "ids": [i]}) for i in (1, 2)]
    log.write_text("\n".join(good) + "\n" + good[1][:17])
    assert [r["state"]["batches"] for r in bench.read_log(log)] == [1, 2]
    assert log.read_text() == "\n".join(good) + "\n"
