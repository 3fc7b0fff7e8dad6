"""The storage registry and byte-range reading; the contract every format keeps is
``test_storage_contract.py``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import streambatch
from streambatch.cli import main as cli_main
from streambatch.io.files import _resident as resident
from streambatch.storage import CODECS, FORMATS, STORAGES, load_manifest, open_reader, open_writer

from test_storage_contract import source_data as _source_data, write_npy_folder as _write_npy_folder

UNIT = 100


@pytest.mark.parametrize("storage", [name for name, f in FORMATS.items() if set(f.codecs) != set(CODECS)])
def test_a_codec_the_format_does_not_write_is_one_line_naming_what_it_takes(
        tmp_path: Path, storage: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--codec lz4 --format arrow``: refused before anything is read or written, naming the
    format and the codecs it takes (the CLI: one line, exit 2)."""
    src = _write_npy_folder(tmp_path / "src", _source_data(50))
    bad = next(c for c in ("lz4", "zstd") if c not in FORMATS[storage].codecs)
    takes = " or ".join(FORMATS[storage].codecs)
    with pytest.raises(ValueError, match=f"format '{storage}' takes --codec {takes}, not '{bad}'"):
        streambatch.convert(src, tmp_path / "ds", format=storage, codec=bad, progress=False)
    capsys.readouterr()
    assert cli_main(["convert", str(src), str(tmp_path / "ds"), "--format", storage, "--codec", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"format '{storage}' takes --codec {takes}, not '{bad}'" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


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


def test_crc32_is_zlibs_crc32_for_every_buffer_kind() -> None:
    """The CRC-32 of old unit checksums (zlib-ng's where installed) gives
    zlib's values for bytes, memoryview slices and numpy arrays, and chains like it."""
    import zlib

    from streambatch.io.checksum import checksum_fn, crc32, extend_fn

    data = np.random.default_rng(3).integers(0, 256, 300_001, dtype=np.uint8)
    raw = data.tobytes()
    parts: list[Any] = [raw[:7], memoryview(raw)[7:100_000], data[100_000:].reshape(-1, 1)[:, 0].copy()]
    assert crc32(raw) == zlib.crc32(raw) == checksum_fn("crc32")(data)
    crc = 0
    for p in parts:
        crc = crc32(p, crc)
    assert crc == zlib.crc32(raw)
    ext = 0
    for p in parts:
        ext = extend_fn("crc32")(ext, p)
    assert ext == zlib.crc32(raw) and crc32(b"") == 0


def test_crc32c_with_the_gil_released_gives_google_crc32c_values() -> None:
    """Large buffers are summed by the library inside google_crc32c's wheel through ctypes (the
    GIL released); bytes, read-only memoryviews, numpy arrays of any dtype and chained extends
    give google_crc32c's own values on both sides of the size where the path changes."""
    import google_crc32c

    from streambatch.io import checksum
    from streambatch.io.checksum import NATIVE_MIN, checksum_fn, extend_fn

    assert checksum._native_crc32c() is not None, "the wheel's libcrc32c was not found"
    data = np.random.default_rng(4).integers(0, 256, 3 * NATIVE_MIN + 5, dtype=np.uint8)
    raw = data.tobytes()
    for n in (0, 1, NATIVE_MIN - 1, NATIVE_MIN, len(raw)):
        want = google_crc32c.value(raw[:n])
        assert checksum_fn("crc32c")(raw[:n]) == checksum_fn("crc32c")(data[:n]) == want
        assert checksum_fn("crc32c")(memoryview(raw)[:n]) == want
    assert checksum_fn("crc32c")(data[:4 * (len(data) // 4)].view(np.int32)) == google_crc32c.value(raw[:4 * (len(raw) // 4)])
    cuts = [0, 10, NATIVE_MIN + 10, 2 * NATIVE_MIN + 20, len(raw)]
    crc = 0
    for a, b in zip(cuts, cuts[1:]):
        crc = extend_fn("crc32c")(crc, memoryview(raw)[a:b] if a % 2 else data[a:b])
    assert crc == google_crc32c.value(raw)


@pytest.mark.parametrize("name", ["crc32c", "crc32"])
def test_chunk_checksums_are_each_chunks_own(name: str) -> None:
    """``chunk_checksums`` (one call for a run of stored chunks) gives each chunk's checksum as
    ``checksum_fn`` does, a shorter last piece included, for bytes and numpy arrays of any dtype."""
    from streambatch.io.checksum import checksum_fn, chunk_checksums

    raw = np.random.default_rng(7).integers(0, 256, 5 * 4036 * 4 + 12, dtype=np.uint8).tobytes()
    one = checksum_fn(name)
    for cb in (4036 * 4, 80, len(raw), len(raw) + 1):
        want = [one(raw[i:i + cb]) for i in range(0, len(raw), cb)]
        assert chunk_checksums(name, raw, cb) == want
        assert chunk_checksums(name, np.frombuffer(raw, np.uint8)[:len(raw) // 4 * 4].view(np.int32), cb) == [
            one(raw[:len(raw) // 4 * 4][i:i + cb]) for i in range(0, len(raw) // 4 * 4, cb)]
    assert chunk_checksums(name, b"", 16) == []
