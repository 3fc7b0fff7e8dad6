"""Parquet files as streambatch writes them (pyarrow's writer, FixedSizeBinary tensors, the values
read in place at offsets the manifest records) and as it wrote them before (FixedSizeList tensors:
tests/data/parquet_v0), read by streambatch and by standard tools alike."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import streambatch
from streambatch import load_manifest
from streambatch.errors import DataError, ManifestError
from streambatch.manifest import Manifest
from streambatch.storage import open_reader, parquet_store, read_all, verify_dataset

from conftest import write_manifest

V0 = Path(__file__).parent / "data" / "parquet_v0"
ALL_DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
              "float16", "float32", "float64"]


def v0_source() -> dict[str, np.ndarray]:
    """The rows of the datasets in tests/data/parquet_v0 (see its README)."""
    rows = 230
    r = np.arange(rows)
    return {
        "id": r.astype(np.int64),
        "x": ((np.arange(rows * 3) * 0.37) % 11 - 5).astype(np.float32).reshape(rows, 3),
        "m": (np.arange(rows * 6) * 7 % 256).astype(np.uint8).reshape(rows, 2, 3),
        "c": (r * 5 % 256 - 128).astype(np.int8),
        "y": (r * 37 % 1000 - 500).astype(np.int16),
        "u": (r * 2654435761 % 2**32).astype(np.uint32),
        "b": r % 3 == 0,
        "h": ((r % 50) * 0.25 - 6).astype(np.float16),
    }


def _random(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if np.dtype(dtype).kind in "iu":  # the full range: extremes, negatives, uint64 above 2**63
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    return (rng.standard_normal(shape) * 100).astype(dtype)


def _convert(tmp_path: Path, data: dict[str, np.ndarray], codec: str = "none", **kw: Any) -> Manifest:
    src = tmp_path / "src"
    src.mkdir()
    for k, v in data.items():
        np.save(src / f"{k}.npy", v)
    streambatch.convert(src, tmp_path / "ds", format="parquet", codec=codec, progress=False, **kw)
    return load_manifest(tmp_path / "ds")


def _ranges(m: Manifest) -> list[tuple[int, int, int]]:
    """``(unit, lo, hi)``: every unit whole, and a slice of it that starts and ends mid-byte of bits."""
    out = []
    for u in range(m.n_units):
        rows = int(m.unit_rows[u])
        out += [(u, 0, rows)] + ([(u, 3, rows - 2)] if rows > 5 else [])
    return out


def _read(reader: Any, m: Manifest, unit: int, lo: int, hi: int, names: list[str]) -> dict[str, np.ndarray]:
    out = {n: np.empty((hi - lo, *m.column(n).shape), m.column(n).np_dtype) for n in names}
    reader.read_into(unit, lo, hi, out)
    return out


def test_every_dtype_is_read_in_place_and_equals_pyarrows_decoding(tmp_path: Path) -> None:
    """Every dtype, as a scalar and a tensor, uncompressed: the manifest records every column's
    values (booleans as bits, 8- and 16-bit integers as INT32), and the in-place reader gives
    the source rows and exactly what pyarrow decodes: whole units, slices, a projection onto one
    column, with and without verify."""
    rng = np.random.default_rng(2)
    n = 701
    data = {f"{dt}{'_t' if shape else ''}": _random(dt, (n, *shape), rng) for dt in ALL_DTYPES
            for shape in ((), (2, 3))}
    m = _convert(tmp_path, data, unit_rows=128)
    assert m.layout["tensors"] == "fixed_size_binary" and set(m.layout["values"]) == set(data)
    for verify in (True, False):
        reader = open_reader(m, verify=verify)
        try:
            assert set(reader._inplace) == set(data)  # type: ignore[attr-defined]
            for u, lo, hi in _ranges(m):
                s = int(m.unit_start[u])
                got = _read(reader, m, u, lo, hi, list(data))
                want = {k: np.empty_like(v) for k, v in got.items()}
                reader._decode(u, lo, hi, want)  # type: ignore[attr-defined]
                for k, v in got.items():
                    np.testing.assert_array_equal(v, data[k][s + lo:s + hi], err_msg=k)
                    assert v.tobytes() == want[k].tobytes(), k
                for k in ("bool", "int8", "float16_t"):  # one column alone: its rows read alone
                    np.testing.assert_array_equal(_read(reader, m, u, lo, hi, [k])[k], data[k][s + lo:s + hi])
        finally:
            reader.close()


def test_files_are_read_by_pyarrow_and_pandas(tmp_path: Path) -> None:
    """Tensors are non-null FixedSizeBinary columns of the rows' bytes with their dtype and shape
    in the field metadata, scalars plain columns: pyarrow (checking the pages' CRCs) and pandas
    read the files as the README shows, one page per column chunk, no dictionary."""
    rng = np.random.default_rng(5)
    data = {"id": np.arange(333, dtype=np.int64), "x": _random("float32", (333, 4, 6), rng),
            "m": _random("uint8", (333, 3), rng), "y": _random("int8", (333,), rng)}
    m = _convert(tmp_path, data, unit_rows=50, shard_bytes=4000)
    assert len(m.files) > 1
    table = pq.read_table(m.root)  # the folder: pyarrow skips the manifest (_streambatch.json)
    x = table.schema.field("x")
    assert x.type == pa.binary(4 * 6 * 4) and not x.nullable
    assert json.loads(x.metadata[b"streambatch.shape"]) == [4, 6] and x.metadata[b"streambatch.dtype"] == b"float32"
    assert table.schema.field("y").type == pa.int8() and table.schema.field("id").type == pa.int64()
    column = table.column("x").combine_chunks()
    np.testing.assert_array_equal(np.frombuffer(column.buffers()[1], np.float32).reshape(-1, 4, 6), data["x"])
    frame = pd.read_parquet(m.root)
    np.testing.assert_array_equal(np.frombuffer(frame["m"][7], np.uint8), data["m"][7])
    np.testing.assert_array_equal(frame["y"].to_numpy(), data["y"])
    pf = pq.ParquetFile(m.path_of(0), page_checksum_verification=True)
    pf.read()
    chunk = pf.metadata.row_group(0).column(1)
    assert not chunk.has_dictionary_page and "PLAIN" in chunk.encodings and "RLE_DICTIONARY" not in chunk.encodings


def test_values_not_where_expected_are_left_to_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer takes value offsets from pyarrow's footer on the assumption of one PLAIN page
    per column chunk, and checks them against a CRC-32C of the values: a column whose chunks
    hold several pages (here: 30 rows a page) gets no offsets, and pyarrow decodes it."""

    class SmallPages(parquet_store.Writer):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self._page_rows = 30

    monkeypatch.setattr(parquet_store.FORMAT, "writer_class", SmallPages)
    rng = np.random.default_rng(1)
    data = {"id": np.arange(500, dtype=np.int64), "x": _random("float32", (500, 3), rng), "y": _random("int16", (500,), rng)}
    m = _convert(tmp_path, data, unit_rows=100, shard_bytes=10_000)
    assert "values" not in m.layout
    got = read_all(m, verify=True)
    for k, v in data.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    verify_dataset(m)


def test_value_offsets_in_the_manifest_are_checked(tmp_path: Path) -> None:
    """The manifest records where each unit's values start (the loader reads them straight into
    place). The unit checksums cannot tell a wrong offset (the bytes are the same, split
    elsewhere), so the offsets carry their own checksum: a nudged one is refused at load, and
    with a matching checksum (edited on purpose) `verify`, which compares them with pyarrow's
    decoding, names the column."""
    data = {"x": np.arange(40 * 6, dtype=np.float32).reshape(40, 6), "y": np.arange(40, dtype=np.uint8)}
    m = _convert(tmp_path, data, unit_rows=10)
    ds = m.root
    doc = json.loads((ds / "_streambatch.json").read_text())
    doc["layout"]["values"]["x"][2] += 4  # one float further on: plausible, and wrong
    write_manifest(ds, doc)
    with pytest.raises(ManifestError, match="values_crc32c"):
        load_manifest(ds)
    from streambatch.storage._parquet_layout import offsets_crc

    doc["layout"]["values_crc32c"] = offsets_crc(["x", "y"], doc["layout"]["values"])
    write_manifest(ds, doc)
    reader = open_reader(load_manifest(ds), verify=True)
    try:
        reader.verify_unit(1)
        with pytest.raises(DataError, match="column 'x', unit 2,.*layout.values"):
            reader.verify_unit(2)
    finally:
        reader.close()


@pytest.mark.parametrize("name", ["own", "pyarrow"])
def test_datasets_written_before_read_identically(tmp_path: Path, name: str) -> None:
    """Parquet datasets written up to a038cba (FixedSizeList tensors; tests/data/parquet_v0) load
    and read as their source: the own page writer's files in place at their recorded offsets
    (1-byte values as identity-dictionary indices, 16-bit ones as INT32), pyarrow's zstd files
    decoded by pyarrow; whole units and slices, with and without verify; `verify` passes."""
    ds = shutil.copytree(V0 / name, tmp_path / name)
    m = load_manifest(ds)
    assert "tensors" not in m.layout
    source = v0_source()
    want = {c.name: source[c.name] for c in m.columns}
    for verify in (True, False):
        reader = open_reader(m, verify=verify)
        try:
            assert set(reader._inplace) == (set(want) if name == "own" else set())  # type: ignore[attr-defined]
            for u, lo, hi in _ranges(m):
                s = int(m.unit_start[u])
                for k, v in _read(reader, m, u, lo, hi, list(want)).items():
                    assert v.dtype == want[k].dtype, k
                    np.testing.assert_array_equal(v, want[k][s + lo:s + hi], err_msg=k)
        finally:
            reader.close()
    assert "every unit's checksum and decoding" in verify_dataset(m)


def test_a_dataset_written_before_converts_to_the_new_layout(tmp_path: Path) -> None:
    """A FixedSizeList dataset read through its manifest converts to a FixedSizeBinary one with
    every value kept."""
    ds = shutil.copytree(V0 / "own", tmp_path / "old")
    out = streambatch.convert(ds, tmp_path / "new", format="parquet", unit_rows=64, progress=False)
    assert isinstance(out, Manifest) and out.layout["tensors"] == "fixed_size_binary"
    got = read_all(load_manifest(tmp_path / "new"), verify=True)
    for k, v in got.items():
        np.testing.assert_array_equal(v, v0_source()[k], err_msg=k)
