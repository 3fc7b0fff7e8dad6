"""Where ``convert`` may write: ``--overwrite`` replaces only a dataset or an empty folder, never the
input, and the final rename never replaces a target that appeared during the conversion.

Races are real: two ``streambatch convert`` processes held at a barrier (a file per process in a
shared folder) right before each writes its manifest, so both have passed the start's existence
check and both have a finished dataset to move into place at the same moment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from conftest import write_sorted_npy

import streambatch
from streambatch import _target
from streambatch.cli import main
from streambatch.errors import InputError, TargetExistsError
from streambatch.manifest import Manifest
from streambatch.storage import load_manifest
from streambatch.storage import FORMATS, STORAGES, read_all

WRITERS = {name: f.writer_class for name, f in FORMATS.items()}
ROWS = 5003


def snapshot(root: Path) -> dict[str, bytes | str | None]:
    """Every entry under ``root``: a file's bytes, a link's target, None for a folder."""
    out: dict[str, bytes | str | None] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_dir():
            out[rel] = None
        else:
            out[rel] = p.read_bytes()
    return out


def temp_folders(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".sbtmp-" in p.name]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_is_source(dst: Path, src: Path) -> Manifest:
    m = load_manifest(dst)
    got = read_all(m, verify=True)
    for p in src.glob("*.npy"):
        np.testing.assert_array_equal(got[p.stem], np.load(p))
    return m


# --------------------------------------------------------------------------- refused at the start


def _npz_in_target(tmp: Path) -> tuple[Path, Path]:
    (tmp / "data").mkdir()
    np.savez(tmp / "data" / "train.npz", x=np.arange(100, dtype=np.float32), y=np.arange(100) % 3)
    return tmp / "data" / "train.npz", tmp / "data"


def _npz_through_a_symlink(tmp: Path) -> tuple[Path, Path]:
    src, dst = _npz_in_target(tmp)
    (tmp / "alias").symlink_to(tmp / "data")
    return tmp / "alias" / "train.npz", dst


def _folder_in_target(tmp: Path) -> tuple[Path, Path]:
    return write_sorted_npy(tmp / "data" / "src", 300), tmp / "data"


def _target_is_input(tmp: Path) -> tuple[Path, Path]:
    src = write_sorted_npy(tmp / "src", 300)
    return src, tmp / "other" / ".." / "src"


def _dataset_is_input(tmp: Path) -> tuple[Path, Path]:
    streambatch.convert(write_sorted_npy(tmp / "src", 300), tmp / "ds", unit_rows=50, progress=False)
    return tmp / "ds", tmp / "ds"


def _inside_folder_input(tmp: Path) -> tuple[Path, Path]:
    return write_sorted_npy(tmp / "src", 300), tmp / "src" / "train.zarr"


def _inside_parquet_folder_input(tmp: Path) -> tuple[Path, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp / "pq").mkdir()
    for i in range(2):
        pq.write_table(pa.table({"a": np.arange(100) + 100 * i}), tmp / "pq" / f"part-{i}.parquet")
    return tmp / "pq", tmp / "pq" / "out"


def _non_dataset_folder(tmp: Path) -> tuple[Path, Path]:
    (tmp / "notes").mkdir()
    (tmp / "notes" / "todo.txt").write_text("keep me\n")
    return write_sorted_npy(tmp / "src", 300), tmp / "notes"


def _bad_manifest_folder(tmp: Path) -> tuple[Path, Path]:
    (tmp / "half").mkdir()
    (tmp / "half" / "_streambatch.json").write_text("{}")
    (tmp / "half" / "results.csv").write_text("a,b\n1,2\n")
    return write_sorted_npy(tmp / "src", 300), tmp / "half"


def _file(tmp: Path) -> tuple[Path, Path]:
    (tmp / "model.pt").write_bytes(b"\x80weights")
    return write_sorted_npy(tmp / "src", 300), tmp / "model.pt"


def _symlink_to_dataset(tmp: Path) -> tuple[Path, Path]:
    src = write_sorted_npy(tmp / "src", 300)
    streambatch.convert(src, tmp / "ds", unit_rows=50, progress=False)
    (tmp / "link").symlink_to(tmp / "ds")
    return src, tmp / "link"


REFUSED: dict[str, tuple[Callable[[Path], tuple[Path, Path]], str]] = {
    "npz inside the target": (_npz_in_target, "holds the input"),
    "npz inside the target, named through a symlink": (_npz_through_a_symlink, "holds the input"),
    "input folder inside the target": (_folder_in_target, "holds the input"),
    "target is the input (via ..)": (_target_is_input, "holds the input"),
    "target is the input dataset": (_dataset_is_input, "holds the input"),
    "target inside the npy folder input": (_inside_folder_input, "inside the input"),
    "target inside the Parquet folder input": (_inside_parquet_folder_input, "inside the input"),
    "a non-empty folder that is not a dataset": (_non_dataset_folder, "not a streambatch dataset"),
    "a folder with an invalid manifest": (_bad_manifest_folder, "not a streambatch dataset"),
    "a file": (_file, "is a file"),
    "a symlink to a dataset": (_symlink_to_dataset, "symbolic link"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_overwrite_refuses_what_it_did_not_make(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                case: str) -> None:
    make, phrase = REFUSED[case]
    src, dst = make(tmp_path)
    before = snapshot(tmp_path)
    code, out, err = run_cli(capsys, "convert", src, dst, "--overwrite", "-q")
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and str(dst) in err and phrase in err, err
    assert snapshot(tmp_path) == before, "nothing may be touched, created or removed"


@pytest.mark.parametrize("case", ["target inside the npy folder input", "target inside the Parquet folder input"])
def test_target_inside_a_folder_input_is_refused_without_overwrite(tmp_path: Path, case: str) -> None:
    src, dst = REFUSED[case][0](tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(InputError, match="inside the input") as info:
        streambatch.convert(src, dst, progress=False)
    assert str(dst) in str(info.value)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("fmt", STORAGES)
def test_overwrite_replaces_a_dataset(tmp_path: Path, sorted_npy: Path, capsys: pytest.CaptureFixture[str],
                                      fmt: str) -> None:
    dst = tmp_path / "ds"
    streambatch.convert(sorted_npy, dst, format="parquet" if fmt == "zarr" else "zarr", unit_rows=50, progress=False)
    code, out, err = run_cli(capsys, "convert", sorted_npy, dst, "--format", fmt, "--unit-rows", "200",
                             "--overwrite", "-q")
    assert code == 0, err
    m = assert_is_source(dst, sorted_npy)
    assert m.storage == fmt and int(m.unit_rows[0]) == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "src"]


def test_overwrite_fills_an_empty_folder(tmp_path: Path, sorted_npy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / "empty"
    dst.mkdir()
    code, _, err = run_cli(capsys, "convert", sorted_npy, dst, "--overwrite", "-q")
    assert code == 0, err
    assert_is_source(dst, sorted_npy)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "src"]


# --------------------------------------------------------------------------- appeared during the conversion


@pytest.fixture(params=["renameat2", "fallback"])
def rename(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of the final rename: Linux's renameat2 and the portable check-and-rename."""
    if request.param == "renameat2":
        if _target._renameat2() is None:
            pytest.skip("renameat2 is not available here")
    else:
        monkeypatch.setattr(_target, "_libc_renameat2", False)
    return str(request.param)


