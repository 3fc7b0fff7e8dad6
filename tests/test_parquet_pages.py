"""The Parquet fast path: values viewed in place in PLAIN pages, pyarrow for everything else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import streambatch
from streambatch import load_manifest
from streambatch.storage import open_reader, parquet_store
from streambatch.storage._parquet_pages import chunk_plan, decode_chunk

DTYPES = ["float32", "float64", "int32", "int64", "uint32", "uint64", "uint8", "int16", "bool"]


def _chunk_bytes(path: Path, rg: int, col: int) -> tuple[memoryview, tuple[int, int, int, int] | None, int]:
    md = pq.ParquetFile(path).metadata
    c = md.row_group(rg).column(col)
    start = c.dictionary_page_offset if c.has_dictionary_page else c.data_page_offset
    with open(path, "rb") as f:
        f.seek(start)
        raw = f.read(c.total_compressed_size)
    return memoryview(raw), (start, md.schema.column(col).max_repetition_level,
                             md.schema.column(col).max_definition_level), c.num_values


@pytest.mark.parametrize("page_version", ["1.0", "2.0"])
@pytest.mark.parametrize("shape", [(), (3, 5)])
def test_plain_pages_decode(tmp_path: Path, page_version: str, shape: tuple[int, ...]) -> None:
    """Several PLAIN pages (v1 and v2, with and without levels): every value, in order."""
    n = 1000
    items = int(np.prod(shape)) if shape else 1
    values = np.random.default_rng(0).standard_normal(n * items).astype(np.float32)
    arr = pa.array(values)
    if shape:
        arr = pa.FixedSizeListArray.from_arrays(arr, type=pa.list_(pa.field("element", pa.float32(), nullable=False), items))
    schema = pa.schema([pa.field("x", arr.type, nullable=False)])
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_arrays([arr], schema=schema), path, compression="none", use_dictionary=False,
                   data_page_size=2048, write_batch_size=64, data_page_version=page_version,
                   write_statistics=False)
    chunk, (_, rep, dfn), _ = _chunk_bytes(path, 0, 0)
    # 4,000+ bytes of values in pages of 2 KiB: at least two pages
    f4 = np.dtype("<f4")
    np.testing.assert_array_equal(decode_chunk(chunk, n * items, f4, rep, dfn), values)
    # a wrong value count or width is refused, never misread
    assert decode_chunk(chunk, n * items + 1, f4, rep, dfn) is None
    assert decode_chunk(chunk, n * items, np.dtype("<f8"), rep, dfn) is None


@pytest.mark.parametrize("page_kib", [32, 1024])
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("page_version", ["1.0", "2.0"])
@pytest.mark.parametrize("values", ["noise", "runs", "few", "one"])
def test_dictionary_pages_decode(tmp_path: Path, page_version: str, values: str, dtype: str, page_kib: int) -> None:
    """Dictionary-encoded 1-byte tensors (pyarrow's dictionary: first-appearance order) over
    several pages: 8-bit literal runs (noise, the vectorised path and the two-bytes-at-a-time
    table, where int8's negative entries must not spill into their neighbour), repeated runs
    mixed in, narrow bit widths (4 and 0 bits); pages of 32 KiB (several) and 1 MiB (the table
    is used from 64K indices on)."""
    rng = np.random.default_rng(3)
    n, items = 300, 700
    data = {"noise": rng.integers(0, 256, n * items),
            "runs": np.repeat(rng.integers(0, 256, n * items // 50), 50),
            "few": rng.integers(0, 9, n * items),
            "one": np.full(n * items, 42)}[values].astype(np.uint8).view(dtype)
    element = pa.field("element", pa.from_numpy_dtype(np.dtype(dtype)), nullable=False)
    arr = pa.FixedSizeListArray.from_arrays(pa.array(data), type=pa.list_(element, items))
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_arrays([arr], schema=pa.schema([pa.field("x", arr.type, nullable=False)])), path,
                   compression="none", use_dictionary=True, data_page_size=page_kib << 10, write_batch_size=64,
                   data_page_version=page_version, write_statistics=False)
    chunk, (_, rep, dfn), _ = _chunk_bytes(path, 0, 0)
    plan = chunk_plan(pq.ParquetFile(path).metadata, 0, 0, np.dtype(dtype))
    assert plan is not None and plan[2] == np.dtype("<i4")
    got = decode_chunk(chunk, n * items, plan[2], rep, dfn, np.dtype(dtype))
    assert got is not None and got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, data)
    assert decode_chunk(chunk, n * items + 8, plan[2], rep, dfn) is None


@pytest.mark.parametrize("how", ["zstd", "nullable"])
def test_other_pages_are_left_to_pyarrow(tmp_path: Path, how: str) -> None:
    n = 500
    values = np.arange(n, dtype=np.int64) % 7
    arr = pa.array(values, mask=(values == 3) if how == "nullable" else None)
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": arr}), path, compression="zstd" if how == "zstd" else "none")
    chunk, (_, rep, dfn), _ = _chunk_bytes(path, 0, 0)
    assert decode_chunk(chunk, n, np.dtype("<i8"), rep, dfn) is None
    if how == "zstd":
        assert chunk_plan(pq.ParquetFile(path).metadata, 0, 0, np.dtype(np.int64)) is None


def test_garbage_is_refused_without_error() -> None:
    rng = np.random.default_rng(1)
    for size in (0, 1, 7, 100, 4096):
        junk = memoryview(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        assert decode_chunk(junk, 10, np.dtype("<i4"), 1, 1) is None


@pytest.mark.parametrize("writer", ["own", "pyarrow"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_reader_fast_path_equals_pyarrow(tmp_path: Path, dtype: str, writer: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Every dtype, scalar and tensor, through the reader: the page decoder (where it applies:
    all but bool) gives exactly what pyarrow decodes, whole units and slices, with and
    without verify; for files of streambatch's page writer and of pyarrow's (datasets
    written before it, and what bool columns still get)."""
    if writer == "pyarrow":
        monkeypatch.setattr(parquet_store, "supports", lambda *args: False)
    rng = np.random.default_rng(2)
    n = 700
    src = tmp_path / "src"
    src.mkdir()
    make = (lambda *s: rng.random(s) < 0.5) if dtype == "bool" else \
        (lambda *s: (rng.standard_normal(s) * 100).astype(dtype))
    np.save(src / "s.npy", make(n))
    np.save(src / "t.npy", make(n, 2, 3))
    streambatch.convert(src, tmp_path / "ds", format="parquet", unit_rows=128, progress=False)
    m = load_manifest(tmp_path / "ds")
    plain = dtype != "bool"
    for verify in (True, False):
        fast, slow = open_reader(m, verify=verify), open_reader(m, verify=verify)
        slow._walk = False  # type: ignore[attr-defined]
        slow._read_pages = lambda unit, fi, raw, lo, hi, out: list(out)  # type: ignore[method-assign]
        try:
            for u in range(len(m.unit_rows)):
                rows = int(m.unit_rows[u])
                for lo, hi in ((0, rows), (rows // 3, rows - 1)):
                    got = {c.name: np.empty((hi - lo, *c.shape), c.np_dtype) for c in m.columns}
                    want = {k: np.empty_like(v) for k, v in got.items()}
                    fast.read_into(u, lo, hi, got)
                    slow.read_into(u, lo, hi, want)
                    for k in got:
                        np.testing.assert_array_equal(got[k], want[k])
                    # a projection onto the small column: its chunk alone, found in the footer
                    only = {"s": np.empty(hi - lo, m.column("s").np_dtype)}
                    fast.read_into(u, lo, hi, only)
                    np.testing.assert_array_equal(only["s"], want["s"])
            # every unit walked by the page decoder (bool: none; pyarrow for all); whole units of
            # our writer's files read straight into place where the values are the array's bytes
            assert fast._walk == plain
            assert bool(fast._direct) == (writer == "own" and dtype not in ("bool", "int16"))
            assert fast._pyarrow == (set() if plain else {c.name for c in m.columns})
        finally:
            fast.close()
            slow.close()
