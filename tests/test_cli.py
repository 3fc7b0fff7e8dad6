"""The ``streambatch`` command: bad inputs, overwrite, dry run, ``info`` and ``verify``.

Every bad input must give exit code 2, exactly one line on stderr naming the file (and the
column or row where there is one), and leave nothing at the target, temp folders included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_sorted_npy

from streambatch.cli import main
from streambatch.manifest import MANIFEST_NAME, Manifest
from streambatch.storage import FORMATS, load_manifest
from streambatch.storage import zarr_store

Case = Callable[[Path], tuple[Path, list[str], list[str]]]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --------------------------------------------------------------------------- bad inputs
# Each case writes a bad input into ``d`` and returns (source, extra argv, strings the error names).


def _missing(d: Path) -> tuple[Path, list[str], list[str]]:
    return d / "missing.npy", [], ["missing.npy", "no such file"]


def _unknown_extension(d: Path) -> tuple[Path, list[str], list[str]]:
    (d / "data.txt").write_text("1,2\n")
    return d / "data.txt", [], ["data.txt", "'.txt'", "--from"]


def _npy_different_lengths(d: Path) -> tuple[Path, list[str], list[str]]:
    (d / "cols").mkdir()
    np.save(d / "cols" / "a.npy", np.zeros(5))
    np.save(d / "cols" / "b.npy", np.zeros((6, 2)))
    return d / "cols", [], ["cols", "different lengths", "a=5", "b=6"]


def _npz_different_lengths(d: Path) -> tuple[Path, list[str], list[str]]:
    np.savez(d / "a.npz", a=np.zeros(5), b=np.zeros(4))
    return d / "a.npz", [], ["a.npz", "different lengths", "a=5", "b=4"]


def _jsonl_ragged_nested(d: Path) -> tuple[Path, list[str], list[str]]:
    with open(d / "r.jsonl", "w") as f:
        for i in range(20):
            f.write(json.dumps({"m": [[1, 2, 3], [4, 5] if i == 9 else [4, 5, 6]]}) + "\n")
    return d / "r.jsonl", [], ["r.jsonl", "'m'", "row 9", "ragged"]


def _npy_object(d: Path) -> tuple[Path, list[str], list[str]]:
    np.save(d / "obj.npy", np.array([1, "a", None], dtype=object), allow_pickle=True)
    return d / "obj.npy", [], ["obj.npy", "'obj'", "unsupported dtype object"]


def _npy_complex(d: Path) -> tuple[Path, list[str], list[str]]:
    (d / "cols").mkdir()
    np.save(d / "cols" / "ok.npy", np.zeros(4))
    np.save(d / "cols" / "z.npy", np.arange(4) * 1j)
    return d / "cols", [], ["z.npy", "'z'", "complex"]


def _csv_time_of_day(d: Path) -> tuple[Path, list[str], list[str]]:
    (d / "s.csv").write_text("a,at,b\n1,12:30:00,2.5\n2,13:00:00,3.5\n")
    return d / "s.csv", [], ["s.csv", "'at'", "unsupported type time32"]


def _npy_empty(d: Path) -> tuple[Path, list[str], list[str]]:
    np.save(d / "e.npy", np.zeros((0, 3), np.float32))
    return d / "e.npy", [], ["e.npy", "empty", "0 rows"]


def _csv_empty(d: Path) -> tuple[Path, list[str], list[str]]:
    (d / "e.csv").write_text("a,b\n")
    return d / "e.csv", [], ["e.csv", "empty", "0 rows"]


def _parquet_empty(d: Path) -> tuple[Path, list[str], list[str]]:
    pq.write_table(pa.table({"a": pa.array([], pa.int64()), "v": pa.array([], pa.list_(pa.float32()))}),
                   d / "e.parquet")
    return d / "e.parquet", [], ["e.parquet", "empty", "0 rows"]


def _npy_nan_label(d: Path) -> tuple[Path, list[str], list[str]]:
    (d / "cols").mkdir()
    np.save(d / "cols" / "x.npy", np.zeros(10))
    y = np.arange(10, dtype=np.float64) % 3
    y[7] = np.nan
    np.save(d / "cols" / "y.npy", y)
    return d / "cols", ["--label", "y"], ["cols", "'y'", "row 7", "NaN"]


def _parquet_nan_label_late_shuffled(d: Path) -> tuple[Path, list[str], list[str]]:
    """A NaN deep in the file, found while pre-shuffling: the row is the source row."""
    y = np.arange(5000, dtype=np.float32) % 10
    y[3001] = np.nan
    pq.write_table(pa.table({"x": np.arange(5000), "y": y}), d / "n.parquet", row_group_size=700)
    return d / "n.parquet", ["--label", "y", "--shuffle", "0", "--memory", "32KiB"], ["n.parquet", "'y'",
                                                                                        "row 3001"]


def _csv_duplicate_header(d: Path) -> tuple[Path, list[str], list[str]]:
    (d / "dup.csv").write_text("a,b,a\n1,2,3\n4,5,6\n")
    return d / "dup.csv", [], ["dup.csv", "duplicate", "'a'"]


def _columns_named_twice(d: Path) -> tuple[Path, list[str], list[str]]:
    (d / "cols").mkdir()
    np.save(d / "cols" / "x.npy", np.zeros(4))
    np.save(d / "cols" / "y.npy", np.ones(4))
    return d / "cols", ["--columns", "x", "x"], ["cols", "twice", "'x'"]


def _unknown_column(d: Path) -> tuple[Path, list[str], list[str]]:
    (d / "cols").mkdir()
    np.save(d / "cols" / "x.npy", np.zeros(4))
    return d / "cols", ["--columns", "nope"], ["cols", "nope"]


BAD_INPUTS: dict[str, Case] = {
    "missing-file": _missing,
    "unknown-extension": _unknown_extension,
    "npy-different-lengths": _npy_different_lengths,
    "npz-different-lengths": _npz_different_lengths,
    "jsonl-ragged-nested": _jsonl_ragged_nested,
    "npy-object": _npy_object,
    "npy-complex": _npy_complex,
    "csv-time-of-day": _csv_time_of_day,
    "npy-empty": _npy_empty,
    "csv-empty": _csv_empty,
    "parquet-empty": _parquet_empty,
    "npy-nan-label": _npy_nan_label,
    "parquet-nan-label-shuffled": _parquet_nan_label_late_shuffled,
    "csv-duplicate-header": _csv_duplicate_header,
    "columns-named-twice": _columns_named_twice,
    "unknown-column": _unknown_column,
}


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, fmt: str) -> None:
    (tmp_path / "in").mkdir()
    src, extra, names = BAD_INPUTS[case](tmp_path / "in")
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, "convert", src, out_dir / "ds", "--format", fmt, *extra)
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("streambatch convert: error: ")
    for s in names:
        assert s in lines[0], (s, lines[0])
    assert out == ""
    assert leftovers(out_dir) == [], "nothing may be written beside the target"


def test_bad_input_in_a_subprocess(tmp_path: Path) -> None:
    """The real entry point: one stderr line, exit code 2, nothing on stdout."""
    _jsonl_ragged_nested(tmp_path)
    r = subprocess.run([sys.executable, "-m", "streambatch.cli", "convert", str(tmp_path / "r.jsonl"),
                        str(tmp_path / "ds.zarr")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and "r.jsonl" in r.stderr and "row 9" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"]


def test_keyboard_interrupt_exits_130_and_leaves_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_sorted_npy(tmp_path / "src", 3000)

    def interrupted(self: object, data: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(zarr_store.Writer, "write_unit", interrupted)
    code, _, err = run_cli(capsys, "convert", src, tmp_path / "out" / "ds", "--unit-rows", "100")
    assert code == 130 and "interrupted" in err and len(err.splitlines()) == 1
    assert leftovers(tmp_path / "out") == []


# --------------------------------------------------------------------------- convert options


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return write_sorted_npy(tmp_path / "src", 5003)


def test_existing_target_refused_then_overwritten(tmp_path: Path, src: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / "ds"
    code, out, _ = run_cli(capsys, "convert", src, dst, "--unit-rows", "1000", "-q")
    assert code == 0 and str(dst) in out
    before = (dst / MANIFEST_NAME).read_bytes()

    code, out, err = run_cli(capsys, "convert", src, dst, "--unit-rows", "500")
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and str(dst) in err and "--overwrite" in err
    assert (dst / MANIFEST_NAME).read_bytes() == before

    code, _, err = run_cli(capsys, "convert", src, dst, "--unit-rows", "500", "--format", "parquet", "--overwrite")
    assert code == 0, err
    m = load_manifest(dst)
    assert m.storage == "parquet" and int(m.unit_rows[0]) == 500
    assert not (dst / "id").exists(), "the old Zarr arrays must be gone"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "src"]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_dry_run_prints_plan_and_writes_nothing(tmp_path: Path, src: Path, capsys: pytest.CaptureFixture[str],
                                                fmt: str) -> None:
    dst = tmp_path / "out" / "ds"
    code, out, err = run_cli(capsys, "convert", src, dst, "--format", fmt, "--unit-rows", "1000", "--dry-run")
    assert code == 0 and err == ""
    assert "5,003 rows" in out and "6 units of 1000 rows" in out and fmt in out
    code, out, _ = run_cli(capsys, "convert", src, dst, "--format", fmt, "--unit-rows", "1000", "--dry-run",
                           "--json")
    assert code == 0
    plan = json.loads(out)
    assert plan["rows"] == 5003 and plan["units"] == 6 and plan["format"] == fmt
    assert not (tmp_path / "out").exists()
    # the plan matches what the conversion does
    assert run_cli(capsys, "convert", src, dst, "--format", fmt, "--unit-rows", "1000")[0] == 0
    m = load_manifest(dst)
    assert m.n_units == plan["units"] and m.rows == plan["rows"] and len(m.files) == plan["shards"] * (
        3 if fmt == "zarr" else 1)


def test_info_text_and_json(tmp_path: Path, src: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / "ds"
    assert run_cli(capsys, "convert", src, dst, "--label", "y", "--unit-rows", "512", "--codec", "zstd")[0] == 0
    code, out, err = run_cli(capsys, "info", dst)
    assert code == 0 and err == ""
    assert "zarr (zstd)" in out and "5,003 rows" in out and "10 units" in out
    for line in ("id", "int64", "shape ()"), ("x", "float32", "shape (4,)"), ("y", "int64"):
        assert any(all(s in ln for s in line) for ln in out.splitlines()), (line, out)
    y = np.load(src / "y.npy")
    counts = np.bincount(y)
    assert "label 'y' histogram: " + ", ".join(f"{v}: {c:,}" for v, c in enumerate(counts)) in out
    assert "icc" in out

    code, out, _ = run_cli(capsys, "info", dst, "--json")
    assert code == 0
    info = json.loads(out)
    assert info["rows"] == 5003 and info["units"] == 10 and info["storage"] == "zarr" and info["codec"] == "zstd"
    assert [(c["name"], c["dtype"], c["shape"]) for c in info["columns"]] == [
        ("id", "int64", []), ("x", "float32", [4]), ("y", "int64", [])]
    assert info["stats"]["y"]["histogram"]["counts"] == counts.tolist()
    assert info["stats"]["id"]["max"] == 5002.0
    assert info["decoded_bytes"] == 5003 * 32


def test_info_and_verify_of_a_non_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    for cmd in ("info", "verify"):
        code, out, err = run_cli(capsys, cmd, tmp_path / "empty")
        assert code == 2 and out == ""
        assert len(err.splitlines()) == 1 and "empty" in err and MANIFEST_NAME in err


# --------------------------------------------------------------------------- verify


def _unit_bytes(m: Manifest, unit: int) -> tuple[Path, int, int]:
    if m.storage == "zarr":
        loc = m.layout["columns"]["x"]
        return m.path_of(int(loc["file"][unit])), int(loc["offset"][unit]), int(loc["size"][unit])
    lay = m.layout
    return m.path_of(int(lay["file"][unit])), int(lay["offset"][unit]), int(lay["size"][unit])


@pytest.mark.parametrize(("fmt", "codec"), [(name, codec) for name, f in FORMATS.items() for codec in f.codecs])
def test_verify_good_then_one_flipped_byte(tmp_path: Path, src: Path, capsys: pytest.CaptureFixture[str],
                                           fmt: str, codec: str) -> None:
    dst = tmp_path / "ds"
    assert run_cli(capsys, "convert", src, dst, "--format", fmt, "--codec", codec, "--unit-rows", "400",
                   "--shard-bytes", "8KiB")[0] == 0
    code, out, err = run_cli(capsys, "verify", dst)
    assert code == 0 and err == "" and "OK" in out and "13 units" in out

    m = load_manifest(dst)
    unit = 7
    path, off, size = _unit_bytes(m, unit)
    with open(path, "r+b") as f:
        f.seek(off + size // 3)
        b = f.read(1)
        f.seek(off + size // 3)
        f.write(bytes([b[0] ^ 0x01]))
    code, out, err = run_cli(capsys, "verify", dst)
    assert code == 1 and "OK" not in out
    lines = err.splitlines()
    assert len(lines) == 1 and "FAILED" in lines[0]
    rel = path.relative_to(dst).as_posix()
    assert f"unit {unit}," in lines[0] and f"file {rel}" in lines[0] and "checksum" in lines[0]


def test_verify_truncated_and_missing_files(tmp_path: Path, src: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for fmt in FORMATS:
        dst = tmp_path / fmt
        assert run_cli(capsys, "convert", src, dst, "--format", fmt, "--unit-rows", "400",
                       "--shard-bytes", "8KiB")[0] == 0
        m = load_manifest(dst)
        path, off, size = _unit_bytes(m, 5)
        os.truncate(path, off + size // 2)
        code, _, err = run_cli(capsys, "verify", dst)
        assert code == 1 and len(err.splitlines()) == 1 and path.name in err
        path.unlink()
        code, _, err = run_cli(capsys, "verify", dst)
        assert code == 1 and len(err.splitlines()) == 1 and path.name in err
