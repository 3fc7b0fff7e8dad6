"""The manifest under attack: missing, broken, of the wrong type, hostile, or fuzzed.

A manifest is untrusted input.  Whatever it holds, ``load_manifest`` raises a
``ManifestError`` naming the file (and the field), never a ``KeyError`` or ``IndexError``
from deep inside; a hostile one (paths leaving the dataset folder, absurd shapes, row counts
or byte sizes, negative numbers) is refused before any file outside the dataset is opened and
before any large allocation.  Corrupt and truncated *data* files are in ``test_storage.py``
(the reader contract) and ``test_faults.py`` (the loader and the CLI).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import tempfile
import tracemalloc
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streambatch
import streambatch.dataset  # noqa: F401 - torch imported now, not inside a test that counts opened files
from streambatch.cli import main as cli_main
from streambatch.errors import DataError, ManifestError, StreambatchError
from streambatch.manifest import FORMAT_VERSION, MANIFEST_NAME
from streambatch.storage import load_manifest

from conftest import write_manifest, write_sorted_npy

ROWS = 300


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny datasets (300 rows, units of 40 rows, several shard files) in both formats."""
    root = tmp_path_factory.mktemp("manifest")
    src = write_sorted_npy(root / "src", ROWS, width=3)
    out = {}
    for fmt, codec in (("zarr", "none"), ("zarr", "zstd"), ("parquet", "none")):
        out[f"{fmt}-{codec}"] = root / f"{fmt}-{codec}"
        streambatch.convert(src, out[f"{fmt}-{codec}"], format=fmt, codec=codec, unit_rows=40, label="y",
                            shard_bytes=2000, progress=False)
    return out


def manifest_doc(path: Path) -> dict[str, Any]:
    return json.loads((path / MANIFEST_NAME).read_text())


def linked_copy(src: Path, dst: Path) -> Path:
    """A dataset folder whose data entries are symlinks to ``src``'s: cheap to re-manifest."""
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.name != MANIFEST_NAME:
            (dst / p.name).symlink_to(p)
    return dst


def write_doc(folder: Path, doc: Any) -> None:
    """Text or bytes as they are; anything else sealed with a valid checksum (``write_manifest``)."""
    if isinstance(doc, (str, bytes)):
        (folder / MANIFEST_NAME).write_bytes(doc.encode() if isinstance(doc, str) else doc)
    else:
        write_manifest(folder, doc)