def _appear_mid_way(monkeypatch: pytest.MonkeyPatch, fmt: str, make: Callable[[], None]) -> list[int]:
    """Run ``make`` (create something at the target) when the writer is at its 5th unit."""
    writer = WRITERS[fmt]
    calls: list[int] = []
    write_unit = writer.write_unit

    def appearing(self: object, data: dict[str, np.ndarray]) -> None:
        calls.append(1)
        if len(calls) == 5:
            make()
        write_unit(self, data)  # type: ignore[arg-type]

    monkeypatch.setattr(writer, "write_unit", appearing)
    return calls


def _appearing(dst: Path, what: str) -> Callable[[], None]:
    def make() -> None:
        if what == "a file":
            dst.write_bytes(b"someone else's")
            return
        dst.mkdir()
        if what == "a folder with a file":
            (dst / "theirs.txt").write_text("someone else's")
    return make


@pytest.mark.parametrize("fmt", STORAGES)
@pytest.mark.parametrize("what", ["an empty folder", "a folder with a file", "a file"])
def test_a_target_that_appears_mid_way_is_never_replaced(tmp_path: Path, sorted_npy: Path,
                                                         monkeypatch: pytest.MonkeyPatch, rename: str, fmt: str,
                                                         what: str) -> None:
    dst = tmp_path / "ds"
    calls = _appear_mid_way(monkeypatch, fmt, _appearing(dst, what))
    with pytest.raises(TargetExistsError, match="appeared while converting") as info:
        streambatch.convert(sorted_npy, dst, format=fmt, unit_rows=100, progress=False)
    assert len(calls) > 5
    assert len(str(info.value).splitlines()) == 1 and str(dst) in str(info.value)
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k == "ds" or k.startswith("ds/")} == (
        {"ds": b"someone else's"} if what == "a file" else
        {"ds": None, "ds/theirs.txt": b"someone else's"} if what == "a folder with a file" else {"ds": None})
    assert not temp_folders(tmp_path)


@pytest.mark.parametrize("what", ["a folder with a file", "a file"])
def test_overwrite_rechecks_what_appeared_mid_way(tmp_path: Path, sorted_npy: Path, monkeypatch: pytest.MonkeyPatch,
                                                  rename: str, what: str) -> None:
    dst = tmp_path / "ds"
    _appear_mid_way(monkeypatch, "zarr", _appearing(dst, what))
    with pytest.raises(TargetExistsError, match="not a streambatch dataset|is a file"):
        streambatch.convert(sorted_npy, dst, unit_rows=100, overwrite=True, progress=False)
    assert (dst.read_bytes() if what == "a file" else (dst / "theirs.txt").read_bytes()) == b"someone else's"
    assert not temp_folders(tmp_path)


