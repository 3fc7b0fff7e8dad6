"""Variable-length columns in Zarr v3 storage: token lists, strings and bytes from a Parquet file
written by pyarrow, converted with ``format="zarr"`` into two arrays per column (values and int64
offsets), read back exactly (``read_all``, the loader, zarr-python), with damage to any of their
bytes named by the reader and by ``streambatch verify``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

import streambatch
from streambatch import StreamDataset
from streambatch.cli import main
from streambatch.errors import DataError, ManifestError
from streambatch.manifest import MANIFEST_NAME
from streambatch.storage import load_manifest, open_reader, read_all, verify_dataset

from conftest import flip_byte, write_manifest

N = 900
HEAVY = 321  # a row of 9000 tokens: 36 KB, many values chunks of its own


def _data(n: int = N) -> dict[str, Any]:
    """Token documents (every 5th empty, one heavy), strings (some empty, non-ASCII), bytes, labels."""
    rng = np.random.default_rng(5)
    lens = rng.integers(1, 60, n)
    lens[::5] = 0
    lens[HEAVY] = 9000
    return {"tokens": [rng.integers(0, 50_000, k, dtype=np.int32) for k in lens],
            "text": ["" if i % 7 == 0 else f"row {i} ü" * (i % 4) for i in range(n)],
            "blob": [bytes(rng.integers(0, 256, i % 11, dtype=np.uint8)) for i in range(n)],
            "label": np.arange(n, dtype=np.int64) % 10}


def _input(path: Path, data: dict[str, Any]) -> None:
    pq.write_table(pa.table({
        "tokens": pa.array([d.tolist() for d in data["tokens"]], pa.list_(pa.int32())),
        "text": pa.array(data["text"], pa.string()),
        "blob": pa.array(data["blob"], pa.binary()),
        "label": pa.array(data["label"], pa.int64()),
    }), path, row_group_size=250)


def _convert(root: Path, codec: str, **kw: Any) -> Path:
    """A Zarr dataset of ``_data()`` in small units (1 KiB: values chunks hold several units)."""
    if not (root / "in.parquet").exists():
        _input(root / "in.parquet", _data())
    out = root / f"ds-{codec}"
    streambatch.convert(root / "in.parquet", out, format="zarr", codec=codec, unit_bytes="1KiB",
                        shard_bytes="64KiB", progress=False, **kw)
    return out


@pytest.fixture(scope="module", params=["none", "zstd", "lz4"])
def dataset(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    return _convert(tmp_path_factory.mktemp("zr"), request.param)


def test_units_straddle_values_chunks(dataset: Path) -> None:
    m = load_manifest(dataset)
    assert m.storage == "zarr" and [c.kind for c in m.columns] == ["list", "string", "bytes", "fixed"]
    for name, crossing in (("tokens", 20), ("text", 2)):
        loc = m.layout["columns"][name]
        start, chunk = loc["start"], loc["values"]["chunk"]
        first, last = start[:-1] // chunk, (np.maximum(start[1:], 1) - 1) // chunk
        assert (last > first).sum() >= crossing  # units whose values cross chunk boundaries
        assert np.array_equal(m.layout["ragged_nbytes"][name], np.diff(start) * m.column(name).item_nbytes)
    assert len(np.unique(m.layout["columns"]["tokens"]["values"]["file"])) > 1  # several shard files
    heavy_unit = int(np.searchsorted(m.unit_start, HEAVY, side="right") - 1)
    loc = m.layout["columns"]["tokens"]
    assert (loc["start"][heavy_unit + 1] - loc["start"][heavy_unit]) // loc["values"]["chunk"] >= 8


def test_read_all_and_verify(dataset: Path) -> None:
    m = load_manifest(dataset)
    data = _data()
    got = read_all(m, verify=True)
    assert all(np.array_equal(got["tokens"].row(i), data["tokens"][i]) for i in range(N))
    assert [bytes(got["text"].row(i)).decode() for i in range(N)] == data["text"]
    assert [bytes(got["blob"].row(i)) for i in range(N)] == data["blob"]
    assert np.array_equal(got["label"], data["label"])
    assert len(got["tokens"]) == N and got["tokens"].values.dtype == np.int32
    assert "shard files whole" in verify_dataset(m)


def test_zarr_python_reads_the_arrays(dataset: Path) -> None:
    data = _data()
    g = zarr.open_group(str(dataset), mode="r")
    for name in ("tokens", "text", "blob"):
        o = g[f"{name}/offsets"][:]
        values = g[f"{name}/values"]
        assert o.shape == (N + 1,) and o.dtype == np.int64 and o[0] == 0 and o[-1] == values.shape[0]
        every = values[:]
        rows = [every[o[i]:o[i + 1]] for i in range(N)]
        for i in (0, 1, HEAVY, N - 1):  # as the docs say: a row is one slice of the values array
            assert np.array_equal(values[o[i]:o[i + 1]], every[o[i]:o[i + 1]])
        want = {"tokens": data["tokens"], "text": [np.frombuffer(t.encode(), np.uint8) for t in data["text"]],
                "blob": [np.frombuffer(b, np.uint8) for b in data["blob"]]}[name]
        assert all(np.array_equal(r, w) for r, w in zip(rows, want)), name
        assert g[name].attrs["streambatch"]["column"]["kind"] == {"tokens": "list", "text": "string",
                                                                  "blob": "bytes"}[name]
    assert np.array_equal(g["label"][:], data["label"])


def test_loader_serves_every_row_exactly_once(dataset: Path) -> None:
    data = _data()
    ds = StreamDataset(dataset, batch_size=37, memory_budget="1MiB", return_index=True, collate={"tokens": "list"})
    for epoch in range(2):
        ds.set_epoch(epoch)
        seen = []
        for b in ds:
            rows = b["_row"].numpy()
            assert [t.tolist() for t in b["tokens"]] == [data["tokens"][i].tolist() for i in rows]
            assert b["text"] == [data["text"][i] for i in rows] and b["blob"] == [data["blob"][i] for i in rows]
            seen.append(rows)
        assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(N))
    fixed = StreamDataset(dataset, batch_size=64, columns=["label"], return_index=True)  # rows by byte ranges
    got = {int(r): int(v) for b in fixed for r, v in zip(b["_row"], b["label"])}
    assert got == {i: int(data["label"][i]) for i in range(N)}


def test_every_value_empty(tmp_path: Path) -> None:
    """A ragged column without a single value: a values array of shape (0,) and no shard files."""
    pq.write_table(pa.table({"s": pa.array([""] * 50, pa.string()), "y": pa.array(np.arange(50))}),
                   tmp_path / "in.parquet")
    streambatch.convert(tmp_path / "in.parquet", tmp_path / "ds", format="zarr", unit_rows=16, progress=False)
    m = load_manifest(tmp_path / "ds")
    got = read_all(m, verify=True)
    assert len(got["s"]) == 50 and got["s"].values.size == 0 and np.array_equal(got["y"], np.arange(50))
    verify_dataset(m)
    g = zarr.open_group(str(tmp_path / "ds"), mode="r")
    assert g["s/values"].shape == (0,) and np.array_equal(g["s/offsets"][:], np.zeros(51))
    assert sum(len(b["s"]) for b in StreamDataset(tmp_path / "ds", batch_size=8)) == 50


def _fail_line(capsys: pytest.CaptureFixture[str], ds: Path) -> str:
    capsys.readouterr()
    code = main(["verify", str(ds)])
    out, err = capsys.readouterr()
    assert code == 1 and len(err.splitlines()) == 1, (code, out, err)
    return err


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_a_damaged_values_chunk_names_unit_and_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   codec: str) -> None:
    ds = _convert(tmp_path, codec)
    m = load_manifest(ds)
    loc = m.layout["columns"]["tokens"]
    k = 7
    rel = m.files[int(loc["values"]["file"][k])]
    assert rel.startswith("tokens/values/c/")
    flip_byte(ds / rel, int(loc["values"]["offset"][k]) + int(loc["values"]["size"][k]) // 2)
    chunk = loc["values"]["chunk"]
    touching = {u for u in range(m.n_units) if loc["start"][u] < (k + 1) * chunk and loc["start"][u + 1] > k * chunk}
    with pytest.raises(DataError, match=rf"column 'tokens', unit (\d+), file {rel}: (checksum|cannot decode)") as e:
        for _ in StreamDataset(ds, batch_size=16, memory_budget="1MiB"):
            pass
    assert int(str(e.value).split("unit ")[1].split(",")[0]) in touching
    assert f"file {rel}:" in _fail_line(capsys, ds)


def test_a_damaged_offsets_chunk_is_named_even_unchecked(tmp_path: Path) -> None:
    ds = _convert(tmp_path, "none")
    m = load_manifest(ds)
    loc = m.layout["columns"]["text"]["offsets"]
    unit = 4
    rel = m.files[int(loc["file"][unit])]
    flip_byte(ds / rel, int(loc["offset"][unit]) + 8 * 2 + 6, 0x40)  # the third row's start: far off
    with pytest.raises(DataError, match=f"column 'text', unit {unit}, file {rel}: offsets do not lie within"):
        read_all(m, verify=False)
    with pytest.raises(DataError, match=f"column 'text', unit {unit}, file {rel}: checksum mismatch"):
        read_all(m, verify=True)


def test_a_flipped_byte_in_the_ragged_arrays_fails_verify_naming_the_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Any byte of the values and offsets shards and their zarr.json: verify names the file."""
    ds = _convert(tmp_path, "zstd")
    rng = np.random.default_rng(3)
    files = sorted(p.relative_to(ds).as_posix() for p in (ds / "tokens").rglob("*") if p.is_file())
    assert len([f for f in files if "/values/c/" in f]) > 1 and "tokens/offsets/zarr.json" in files
    for rel in files:
        size = (ds / rel).stat().st_size
        for offset in {int(rng.integers(0, size)), size - 1, size - 20}:
            flip_byte(ds / rel, offset, 0x10)
            assert f"file {rel}:" in _fail_line(capsys, ds), (rel, offset)
            flip_byte(ds / rel, offset, 0x10)
    capsys.readouterr()
    assert main(["verify", str(ds)]) == 0