@pytest.fixture
def zarr_doc(built: dict[str, Path], tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A linked copy of the Zarr dataset and its manifest document, to edit."""
    return linked_copy(built["zarr-none"], tmp_path / "ds"), manifest_doc(built["zarr-none"])


def expect_manifest_error(folder: Path, *names: str) -> ManifestError:
    with pytest.raises(ManifestError) as ei:
        load_manifest(folder)
    msg = str(ei.value)
    assert str(folder / MANIFEST_NAME) in msg or str(folder) in msg, msg
    for n in names:
        assert n in msg, (n, msg)
    return ei.value


# --------------------------------------------------------------------------- missing, unreadable, not JSON


def test_no_such_dataset(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such dataset"):
        load_manifest(tmp_path / "nope")
    with pytest.raises(ManifestError, match="no such dataset"):
        streambatch.StreamDataset(tmp_path / "nope")


def test_manifest_missing(tmp_path: Path, built: dict[str, Path]) -> None:
    folder = linked_copy(built["zarr-none"], tmp_path / "ds")
    err = expect_manifest_error(folder, MANIFEST_NAME, "manifest missing", "streambatch convert")
    assert isinstance(err, ValueError)  # ManifestError is also a ValueError
    with pytest.raises(ManifestError, match="manifest missing"):
        streambatch.StreamDataset(folder)


def test_manifest_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "ds" / MANIFEST_NAME).mkdir(parents=True)
    expect_manifest_error(tmp_path / "ds", "cannot read manifest")


@pytest.mark.parametrize("text", [
    "", "{", "not json", "[1, 2", '{"format": "streambatch",}', "\x00\x01\x02",
    b"\xff\xfe\x00garbage", b'{"format": "streambatch", "rows": 1e999999}', "NaN",
])
def test_not_json(tmp_path: Path, text: str | bytes) -> None:
    (tmp_path / "ds").mkdir()
    write_doc(tmp_path / "ds", text)
    expect_manifest_error(tmp_path / "ds")


@pytest.mark.parametrize("doc", [[], "streambatch", 1, None, {"format": "other"}, {}])
def test_not_a_streambatch_manifest(tmp_path: Path, doc: Any) -> None:
    (tmp_path / "ds").mkdir()
    write_doc(tmp_path / "ds", doc)
    expect_manifest_error(tmp_path / "ds")


@pytest.mark.parametrize("version", [0, 2, FORMAT_VERSION + 100, -1, "1", 1.0, True, None, [1]])
def test_unknown_or_mistyped_version(zarr_doc: tuple[Path, dict[str, Any]], version: Any) -> None:
    folder, doc = zarr_doc
    doc["version"] = version
    write_doc(folder, doc)
    err = expect_manifest_error(folder, "version")
    if isinstance(version, int) and not isinstance(version, bool):
        assert "not supported" in str(err) and "upgrade streambatch" in str(err)


def test_missing_version(zarr_doc: tuple[Path, dict[str, Any]]) -> None:
    folder, doc = zarr_doc
    del doc["version"]
    write_doc(folder, doc)
    expect_manifest_error(folder, "missing field 'version'")


# Each case: (a path into the document, a wrong value, a word the error names).
WRONG_TYPES: list[tuple[tuple[Any, ...], Any, str]] = [
    (("rows",), "300", "rows"),
    (("rows",), 300.0, "rows"),
    (("rows",), True, "rows"),
    (("rows",), None, "rows"),
    (("storage",), 1, "storage"),
    (("storage",), "hdf5", "storage"),
    (("codec",), None, "codec"),
    (("codec",), "gzip", "codec"),
    (("columns",), {"id": "int64"}, "columns"),
    (("columns",), [], "columns"),
    (("columns", 0), "id", "column 0"),
    (("columns", 0, "name"), 5, "name"),
    (("columns", 1, "dtype"), "float128", "dtype"),
    (("columns", 1, "dtype"), ["float32"], "dtype"),
    (("columns", 1, "shape"), 3, "shape"),
    (("columns", 1, "shape"), ["3"], "shape"),
    (("columns", 1, "shape"), [3.0], "shape"),
    (("columns", 1, "kind"), "ragged", "kind"),
    (("files",), "x/c/0/0", "files"),
    (("files", 0), 7, "files[0]"),
    (("files", 0), "", "files[0]"),
    (("units",), [0, 40], "units"),
    (("units", "start"), {"0": 0}, "units"),
    (("units", "rows"), [40.0] * 8, "units.rows"),
    (("units", "rows", 0), "40", "units.rows"),
    (("units", "stored_nbytes"), None, "stored_nbytes"),
    (("layout",), [], "layout"),
    (("layout", "unit_rows"), "40", "unit_rows"),
    (("layout", "columns"), [], "layout.columns"),
    (("layout", "columns", "x"), [1, 2], "'x'"),
    (("layout", "columns", "x", "offset"), "0", "offset"),
    (("layout", "columns", "x", "crc32"), [None] * 8, "crc32"),
    (("label",), 3, "label"),
    (("label",), "nope", "label"),
    (("stats",), [], "stats"),
    (("stats", "x"), "many", "stats"),
    (("stats", "x", "mean"), "zero", "mean"),
    (("stats", "x", "std"), [1.0], "std"),
    (("stats", "y", "histogram"), [1, 2], "histogram"),
    (("stats", "y", "histogram", "icc"), "high", "icc"),
    (("stats", "y", "histogram", "values"), "0..9", "values"),
    (("stats", "x", "count"), -1, "count"),
    (("stats", "nope"), {"count": 1, "mean": 0, "std": 1, "min": 0, "max": 0}, "no such column"),
    (("fingerprint",), 12, "fingerprint"),
    (("source",), "somewhere", "source"),
    (("options",), [], "options"),
]


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    for k in path[:-1]:
        doc = doc[k]
    doc[path[-1]] = value


@pytest.mark.parametrize(("path", "value", "word"), WRONG_TYPES, ids=[f"{'.'.join(map(str, p))}={v!r}"[:40]
                                                                     for p, v, _ in WRONG_TYPES])
def test_field_of_the_wrong_type(zarr_doc: tuple[Path, dict[str, Any]], path: tuple[Any, ...], value: Any,
                                 word: str) -> None:
    folder, doc = zarr_doc
    _set(doc, path, value)
    write_doc(folder, doc)
    expect_manifest_error(folder, word)


@pytest.mark.parametrize("key", ["storage", "rows", "columns", "files", "units", "codec", "layout"])
def test_missing_required_field(zarr_doc: tuple[Path, dict[str, Any]], key: str) -> None:
    folder, doc = zarr_doc
    del doc[key]
    write_doc(folder, doc)
    expect_manifest_error(folder, f"missing field {key!r}")


# --------------------------------------------------------------------------- fuzzing

_JSON_LEAF = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
              | st.sampled_from([0, 1, -1, 2**31, 2**32, 2**48, 2**62, 2**63, 2**64, -(2**63)])
              | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
              | st.sampled_from(["..", "/etc/passwd", "../x", "x", "y", "id", "zarr", "parquet", "none", "zstd",
                                 "float32", "int64", "bool", "fixed", "streambatch", "C:\\x", "x/c/0/0"]))
_JSON = st.recursive(_JSON_LEAF, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                                                           max_size=4), max_leaves=8)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:6]):
            out += _paths(v, prefix + (i,))
        if len(doc) > 6:
            out += _paths(doc[-1], prefix + (len(doc) - 1,))
    return out


@st.composite
def mutated(draw: st.DrawFn, doc: dict[str, Any]) -> Any:
    """``doc`` after 1-4 random edits: delete, replace, truncate or extend at a random place."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "delete", "shrink", "grow", "number"]))
        if not path:
            if op == "replace":
                doc = draw(_JSON)
            continue
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        cur = parent[key]
        if op == "delete":
            del parent[key]
        elif op == "shrink" and isinstance(cur, list) and cur:
            parent[key] = cur[: draw(st.integers(0, len(cur) - 1))]
        elif op == "grow" and isinstance(cur, list):
            parent[key] = cur + [copy.deepcopy(cur[-1]) if cur else draw(_JSON)] * draw(st.integers(1, 3))
        elif op == "number" and isinstance(cur, int) and not isinstance(cur, bool):
            parent[key] = cur + draw(st.sampled_from([-1, 1, -cur, cur, 2**40, -(2**40)]))
        else:
            parent[key] = draw(_JSON)
    return doc


_DTYPES = ["bool", "int8", "uint8", "int16", "int32", "int64", "uint32", "float16", "float32", "float64"]


def _layout_arrays(doc: dict[str, Any]) -> list[list[int]]:
    lay = doc.get("layout", {})
    if doc.get("storage") == "zarr":
        return [v for loc in lay.get("columns", {}).values() for v in loc.values() if isinstance(v, list)]
    return [v for v in lay.values() if isinstance(v, list)]


@st.composite
def plausible(draw: st.DrawFn, doc: dict[str, Any]) -> Any:
    """``doc`` after 1-3 edits that keep it well-formed but wrong: numbers that point elsewhere."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        arrays = _layout_arrays(doc)
        n = len(doc["units"]["rows"])
        edit = draw(st.sampled_from(["nudge", "swap", "move_rows", "dtype", "shape", "codec", "storage",
                                     "chunk_rows", "checksum", "drop_unit", "file", "rows"]))
        if edit == "nudge" and arrays:
            arr = draw(st.sampled_from(arrays))
            i = draw(st.integers(0, len(arr) - 1))
            arr[i] = max(0, arr[i] + draw(st.sampled_from([-1, 1, -64, 64, 2**20, 2**31, -arr[i]])))
        elif edit == "swap" and arrays:
            arr = draw(st.sampled_from(arrays))
            i, j = draw(st.integers(0, len(arr) - 1)), draw(st.integers(0, len(arr) - 1))
            arr[i], arr[j] = arr[j], arr[i]
        elif edit == "move_rows" and n > 1:
            rows = doc["units"]["rows"]
            i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
            k = draw(st.integers(1, max(1, rows[i] - 1)))
            if i != j and rows[i] > k:
                rows[i] -= k
                rows[j] += k
                doc["units"]["start"] = [sum(rows[:u]) for u in range(n)]
        elif edit == "dtype":
            col = draw(st.sampled_from(doc["columns"]))
            col["dtype"] = draw(st.sampled_from(_DTYPES))
        elif edit == "shape":
            col = draw(st.sampled_from(doc["columns"]))
            col["shape"] = draw(st.lists(st.integers(1, 5), max_size=2))
        elif edit == "codec":
            doc["codec"] = draw(st.sampled_from(["none", "lz4", "zstd"]))
        elif edit == "storage":
            doc["storage"] = draw(st.sampled_from(["zarr", "parquet"]))
        elif edit == "chunk_rows" and "unit_rows" in doc["layout"]:
            doc["layout"]["unit_rows"] = max(1, doc["layout"]["unit_rows"] + draw(st.sampled_from([-1, 1, 40])))
        elif edit == "checksum":
            doc["layout"]["checksum"] = draw(st.sampled_from(["crc32", "crc32c"]))
        elif edit == "drop_unit" and n > 1:
            i = draw(st.integers(0, n - 1))
            dropped = doc["units"]["rows"][i]
            for arr in [doc["units"]["rows"], doc["units"]["stored_nbytes"], *_layout_arrays(doc)]:
                del arr[i]
            doc["units"]["start"] = [sum(doc["units"]["rows"][:u]) for u in range(n - 1)]
            doc["rows"] -= dropped
        elif edit == "file":
            i = draw(st.integers(0, len(doc["files"]) - 1))
            doc["files"][i] = draw(st.sampled_from(doc["files"]))
        elif edit == "rows":
            doc["rows"] += draw(st.sampled_from([-1, 1]))
    return doc


_ALLOWED = (StreambatchError,)


def _exercise(folder: Path, capsys: pytest.CaptureFixture[str] | None = None) -> str:
    """Load, describe, iterate and verify the dataset at ``folder``; return how far it got.

    Only streambatch's own errors may escape, and the ValueErrors of the caller's options: a
    budget too small for rows a fuzzed shape made huge, ``normalize`` on a column without statistics.
    """
    try:
        m = load_manifest(folder)
    except ManifestError:
        return "refused"
    try:
        ds = streambatch.StreamDataset(folder, batch_size=16, memory_budget="8MiB", return_index=True,
                                       verify=True, normalize=True, threads=2)
        ds.describe()
        n = sum(int(b["_row"].shape[0]) for b in ds)
        assert n == m.rows
        for argv in (["info", str(folder)], ["info", str(folder), "--json"], ["verify", str(folder)]):
            assert cli_main(argv) in (0, 1, 2)
    except ValueError as e:  # the two checks of what the caller asked for: budget, normalisation
        if isinstance(e, StreambatchError) or "memory_budget" in str(e) or "to normalise with" in str(e):
            return "error"
        raise
    except _ALLOWED:
        return "error"
    return "ok"


def _fuzz_folder(built: dict[str, Path], name: str) -> tuple[Path, dict[str, Any]]:
    base = Path(tempfile.mkdtemp(prefix="sb-fuzz-"))
    return linked_copy(built[name], base / "ds"), manifest_doc(built[name])


@pytest.mark.parametrize("strategy", ["structural", "plausible"])
@pytest.mark.parametrize("name", ["zarr-none", "zarr-zstd", "parquet-none"])
def test_fuzzed_manifest_raises_only_streambatch_errors(built: dict[str, Path], name: str, strategy: str) -> None:
    """Random edits (structural: any JSON anywhere; plausible: well-formed numbers pointing elsewhere)."""
    folder, doc = _fuzz_folder(built, name)
    outcomes: dict[str, int] = {}

    # derandomize: the same examples every run, so the count asserted below is not a coin toss
    # in CI (one random run in about ten fell short); hunt with --hypothesis-seed when changing it.
    @settings(max_examples=100 if strategy == "structural" else 150, deadline=None,
              suppress_health_check=list(HealthCheck), database=None, derandomize=True)
    @given(mutated(doc) if strategy == "structural" else plausible(doc))
    def check(fuzzed: Any) -> None:
        write_doc(folder, fuzzed)  # sealed: the edits reach the validation, not the checksum
        r = _exercise(folder)
        outcomes[r] = outcomes.get(r, 0) + 1

    try:
        check()
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)
    assert outcomes.get("refused", 0) > 0
    if strategy == "plausible":  # most edits load, and the loader and `verify` meet them
        assert outcomes.get("ok", 0) + outcomes.get("error", 0) >= 30, outcomes


@pytest.mark.parametrize("name", ["zarr-none", "parquet-none"])
def test_fuzzed_manifest_bytes_raise_only_manifest_errors(built: dict[str, Path], name: str) -> None:
    folder, doc = _fuzz_folder(built, name)
    # without the manifest's own checksum (as written before it was recorded): damaged bytes
    # reach the parser (with it they do not: test_verify.py, test_every_flipped_manifest_byte_is_refused)
    raw = json.dumps({k: v for k, v in doc.items() if k != "checksum"}).encode()

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              derandomize=True)
    @given(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)), min_size=1, max_size=4),
           st.integers(1, len(raw)))
    def check(edits: list[tuple[int, int]], keep: int) -> None:
        data = bytearray(raw[:keep])
        for pos, val in edits:
            if pos < len(data):
                data[pos] = val
        write_doc(folder, bytes(data))
        _exercise(folder)

    try:
        check()
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)


# --------------------------------------------------------------------------- hostile manifests

_OPENS: list[str] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _OPENS is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENS.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # records nothing unless a test sets _OPENS


@contextmanager
def opened_files() -> Iterator[list[str]]:
    """Every path this process opens inside the block (audit event ``open``: open, os.open, ...)."""
    global _OPENS
    _OPENS = []
    try:
        yield _OPENS
    finally:
        _OPENS = None


@contextmanager
def allocation_peak() -> Iterator[dict[str, int]]:
    """The peak of traced Python and numpy allocations inside the block, in bytes."""
    out: dict[str, int] = {}
    tracemalloc.start()
    try:
        yield out
    finally:
        out["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def _try_everything(folder: Path) -> BaseException | None:
    """Load, open a loader, size it, describe it, read a batch, verify: the first error, or None."""
    try:
        ds = streambatch.StreamDataset(folder, batch_size=32)
        len(ds)
        ds.describe()
        for _ in ds:
            break
        assert cli_main(["verify", str(folder)]) == 0
    except (StreambatchError, ValueError) as e:
        return e
    return None


def _outside_paths(opened: list[str], root: Path) -> list[str]:
    """Opened paths outside the dataset folder, other than Python's own (imports, /proc, /sys)."""
    inside = (str(root), str(root.resolve()))
    system = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix, "/proc/", "/sys/", "/dev/"})
    return [p for p in opened if not p.startswith(inside) and not p.startswith(system)]


