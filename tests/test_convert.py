"""``streambatch.convert``: statistics, the out-of-core pre-shuffle, and crash safety.

Round trips of every input format live in ``test_sources.py``; the reader contract in
``test_storage.py``; the command line in ``test_cli.py``.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import write_sorted_npy

import streambatch
from streambatch.convert import clean_stale_temp
from streambatch.errors import InputError, TargetExistsError
from streambatch.manifest import Manifest
from streambatch.storage import load_manifest
from streambatch.quality import global_order, label_sorted_kl
from streambatch.storage import STORAGES
from streambatch.storage import read_all as storage_read_all
from streambatch.storage import FORMATS

WRITERS = {name: f.writer_class for name, f in FORMATS.items()}


def read_all(m: Manifest) -> dict[str, np.ndarray]:
    return storage_read_all(m, verify=True)


def temp_folders(target: Path) -> list[Path]:
    if not target.parent.exists():
        return []
    return [p for p in target.parent.iterdir() if ".sbtmp-" in p.name]


def load_npy_folder(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p) for p in sorted(folder.glob("*.npy"))}


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("fmt", STORAGES)
def test_statistics_over_many_pieces(tmp_path: Path, fmt: str) -> None:
    """Statistics merged over many small pieces equal numpy's over the whole data."""
    rng = np.random.default_rng(5)
    n = 20011
    src = tmp_path / "src"
    src.mkdir()
    data = {
        # a large offset and a small spread: a naive sum-of-squares variance would lose digits
        "off": (1e6 + rng.standard_normal(n)).astype(np.float64),
        # per feature: offset (recomputed centred), well-conditioned (one pass), constant
        "mix": np.stack([1e6 + rng.standard_normal(n), rng.standard_normal(n), np.full(n, 7.0)], axis=1),
        "t": rng.standard_normal((n, 2, 3)).astype(np.float32) * np.arange(1, 7, dtype=np.float32).reshape(2, 3),
        "u": rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True),
        "i": rng.integers(-(2**31), 2**31, n).astype(np.int32),
        "b": rng.random(n) < 0.1,
        "y": np.repeat(np.array([0, 1, 2, 3, 5, 9], np.int16), [5000, 1, 10, 4000, 3000, 8000]),  # no 4, 6-8
    }
    for k, v in data.items():
        np.save(src / f"{k}.npy", v)
    # 64 KiB of memory: pieces of 64 KiB / 16 / 43 bytes = 95 rows, so ~200 merges
    m = streambatch.convert(src, tmp_path / "ds", format=fmt, memory="64KiB", unit_rows=1000, label="y",
                            progress=False)
    assert isinstance(m, Manifest)
    m = load_manifest(tmp_path / "ds")
    for k, v in data.items():
        x = v.reshape(n, -1).astype(np.float64)
        st = m.stats[k]
        assert st["count"] == n
        for key, ref in (("mean", x.mean(0)), ("std", x.std(0)), ("min", x.min(0)), ("max", x.max(0))):
            got = np.asarray(st[key], np.float64).reshape(-1)
            np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-9, err_msg=f"{k}.{key}")
    h = m.stats["y"]["histogram"]
    assert h["values"] == [0, 1, 2, 3, 5, 9]
    assert h["counts"] == [5000, 1, 10, 4000, 3000, 8000]
    assert h["icc"] is not None and h["icc"] > 0.9  # label-sorted: units are nearly label-pure


# --------------------------------------------------------------------------- pre-shuffle


def _ids(dst: Path) -> np.ndarray:
    return read_all(load_manifest(dst))["id"]