def test_overwrite_takes_an_empty_folder_that_appeared_mid_way(tmp_path: Path, sorted_npy: Path,
                                                              monkeypatch: pytest.MonkeyPatch, rename: str) -> None:
    dst = tmp_path / "ds"
    _appear_mid_way(monkeypatch, "zarr", _appearing(dst, "an empty folder"))
    streambatch.convert(sorted_npy, dst, unit_rows=100, overwrite=True, progress=False)
    monkeypatch.undo()
    assert_is_source(dst, sorted_npy)
    assert not temp_folders(tmp_path)


# --------------------------------------------------------------------------- two conversions at once

_RACER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from streambatch.cli import main
    from streambatch.manifest import Manifest

    sync, n = Path(sys.argv[1]), int(sys.argv[2])
    write = Manifest.write

    def gated(self, *args, **kwargs):
        # every racer has written its data and passed the start's checks: go on together
        (sync / f"ready-{os.getpid()}").touch()
        deadline = time.monotonic() + 120
        while len(list(sync.glob("ready-*"))) < n:
            if time.monotonic() > deadline:
                raise SystemExit("barrier: the other conversion never got here")
            time.sleep(0.002)
        return write(self, *args, **kwargs)

    Manifest.write = gated

    aside = os.environ.get("RACER_PAUSE_AFTER_MOVING_ASIDE")
    if aside:  # a racer preempted right after it moved the old target away, until another fills the gap
        def pausing(rename):
            def moved(src, dst, *args, **kwargs):
                rename(src, dst, *args, **kwargs)
                deadline = time.monotonic() + 30
                while os.path.abspath(src) == aside and not os.path.exists(aside) and time.monotonic() < deadline:
                    time.sleep(0.002)
            return moved
        os.rename, os.replace = pausing(os.rename), pausing(os.replace)
    sys.exit(main(sys.argv[3:]))
""")


def _race(tmp: Path, src: Path, dst: Path, unit_rows: list[int], *extra: str,
          env: dict[str, str] | None = None) -> list[subprocess.CompletedProcess[str]]:
    sync = tmp / "sync"
    sync.mkdir()
    path = os.pathsep.join([str(Path(streambatch.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, **(env or {}), "PYTHONPATH": path}
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(sync), str(len(unit_rows)), "convert", str(src),
                               str(dst), "--unit-rows", str(u), "-q", *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for u in unit_rows]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done




def _tmp_siblings(dst: Path) -> list[str]:
    return sorted(p.name for p in dst.parent.iterdir())


@pytest.mark.parametrize("fmt", STORAGES)
def test_two_conversions_into_one_target_one_wins(tmp_path: Path, sorted_npy: Path, capsys: pytest.CaptureFixture[str],
                                                   fmt: str) -> None:
    dst = tmp_path / "out" / "ds"
    runs = _race(tmp_path, sorted_npy, dst, [100, 200], "--format", fmt)
    codes = [r.returncode for r in runs]
    assert sorted(codes) == [0, 2], [r.stderr for r in runs]
    winner, loser = (runs[0], runs[1]) if codes[0] == 0 else (runs[1], runs[0])
    assert winner.stderr == ""
    assert len(loser.stderr.splitlines()) == 1 and str(dst) in loser.stderr and "appeared" in loser.stderr, loser.stderr
    m = assert_is_source(dst, sorted_npy)
    assert int(m.unit_rows[0]) == int(winner.args[winner.args.index("--unit-rows") + 1])
    code, out, err = run_cli(capsys, "verify", dst)
    assert code == 0 and "OK" in out, err
    assert _tmp_siblings(dst) == ["ds"], "the loser's temporary folder must be removed"


@pytest.mark.parametrize("existing", [True, False])
def test_two_overwrites_into_one_target_leave_one_dataset(tmp_path: Path, sorted_npy: Path,
                                                          capsys: pytest.CaptureFixture[str], existing: bool) -> None:
    dst = tmp_path / "out" / "ds"
    if existing:
        streambatch.convert(sorted_npy, dst, format="parquet", unit_rows=50, progress=False)
    # Moving the old dataset aside and the new one in as two renames leaves a gap where the target is
    # missing: a racer paused in that gap lets the other one in, and then fails or leaves the old
    # dataset behind.  An atomic exchange has no such gap, so the pause never happens.
    runs = _race(tmp_path, sorted_npy, dst, [100, 200], "--overwrite",
                 env={"RACER_PAUSE_AFTER_MOVING_ASIDE": str(dst.absolute())})
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    m = assert_is_source(dst, sorted_npy)
    assert m.storage == "zarr" and int(m.unit_rows[0]) in (100, 200)
    code, out, err = run_cli(capsys, "verify", dst)
    assert code == 0 and "OK" in out, err
    assert _tmp_siblings(dst) == ["ds"], "no temporary folder and no old dataset may be left"
    assert sorted(p.name for p in dst.iterdir()) == sorted(["_streambatch.json", "zarr.json", "id", "x", "y"])