@pytest.mark.parametrize("bad", [
    "../secret.bin", "../../secret.bin", "x/../../secret.bin", "x/c/../../../secret.bin", "SECRET",  # SECRET: absolute
    "/etc/passwd", "//server/share/x", "\\\\server\\share", "C:\\secret.bin", "c:secret.bin", "x/\x00/y", "",
])
@pytest.mark.parametrize("name", ["zarr-none", "parquet-none"])
def test_paths_leaving_the_dataset_are_refused_before_anything_is_opened(built: dict[str, Path], tmp_path: Path,
                                                                         name: str, bad: str) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x00" * 100_000)
    folder = linked_copy(built[name], tmp_path / "ds")
    doc = manifest_doc(built[name])
    doc["files"][0] = str(secret) if bad == "SECRET" else bad
    write_doc(folder, doc)
    with opened_files() as opened:
        err = _try_everything(folder)
    assert isinstance(err, ManifestError), err
    assert "files[0]" in str(err) and ("leaves the dataset folder" in str(err) or "non-empty string" in str(err))
    assert str(secret) not in opened and not any("secret" in p or "passwd" in p for p in opened)
    assert _outside_paths(opened, folder) == [], opened
    assert opened == [str(folder / MANIFEST_NAME)], "only the manifest itself was opened"


