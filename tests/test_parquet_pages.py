"""The Parquet fast path: values viewed in place in PLAIN pages, pyarrow for everything else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import streambatch
from streambatch import load_manifest
from streambatch.storage import open_reader
from streambatch.storage._parquet_pages import chunk_plan, plain_value_ranges

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
def test_ranges_hold_the_values_of_plain_pages(tmp_path: Path, page_version: str, shape: tuple[int, ...]) -> None:
    """Several PLAIN pages (v1 and v2, with and without levels): the ranges hold every value in order."""
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
    ranges = plain_value_ranges(chunk, n * items, 4, rep, dfn)
    assert ranges is not None and len(ranges) >= 2  # several pages
    got = np.concatenate([np.frombuffer(chunk, np.float32, count=k // 4, offset=o) for o, k in ranges])
    np.testing.assert_array_equal(got, values)
    # a wrong value count or width is refused, never misread
    assert plain_value_ranges(chunk, n * items + 1, 4, rep, dfn) is None
    assert plain_value_ranges(chunk, n * items, 8, rep, dfn) is None


@pytest.mark.parametrize("how", ["dictionary", "zstd", "nullable"])
def test_other_pages_are_left_to_pyarrow(tmp_path: Path, how: str) -> None:
    n = 500
    values = np.arange(n, dtype=np.int64) % 7
    arr = pa.array(values, mask=(values == 3) if how == "nullable" else None)
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": arr}), path, compression="zstd" if how == "zstd" else "none",
                   use_dictionary=how == "dictionary")
    chunk, (_, rep, dfn), _ = _chunk_bytes(path, 0, 0)
    assert plain_value_ranges(chunk, n, 8, rep, dfn) is None
    if how != "nullable":
        assert chunk_plan(pq.ParquetFile(path).metadata, 0, 0, np.dtype(np.int64)) is None


def test_garbage_is_refused_without_error() -> None:
    rng = np.random.default_rng(1)
    for size in (0, 1, 7, 100, 4096):
        junk = memoryview(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        assert plain_value_ranges(junk, 10, 4, 1, 1) is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_reader_fast_path_equals_pyarrow(tmp_path: Path, dtype: str) -> None:
    """Every dtype, scalar and tensor, through the reader: the fast path (where it applies)
    gives exactly what pyarrow decodes, whole units and slices, with and without verify."""
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
    plain = np.dtype(dtype).itemsize >= 4 and dtype != "bool"
    for verify in (True, False):
        fast, slow = open_reader(m, verify=verify), open_reader(m, verify=verify)
        slow._read_plain = lambda unit, fi, raw, lo, hi, out: list(out)  # type: ignore[method-assign]
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
            used = [v is not None for v in fast._chunks.values()]
            assert used and all(used) == plain and any(used) == plain
        finally:
            fast.close()
            slow.close()