def test_a_manifest_whose_starts_disagree_with_the_sizes_is_refused(tmp_path: Path) -> None:
    ds = _convert(tmp_path, "none")
    doc = json.loads((ds / MANIFEST_NAME).read_text())
    doc["layout"]["columns"]["blob"]["start"][3] += 1
    write_manifest(ds, doc)
    with pytest.raises(ManifestError, match=r"layout of column 'blob'.start does not match layout.ragged_nbytes"):
        load_manifest(ds)


def test_units_of_whole_rows_end_with_an_offsets_chunk_of_their_own(tmp_path: Path) -> None:
    """Rows a multiple of the unit: offsets[rows] is the first entry of one more chunk."""
    pq.write_table(pa.table({"t": pa.array([[i] * (i % 3) for i in range(64)], pa.list_(pa.int64()))}),
                   tmp_path / "in.parquet")
    streambatch.convert(tmp_path / "in.parquet", tmp_path / "ds", format="zarr", unit_rows=16, progress=False)
    m = load_manifest(tmp_path / "ds")
    assert m.n_units == 4 and len(m.layout["columns"]["t"]["offsets"]["file"]) == 5
    got = read_all(m, verify=True)
    assert [got["t"].row(i).tolist() for i in range(64)] == [[i] * (i % 3) for i in range(64)]
    o = zarr.open_group(str(tmp_path / "ds"), mode="r")["t/offsets"][:]
    assert o[-1] == sum(i % 3 for i in range(64)) and o.shape == (65,)
    verify_dataset(m)
    shutil.rmtree(tmp_path / "ds")