@pytest.mark.parametrize("link", ["x", "x/c/0/0"])
def test_a_symlink_inside_the_dataset_is_followed(built: dict[str, Path], tmp_path: Path, link: str) -> None:
    """Documented limit: the manifest's paths are checked, the files they name are not (DVC and
    git-annex keep data as symlinks).  A symlinked folder or file is read like any other."""
    folder = linked_copy(built["zarr-none"], tmp_path / "ds")  # every entry is a symlink to the original
    (folder / MANIFEST_NAME).write_bytes((built["zarr-none"] / MANIFEST_NAME).read_bytes())
    assert _try_everything(folder) is None


def _one_unit(doc: dict[str, Any], rows: int, shape: list[int], dtype: str = "uint8", size: int | None = None,
              offset: int = 0) -> dict[str, Any]:
    """A one-column, one-unit Zarr manifest claiming ``rows`` rows of ``shape``."""
    row_nbytes = int(np.prod(shape or [1])) * np.dtype(dtype).itemsize
    size = rows * row_nbytes if size is None else size
    return {
        **{k: doc[k] for k in ("format", "version", "storage", "codec", "fingerprint", "source", "options")},
        "rows": rows, "label": None, "stats": {},
        "columns": [{"name": "x", "dtype": dtype, "shape": shape, "kind": "fixed"}],
        "files": ["x/c/0/0"], "units": {"start": [0], "rows": [rows], "stored_nbytes": [1000]},
        "layout": {"unit_rows": rows, "columns": {"x": {"file": [0], "offset": [offset], "size": [size], "crc32": [0]}}},
    }


