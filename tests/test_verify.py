"""``streambatch verify`` covers every byte a reader depends on.

A byte flipped anywhere in any file of a dataset (Zarr shards and their indexes, ``zarr.json``,
Parquet magic and footers, Arrow schema messages and footers, the manifest) either makes ``verify`` exit 1 with one line naming that
file, or leaves a dataset that still reads identically through streambatch and through
zarr-python or pyarrow.  Targeted tests name the damage verify reports for the index, the
footer, the metadata and the manifest, and check datasets written before the file checksums
were recorded.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

import streambatch
from streambatch.cli import main
from streambatch.errors import ManifestError
from streambatch.manifest import MANIFEST_NAME
from streambatch.storage import load_manifest
from streambatch.storage import read_all

from conftest import arrow_column_numpy, flip_byte

ROWS = 230  # units of 40 rows: 6 units, the last one short
UNIT = 40
CONFIGS = {  # (format, codec, columns): Parquet zstd and bool go through pyarrow's writer
    "zarr-none": ("zarr", "none", ("id", "x", "y")),
    "zarr-lz4": ("zarr", "lz4", ("id", "x", "b", "y")),
    "parquet-own": ("parquet", "none", ("id", "x", "y")),
    "parquet-pyarrow": ("parquet", "zstd", ("id", "x", "b", "h", "y")),
    "arrow": ("arrow", "none", ("id", "x", "b", "h", "y")),
}
BEFORE = [n for n, (fmt, _, _) in CONFIGS.items() if fmt != "arrow"]  # Arrow datasets always recorded file checksums


def _source() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {"id": np.arange(ROWS, dtype=np.int64), "x": rng.standard_normal((ROWS, 3)).astype(np.float32),
            "b": rng.random(ROWS) < 0.4, "h": rng.standard_normal(ROWS).astype(np.float16),
            "y": rng.integers(0, 5, ROWS).astype(np.int64)}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each configuration converted once (several files per column or per dataset)."""
    root = tmp_path_factory.mktemp("verify")
    data = _source()
    out = {}
    for name, (fmt, codec, cols) in CONFIGS.items():
        src = root / f"src-{name}"
        src.mkdir()
        for c in cols:
            np.save(src / f"{c}.npy", data[c])
        out[name] = root / name
        streambatch.convert(src, out[name], format=fmt, codec=codec, unit_rows=UNIT, shard_bytes=2500,
                            label="y", progress=False)
    return out


def _copy(built: dict[str, Path], name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built[name], tmp_path / name))


def _expected(name: str) -> dict[str, np.ndarray]:
    data = _source()
    return {c: data[c] for c in CONFIGS[name][2]}


def _verify(capsys: pytest.CaptureFixture[str], ds: Path) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["verify", str(ds)])
    out, err = capsys.readouterr()
    return code, out, err