def test_a_damaged_chunk_read_in_place_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A values chunk wholly inside one long row is read straight into the row's buffer (no codec)
    and checked there: a flipped byte in it is a checksum error naming the heavy row's unit."""
    ds = _convert(tmp_path, "none")
    m = load_manifest(ds)
    loc = m.layout["columns"]["tokens"]
    chunk = int(loc["values"]["chunk"])
    middle = sum(len(t) for t in _data()["tokens"][:HEAVY]) + 4500  # a value in the middle of the heavy row
    k = middle // chunk
    assert 9000 >= 3 * chunk  # chunk k lies wholly inside the heavy row
    rel = m.files[int(loc["values"]["file"][k])]
    unit = int(np.searchsorted(m.unit_start, HEAVY, "right")) - 1
    heavy = _data()["tokens"][HEAVY].tolist()
    assert read_all(m, verify=True)["tokens"].row(HEAVY).tolist() == heavy
    flip_byte(ds / rel, int(loc["values"]["offset"][k]) + 5)
    with pytest.raises(DataError, match=f"column 'tokens', unit {unit}, file {rel}: checksum mismatch"):
        read_all(m, verify=True)
    assert f"unit {unit}, file {rel}: checksum mismatch" in _fail_line(capsys, ds)
    assert read_all(m, verify=False)["tokens"].row(HEAVY).tolist() != heavy


