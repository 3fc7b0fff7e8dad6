"""streambatch's own Parquet page writer: standard files that pyarrow and pandas read as if
pyarrow had written them, laid out so that the loader reads values in place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

import streambatch
from streambatch import load_manifest
from streambatch.errors import DataError, ManifestError
from streambatch.manifest import Column
from streambatch.storage import open_reader, parquet_store
from streambatch.storage._parquet_pages import IDENTITY, chunk_plan, decode_chunk
from streambatch.storage._parquet_write import FileWriter, supports
from streambatch.storage._arrow_schema import arrow_schema

from conftest import write_manifest

INTS = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
SHAPES = [(), (1,), (3, 2)]


class _Sink:
    def __init__(self, path: Path) -> None:
        self.f = open(path, "wb")
        self.pos = 0

    def write(self, data: Any) -> None:
        self.f.write(data)
        self.pos += memoryview(data).nbytes


def _columns() -> tuple[Column, ...]:
    return tuple(Column(f"{dt}_{'x'.join(map(str, shape)) or 's'}", dt, shape)
                 for dt in INTS + ["float32", "float64"] for shape in SHAPES)


def _random(columns: tuple[Column, ...], n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for c in columns:
        if c.np_dtype.kind in "iu":  # the full range: extremes, negatives, uint64 above 2**63
            info = np.iinfo(c.np_dtype)
            out[c.name] = rng.integers(info.min, info.max, (n, *c.shape), dtype=c.np_dtype, endpoint=True)
        else:
            out[c.name] = rng.standard_normal((n, *c.shape)).astype(c.np_dtype)
    return out


def test_pyarrow_and_pandas_read_it_as_written(tmp_path: Path) -> None:
    """Every dtype the writer takes, as scalars and tensors, over row groups of 5, 17 and 1
    rows: pyarrow (with page checksum verification) returns the same Arrow schema (field
    metadata included) and the same values; pandas gets one array per row."""
    cols = _columns()
    rng = np.random.default_rng(0)
    parts = [_random(cols, n, rng) for n in (5, 17, 1)]
    path = tmp_path / "f.parquet"
    sink = _Sink(path)
    w = FileWriter(sink, cols, arrow_schema(cols), "streambatch test")
    for p in parts:
        w.write_row_group(p)
    w.close()
    sink.f.close()

    pf = pq.ParquetFile(path, page_checksum_verification=True)
    assert pf.metadata.num_row_groups == 3 and pf.metadata.num_rows == 23
    table = pf.read()
    assert table.schema.equals(arrow_schema(cols), check_metadata=True)
    for c in cols:
        want = np.concatenate([p[c.name] for p in parts])
        col = table.column(c.name).combine_chunks()
        got = (col.flatten() if c.shape else col).to_numpy().reshape(want.shape)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want, err_msg=c.name)
    df = pq.read_table(path).to_pandas()
    np.testing.assert_array_equal(df["uint8_3x2"][6], parts[1]["uint8_3x2"][1].reshape(-1))

    # the 1-byte columns carry the identity dictionary, so the decoder copies their bytes
    md = pq.ParquetFile(path).metadata
    for i, c in enumerate(cols):
        plan = chunk_plan(md, 1, i, c.np_dtype)
        assert plan is not None, c.name
        off, size, physical, rep, dfn = plan
        with open(path, "rb") as f:
            f.seek(off)
            chunk = memoryview(f.read(size))
        if c.np_dtype.itemsize == 1:
            assert bytes(chunk).find(IDENTITY[c.np_dtype.name]) > 0
        got = decode_chunk(chunk, 17 * c.row_items, physical, rep, dfn, c.np_dtype)
        np.testing.assert_array_equal(got, parts[1][c.name].reshape(-1), err_msg=c.name)


def test_what_it_leaves_to_pyarrow() -> None:
    plain = (Column("x", "float32", (4,)), Column("y", "uint8", ()))
    assert supports(plain, "none", 1000)
    assert not supports(plain, "zstd", 1000) and not supports(plain, "lz4", 1000)
    assert not supports(plain + (Column("b", "bool", ()),), "none", 1000)
    assert not supports(plain + (Column("h", "float16", (2,)),), "none", 1000)
    # one page per column chunk: its size is a Thrift i32 (uint16 is stored as INT32, 4 bytes)
    assert supports((Column("s", "uint16", (1024,)),), "none", (1 << 29) // 1024 - 1024)
    assert not supports((Column("s", "uint16", (1024,)),), "none", (1 << 29) // 1024)


@pytest.mark.parametrize("dtype", ["uint8", "int8", "float32"])
def test_converted_dataset_is_read_by_standard_tools(tmp_path: Path, dtype: str) -> None:
    """A dataset converted to Parquet (several files): pyarrow's dataset reader and the
    loader's reader give the source back.  (test_faults traces flipped bytes in these files.)"""
    rng = np.random.default_rng(5)
    src = tmp_path / "src"
    src.mkdir()
    x = (rng.integers(-128, 128, (333, 4, 6)) if dtype == "int8" else rng.integers(0, 256, (333, 4, 6))).astype(dtype)
    np.save(src / "x.npy", x)
    np.save(src / "y.npy", np.arange(333, dtype=np.int64))
    streambatch.convert(src, tmp_path / "ds", format="parquet", unit_rows=50, shard_bytes=4000, progress=False)
    ds = tmp_path / "ds"
    table = pq.read_table(ds)
    np.testing.assert_array_equal(table.column("x").combine_chunks().flatten().to_numpy().reshape(x.shape), x)
    m = load_manifest(ds)
    assert len(m.files) > 1
    reader = open_reader(m, verify=True)
    try:
        got = {"x": np.empty((50, 4, 6), x.dtype), "y": np.empty(50, np.int64)}
        reader.read_into(2, 0, 50, got)
        np.testing.assert_array_equal(got["x"], x[100:150])
        np.testing.assert_array_equal(got["y"], np.arange(100, 150))
    finally:
        reader.close()