@pytest.mark.parametrize("fmt", STORAGES)
def test_shuffle_is_a_deterministic_permutation(tmp_path: Path, sorted_npy: Path, fmt: str) -> None:
    src = load_npy_folder(sorted_npy)
    n = len(src["id"])
    kw = dict(format=fmt, unit_rows=256, memory="128KiB", label="y", progress=False)
    a = streambatch.convert(sorted_npy, tmp_path / "a", shuffle=7, **kw)
    b = streambatch.convert(sorted_npy, tmp_path / "b", shuffle=7, **kw)
    c = streambatch.convert(sorted_npy, tmp_path / "c", shuffle=8, **kw)
    plain = streambatch.convert(sorted_npy, tmp_path / "plain", **kw)
    assert isinstance(a, Manifest) and isinstance(plain, Manifest)
    ids_a, ids_b, ids_c = _ids(tmp_path / "a"), _ids(tmp_path / "b"), _ids(tmp_path / "c")
    np.testing.assert_array_equal(np.sort(ids_a), np.arange(n))
    np.testing.assert_array_equal(np.sort(ids_c), np.arange(n))
    np.testing.assert_array_equal(ids_a, ids_b)
    assert np.mean(ids_a == ids_c) < 0.01
    np.testing.assert_array_equal(_ids(tmp_path / "plain"), np.arange(n))
    # every column moves with its row
    rows = read_all(load_manifest(tmp_path / "a"))
    np.testing.assert_array_equal(rows["x"], src["x"][ids_a])
    np.testing.assert_array_equal(rows["y"], src["y"][ids_a])
    # the order is unrelated to the input order (Spearman ~ 0 +- 1/sqrt(N-1))
    assert abs(global_order(ids_a)["spearman"]) < 4 / math.sqrt(n - 1)
    # statistics do not depend on the order; the label histogram neither; the unit ICC drops
    for k in ("id", "x", "y"):
        for key in ("mean", "std", "min", "max"):
            np.testing.assert_allclose(a.stats[k][key], plain.stats[k][key], rtol=1e-12)
    assert a.stats["y"]["histogram"]["counts"] == plain.stats["y"]["histogram"]["counts"]
    assert plain.stats["y"]["histogram"]["icc"] > 0.7  # 500 rows per label, units of 256
    assert a.stats["y"]["histogram"]["icc"] < 0.05
    assert a.options["shuffle"] == 7 and a.fingerprint != plain.fingerprint
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_shuffle_label_sorted_kl_within_full_shuffle_tolerance(tmp_path: Path) -> None:
    """M2 on 60k label-sorted rows, pre-shuffled through many buckets, is as good as a true shuffle."""
    n, batch, n_labels = 60_000, 256, 10
    src = write_sorted_npy(tmp_path / "src", n, width=2, n_labels=n_labels)
    row_bytes = 8 + 2 * 4 + 8
    memory = 128 * 1024
    buckets = math.ceil(n * row_bytes / (memory // 4))
    assert buckets >= 8, "the test must exercise several buckets"
    m = streambatch.convert(src, tmp_path / "ds", shuffle=3, memory=memory, unit_rows=512, label="y",
                            progress=False)
    assert isinstance(m, Manifest)
    ids = zarr.open_group(str(tmp_path / "ds"), mode="r")["id"][:]
    np.testing.assert_array_equal(np.sort(ids), np.arange(n))

    # the spread of a true uniform permutation, measured here
    ref = np.array([label_sorted_kl(np.random.default_rng((11, i)).permutation(n), n, batch, n_labels)["kl_mean"]
                    for i in range(30)])
    ideal = (n_labels - 1) / (2 * batch)
    se = float(ref.std(ddof=1))
    tol = ideal + 4 * se
    assert abs(ref.mean() - ideal) < 4 * se / math.sqrt(len(ref)) + 0.02 * ideal  # the formula holds here
    got = label_sorted_kl(ids, n, batch, n_labels)
    assert got["kl_mean"] <= tol, (got, ideal, se)
    assert got["frac_missing_class"] < 0.01
    # the same figure without the shuffle: sorted input is far outside the tolerance
    assert label_sorted_kl(np.arange(n), n, batch, n_labels)["kl_mean"] > 100 * tol


def test_shuffle_memory_too_small(tmp_path: Path, sorted_npy: Path) -> None:
    with pytest.raises(InputError, match="too small to pre-shuffle"):
        streambatch.convert(sorted_npy, tmp_path / "ds", shuffle=0, memory=256, progress=False)
    assert not (tmp_path / "ds").exists() and not temp_folders(tmp_path / "ds")


# --------------------------------------------------------------------------- crash safety


def _slow_convert_script(src: Path, dst: Path, fmt: str) -> str:
    """A conversion that stops for good after its 25th unit (of 51): killed mid-way however slow
    the machine is, with the test's 5 units of data on disk past the files' 8 KiB write buffers."""
    return textwrap.dedent(f"""
        import time
        import streambatch
        from streambatch.storage import {fmt}_store as store

        write_unit = store.Writer.write_unit
        written = []

        def slow(self, data):
            write_unit(self, data)
            written.append(1)
            time.sleep(0.01 if len(written) < 25 else 3600)

        store.Writer.write_unit = slow
        streambatch.convert({str(src)!r}, {str(dst)!r}, format={fmt!r}, unit_rows=100, progress=False)
    """)


@pytest.mark.parametrize("fmt", STORAGES)
def test_sigkill_leaves_no_dataset_and_next_run_cleans_up(tmp_path: Path, sorted_npy: Path, fmt: str) -> None:
    dst = tmp_path / "out" / "ds"
    proc = subprocess.Popen([sys.executable, "-c", _slow_convert_script(sorted_npy, dst, fmt)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        stale: list[Path] = []
        # wait until the temp folder holds 5 units of data (of 51): the conversion is mid-way
        while time.monotonic() < deadline and proc.poll() is None:
            stale = temp_folders(dst)
            if stale and _data_bytes(stale[0]) >= 5 * 100 * 32:
                break
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL
    assert not dst.exists(), "a killed conversion must leave no dataset at the target"
    assert len(stale) == 1 and stale[0].exists(), "the killed run's temp folder stays until the next run"
    assert f"-{proc.pid}-" in stale[0].name

    m = streambatch.convert(sorted_npy, dst, format=fmt, unit_rows=100, progress=False)
    assert isinstance(m, Manifest)
    assert not stale[0].exists() and not temp_folders(dst)
    got = read_all(load_manifest(dst))
    for k, v in load_npy_folder(sorted_npy).items():
        np.testing.assert_array_equal(got[k], v)


def _data_bytes(folder: Path) -> int:
    total = 0
    for p in folder.rglob("*"):
        try:
            if p.is_file() and p.name != "zarr.json":
                total += p.stat().st_size
        except FileNotFoundError:  # the writer may be renaming
            pass
    return total


class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("fmt", STORAGES)
@pytest.mark.parametrize("exc", [KeyboardInterrupt, _Boom])
@pytest.mark.parametrize("shuffle", [None, 1])
def test_interrupt_mid_way_leaves_nothing(tmp_path: Path, sorted_npy: Path, monkeypatch: pytest.MonkeyPatch,
                                          fmt: str, exc: type[BaseException], shuffle: int | None) -> None:
    writer = WRITERS[fmt]
    calls = []
    write_unit = writer.write_unit

    def failing(self: object, data: dict[str, np.ndarray]) -> None:
        calls.append(1)
        if len(calls) == 5:
            raise exc("stop")
        write_unit(self, data)  # type: ignore[arg-type]

    monkeypatch.setattr(writer, "write_unit", failing)
    dst = tmp_path / "out" / "ds"
    with pytest.raises(exc):
        streambatch.convert(sorted_npy, dst, format=fmt, unit_rows=100, shuffle=shuffle, memory="64KiB",
                            progress=False)
    assert len(calls) == 5
    assert not dst.exists()
    assert not temp_folders(dst)
    assert list(dst.parent.iterdir()) == []


@pytest.mark.parametrize("fmt", STORAGES)
def test_failed_overwrite_keeps_the_old_dataset(tmp_path: Path, sorted_npy: Path, monkeypatch: pytest.MonkeyPatch,
                                                fmt: str) -> None:
    dst = tmp_path / "ds"
    old = streambatch.convert(sorted_npy, dst, format=fmt, unit_rows=100, progress=False)
    assert isinstance(old, Manifest)

    def failing(self: object, data: dict[str, np.ndarray]) -> None:
        raise _Boom("disk full")

    monkeypatch.setattr(WRITERS[fmt], "write_unit", failing)
    with pytest.raises(_Boom):
        streambatch.convert(sorted_npy, dst, format=fmt, unit_rows=50, overwrite=True, progress=False)
    monkeypatch.undo()
    assert load_manifest(dst).fingerprint == old.fingerprint
    assert int(load_manifest(dst).unit_rows[0]) == 100
    assert not temp_folders(dst)


@pytest.mark.parametrize("fmt", STORAGES)
def test_existing_target_refused_then_replaced(tmp_path: Path, sorted_npy: Path, fmt: str) -> None:
    dst = tmp_path / "ds"
    first = streambatch.convert(sorted_npy, dst, format=fmt, unit_rows=100, progress=False)
    assert isinstance(first, Manifest)
    with pytest.raises(TargetExistsError, match="overwrite"):
        streambatch.convert(sorted_npy, dst, format=fmt, unit_rows=50, progress=False)
    assert load_manifest(dst).fingerprint == first.fingerprint
    second = streambatch.convert(sorted_npy, dst, format=fmt, unit_rows=50, columns=["id"], overwrite=True,
                                 progress=False)
    assert isinstance(second, Manifest)
    m = load_manifest(dst)
    assert [c.name for c in m.columns] == ["id"] and int(m.unit_rows[0]) == 50
    np.testing.assert_array_equal(read_all(m)["id"], np.arange(m.rows))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "src"]


def test_stale_temp_of_a_live_process_is_kept(tmp_path: Path, sorted_npy: Path) -> None:
    dst = tmp_path / "ds"
    live = tmp_path / f".ds.sbtmp-{os.getpid()}-0123abcd"
    dead_pid = 2**22 + 12345  # above the default pid_max: no such process
    dead = tmp_path / f".ds.sbtmp-{dead_pid}-4567abcd"
    other = tmp_path / f".other.sbtmp-{dead_pid}-89abcdef"
    for p in (live, dead, other):
        p.mkdir()
        (p / "junk").write_bytes(b"x")
    assert clean_stale_temp(dst) == [dead]
    assert live.exists() and not dead.exists() and other.exists()


def _cli_stderr(argv: list[str], terminal: bool) -> str:
    """What ``streambatch convert ARGV`` writes on stderr, a terminal (a pty) or a pipe."""
    cmd = [sys.executable, "-m", "streambatch.cli", "convert", *argv]
    if not terminal:
        done = subprocess.run(cmd, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stderr.decode()
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 columns wide
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    out = b""
    try:
        while chunk := os.read(master, 1 << 16):
            out += chunk
    except OSError:  # EIO: the child closed the terminal
        pass
    finally:
        os.close(master)
    assert proc.wait(timeout=120) == 0, out
    return out.decode(errors="replace")


def test_progress_bar_only_on_a_terminal(tmp_path: Path, sorted_npy: Path) -> None:
    """The CLI draws tqdm's bar of rows where stderr is a terminal, and nothing where it is a
    pipe or with ``-q``."""
    drawn = _cli_stderr([str(sorted_npy), str(tmp_path / "a"), "--unit-rows", "100"], terminal=True)
    assert "convert src" in drawn and "100%" in drawn and "5.00k/5.00k" in drawn, drawn
    assert _cli_stderr([str(sorted_npy), str(tmp_path / "b"), "-q"], terminal=True) == ""
    assert _cli_stderr([str(sorted_npy), str(tmp_path / "c")], terminal=False) == ""
    assert load_manifest(tmp_path / "a").rows == load_manifest(tmp_path / "c").rows == 5003


def test_dry_run_writes_nothing(tmp_path: Path, sorted_npy: Path) -> None:
    dst = tmp_path / "out" / "ds"
    plan = streambatch.convert(sorted_npy, dst, format="parquet", unit_rows=1000, dry_run=True)
    assert isinstance(plan, dict)
    assert plan["rows"] == 5003 and plan["units"] == 6 and plan["unit_rows"] == 1000
    assert plan["row_bytes"] == 8 + 16 + 8 and plan["bytes"] == 5003 * 32
    assert [c["name"] for c in plan["columns"]] == ["id", "x", "y"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("unit_bytes", "unit_rows"), [("4KiB", 128), (1000, 31), ("1GiB", 5003)])
def test_unit_bytes_sets_rows_per_unit(tmp_path: Path, sorted_npy: Path, unit_bytes: str | int,
                                       unit_rows: int) -> None:
    m = streambatch.convert(sorted_npy, tmp_path / "ds", unit_bytes=unit_bytes, progress=False)  # 32-byte rows
    assert isinstance(m, Manifest)
    assert int(m.unit_rows[0]) == unit_rows and m.n_units == -(-5003 // unit_rows)
    np.testing.assert_array_equal(read_all(m)["id"], np.arange(5003))


# --------------------------------------------------------------------------- read-ahead thread

def test_read_ahead_keeps_order_and_error_type() -> None:
    """Items arrive in order; the source's exception reaches the consumer with its type, after them."""
    from streambatch.convert.readahead import ReadAhead as _ReadAhead

    def source():
        yield from range(5)
        raise InputError("row 5 is bad")

    r = _ReadAhead(source(), depth=2)
    got = []
    with pytest.raises(InputError, match="row 5 is bad"):
        for x in r:
            got.append(x)
    r.close()
    assert got == [0, 1, 2, 3, 4]


def test_read_ahead_close_mid_way_stops_and_closes_the_source() -> None:
    """close() while the producer is blocked on a full queue stops the thread and closes the source."""
    from streambatch.convert.readahead import ReadAhead as _ReadAhead

    closed = []

    def source():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.append(True)

    r = _ReadAhead(source(), depth=1)
    it = iter(r)
    assert [next(it), next(it)] == [0, 1]
    r.close()
    assert not r._thread.is_alive()
    assert closed == [True]


@pytest.mark.parametrize("dtype", ["uint8", "int8", "bool"])
def test_one_byte_statistics_are_exact(dtype: str) -> None:
    """1-byte columns get mean and std exact to the last bit or two, merged over uneven pieces,
    also for near-constant features (where a float64 one-pass or two-pass sum loses ~1e-13)."""
    from fractions import Fraction

    from streambatch.manifest import Column
    from streambatch.stats import ColumnStats

    rng = np.random.default_rng(7)
    n = 50_000
    if dtype == "uint8":  # near-constant, full range, and a block-sized run of 255s
        data = np.stack([np.where(rng.random(n) < 0.001, 254, 255), rng.integers(0, 256, n),
                         np.full(n, 255)], axis=1).astype(np.uint8)
    elif dtype == "int8":
        data = np.stack([rng.integers(-128, 128, n), np.where(rng.random(n) < 0.01, -128, -127)], axis=1).astype(np.int8)
    else:
        data = rng.random((n, 2)) < np.array([0.3, 0.0005])
    stats = ColumnStats(Column("c", dtype, (data.shape[1],)))
    for lo in range(0, n, 7_001):
        stats.update(data[lo:lo + 7_001])
    assert stats.n == n
    out = stats.to_json()
    for j in range(data.shape[1]):
        col = data[:, j].astype(np.int64)
        s, q = int(col.sum()), int((col * col).sum())
        mean, std = Fraction(s, n), math.sqrt(Fraction(n * q - s * s, n * n))
        assert out["mean"][j] == pytest.approx(float(mean), rel=1e-15, abs=1e-300)
        assert out["std"][j] == pytest.approx(std, rel=1e-14, abs=1e-300)
        assert out["min"][j] == col.min() and out["max"][j] == col.max()


# --------------------------------------------------------------------------- files written in parallel


def _parts_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the conversions that went through the parallel path (and how many threads each used)."""
    mod = sys.modules["streambatch.convert.parallel"]
    runs: list[int] = []
    run = mod.ParallelParts.run

    def counted(self, bar):  # type: ignore[no-untyped-def]
        runs.append(self.threads)
        return run(self, bar)

    monkeypatch.setattr(mod.ParallelParts, "run", counted)
    return runs


def _parquet_source(tmp_path: Path, npy: Path, groups: tuple[int, int] = (33, 70)) -> Path:
    """``npy`` as a folder of two Parquet files of uneven row groups, as pyarrow writes them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = load_npy_folder(npy)
    table = pa.table({"id": data["id"], "x": pa.FixedSizeListArray.from_arrays(data["x"].reshape(-1), 4),
                      "y": data["y"]})
    folder = tmp_path / "pq"
    folder.mkdir(parents=True)
    pq.write_table(table.slice(0, 1700), folder / "a.parquet", row_group_size=groups[0])
    pq.write_table(table.slice(1700), folder / "b.parquet", row_group_size=groups[1])
    return folder


@pytest.mark.parametrize("fmt,codec", [("zarr", "none"), ("zarr", "lz4"), ("parquet", "none"), ("parquet", "zstd")])
@pytest.mark.parametrize("src_kind", ["npy", "parquet"])
def test_parallel_files_equal_the_sequential_conversion(tmp_path: Path, sorted_npy: Path, monkeypatch: pytest.MonkeyPatch,
                                                        fmt: str, codec: str, src_kind: str) -> None:
    """Files written by 3 threads at once hold the same bytes, layout, checksums and histogram as
    one writer's, and statistics equal to rounding."""
    src = sorted_npy if src_kind == "npy" else _parquet_source(tmp_path, sorted_npy)
    runs = _parts_runs(monkeypatch)
    opts = dict(format=fmt, codec=codec, unit_rows=97, shard_bytes=20_000, label="y", progress=False)
    one = streambatch.convert(src, tmp_path / "one", threads=1, **opts)
    assert runs == []
    many = streambatch.convert(src, tmp_path / "many", threads=3, memory="1MiB", **opts)
    assert runs == [3]
    assert isinstance(one, Manifest) and isinstance(many, Manifest)
    assert len(many.files) >= 4 * (3 if fmt == "zarr" else 1)
    assert many.files == one.files and many.layout == one.layout and many.fingerprint == one.fingerprint
    np.testing.assert_array_equal(many.unit_stored_nbytes, one.unit_stored_nbytes)
    for f in one.files:
        assert (tmp_path / "many" / f).read_bytes() == (tmp_path / "one" / f).read_bytes(), f
    for k in ("id", "x", "y"):
        for key in ("count", "mean", "std", "min", "max"):
            np.testing.assert_allclose(many.stats[k][key], one.stats[k][key], rtol=1e-12)
    assert many.stats["y"]["histogram"] == one.stats["y"]["histogram"]
    got = read_all(load_manifest(tmp_path / "many"))
    for k, v in load_npy_folder(sorted_npy).items():
        np.testing.assert_array_equal(got[k], v)


def test_big_row_groups_are_read_in_order(tmp_path: Path, sorted_npy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Row groups larger than an eighth of an output file would be decoded again by every part
    that shares them: such an input is read once, in order, whatever ``threads`` says."""
    src = _parquet_source(tmp_path, sorted_npy, groups=(1700, 3303))
    runs = _parts_runs(monkeypatch)
    m = streambatch.convert(src, tmp_path / "ds", unit_rows=97, shard_bytes=20_000, threads=3, progress=False)
    assert isinstance(m, Manifest) and len(m.files) > 3
    assert runs == []
    small = streambatch.convert(_parquet_source(tmp_path / "s", sorted_npy), tmp_path / "ds2", unit_rows=97,
                                shard_bytes=20_000, threads=3, progress=False)
    assert runs == [3] and isinstance(small, Manifest) and small.fingerprint == m.fingerprint


def test_parallel_files_name_the_first_bad_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad labels in two files: the error names the first in source order even when the thread of
    the later file finds its bad row first (the first file's check is delayed here)."""
    from streambatch.stats import LabelStats

    src = tmp_path / "src"
    src.mkdir()
    y = np.repeat(np.arange(10.0), 500)
    y[[50, 150, 4321]] = [np.inf, np.nan, np.nan]
    np.save(src / "y.npy", y)
    np.save(src / "x.npy", np.zeros((5000, 8), np.float32))
    check = LabelStats.check
    order: list[int | None] = []

    failed = threading.Event()

    def delayed(self: LabelStats, values: np.ndarray, where: str, first_row: int | None = None) -> None:
        if first_row != 100:  # the file of rows 100..199 fails first; the others go on after that
            failed.wait(60)
        order.append(first_row)
        try:
            check(self, values, where, first_row)
        finally:
            if first_row == 100:
                failed.set()

    monkeypatch.setattr(LabelStats, "check", delayed)
    runs = _parts_runs(monkeypatch)
    with pytest.raises(InputError, match=r"has NaN/inf at row 50$"):  # units of 100 rows: one a file
        streambatch.convert(src, tmp_path / "ds", unit_rows=100, shard_bytes=4000, label="y", threads=4,
                            progress=False)
    assert runs == [4]
    assert order.index(100) < order.index(0), "the second file's thread failed first"
    assert 4300 not in order, "files after a failure are not started"
    assert not (tmp_path / "ds").exists() and not temp_folders(tmp_path / "ds")


@pytest.mark.parametrize("fmt", STORAGES)
@pytest.mark.parametrize("exc", [KeyboardInterrupt, _Boom])
def test_a_failing_file_stops_the_others_and_leaves_nothing(tmp_path: Path, sorted_npy: Path,
                                                            monkeypatch: pytest.MonkeyPatch, fmt: str,
                                                            exc: type[BaseException]) -> None:
    """A writer thread's error reaches the caller with its type (KeyboardInterrupt included);
    the files after it are abandoned, no thread is left (the autouse fixture) and nothing stays."""
    writer = WRITERS[fmt]
    write_units = writer.write_units
    seen: list[int] = []

    def failing(self: object, data: dict[str, np.ndarray]) -> None:
        seen.append(self._unit)  # type: ignore[attr-defined]
        if self._unit >= 20:  # type: ignore[attr-defined]
            raise exc("stop")
        write_units(self, data)  # type: ignore[arg-type]

    monkeypatch.setattr(writer, "write_units", failing)
    runs = _parts_runs(monkeypatch)
    dst = tmp_path / "out" / "ds"
    with pytest.raises(exc, match="stop"):
        streambatch.convert(sorted_npy, dst, format=fmt, unit_rows=50, shard_bytes=8000, threads=2,
                            progress=False)
    assert runs == [2]
    assert max(seen) < 40, "files after the failing one were abandoned"
    assert not dst.exists() and not temp_folders(dst)
    assert list(dst.parent.iterdir()) == []


@pytest.mark.parametrize("threads", [1, 2])
def test_parallel_statistics_keep_float64_precision_far_from_zero(tmp_path: Path, threads: int) -> None:
    """Parts merged from 8 files: int64 ids near 2^40 and float64 values near 1e9 keep ~1e-15 of
    the exact std (merged around 0 they were 1e-9 and 5e-12 off, review), and inf in two files
    gives null statistics without a RuntimeWarning (pytest turns warnings into errors)."""
    from fractions import Fraction

    rng = np.random.default_rng(3)
    n = 16_000
    src = tmp_path / "src"
    src.mkdir()
    data = {"big": (2**40 + np.arange(n) * 7).astype(np.int64),
            "far": 1e9 + rng.standard_normal(n) * np.linspace(1, 50, n),
            "inf": rng.standard_normal((n, 2))}
    data["inf"][[100, 15_000], 0] = np.inf
    for k, v in data.items():
        np.save(src / f"{k}.npy", v)
    m = streambatch.convert(src, tmp_path / "ds", unit_rows=200, shard_bytes=200 * 16 * 10, threads=threads,
                            progress=False)
    assert isinstance(m, Manifest) and len(m.files) == 3 * 8
    for k in ("big", "far"):
        exact = [Fraction(float(v)) if k == "far" else Fraction(int(v)) for v in data[k]]
        mean = sum(exact) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in exact) / n)
        assert m.stats[k]["mean"] == pytest.approx(float(mean), rel=1e-15)
        assert m.stats[k]["std"] == pytest.approx(std, rel=1e-13), k
    assert m.stats["inf"]["mean"][0] is None and m.stats["inf"]["max"][0] is None
    np.testing.assert_allclose(m.stats["inf"]["std"][1], data["inf"][:, 1].std(), rtol=1e-12)


def test_parallel_parts_do_not_keep_their_staging_buffers(tmp_path: Path) -> None:
    """Each part's statistics stage small pieces; a finished part keeps only its statistics, so
    memory does not grow with the number of files (157 parts held 166 MB of stages, review)."""
    import tracemalloc

    src = write_sorted_npy(tmp_path / "src", 40_000, width=16)
    peaks = {}
    for threads in (1, 2):
        tracemalloc.start()
        streambatch.convert(src, tmp_path / f"ds{threads}", unit_rows=64, shard_bytes=16 * 1024, memory="64MiB",
                            threads=threads, progress=False)
        peaks[threads] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[2] < 2 * peaks[1] + (4 << 20), peaks


@pytest.mark.parametrize("fmt", STORAGES)
def test_a_part_runs_in_another_process_from_its_plain_inputs(tmp_path: Path, sorted_npy: Path, fmt: str) -> None:
    """A part of a conversion is plain data (its unit range; the options, the source's spec
    among them): run in a fresh process (spawned: it shares only what is pickled), where it opens
    the source itself, it writes the same bytes, layout and statistics as the same part run here."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from streambatch.convert.parts import PartOptions, first_row_shifts, plan_parts
    from streambatch.sources import open_source
    from streambatch.storage import units_per_file

    src = _parquet_source(tmp_path, sorted_npy)
    with open_source(src) as source:
        assert source.spec is not None
        cols = source.columns
        opts = PartOptions(source.spec, fmt, cols, source.rows, 97, 20_000, "none", "y", 3 * 97, 1 << 16,
                           first_row_shifts(source, cols))
        parts = plan_parts(source.rows, 97, units_per_file(fmt, cols, source.rows, 97, 20_000))
        assert len(parts) >= 3
        here, there = tmp_path / "here", tmp_path / "there"
        here.mkdir()
        there.mkdir()
        mine = parts[1].run(opts, here, here, source)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        theirs = pool.submit(parts[1].run, opts, there, there).result()
    assert theirs.rows == mine.rows == parts[1].stop - parts[1].start > 0
    assert theirs.written == mine.written  # files, layout, stored bytes and checksum of each unit
    for f in mine.written[0]:
        assert (there / f).read_bytes() == (here / f).read_bytes(), f
    for name, st in mine.stats.items():
        assert theirs.stats[name].to_json() == st.to_json(), name
    assert theirs.labels is not None and mine.labels is not None
    assert (theirs.labels.counts, theirs.labels.unit_counts) == (mine.labels.counts, mine.labels.unit_counts)


def test_a_damaged_parquet_input_is_one_line_naming_the_file(tmp_path: Path) -> None:
    """pyarrow's error for a damaged page (several lines, no file name) becomes an InputError
    naming the file and row group, on one thread or several; nothing is written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "bad.parquet"
    n = 20_000
    pq.write_table(pa.table({"a": np.random.default_rng(0).standard_normal(n), "b": np.arange(n)}), src,
                   row_group_size=2000, compression="snappy")
    off = pq.ParquetFile(src).metadata.row_group(7).column(0).data_page_offset
    raw = bytearray(src.read_bytes())
    for k in range(off + 40, off + 400):
        raw[k] ^= 0x5A
    src.write_bytes(bytes(raw))
    for threads in (1, 2):
        with pytest.raises(InputError, match=r"bad\.parquet: cannot read row group[s]? [0-9-]+: [^\n]+$"):
            streambatch.convert(src, tmp_path / "ds", unit_rows=500, shard_bytes=40_000, threads=threads,
                                progress=False)
        assert not (tmp_path / "ds").exists() and not temp_folders(tmp_path / "ds")