def test_checked_reads_within_and_across_shard_files(tmp_path: Path) -> None:
    """A checked, uncompressed unit's values chunks are read at once where they follow each other
    in one shard file, chunk by chunk where they cross into the next file: both give the stored
    rows, and a damaged chunk of a unit that crosses is named with the file that holds it."""
    ds = _convert(tmp_path, "none")
    m = load_manifest(ds)
    loc = m.layout["columns"]["tokens"]
    start, chunk, files = loc["start"], int(loc["values"]["chunk"]), loc["values"]["file"]
    first, last = start[:-1] // chunk, (np.maximum(start[1:], 1) - 1) // chunk
    has = start[1:] > start[:-1]
    crossing = np.flatnonzero(has & (files[first] != files[last]))
    within = np.flatnonzero(has & (last > first) & (files[first] == files[last]))
    assert crossing.size and within.size
    data, reader = _data(), open_reader(m, verify=True)
    try:
        for u in [*crossing.tolist(), *within.tolist()]:
            lo, hi = int(m.unit_start[u]), int(m.unit_start[u + 1])
            got = reader.read_rows(u, 0, hi - lo, ["tokens"])["tokens"]
            assert all(np.array_equal(got.row(i), data["tokens"][lo + i]) for i in range(hi - lo))
        u = int(crossing[0])
        k = int(last[u])
        rel = m.files[int(files[k])]
        flip_byte(ds / rel, int(loc["values"]["offset"][k]) + 1)
        with pytest.raises(DataError, match=f"column 'tokens', unit {u}, file {rel}: checksum mismatch"):
            reader.read_rows(u, 0, int(m.unit_rows[u]), ["tokens"])
    finally:
        reader.close()


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("scratch", [0, 3000, 1 << 20])
def test_a_group_read_of_pieces_is_what_reading_them_one_by_one_gives(tmp_path_factory: pytest.TempPathFactory,
                                                                      verify: bool, scratch: int, kernels: str) -> None:
    """``read_ragged_pieces`` (a window's pieces read as one group: offsets at once, values whole
    chunks checked in buffers of ``scratch`` bytes or straight into place) fills the window's
    buffers with each row where ``read_rows`` puts it, for random pieces of random units, whole
    and cut, including units that cross shard files and empty rows; the last unit is left to
    ``read_rows``."""
    ds = _convert(tmp_path_factory.mktemp("group"), "none")
    m = load_manifest(ds)
    data, rng = _data(), np.random.default_rng(11)
    reader = open_reader(m, verify=verify)
    try:
        for trial in range(12):
            units = rng.permutation(m.n_units)[:int(rng.integers(1, 40))]
            pieces, pos = [], 0
            for u in units.tolist():
                n = int(m.unit_rows[u])
                lo = int(rng.integers(0, n)) if trial % 2 else 0
                hi = int(rng.integers(lo + 1, n + 1)) if trial % 2 else n
                pieces.append((u, lo, hi, pos))
                pos += hi - lo
            table = np.array(pieces, np.int64)
            bufs = {}
            for name in ("tokens", "text", "blob"):
                col = m.column(name)
                sizes = m.layout["ragged_nbytes"][name][table[:, 0]] // col.item_nbytes
                first = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
                bufs[name] = (np.zeros(int(sizes.sum()), col.np_dtype), np.full(pos, -1, np.int64),
                              np.full(pos, -1, np.int64), first)
            done = reader.read_ragged_pieces(table, bufs, lambda k: None, scratch)
            assert np.array_equal(done, table[:, 0] != m.n_units - 1)
            for (u, lo, hi, at), ok in zip(pieces, done.tolist()):
                if not ok:
                    continue
                for name, (values, starts, ends, _) in bufs.items():
                    want = reader.read_rows(u, lo, hi, [name])[name]
                    got = [values[s:e] for s, e in zip(starts[at:at + hi - lo], ends[at:at + hi - lo])]
                    assert [g.tobytes() for g in got] == [want.row(i).tobytes() for i in range(hi - lo)]
                    row0 = int(m.unit_start[u]) + lo
                    if name == "tokens":
                        assert all(np.array_equal(g, data["tokens"][row0 + i]) for i, g in enumerate(got))
    finally:
        reader.close()


