"""The storage contract, one test class run on the files of every writer path users get.

:class:`StorageContract` holds the tests; each subclass names a format, a codec and the columns
it converts, which together pick the writer and reader path (Parquet: values read in place when
uncompressed, decoded by pyarrow when compressed), and checks that the files came from that path.  Each
converts the same small dataset (1003 rows, units of 100 rows, so the last unit is partial, and
small files so there are several) and checks that its reader returns exactly the source rows,
from many threads at once, verifies its checksums, turns corrupt, truncated or missing bytes into
a ``DataError`` that names the unit and file, never into wrong rows; that ``streambatch verify``
passes and then fails on damage; that parallel and sequential conversion write the same dataset;
and that the dataset converts back as an input.  Adding a format is one module in
``streambatch/storage`` plus one subclass here (``test_every_format_and_writer_path_is_covered``).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import streambatch
from streambatch.cli import main as cli_main
from streambatch.errors import DataError
from streambatch.io.files import _resident as resident
from streambatch.manifest import Manifest
from streambatch.storage import CODECS, FORMATS, UnitReader, load_manifest, open_reader, read_all

from conftest import column_range, flip_byte, unit_range

ROWS = 1003
UNIT = 100


def source_data(rows: int = ROWS) -> dict[str, np.ndarray]:
    """Every dtype kind: ints of 1, 2, 4 and 8 bytes, tensors, floats of 2 and 4 bytes, booleans."""
    rng = np.random.default_rng(42)
    return {
        "id": np.arange(rows, dtype=np.int64),
        "x": rng.standard_normal((rows, 3)).astype(np.float32),
        "m": rng.integers(0, 256, (rows, 2, 3), dtype=np.uint8),
        "b": rng.random(rows) < 0.3,
        "h": rng.standard_normal(rows).astype(np.float16),
        "y": rng.integers(-5, 5, rows).astype(np.int16),
        "u": rng.integers(0, 2**32, rows, dtype=np.uint32),
    }


def write_npy_folder(folder: Path, data: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in data.items():
        np.save(folder / f"{name}.npy", arr)
    return folder


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


class StorageContract:
    """What every format's files and reader guarantee.  Subclasses set ``storage``, ``codec`` and
    ``columns`` (of :func:`source_data`), and check their writer path in :meth:`check_writer_path`."""

    storage = "zarr"
    codec = "none"
    columns: tuple[str, ...] = ("id", "x", "m", "b", "h", "y", "u")

    def check_writer_path(self, m: Manifest) -> None:
        """Assert that the files came from the writer path this class is for."""

    @pytest.fixture(scope="class")
    @classmethod
    def data(cls) -> dict[str, np.ndarray]:
        return {k: v for k, v in source_data().items() if k in cls.columns}

    @pytest.fixture(scope="class")
    @classmethod
    def src(cls, tmp_path_factory: pytest.TempPathFactory, data: dict[str, np.ndarray]) -> Path:
        return write_npy_folder(tmp_path_factory.mktemp(f"src-{cls.__name__}"), data)

    @classmethod
    def convert(cls, src: Path, dst: Path, **kw: Any) -> Any:
        # about 3 units per Zarr shard, 1 per Parquet or Arrow file: several files, the last one partial
        return streambatch.convert(src, dst, format=cls.storage, codec=cls.codec, unit_rows=UNIT,
                                   shard_bytes=3 * UNIT * 12, progress=False, **kw)

    @pytest.fixture(scope="class")
    @classmethod
    def built(cls, tmp_path_factory: pytest.TempPathFactory, src: Path) -> Path:
        dst = tmp_path_factory.mktemp(f"{cls.storage}-{cls.codec}") / "ds"
        cls.convert(src, dst)
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
        self.check_writer_path(manifest)

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

    @pytest.mark.parametrize("verify", [False, True])
    def test_concurrent_reads_give_identical_results(self, manifest: Manifest, data: dict[str, np.ndarray],
                                                     verify: bool) -> None:
        """Eight threads share one reader, each reading every unit whole and in slices, with
        column subsets: every read returns exactly the source rows."""
        reader = self._open(manifest, verify=verify)
        start = threading.Barrier(8)

        def one(seed: int) -> list[str]:
            rng = np.random.default_rng(seed)
            start.wait(30)
            bad = []
            for u in rng.permutation(manifest.n_units):
                s, n = int(manifest.unit_start[u]), int(manifest.unit_rows[u])
                lo = int(rng.integers(0, n)) if seed % 2 else 0
                names = None if seed % 3 else ["x", "id"]
                got = self._read(reader, manifest, int(u), lo, n, names)
                bad += [f"{k} unit {u}" for k in got if not np.array_equal(got[k], data[k][s + lo:s + n])]
            return bad

        try:
            with ThreadPoolExecutor(8) as pool:
                assert [b for bad in pool.map(one, range(8)) for b in bad] == []
        finally:
            reader.close()

    def test_advise_reads_a_cold_window_ahead(self, manifest: Manifest, data: dict[str, np.ndarray]) -> None:
        """``advise`` starts reading evicted units (the loader calls it before a window's reads),
        and the cache probe it relies on tells cold bytes from cached ones."""
        if not hasattr(os, "posix_fadvise"):
            pytest.skip("needs posix_fadvise")
        ranges = [unit_range(manifest, u, "x") for u in range(manifest.n_units)]
        where = [(path, off) for path, off, _ in ranges]
        if not _evict(manifest, where):
            pytest.skip("this file system keeps evicted pages (tmpfs?)")
        reader = self._open(manifest)
        try:
            files = reader._files  # type: ignore[attr-defined]
            index = {manifest.path_of(i): i for i in range(len(manifest.files))}
            for path, off in where:
                files.fd(index[path], str)
                assert not files.cached(index[path], off)
            pieces = [(u, 0, int(manifest.unit_rows[u]), 0) for u in range(manifest.n_units)]
            reader.advise(pieces, [c.name for c in manifest.columns])  # type: ignore[attr-defined]
            deadline = time.monotonic() + 60
            while not all(_resident(path, o) for path, o in where) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert all(_resident(path, o) for path, o in where), "advise did not start reading the cold units"
            assert all(files.cached(index[path], off) for path, off in where)
            self.test_full_units_equal_source(manifest, data, verify=True)
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

    @pytest.mark.parametrize("column", ["x", "id"])
    def test_flipped_byte_is_a_data_error_naming_unit_file_and_column(self, manifest: Manifest,
                                                                       column: str) -> None:
        unit = 4
        path, off, size = column_range(manifest, unit, column)
        flip_byte(path, off + size // 2)
        rel = str(path.relative_to(manifest.root))
        reader = self._open(manifest, verify=True)
        try:
            for lo, hi in ((0, UNIT), (10, 20)):
                with pytest.raises(DataError) as ei:
                    self._read(reader, manifest, unit, lo, hi)
                msg = str(ei.value)
                assert f"unit {unit}" in msg and rel in msg and str(manifest.root) in msg, msg
                assert repr(column) in msg, msg
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
        path, off, size = unit_range(manifest, last, "x")
        # cut inside the last unit's stored bytes (Zarr: its real rows, 3 of 12 bytes each; the rest is padding)
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
        path, _, _ = unit_range(manifest, 0, "id")
        path.unlink()
        reader = self._open(manifest)
        try:
            with pytest.raises(DataError, match="unit 0") as ei:
                self._read(reader, manifest, 0, 0, UNIT, ["id"])
            assert str(path.relative_to(manifest.root)) in str(ei.value)
            with pytest.raises(DataError):
                reader.verify_unit(0)
        finally:
            reader.close()

    def test_streambatch_verify_passes_then_fails_on_damage(self, dataset: Path, manifest: Manifest,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
        capsys.readouterr()
        assert cli_main(["verify", str(dataset)]) == 0
        assert "OK" in capsys.readouterr().out
        path, off, size = column_range(manifest, 7, "m")
        flip_byte(path, off + size - 1, 0x01)
        assert cli_main(["verify", str(dataset)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "FAILED" in err and "unit 7" in err, err
        assert str(path.relative_to(dataset)) in err, err

    # ------------------------------------------------------------------ conversion

    def test_parallel_and_sequential_conversion_write_the_same_dataset(
            self, src: Path, built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Writers of several files on several threads at once (``threads=3``) write the bytes one
        writer writes (``built``, ``threads=1``): same files, layout and fingerprint."""
        fmt = type(FORMATS[self.storage])
        writing: set[int] = set()
        writer = fmt.writer
        # On a busy machine one pool thread could take every part before another starts, so the
        # first writer of the parallel run waits (up to 30 s, once) for a second thread to start one.
        second, waited = threading.Event(), threading.Event()

        def counted(self: Any, *args: Any, **kw: Any) -> Any:
            writing.add(threading.get_ident())
            if parallel.is_set():
                if len(writing) > 1:
                    second.set()
                elif not waited.is_set():
                    second.wait(30)
                    waited.set()
            return writer(self, *args, **kw)

        parallel = threading.Event()
        monkeypatch.setattr(fmt, "writer", counted)
        one = self.convert(src, tmp_path / "one", threads=1)
        assert len(writing) == 1
        writing.clear()
        parallel.set()
        many = self.convert(src, tmp_path / "many", threads=3, memory="1MiB")
        assert len(writing) > 1, "the parallel conversion wrote on one thread"
        assert many.fingerprint == one.fingerprint == load_manifest(built).fingerprint
        assert many.files == one.files and many.layout.keys() == one.layout.keys()
        for f in one.files:
            assert (tmp_path / "many" / f).read_bytes() == (tmp_path / "one" / f).read_bytes(), f

    def test_dataset_converts_back_as_an_input(self, built: Path, tmp_path: Path,
                                               data: dict[str, np.ndarray]) -> None:
        """A dataset of this format is read through its own reader as ``convert``'s input (its
        manifest's format is the source format), into every format, rows as they were."""
        for name in FORMATS:
            out = streambatch.convert(built, tmp_path / name, format=name, unit_rows=64, progress=False)
            assert out.source["format"] == self.storage and out.rows == ROWS
            got = read_all(out, verify=True)
            for k, v in data.items():
                np.testing.assert_array_equal(got[k], v, err_msg=f"{name}: {k}")


class TestZarrNone(StorageContract):
    storage, codec = "zarr", "none"


class TestZarrLz4(StorageContract):
    storage, codec = "zarr", "lz4"

    def test_whole_units_decode_into_place(self, manifest: Manifest, data: dict[str, np.ndarray]) -> None:
        """A whole unit's Blosc frame is decompressed straight into the caller's buffer; a slice
        of a unit is decoded aside and copied (the spy records which way each decode went)."""
        reader = self._open(manifest, verify=True)
        dec, into = reader._decoders["x"], []  # type: ignore[attr-defined]

        class Spy:
            def decode(self, buf: Any, out: Any = None) -> Any:
                into.append(out is not None)
                return dec.decode(buf, out=out)

        reader._decoders["x"] = Spy()  # type: ignore[attr-defined]
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
        path, off, _ = unit_range(manifest, unit, "x")
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


class TestZarrZstd(StorageContract):
    storage, codec = "zarr", "zstd"


class TestParquetInPlace(StorageContract):
    """Parquet uncompressed: pyarrow writes FixedSizeBinary tensors, and the reader takes every
    column's values in place at the offsets the manifest records (booleans as bits, 8- and
    16-bit integers as INT32)."""

    storage, codec = "parquet", "none"

    def check_writer_path(self, m: Manifest) -> None:
        assert m.layout["tensors"] == "fixed_size_binary"
        assert list(m.layout["values"]) == [c.name for c in m.columns]
        reader = open_reader(m)
        try:
            assert set(reader._inplace) == {c.name for c in m.columns}  # type: ignore[attr-defined]
        finally:
            reader.close()


class TestParquetPyarrowDecodes(StorageContract):
    """Parquet compressed: pyarrow writes the files and decodes every column."""

    storage, codec = "parquet", "zstd"

    def check_writer_path(self, m: Manifest) -> None:
        assert m.layout["tensors"] == "fixed_size_binary" and "values" not in m.layout
        reader = open_reader(m)
        try:
            assert not reader._inplace  # type: ignore[attr-defined]
        finally:
            reader.close()


class TestArrow(StorageContract):
    storage, codec = "arrow", "none"

    def test_files_read_without_streambatch(self, manifest: Manifest, data: dict[str, np.ndarray]) -> None:
        """pyarrow (memory-mapped, zero-copy) and pandas read the files as they are."""
        import json

        import pyarrow as pa
        import pyarrow.feather as feather

        parts: dict[str, list[np.ndarray]] = {k: [] for k in data}
        for i in range(len(manifest.files)):
            with pa.memory_map(str(manifest.path_of(i))) as source:
                table = pa.ipc.open_file(source).read_all()
                for k in data:
                    col = table.column(k).combine_chunks()
                    if isinstance(col.type, pa.FixedSizeListType):
                        shape = json.loads(table.schema.field(k).metadata[b"streambatch.shape"])
                        parts[k].append(col.flatten().to_numpy(zero_copy_only=False).reshape(-1, *shape))
                    else:
                        parts[k].append(col.to_numpy(zero_copy_only=False))
                del table, col
        for k, v in data.items():
            np.testing.assert_array_equal(np.concatenate(parts[k]), v, err_msg=k)
        frame = feather.read_table(manifest.path_of(0)).to_pandas()
        np.testing.assert_array_equal(frame["id"].to_numpy(), data["id"][:len(frame)])


def test_every_format_and_writer_path_is_covered() -> None:
    covered = {(c.storage, c.codec) for c in StorageContract.__subclasses__()}
    assert {s for s, _ in covered} == set(FORMATS)
    assert {c for s, c in covered if s == "zarr"} == set(CODECS)
    for name, fmt in FORMATS.items():  # a format's every codec or, for Parquet, both read paths
        assert {c for s, c in covered if s == name} >= ({"none", "zstd"} if name == "parquet" else set(fmt.codecs))