def _read_elsewhere(ds: Path, storage: str, files: list[str], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Every column read by zarr-python (Zarr) or by pyarrow, file by file in order (Parquet, Arrow)."""
    if storage == "zarr":
        group = zarr.open_group(str(ds), mode="r")
        return {n: np.asarray(group[n][...]) for n in names}
    if storage == "arrow":
        tables = [pa.ipc.open_file(pa.memory_map(str(ds / f))).read_all() for f in files]
    else:
        tables = [pq.read_table(ds / f) for f in files]
    out = {}
    for n in names:
        parts = []
        for t in tables:
            parts.append(arrow_column_numpy(t.schema.field(n), t.column(n).combine_chunks()))
        out[n] = np.concatenate(parts)
    return out


def _reads_identically(ds: Path, storage: str, files: list[str], want: dict[str, np.ndarray]) -> str:
    """"" if the dataset reads as ``want`` through streambatch and through zarr-python or pyarrow,
    else what went wrong."""
    for how in ("streambatch", storage):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                got = (read_all(load_manifest(ds), verify=False) if how == "streambatch"
                       else _read_elsewhere(ds, storage, files, tuple(want)))
        except Exception as e:  # noqa: BLE001 - any failure to read is a difference
            return f"{how} cannot read it: {type(e).__name__}: {e}"
        bad = [n for n in want if got[n].dtype != want[n].dtype or not np.array_equal(got[n], want[n])]
        if bad:
            return f"{how} reads other values of {bad}"
    return ""


def _flip_offsets(size: int, rng: np.random.Generator, k: int = 6) -> list[int]:
    """``k`` offsets anywhere in a file of ``size`` bytes and ``k`` in its last 64 (indexes, footers)."""
    anywhere = rng.choice(size, min(k, size), replace=False)
    tail = size - 1 - rng.choice(min(64, size), min(k, size), replace=False)
    return sorted({int(o) for o in np.concatenate([anywhere, tail])})


def _names_file(err: str, ds: Path, rel: str) -> bool:
    lines = err.splitlines()
    named = str(ds / MANIFEST_NAME) if rel == MANIFEST_NAME else f"file {rel}:"
    return len(lines) == 1 and "FAILED" in lines[0] and named in lines[0]


def _flip_each(capsys: pytest.CaptureFixture[str], ds: Path, rel: str, offsets: list[int], rng: np.random.Generator,
               want: dict[str, np.ndarray]) -> tuple[int, list[str]]:
    """Flip each byte of ``rel`` at ``offsets`` in turn (a random mask; restored after); return how
    many flips verify caught naming ``rel``, and what went wrong with the others: verify passed
    but the dataset does not read identically, or verify failed otherwise."""
    m = load_manifest(ds)  # before any flip
    caught, problems = 0, []
    for offset in offsets:
        mask = int(rng.integers(1, 256))
        flip_byte(ds / rel, offset, mask)
        code, _, err = _verify(capsys, ds)
        if code == 1 and _names_file(err, ds, rel):
            caught += 1
        else:
            differs = _reads_identically(ds, m.storage, list(m.files), want) if code == 0 else err.strip()
            if differs:
                problems.append(f"{rel} byte {offset} ^ {mask:#04x}: exit {code}: {differs}")
        flip_byte(ds / rel, offset, mask)
    return caught, problems


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_flipped_byte_anywhere_fails_verify_naming_the_file_or_reads_identically(
        built: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, seed: int) -> None:
    ds = _copy(built, name, tmp_path)
    m = load_manifest(ds)
    want = _expected(name)
    assert _reads_identically(ds, m.storage, list(m.files), want) == ""
    rng = np.random.default_rng(seed)
    every = sorted(p.relative_to(ds).as_posix() for p in ds.rglob("*") if p.is_file())
    assert MANIFEST_NAME in every and all(f in every for f in m.files)
    caught, problems, flips = 0, [], 0
    for rel in every:
        offsets = _flip_offsets((ds / rel).stat().st_size, rng)
        got = _flip_each(capsys, ds, rel, offsets, rng, want)
        caught, problems, flips = caught + got[0], problems + got[1], flips + len(offsets)
    assert not problems, f"{len(problems)} of {flips} flips:\n" + "\n".join(problems[:15])
    assert caught > flips // 2  # most flips are caught; the others read identically
    assert _verify(capsys, ds)[0] == 0


# --------------------------------------------------------------------------- what verify names


def _fail_line(capsys: pytest.CaptureFixture[str], ds: Path) -> str:
    code, out, err = _verify(capsys, ds)
    assert code == 1 and "OK" not in out and len(err.splitlines()) == 1, (code, out, err)
    return err


def _one_file(built: dict[str, Path], name: str, tmp_path: Path, i: int) -> tuple[Path, Any, str, int]:
    """A copy of dataset ``name``, its manifest, and the path and size of its file ``i``."""
    ds = _copy(built, name, tmp_path)
    m = load_manifest(ds)
    return ds, m, m.files[i], (ds / m.files[i]).stat().st_size


@pytest.mark.parametrize("name", ["zarr-none", "zarr-lz4"])
def test_a_flipped_shard_index_byte_is_named(built: dict[str, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str], name: str) -> None:
    ds, m, rel, size = _one_file(built, name, tmp_path, 0)
    per_shard = int(m.layout["units_per_shard"])
    index_at = size - 4 - 16 * per_shard
    flip_byte(ds / rel, index_at + 8, 0x01)  # the size of the first inner chunk
    assert f"file {rel}: shard index does not match" in _fail_line(capsys, ds)
    flip_byte(ds / rel, index_at + 8, 0x01)
    flip_byte(ds / rel, size - 2, 0x10)  # the index's CRC-32C
    assert f"file {rel}: shard index checksum mismatch" in _fail_line(capsys, ds)
    flip_byte(ds / rel, size - 2, 0x10)
    with open(ds / rel, "ab") as f:  # a byte appended
        f.write(b"\x00")
    assert f"file {rel}: {size + 1} bytes, expected {size}" in _fail_line(capsys, ds)


@pytest.mark.parametrize("name", ["parquet-own", "parquet-pyarrow"])
def test_a_flipped_parquet_footer_or_magic_byte_is_named(built: dict[str, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str], name: str) -> None:
    ds, m, rel, size = _one_file(built, name, tmp_path, 1)
    footer = int(m.layout["footer_size"][1])
    flip_byte(ds / rel, size - footer + footer // 2, 0x04)  # inside FileMetaData
    assert f"file {rel}: footer checksum mismatch (damaged)" in _fail_line(capsys, ds)
    flip_byte(ds / rel, size - footer + footer // 2, 0x04)
    flip_byte(ds / rel, 1, 0x20)  # 'PAR1' -> 'pAR1'
    assert f"file {rel}: no Parquet magic at the start" in _fail_line(capsys, ds)


def test_a_flipped_arrow_schema_footer_or_magic_byte_is_named(built: dict[str, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    ds, m, rel, size = _one_file(built, "arrow", tmp_path, 1)
    head, footer = int(m.layout["head_size"][1]), int(m.layout["footer_size"][1])
    for at, what in ((head // 2, "schema message checksum mismatch (damaged)"), (1, "no Arrow magic at the start"),
                     (size - footer + footer // 2, "footer checksum mismatch (damaged)"),
                     (size - 3, "no Arrow magic at the end")):
        flip_byte(ds / rel, at, 0x04)
        assert f"file {rel}: {what}" in _fail_line(capsys, ds)
        flip_byte(ds / rel, at, 0x04)
    with open(ds / rel, "ab") as f:  # a byte appended
        f.write(b"\x00")
    assert f"file {rel}: {size + 1} bytes, expected {size}" in _fail_line(capsys, ds)


def test_a_flipped_zarr_json_byte_is_named(built: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    ds = _copy(built, "zarr-lz4", tmp_path)
    for rel in ("zarr.json", "x/zarr.json"):
        text = (ds / rel).read_text()
        at = text.index('"zarr_format": 3') + len('"zarr_format": ')
        flip_byte(ds / rel, at, 0x01)  # 3 -> 2: still JSON, another Zarr version
        assert f"file {rel}: checksum mismatch (damaged)" in _fail_line(capsys, ds)
        flip_byte(ds / rel, at, 0x01)


def test_every_flipped_manifest_byte_is_refused(built: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Every byte: the loader refuses the manifest naming it, except in the name of the
    ``"checksum"`` field, where it loads as a manifest from before checksums and verify fails."""
    ds = _copy(built, "zarr-none", tmp_path)
    path = ds / MANIFEST_NAME
    raw = path.read_bytes()
    key = raw.rindex(b'"checksum"') + 1
    for offset in range(len(raw)):
        flip_byte(path, offset, 0x01)
        try:
            m = load_manifest(ds)
        except ManifestError as e:
            assert str(path) in str(e), e
        else:
            assert key <= offset < key + len("checksum") and m.checksum == "", offset
            assert f"{path}: no 'checksum' field" in _fail_line(capsys, ds)
        flip_byte(path, offset, 0x01)
    assert load_manifest(ds).checksum.startswith("crc32c:")


def test_a_damaged_manifest_fails_verify_and_a_missing_one_is_bad_input(
        built: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = _copy(built, "parquet-own", tmp_path)
    doc = json.loads((ds / MANIFEST_NAME).read_text())
    raw = (ds / MANIFEST_NAME).read_bytes()
    (ds / MANIFEST_NAME).write_bytes(raw.replace(b'"rows":230', b'"rows":231'))  # edited, checksum kept
    assert f"{ds / MANIFEST_NAME}: checksum mismatch: the manifest was damaged or edited" in _fail_line(capsys, ds)
    doc = json.loads(raw)
    doc["rows"] = 231  # edited and written again as JSON: the checksum is no longer the last field
    (ds / MANIFEST_NAME).write_text(json.dumps(doc))
    assert "not the last field" in _fail_line(capsys, ds)
    (ds / MANIFEST_NAME).unlink()
    code, _, err = _verify(capsys, ds)
    assert code == 2 and "manifest missing" in err


def test_verify_says_what_it_checked(built: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _verify(capsys, built["zarr-lz4"])
    assert code == 0 and err == ""
    assert "OK, 6 units, 230 rows" in out and "manifest's own checksum" in out
    assert "8 shard files whole" in out and "shard index" in out and "5 metadata file(s)" in out
    code, out, err = _verify(capsys, built["parquet-pyarrow"])
    assert code == 0 and "footer: size and CRC-32C" in out
    code, out, err = _verify(capsys, built["arrow"])
    assert code == 0 and "Arrow files whole (magic, schema message, record batches back to back, footer" in out


# --------------------------------------------------------------------------- datasets from before


def _as_written_before(ds: Path) -> None:
    """Rewrite the manifest as streambatch wrote it before it recorded file checksums."""
    doc = json.loads((ds / MANIFEST_NAME).read_text())
    for key in ("metadata_crc32c", "footer_size", "footer_crc32c"):
        doc["layout"].pop(key, None)
    doc.pop("checksum", None)
    (ds / MANIFEST_NAME).write_text(json.dumps(doc, separators=(",", ":")))


@pytest.mark.parametrize("name", BEFORE)
def test_a_dataset_written_before_file_checksums_is_still_checked_whole(
        built: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    ds = _copy(built, name, tmp_path)
    _as_written_before(ds)
    code, out, err = _verify(capsys, ds)
    assert code == 0 and "no checksum of its own" in out and "no checksum recorded" in out, (out, err)
    m = load_manifest(ds)
    if m.storage == "zarr":
        doc = json.loads((ds / "x/zarr.json").read_text())
        doc["codecs"][0]["configuration"]["index_location"] = "start"  # valid Zarr, read differently
        (ds / "x/zarr.json").write_text(json.dumps(doc, indent=2))
        assert "file x/zarr.json: Zarr metadata differs" in _fail_line(capsys, ds)
        return
    rel = m.files[0]
    size = (ds / rel).stat().st_size
    flip_byte(ds / rel, size - 8, 0x01)  # the footer's length
    assert f"file {rel}: the footer does not follow the last row group" in _fail_line(capsys, ds)


@pytest.mark.parametrize("name", ["zarr-lz4", "parquet-own"])
def test_a_flipped_byte_in_a_dataset_written_before_file_checksums(
        built: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    """Without recorded checksums, a flip in ``zarr.json`` or a Parquet footer still fails verify
    naming the file, or the dataset reads identically (whitespace, unused footer fields)."""
    ds = _copy(built, name, tmp_path)
    _as_written_before(ds)
    m = load_manifest(ds)
    lay = m.layout
    if m.storage == "zarr":
        starts = {"zarr.json": 0, "x/zarr.json": 0}
    else:  # where each file's footer starts
        starts = {f: int((lay["offset"] + lay["size"])[lay["file"] == i].max()) for i, f in enumerate(m.files)}
    rng = np.random.default_rng(3)
    problems = []
    for rel, start in starts.items():
        offsets = sorted({int(o) for o in rng.integers(start, (ds / rel).stat().st_size, 24)})
        problems += _flip_each(capsys, ds, rel, offsets, rng, _expected(name))[1]
    assert not problems, f"{len(problems)} flips:\n" + "\n".join(problems[:15])