@pytest.mark.parametrize("where", ["values", "shared values", "offsets"])
def test_a_damaged_chunk_read_in_a_group_stops_the_loader_naming_it(tmp_path: Path, where: str, kernels: str) -> None:
    """The loader reads a window's pieces as groups: a flipped byte in a values chunk in the
    middle of a unit (read into place), in one a unit shares with the unit before it (read
    through a buffer), or in a unit's offsets chunk, is an error naming a unit that holds it."""
    ds = _convert(tmp_path, "none")
    m = load_manifest(ds)
    loc = m.layout["columns"]["tokens"]
    chunk = int(loc["values"]["chunk"])
    unit = int(np.searchsorted(m.unit_start, HEAVY, "right")) - 1
    units = {unit}
    if where == "values":
        k = int(loc["start"][unit]) // chunk + 2  # wholly inside the heavy row's unit
        fi, off = int(loc["values"]["file"][k]), int(loc["values"]["offset"][k]) + 3
    elif where == "shared values":
        k = int(loc["start"][unit]) // chunk  # the heavy unit's first chunk: the units before end in it
        assert loc["start"][unit] % chunk
        start = loc["start"]
        units = {u for u in range(m.n_units) if start[u] < (k + 1) * chunk and start[u + 1] > k * chunk}
        fi, off = int(loc["values"]["file"][k]), int(loc["values"]["offset"][k]) + 1
    else:
        fi, off = int(loc["offsets"]["file"][unit]), int(loc["offsets"]["offset"][unit]) + 8
    rel = m.files[fi]
    flip_byte(ds / rel, off)
    with pytest.raises(DataError, match=f"column 'tokens', unit ({'|'.join(map(str, units))}), file {rel}: "
                                        "checksum mismatch"):
        for _ in StreamDataset(ds, batch_size=16, memory_budget="1MiB", columns=["tokens", "label"]):
            pass
    if where == "offsets":  # unchecked, the damaged start is still caught
        with pytest.raises(DataError, match=f"column 'tokens', unit {unit}, file {rel}: offsets do not lie within"):
            for _ in StreamDataset(ds, batch_size=16, memory_budget="1MiB", verify=False):
                pass


def test_a_damaged_fixed_column_beside_a_ragged_one_is_named(tmp_path: Path, kernels: str) -> None:
    """A ragged window's fixed columns (the label) are read a unit at a time beside its group
    reads, each unit's chunk checked: a flipped byte in one is an error naming the column, the
    unit and the file."""
    ds = _convert(tmp_path, "none")
    m = load_manifest(ds)
    loc = m.layout["columns"]["label"]
    unit = m.n_units // 2
    fi = int(loc["file"][unit])
    flip_byte(ds / m.files[fi], int(loc["offset"][unit]) + 5)
    with pytest.raises(DataError, match=f"column 'label', unit {unit}, file {m.files[fi]}: checksum mismatch"):
        for _ in StreamDataset(ds, batch_size=16, memory_budget="1MiB", columns=["tokens", "label"]):
            pass
