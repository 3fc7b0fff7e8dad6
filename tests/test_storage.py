"""The storage registry and byte-range reading; the contract every format keeps is
``test_storage_contract.py``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import streambatch
from streambatch.cli import main as cli_main
from streambatch.storage import CODECS, FORMATS, STORAGES, open_writer

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


def test_cache_probe_does_not_trust_mincore_on_files_it_does_not_own(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Linux reports every page of a file as resident to a process that neither owns nor may
    write it, so for such a reader (a shared, read-only dataset) ``cached`` answers False ("cannot
    tell") and the read-ahead hints are given, instead of a window that always looks cached."""
    import shutil as sh
    import subprocess
    import sys
    import tempfile

    if not hasattr(os, "geteuid") or os.geteuid() != 0 or sh.which("setpriv") is None:
        pytest.skip("needs root and setpriv to read the dataset as another user")
    root = Path(tempfile.mkdtemp(prefix="sb-probe-"))
    try:
        root.chmod(0o755)
        src = _write_npy_folder(root / "src", _source_data())
        streambatch.convert(src, root / "ds", unit_rows=UNIT, progress=False)
        for p in root.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        script = (
            "import os, sys\n"
            "from streambatch.storage import load_manifest\n"
            "from streambatch.storage import open_reader\n"
            "from streambatch.io.files import _resident\n"
            "m = load_manifest(sys.argv[1]); r = open_reader(m); f = r._files\n"
            "fd = f.fd(0, str)[0]\n"
            "os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)\n"
            "print(_resident(fd, 0), f.cached(0, 0))\n"
        )
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                               script, str(root / "ds")], capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0 and ("Permission denied" in done.stderr or done.stderr.startswith("setpriv")):
            pytest.skip(f"cannot run this interpreter as user 65534: {done.stderr.strip()[-200:]}")
        assert done.returncode == 0, done.stderr[-2000:]
        lying, cached = done.stdout.split()
        assert cached == "False", f"mincore said {lying}, and the probe believed it"
    finally:
        sh.rmtree(root, ignore_errors=True)