# Each case: a hostile manifest made from a real one, and a word the refusal names.
HOSTILE: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "rows 2**60": (lambda d: _one_unit(d, 2**60, []), "row count"),
    "rows 2**47 in one unit": (lambda d: _one_unit(d, 2**47, []), "larger than 4294967296 bytes"),
    "rows -5": (lambda d: _one_unit(d, -5, []), "row count"),
    "shape 2**40": (lambda d: _one_unit(d, 1, [2**40]), "bad shape"),
    "shape 2**20 x 2**20": (lambda d: _one_unit(d, 1, [2**20, 2**20]), "absurd"),
    "shape 65536 x 65536, 4 rows": (lambda d: _one_unit(d, 4, [65536, 65536]), "larger than 4294967296 bytes"),
    "shape of 9 dims": (lambda d: _one_unit(d, 1, [2] * 9), "bad shape"),
    "shape 0": (lambda d: _one_unit(d, 10, [0]), "bad shape"),
    "shape -3": (lambda d: _one_unit(d, 10, [-3]), "bad shape"),
    "a 4 GiB row": (lambda d: _one_unit(d, 1, [65536, 65536]), "memory_budget"),
    "row bytes beyond float64": (lambda d: _one_unit(d, 1, [2**31, 2**31, 2**31], dtype="float64"), "absurd"),
    "chunk size 2**40 bytes": (lambda d: _one_unit(d, 1000, [4], size=2**40), ".size"),
    "chunk size -1": (lambda d: _one_unit(d, 1000, [4], size=-1), ".size"),
    "offset 2**60": (lambda d: _one_unit(d, 1000, [4], offset=2**60), ".offset"),
    "offset 2**49, past the end": (lambda d: _one_unit(d, 1000, [4], offset=2**49), "file truncated"),
    "offset -1": (lambda d: _one_unit(d, 1000, [4], offset=-1), ".offset"),
    "negative unit rows": (lambda d: {**d, "units": {**d["units"], "rows": [-r for r in d["units"]["rows"]]}},
                           "units.rows"),
    "negative stored bytes": (lambda d: {**d, "units": {**d["units"], "stored_nbytes": [-1] * len(d["units"]["rows"])}},
                              "stored_nbytes"),
    "10**6 units claimed, 8 listed": (lambda d: {**d, "rows": 10**6 * 40}, "do not tile"),
    "file index 10**9": (lambda d: {**d, "layout": {**d["layout"], "columns": {
        **d["layout"]["columns"], "x": {**d["layout"]["columns"]["x"], "file": [10**9] * len(d["units"]["rows"])}}}},
        ".file"),
    "chunk rows 2**62": (lambda d: {**d, "layout": {**d["layout"], "unit_rows": 2**62}}, "layout.unit_rows"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_absurd_numbers_are_refused_before_any_large_allocation(built: dict[str, Path], tmp_path: Path,
                                                                case: str) -> None:
    folder = linked_copy(built["zarr-none"], tmp_path / "ds")
    make, word = HOSTILE[case]
    write_doc(folder, make(manifest_doc(built["zarr-none"])))
    with opened_files() as opened, allocation_peak() as mem:
        err = _try_everything(folder)
    assert err is not None, "a hostile manifest must not load and serve"
    assert isinstance(err, (ManifestError, DataError)) or "memory_budget" in str(err), repr(err)
    assert str(folder) in str(err) and word in str(err), str(err)
    assert mem["peak"] < 16 * 2**20, f"{mem['peak'] / 2**20:.1f} MiB allocated"
    assert _outside_paths(opened, folder) == [], opened


def test_incomplete_statistics_are_refused(zarr_doc: tuple[Path, dict[str, Any]]) -> None:
    folder, doc = zarr_doc
    del doc["stats"]["x"]["mean"]
    write_doc(folder, doc)
    expect_manifest_error(folder, "stats of column 'x'", "missing 'mean'")


def test_parquet_size_bound_allows_small_integers_stored_as_int32(tmp_path: Path) -> None:
    """Plain-encoded Parquet stores uint8 as 32-bit integers: a row group of about four times its
    decoded bytes (datasets written before 1-byte columns were dictionary-encoded) still loads."""
    src = tmp_path / "src"
    src.mkdir()
    np.save(src / "x.npy", np.random.default_rng(0).integers(0, 256, (300, 3, 32, 32), dtype=np.uint8))
    streambatch.convert(src, tmp_path / "ds", format="parquet", unit_rows=100, progress=False)
    doc = manifest_doc(tmp_path / "ds")
    doc["layout"]["size"] = [4 * 100 * 3 * 32 * 32 + 4096] * 3
    write_doc(tmp_path / "ds", doc)
    assert load_manifest(tmp_path / "ds").rows == 300
    doc["layout"]["size"] = [100 * 100 * 3 * 32 * 32] * 3  # but not a hundred times
    write_doc(tmp_path / "ds", doc)
    expect_manifest_error(tmp_path / "ds", "layout.size")