def test_value_offsets_in_the_manifest_are_checked(tmp_path: Path) -> None:
    """The manifest records where each unit's values start (the loader reads them straight into
    place). The unit checksums cannot tell a wrong offset (the bytes are the same, split
    elsewhere), so the offsets carry their own checksum: a nudged one is refused at load."""
    src = tmp_path / "src"
    src.mkdir()
    np.save(src / "x.npy", np.arange(40 * 6, dtype=np.float32).reshape(40, 6))
    np.save(src / "y.npy", np.arange(40, dtype=np.uint8))
    ds = tmp_path / "ds"
    streambatch.convert(src, ds, format="parquet", unit_rows=10, progress=False)
    m = load_manifest(ds)
    assert set(m.layout["values"]) == {"x", "y"}
    reader = open_reader(m, verify=True)
    try:
        assert reader._direct
        got = {"x": np.empty((10, 6), np.float32), "y": np.empty(10, np.uint8)}
        reader.read_into(3, 0, 10, got)
        np.testing.assert_array_equal(got["x"], np.arange(30 * 6, 40 * 6, dtype=np.float32).reshape(10, 6))
        np.testing.assert_array_equal(got["y"], np.arange(30, 40))
    finally:
        reader.close()

    manifest = ds / "_streambatch.json"
    doc = json.loads(manifest.read_text())
    doc["layout"]["values"]["x"][2] += 4  # one float further on: plausible, and wrong
    write_manifest(ds, doc)
    with pytest.raises(ManifestError, match="values_crc32c"):
        load_manifest(ds)

    # with a matching offsets CRC (edited on purpose) the load succeeds, and `verify` (which
    # decodes every unit's pages as well) tells the offsets from the pages apart, naming the column
    doc["layout"]["values_crc32c"] = parquet_store._offsets_crc([c.name for c in m.columns], doc["layout"]["values"])
    write_manifest(ds, doc)
    reader = open_reader(load_manifest(ds), verify=True)
    try:
        reader.verify_unit(1)
        with pytest.raises(DataError, match="column 'x', unit 2,.*layout.values"):
            reader.verify_unit(2)
    finally:
        reader.close()


def test_crc32_is_zlibs_crc32_for_every_buffer_kind() -> None:
    """The CRC-32 of page headers and old unit checksums (zlib-ng's where installed) gives
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
