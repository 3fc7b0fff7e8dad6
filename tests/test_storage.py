"""The storage reader contract, one test class subclassed for every format and codec.

Each subclass converts the same small dataset (1003 rows, units of 100 rows, so the last
unit is partial, and small shards so there are several shard files) and checks that its
reader returns exactly the source rows, verifies its checksums, and turns corrupt or
truncated bytes into a ``DataError`` that names the unit and file, never into wrong rows.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import streambatch
from streambatch.errors import DataError
from streambatch.manifest import Manifest, load_manifest
from streambatch.storage import CODECS, STORAGES, UnitReader, open_reader, open_writer
from streambatch.storage._files import _resident as resident

from conftest import flip_byte

ROWS = 1003
UNIT = 100


def _source_data(rows: int = ROWS) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(42)
    return {
        "id": np.arange(rows, dtype=np.int64),
        "x": rng.standard_normal((rows, 3)).astype(np.float32),
        "m": rng.integers(0, 256, (rows, 2, 3), dtype=np.uint8),
        "b": rng.random(rows) < 0.3,
        "y": rng.integers(-5, 5, rows).astype(np.int16),
        "u": rng.integers(0, 2**32, rows, dtype=np.uint32),
    }


def _write_npy_folder(folder: Path, data: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in data.items():
        np.save(folder / f"{name}.npy", arr)
    return folder


def _unit_bytes(m: Manifest, unit: int, column: str) -> tuple[Path, int, int]:
    """(file, offset, size) of the stored bytes of ``unit`` (of ``column`` for Zarr)."""
    lay = m.layout
    if m.storage == "zarr":
        loc = lay["columns"][column]
        return m.path_of(int(loc["file"][unit])), int(loc["offset"][unit]), int(loc["size"][unit])
    return m.path_of(int(lay["file"][unit])), int(lay["offset"][unit]), int(lay["size"][unit])


def _evict(m: Manifest, where: list[tuple[Path, int]]) -> bool:
    """Drop the dataset's files from the page cache (written back first: dirty pages stay);
    True once no byte of ``where`` is resident.  Retried: pages that a read-ahead has just
    brought in may still be pinned for a moment and are then skipped by the kernel."""
    for _ in range(50):
        for i in range(len(m.files)):
            fd = os.open(m.path_of(i), os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        if not any(_resident(path, o) for path, o in where):
            return True
        time.sleep(0.02)
    return False


def _resident(path: Path, offset: int) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        return resident(fd, offset)
    finally:
        os.close(fd)


def _unit_file_offset(m: Manifest, unit: int) -> tuple[int, int]:
    """(file index, offset) of the first stored byte of ``unit`` (of column ``x`` for Zarr)."""
    loc = m.layout["columns"]["x"] if m.storage == "zarr" else m.layout
    return int(loc["file"][unit]), int(loc["offset"][unit])


class ReaderContract:
    """What every ``UnitReader`` guarantees.  Subclasses set ``storage`` and ``codec``."""

    storage = "zarr"
    codec = "none"
    names_column_on_corruption = True  # zarr checks each column's chunk, parquet a whole row group

    @pytest.fixture(scope="class")
    @classmethod
    def data(cls) -> dict[str, np.ndarray]:
        return _source_data()

    @pytest.fixture(scope="class")
    @classmethod
    def built(cls, tmp_path_factory: pytest.TempPathFactory, data: dict[str, np.ndarray]) -> Path:
        root = tmp_path_factory.mktemp(f"{cls.storage}-{cls.codec}")
        src = _write_npy_folder(root / "src", data)
        dst = root / "ds"
        # about 3 units per shard / file: several files, the last one partial
        streambatch.convert(src, dst, format=cls.storage, codec=cls.codec, unit_rows=UNIT,
                            shard_bytes=3 * UNIT * 12, progress=False)
        return dst

    @pytest.fixture
    def dataset(self, built: Path, tmp_path: Path) -> Path:
        """A private copy that a test may damage."""
        dst = tmp_path / "ds"
        shutil.copytree(built, dst)
        return dst

    @pytest.fixture
    def manifest(self, dataset: Path) -> Manifest:
        return load_manifest(dataset)

    def _open(self, m: Manifest, verify: bool = False) -> UnitReader:
        return open_reader(m, verify=verify)

    def _read(self, reader: UnitReader, m: Manifest, unit: int, lo: int, hi: int,
              names: list[str] | None = None) -> dict[str, np.ndarray]:
        cols = m.select(names)
        out = {c.name: np.full((hi - lo, *c.shape), 0x5A, dtype=c.np_dtype) for c in cols}
        reader.read_into(unit, lo, hi, out)
        return out

    # ------------------------------------------------------------------ layout

    def test_layout(self, manifest: Manifest, data: dict[str, np.ndarray]) -> None:
        assert manifest.storage == self.storage and manifest.codec == self.codec
        assert manifest.rows == ROWS
        assert manifest.n_units == -(-ROWS // UNIT)
        assert manifest.unit_rows.tolist() == [UNIT] * (ROWS // UNIT) + [ROWS % UNIT]
        assert len(manifest.files) > 1, "small shard bytes must give several files"
        assert {c.name: (c.dtype, c.shape) for c in manifest.columns} == {
            k: (v.dtype.name, v.shape[1:]) for k, v in sorted(data.items())}

    # ------------------------------------------------------------------ reads

    @pytest.mark.parametrize("verify", [False, True])
    def test_full_units_equal_source(self, manifest: Manifest, data: dict[str, np.ndarray], verify: bool) -> None:
        reader = self._open(manifest, verify)
        try:
            for u in range(manifest.n_units):
                s, n = int(manifest.unit_start[u]), int(manifest.unit_rows[u])
                got = self._read(reader, manifest, u, 0, n)
                assert set(got) == set(data)
                for name, arr in got.items():
                    assert arr.dtype == data[name].dtype
                    np.testing.assert_array_equal(arr, data[name][s:s + n], err_msg=f"{name} unit {u}")
        finally:
            reader.close()

    @pytest.mark.parametrize("verify", [False, True])
    def test_partial_ranges_equal_source(self, manifest: Manifest, data: dict[str, np.ndarray],
                                         verify: bool) -> None:
        rng = np.random.default_rng(7)
        reader = self._open(manifest, verify)
        try:
            last = manifest.n_units - 1
            cases = [(0, 0, 1), (0, UNIT - 1, UNIT), (1, 17, 58), (last, 0, ROWS % UNIT),
                     (last, ROWS % UNIT - 1, ROWS % UNIT), (last, 1, 2)]
            for _ in range(20):
                u = int(rng.integers(0, manifest.n_units))
                n = int(manifest.unit_rows[u])
                lo = int(rng.integers(0, n))
                cases.append((u, lo, int(rng.integers(lo + 1, n + 1))))
            for u, lo, hi in cases:
                s = int(manifest.unit_start[u])
                names = ["m", "id"] if u % 2 else None  # a column subset, in another order
                got = self._read(reader, manifest, u, lo, hi, names)
                for name, arr in got.items():
                    np.testing.assert_array_equal(arr, data[name][s + lo:s + hi], err_msg=f"{name} {u} {lo}:{hi}")
        finally:
            reader.close()

    def test_non_contiguous_out_buffer(self, manifest: Manifest, data: dict[str, np.ndarray]) -> None:
        """``out`` may be a strided view (e.g. a column of a wider buffer): the rows land in it."""
        reader = self._open(manifest)
        try:
            u, n = 2, UNIT
            wide = np.zeros((n, 2), dtype=np.int64)
            reader.read_into(u, 0, n, {"id": wide[:, 1]})
            np.testing.assert_array_equal(wide[:, 1], data["id"][2 * UNIT:3 * UNIT])
            np.testing.assert_array_equal(wide[:, 0], 0)
            xbuf = np.zeros((n, 4), dtype=np.float32)  # rows of 4 floats, the column fills 3
            mbuf = np.zeros((n, 2, 5), dtype=np.uint8)
            reader.read_into(u, 0, n, {"x": xbuf[:, 1:], "m": mbuf[:, :, 1:4]})
            np.testing.assert_array_equal(xbuf[:, 1:], data["x"][2 * UNIT:3 * UNIT])
            np.testing.assert_array_equal(mbuf[:, :, 1:4], data["m"][2 * UNIT:3 * UNIT])
            assert not xbuf[:, 0].any() and not mbuf[:, :, [0, 4]].any()
        finally:
            reader.close()

    def test_bad_row_range_raises(self, manifest: Manifest) -> None:
        reader = self._open(manifest)
        try:
            last = manifest.n_units - 1
            for u, lo, hi in [(0, 0, 0), (0, 5, 3), (0, -1, 3), (0, 0, UNIT + 1), (last, 0, ROWS % UNIT + 1)]:
                out = {"id": np.empty(max(0, hi - lo), np.int64)}
                with pytest.raises(ValueError):
                    reader.read_into(u, lo, hi, out)
        finally:
            reader.close()

    def test_concurrent_reads(self, manifest: Manifest, data: dict[str, np.ndarray]) -> None:
        reader = self._open(manifest, verify=True)
        try:
            def one(u: int) -> bool:
                s, n = int(manifest.unit_start[u]), int(manifest.unit_rows[u])
                got = self._read(reader, manifest, u, 0, n)
                return all(np.array_equal(got[k], data[k][s:s + n]) for k in got)

            with ThreadPoolExecutor(4) as pool:
                assert all(pool.map(one, list(range(manifest.n_units)) * 4))
        finally:
            reader.close()

    def test_advise_reads_a_cold_window_ahead(self, manifest: Manifest) -> None:
        """``advise`` starts reading evicted units (the loader calls it before a window's reads),
        and the cache probe it relies on tells cold bytes from cached ones."""
        if not hasattr(os, "posix_fadvise"):
            pytest.skip("needs posix_fadvise")
        where = [(manifest.path_of(f), o) for f, o in (_unit_file_offset(manifest, u) for u in range(manifest.n_units))]
        if not _evict(manifest, where):
            pytest.skip("this file system keeps evicted pages (tmpfs?)")
        reader = self._open(manifest)
        try:
            files = reader._files
            for u in range(manifest.n_units):
                fi, off = _unit_file_offset(manifest, u)
                files.fd(fi, str)
                assert not files.cached(fi, off)
            reader.advise([(u, 0, int(manifest.unit_rows[u]), None) for u in range(manifest.n_units)],
                          [c.name for c in manifest.columns])
            deadline = time.monotonic() + 60
            while not all(_resident(path, o) for path, o in where) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert all(_resident(path, o) for path, o in where), "advise did not start reading the cold units"
            assert all(files.cached(*_unit_file_offset(manifest, u)) for u in range(manifest.n_units))
            self.test_full_units_equal_source(manifest, _source_data(), verify=True)
        finally:
            reader.close()

    def test_close_is_idempotent(self, manifest: Manifest) -> None:
        reader = self._open(manifest)
        self._read(reader, manifest, 0, 0, 10)
        reader.close()
        reader.close()

    # ------------------------------------------------------------------ verification

    def test_verify_unit_passes(self, manifest: Manifest) -> None:
        for verify in (False, True):
            reader = self._open(manifest, verify)
            try:
                for u in range(manifest.n_units):
                    reader.verify_unit(u)
            finally:
                reader.close()

    @pytest.mark.parametrize("column", ["x", "b"])
    def test_corrupt_byte_raises(self, manifest: Manifest, column: str) -> None:
        unit = 4
        path, off, size = _unit_bytes(manifest, unit, column)
        flip_byte(path, off + size // 2)
        rel = str(path.relative_to(manifest.root))
        reader = self._open(manifest, verify=True)
        try:
            with pytest.raises(DataError) as ei:
                self._read(reader, manifest, unit, 0, UNIT, [column])
            msg = str(ei.value)
            assert f"unit {unit}" in msg and rel in msg and str(manifest.root) in msg
            if self.names_column_on_corruption:
                assert repr(column) in msg
            with pytest.raises(DataError, match=f"unit {unit}"):
                reader.verify_unit(unit)
            # the neighbours are untouched and still read and verify
            for u in (unit - 1, unit + 1):
                reader.verify_unit(u)
                self._read(reader, manifest, u, 0, UNIT)
        finally:
            reader.close()

    @pytest.mark.parametrize("verify", [False, True])
    def test_truncated_file_never_returns_wrong_rows(self, manifest: Manifest, data: dict[str, np.ndarray],
                                                     verify: bool) -> None:
        last = manifest.n_units - 1
        path, off, size = _unit_bytes(manifest, last, "x")
        # cut inside the last unit's real rows (it holds 3 of 12 bytes each; Zarr pads the rest)
        os.truncate(path, off + min(size // 2, 18))
        reader = self._open(manifest, verify)
        failed = []
        try:
            for u in range(manifest.n_units):
                s, n = int(manifest.unit_start[u]), int(manifest.unit_rows[u])
                try:
                    got = self._read(reader, manifest, u, 0, n)
                except DataError as e:
                    assert f"unit {u}" in str(e) and str(path.relative_to(manifest.root)) in str(e)
                    failed.append(u)
                    continue
                for name, arr in got.items():
                    np.testing.assert_array_equal(arr, data[name][s:s + n], err_msg=f"{name} unit {u}")
            assert last in failed
            with pytest.raises(DataError, match=f"unit {last}"):
                reader.verify_unit(last)
        finally:
            reader.close()

    def test_missing_file_raises(self, manifest: Manifest) -> None:
        path, _, _ = _unit_bytes(manifest, 0, "id")
        path.unlink()
        reader = self._open(manifest)
        try:
            with pytest.raises(DataError, match="unit 0"):
                self._read(reader, manifest, 0, 0, UNIT, ["id"])
            with pytest.raises(DataError):
                reader.verify_unit(0)
        finally:
            reader.close()


class TestZarrNone(ReaderContract):
    storage, codec = "zarr", "none"


class TestZarrLz4(ReaderContract):
    storage, codec = "zarr", "lz4"

    def test_whole_units_decode_into_place(self, manifest: Manifest, data: dict[str, np.ndarray]) -> None:
        """A whole unit's Blosc frame is decompressed straight into the caller's buffer; a slice
        of a unit is decoded aside and copied (the spy records which way each decode went)."""
        reader = self._open(manifest, verify=True)
        dec, into = reader._decoders["x"], []

        class Spy:
            def decode(self, buf: Any, out: Any = None) -> Any:
                into.append(out is not None)
                return dec.decode(buf, out=out)

        reader._decoders["x"] = Spy()
        try:
            np.testing.assert_array_equal(self._read(reader, manifest, 2, 0, UNIT, ["x"])["x"], data["x"][200:300])
            np.testing.assert_array_equal(self._read(reader, manifest, 2, 10, 20, ["x"])["x"], data["x"][210:220])
        finally:
            reader.close()
        assert into == [True, False]

    @pytest.mark.parametrize("field", [4, 12])
    def test_damaged_frame_without_verification_is_a_data_error(self, manifest: Manifest, field: int) -> None:
        """A frame whose header claims another decoded size (bytes 4..7 of Blosc's header) or
        another frame size (bytes 12..15) is an error naming the unit, never rows left
        unwritten in the caller's buffer.  (Damage to the data of a frame stored uncompressed
        is only caught by the checksum: that is what verification is for.)"""
        unit = 4
        path, off, _ = _unit_bytes(manifest, unit, "x")
        with open(path, "r+b") as f:
            f.seek(off + field)
            claimed = int.from_bytes(f.read(4), "little")
            f.seek(off + field)
            f.write((claimed - 8).to_bytes(4, "little"))
        reader = self._open(manifest, verify=False)
        try:
            with pytest.raises(DataError, match=f"column 'x', unit {unit}"):
                self._read(reader, manifest, unit, 0, UNIT, ["x"])
            self._read(reader, manifest, unit + 1, 0, UNIT, ["x"])
        finally:
            reader.close()


class TestZarrZstd(ReaderContract):
    storage, codec = "zarr", "zstd"


class TestParquetNone(ReaderContract):
    storage, codec = "parquet", "none"
    names_column_on_corruption = False


class TestParquetZstd(ReaderContract):
    storage, codec = "parquet", "zstd"
    names_column_on_corruption = False


def test_every_storage_and_codec_is_covered() -> None:
    covered = {(c.storage, c.codec) for c in ReaderContract.__subclasses__()}
    assert {s for s, _ in covered} == set(STORAGES)
    assert {c for s, c in covered if s == "zarr"} == set(CODECS)


@pytest.mark.parametrize("storage", STORAGES)
def test_open_writer_rejects_unknown_names(tmp_path: Path, storage: str) -> None:
    cols = (streambatch.Column("a", "int64"),)
    with pytest.raises(ValueError, match="codec"):
        open_writer(storage, tmp_path / "w", cols, 10, 5, 1 << 20, "gzip")
    with pytest.raises(ValueError, match="format"):
        open_writer("hdf5", tmp_path / "w", cols, 10, 5, 1 << 20, "none")


def _reachable_by_others(folder: Path) -> bool:
    """Whether every folder from the root down to ``folder`` lets any user through (o+x)."""
    folder = folder.resolve()
    return all(p.stat().st_mode & 0o001 for p in (folder, *folder.parents))


def _probe_as(uid: int, dataset: Path) -> str:
    """``"<mincore's answer> <cached>"`` for the first file of ``dataset``, from a forked child
    running as ``uid``.  Forked, not started: the child needs no interpreter, package or
    library it may read (a clean clone in a private 0700 folder, its venv inside it), only the
    dataset.  The code runs once here first, so nothing is imported after the switch."""
    import warnings

    def probe() -> str:
        r = open_reader(load_manifest(dataset))
        try:
            f = r._files  # type: ignore[attr-defined]
            fd = f.fd(0, str)[0]
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            return f"{resident(fd, 0)} {f.cached(0, 0)}"
        finally:
            r.close()

    probe()
    rfd, wfd = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns about fork() in a process with threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(rfd)
            try:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            except OSError as e:
                os.write(wfd, f"SKIP cannot become user {uid}: {e}".encode())
            else:
                os.write(wfd, probe().encode())
        except BaseException as e:  # noqa: BLE001 - reported to the test
            os.write(wfd, f"ERROR {type(e).__name__}: {e}".encode()[:4000])
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        answer = f.read().decode()
    os.waitpid(pid, 0)
    return answer


def test_cache_probe_does_not_trust_mincore_on_files_it_does_not_own() -> None:
    """Linux reports every page of a file as resident to a process that neither owns nor may
    write it, so for such a reader (a shared, read-only dataset) ``cached`` answers False ("cannot
    tell") and the read-ahead hints are given, instead of a window that always looks cached."""
    import tempfile

    if not hasattr(os, "fork") or not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root (to read the dataset as another user)")
    bases = [Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp")]
    base = next((b for b in bases if b.is_dir() and _reachable_by_others(b)), None)
    if base is None:
        pytest.skip(f"no temporary folder that another user can reach among {[str(b) for b in bases]}")
    root = Path(tempfile.mkdtemp(prefix="sb-probe-", dir=base))
    try:
        root.chmod(0o755)
        src = _write_npy_folder(root / "src", _source_data())
        streambatch.convert(src, root / "ds", unit_rows=UNIT, progress=False)
        for p in root.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        answer = _probe_as(65534, root / "ds")
        if answer.startswith("SKIP "):
            pytest.skip(answer[5:])
        assert not answer.startswith("ERROR"), answer
        lying, cached = answer.split()
        assert cached == "False", f"mincore said {lying}, and the probe believed it"
    finally:
        shutil.rmtree(root, ignore_errors=True)
