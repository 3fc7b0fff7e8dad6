"""Every input format, converted into both outputs, reads back exactly.

Each ``_write_*`` helper writes the same rows in one input format and returns the arrays the
converted dataset must hold: the source's own values, dtypes and row shapes (text formats
carry no dtype, so CSV and JSON Lines hold the int64 / float64 / bool that their parser gives).
Every dataset is read back three ways: through ``open_reader`` unit by unit, with
``zarr.open_group`` or ``pyarrow.parquet.read_table`` / ``pandas.read_parquet`` (no
streambatch), and its manifest statistics are compared with numpy's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
import zarr

import streambatch
from conftest import arrow_column_numpy, column_range, flip_byte
from streambatch.errors import InputError
from streambatch.manifest import Manifest
from streambatch.storage import load_manifest
from streambatch.sources import detect_format, open_source
from streambatch.storage import FORMATS, open_reader

ROWS = 1003  # units of 128 rows: the last unit holds 107
UNIT = 128
Data = dict[str, np.ndarray]


def _binary_data(rows: int = ROWS) -> Data:
    """Columns of many dtypes, two fixed-shape tensor columns and an int label ``y``."""
    rng = np.random.default_rng(1)
    return {
        "id": np.arange(rows, dtype=np.int64),
        "vec": rng.standard_normal((rows, 3)).astype(np.float32),
        "img": rng.integers(0, 256, (rows, 2, 3), dtype=np.uint8),
        "flag": rng.random(rows) < 0.4,
        "i8": rng.integers(-128, 128, rows, dtype=np.int8),
        "i16": rng.integers(-30000, 30000, rows).astype(np.int16),
        "u16": rng.integers(0, 65536, rows, dtype=np.uint16),
        "u32": rng.integers(0, 2**32, rows, dtype=np.uint32),
        "u64": rng.integers(0, 2**63, rows, dtype=np.uint64) * np.uint64(2),
        "f64": rng.standard_normal(rows) * 1e3,
        "y": rng.integers(0, 10, rows).astype(np.int32),
    }


def _text_data(rows: int = ROWS) -> Data:
    rng = np.random.default_rng(2)
    return {
        "id": np.arange(rows, dtype=np.int64) - 500,
        "f64": rng.standard_normal(rows) * 1e3,
        "flag": rng.random(rows) < 0.4,
        "y": rng.integers(0, 10, rows).astype(np.int64),
    }


def _arrow_array(arr: np.ndarray, tensor: str = "fsl") -> pa.Array:
    """A numpy column as Arrow: scalars plain, tensors as (nested) FixedSizeList or fixed_shape_tensor."""
    if arr.ndim == 1:
        return pa.array(arr)
    if tensor == "tensor":
        return pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(arr))
    out = pa.array(arr.reshape(-1))
    for d in reversed(arr.shape[1:]):  # nested: list<list<uint8>[3]>[2] for shape (2, 3)
        out = pa.FixedSizeListArray.from_arrays(out, d)
    return out


def _arrow_table(data: Data, tensor: str = "fsl") -> pa.Table:
    return pa.table({k: _arrow_array(v, tensor) for k, v in data.items()})


def _write_npy_file(d: Path) -> tuple[Path, Data]:
    vec = _binary_data()["vec"]
    np.save(d / "vec.npy", vec)
    return d / "vec.npy", {"vec": vec}


def _write_npy_folder(d: Path) -> tuple[Path, Data]:
    data = _binary_data()
    data["be"] = np.arange(ROWS, dtype=">i4") * 3  # big-endian on disk, native in the dataset
    (d / "cols").mkdir()
    for k, v in data.items():
        np.save(d / "cols" / f"{k}.npy", v)
    data["be"] = data["be"].astype(np.int32)
    return d / "cols", data


def _write_npz(d: Path) -> tuple[Path, Data]:
    data = _binary_data()
    np.savez(d / "a.npz", **data)
    return d / "a.npz", data


def _write_npz_compressed(d: Path) -> tuple[Path, Data]:
    data = _binary_data()
    np.savez_compressed(d / "a.npz", **data)
    return d / "a.npz", data


def _write_parquet_file(d: Path) -> tuple[Path, Data]:
    data = _binary_data()
    pq.write_table(_arrow_table(data), d / "a.parquet", row_group_size=300)
    return d / "a.parquet", data


def _write_parquet_folder(d: Path) -> tuple[Path, Data]:
    data = _binary_data()
    table = _arrow_table(data)
    (d / "parts").mkdir()
    pq.write_table(table.slice(0, 400), d / "parts" / "part-0.parquet", row_group_size=150)
    pq.write_table(table.slice(400), d / "parts" / "part-1.parquet")
    return d / "parts", data


def _write_csv(d: Path) -> tuple[Path, Data]:
    data = _text_data()
    names = list(data)
    with open(d / "a.csv", "w") as f:
        f.write(",".join(names) + "\n")
        for i in range(ROWS):  # repr() of a float round-trips exactly
            f.write(",".join(repr(v.item()) for v in (data[n][i] for n in names)) + "\n")
    return d / "a.csv", data


def _write_jsonl(d: Path) -> tuple[Path, Data]:
    data = _text_data()
    rng = np.random.default_rng(3)
    data["vec"] = rng.standard_normal((ROWS, 3))
    data["mat"] = rng.integers(-9, 10, (ROWS, 2, 3)).astype(np.int64)
    with open(d / "a.jsonl", "w") as f:
        for i in range(ROWS):
            f.write(json.dumps({k: v[i].tolist() for k, v in data.items()}) + "\n")
    return d / "a.jsonl", data


def _write_feather(d: Path) -> tuple[Path, Data]:
    """Arrow IPC file with canonical fixed_shape_tensor columns."""
    data = _binary_data()
    feather.write_feather(_arrow_table(data, "tensor"), d / "a.feather", chunksize=256)
    return d / "a.feather", data


def _write_arrow_stream(d: Path) -> tuple[Path, Data]:
    """Arrow IPC stream format with FixedSizeList columns."""
    data = _binary_data()
    table = _arrow_table(data)
    with pa.OSFile(str(d / "a.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        for batch in table.to_batches(max_chunksize=300):
            w.write_batch(batch)
    return d / "a.arrow", data


def _write_hdf5(d: Path) -> tuple[Path, Data]:
    data = _binary_data()
    with h5py.File(d / "a.h5", "w") as f:
        for k, v in data.items():
            if k == "i16":
                f.create_dataset(f"grp/{k}", data=v, chunks=(100,))  # nested: column "grp.i16"
            else:
                f.create_dataset(k, data=v)
    data["grp.i16"] = data.pop("i16")
    return d / "a.h5", data


def _write_zarr(d: Path, zarr_format: int) -> tuple[Path, Data]:
    data = _binary_data()
    g = zarr.open_group(str(d / "in.zarr"), mode="w", zarr_format=zarr_format)
    for k, v in data.items():
        a = g.create_array(k, shape=v.shape, dtype=v.dtype, chunks=(97, *v.shape[1:]))
        a[:] = v
    return d / "in.zarr", data


WRITERS: dict[str, Callable[[Path], tuple[Path, Data]]] = {
    "npy-file": _write_npy_file,
    "npy-folder": _write_npy_folder,
    "npz": _write_npz,
    "npz-compressed": _write_npz_compressed,
    "parquet-file": _write_parquet_file,
    "parquet-folder": _write_parquet_folder,
    "csv": _write_csv,
    "jsonl": _write_jsonl,
    "arrow-feather": _write_feather,
    "arrow-stream": _write_arrow_stream,
    "hdf5": _write_hdf5,
    "zarr-v3": lambda d: _write_zarr(d, 3),
    "zarr-v2": lambda d: _write_zarr(d, 2),
}
FORMAT_OF = {"npy-file": "npy", "npy-folder": "npy", "npz": "npz", "npz-compressed": "npz",
             "parquet-file": "parquet", "parquet-folder": "parquet", "csv": "csv", "jsonl": "jsonl",
             "arrow-feather": "arrow", "arrow-stream": "arrow", "hdf5": "hdf5", "zarr-v3": "zarr",
             "zarr-v2": "zarr"}


# --------------------------------------------------------------------------- read-back helpers


def read_with_streambatch(m: Manifest) -> Data:
    """Every column, unit by unit through ``open_reader`` (checksums verified)."""
    out = {c.name: np.empty((m.rows, *c.shape), c.np_dtype) for c in m.columns}
    reader = open_reader(m, verify=True)
    try:
        for u in range(m.n_units):
            s, n = int(m.unit_start[u]), int(m.unit_rows[u])
            reader.read_into(u, 0, n, {k: v[s:s + n] for k, v in out.items()})
            reader.verify_unit(u)
    finally:
        reader.close()
    return out


def read_without_streambatch(m: Manifest) -> Data:
    """Every column with the standard libraries only."""
    if m.storage == "zarr":
        # the arrays by name: listing the group's members warns about the manifest file beside them
        g = zarr.open_group(str(m.root), mode="r")
        names = sorted(p.name for p in m.root.iterdir() if (p / "zarr.json").is_file())
        return {name: g[name][:] for name in names}
    files = [m.path_of(i) for i in range(len(m.files))]
    table = (pa.concat_tables([feather.read_table(f) for f in files]) if m.storage == "arrow"
             else pq.read_table(m.root))
    out = {}
    for field in table.schema:
        out[field.name] = arrow_column_numpy(field, table.column(field.name).combine_chunks())
    df = (pd.concat([pd.read_feather(f) for f in files], ignore_index=True) if m.storage == "arrow"
          else pd.read_parquet(m.root))
    assert list(df.columns) == table.schema.names and len(df) == m.rows
    for name in df.columns:
        col = df[name].to_numpy()
        if col.dtype.kind == "S" or col.dtype == object and isinstance(col[0], bytes):  # FixedSizeBinary: rows' bytes
            raw = col.tobytes() if col.dtype.kind == "S" else b"".join(col)  # (.tobytes keeps trailing zeros)
            col = np.frombuffer(raw, out[name].dtype).reshape(out[name].shape)
        elif col.dtype == object:  # FixedSizeList tensor rows come as arrays of their flat values
            col = np.stack(col).reshape(out[name].shape)
        assert col.dtype == out[name].dtype, name
        np.testing.assert_array_equal(col, out[name], err_msg=f"pandas: {name}")
    return out


def assert_same(got: Data, want: Data, how: str) -> None:
    assert sorted(got) == sorted(want), how
    for k, v in want.items():
        assert got[k].dtype == v.dtype, f"{how}: {k} dtype {got[k].dtype} != {v.dtype}"
        assert got[k].shape == v.shape, f"{how}: {k} shape {got[k].shape} != {v.shape}"
        np.testing.assert_array_equal(got[k], v, err_msg=f"{how}: {k}")


def assert_stats(m: Manifest, want: Data) -> None:
    for k, v in want.items():
        st = m.stats[k]
        x = v.reshape(len(v), -1).astype(np.float64)
        assert st["count"] == len(v)
        for key, ref in (("mean", x.mean(axis=0)), ("std", x.std(axis=0)),
                         ("min", x.min(axis=0)), ("max", x.max(axis=0))):
            got = np.asarray(st[key], np.float64)
            assert got.shape == (() if v.ndim == 1 else ref.shape), (k, key)
            scale = max(1.0, float(np.abs(x).max()))
            np.testing.assert_allclose(got.reshape(-1), ref, rtol=1e-12, atol=1e-12 * scale, err_msg=f"stats {k}.{key}")


# --------------------------------------------------------------------------- round trips

# every format into every output; the codec rotates so each output sees every codec it takes
CASES = [(w, out, FORMATS[out].codecs[(i + j) % len(FORMATS[out].codecs)])
         for i, w in enumerate(WRITERS) for j, out in enumerate(FORMATS)]


@pytest.mark.parametrize(("writer", "out", "codec"), CASES, ids=[f"{w}-{o}-{c}" for w, o, c in CASES])
def test_round_trip(tmp_path: Path, writer: str, out: str, codec: str) -> None:
    src, want = WRITERS[writer](tmp_path)
    assert detect_format(src) == FORMAT_OF[writer]
    label = "y" if "y" in want else None
    # shards of about 3 units: several shard files, the last one partial
    m = streambatch.convert(src, tmp_path / f"ds.{out}", format=out, codec=codec, unit_rows=UNIT,
                            shard_bytes=3 * UNIT * 12, label=label, progress=False)
    assert isinstance(m, Manifest)
    assert m.rows == ROWS and m.codec == codec and m.storage == out
    assert m.unit_rows.tolist() == [UNIT] * (ROWS // UNIT) + [ROWS % UNIT]
    assert len(m.files) > 1
    assert {c.name: (c.dtype, c.shape) for c in m.columns} == {k: (v.dtype.name, v.shape[1:]) for k, v in want.items()}
    assert m.source["format"] == FORMAT_OF[writer]

    loaded = load_manifest(tmp_path / f"ds.{out}")
    assert_same(read_with_streambatch(loaded), want, "open_reader")
    assert_same(read_without_streambatch(loaded), want, "standard tools")
    assert_stats(loaded, want)
    if label:
        h = loaded.stats["y"]["histogram"]
        values, counts = np.unique(want["y"], return_counts=True)
        assert h["values"] == values.tolist() and h["counts"] == counts.tolist()
        assert h["icc"] is not None and h["icc"] < 0.05  # random labels: units look like the whole


def test_every_source_format_is_covered() -> None:
    from streambatch.sources import SOURCE_FORMATS

    assert set(FORMAT_OF.values()) | {"imagefolder"} == set(SOURCE_FORMATS)  # images: test_ragged_sources.py
    for out, fmt in FORMATS.items():
        assert {c for _, o, c in CASES if o == out} == set(fmt.codecs)


# --------------------------------------------------------------------------- source details


@pytest.mark.parametrize("writer", list(WRITERS))
def test_pieces_cover_rows_in_order(tmp_path: Path, writer: str) -> None:
    src, want = WRITERS[writer](tmp_path)
    source = open_source(src)
    assert source.rows == ROWS and source.format == FORMAT_OF[writer]
    assert [c.name for c in source.columns] == list(want) or sorted(c.name for c in source.columns) == sorted(want)
    names = tuple(sorted(want))[:2]
    got: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for piece in source.pieces(100, names):
        assert set(piece) == set(names)
        lens = {len(v) for v in piece.values()}
        assert len(lens) == 1 and 1 <= lens.pop() <= 100
        for n in names:
            got[n].append(piece[n])
    for n in names:
        np.testing.assert_array_equal(np.concatenate(got[n]), want[n])


def test_fixed_shape_tensor_with_permutation(tmp_path: Path) -> None:
    """A permuted fixed_shape_tensor column stores rows in their logical (permuted) shape."""
    phys = np.arange(40 * 6, dtype=np.int16).reshape(40, 6)
    typ = pa.fixed_shape_tensor(pa.int16(), [2, 3], permutation=[1, 0])
    ext = pa.ExtensionArray.from_storage(typ, pa.FixedSizeListArray.from_arrays(pa.array(phys.reshape(-1)), 6))
    logical = ext.to_numpy_ndarray()
    assert logical.shape == (40, 3, 2)
    feather.write_feather(pa.table({"t": ext}), tmp_path / "t.feather")
    m = streambatch.convert(tmp_path / "t.feather", tmp_path / "ds", unit_rows=16, progress=False)
    assert isinstance(m, Manifest)
    assert m.columns[0].shape == (3, 2)
    np.testing.assert_array_equal(read_with_streambatch(m)["t"], logical)


def test_variable_list_column_of_constant_length(tmp_path: Path) -> None:
    """A plain ``list<>`` Parquet column whose rows all have 4 values becomes a (4,) column."""
    vals = np.arange(50 * 4, dtype=np.float32).reshape(50, 4)
    pq.write_table(pa.table({"v": pa.array(list(vals), type=pa.list_(pa.float32()))}), tmp_path / "v.parquet",
                   row_group_size=20)
    m = streambatch.convert(tmp_path / "v.parquet", tmp_path / "ds", format="parquet", unit_rows=16, progress=False)
    assert isinstance(m, Manifest)
    assert (m.columns[0].dtype, m.columns[0].shape) == ("float32", (4,))
    np.testing.assert_array_equal(read_with_streambatch(m)["v"], vals)


def test_streambatch_parquet_reconverts_with_shapes(tmp_path: Path) -> None:
    """A streambatch Parquet dataset is itself a valid input and keeps its tensor shapes."""
    src, want = _write_npz(tmp_path)
    streambatch.convert(src, tmp_path / "a.pq", format="parquet", unit_rows=UNIT, progress=False)
    m = streambatch.convert(tmp_path / "a.pq", tmp_path / "b.zarr", source_format="parquet", unit_rows=100,
                            progress=False)
    assert isinstance(m, Manifest)
    assert_same(read_with_streambatch(m), want, "re-converted")


def test_streambatch_zarr_reconverts(tmp_path: Path) -> None:
    """A streambatch Zarr dataset is itself a valid input (its manifest is not taken for an array)."""
    src, want = _write_npz(tmp_path)
    streambatch.convert(src, tmp_path / "a.zarr", unit_rows=UNIT, codec="zstd", progress=False)
    m = streambatch.convert(tmp_path / "a.zarr", tmp_path / "b.pq", format="parquet", unit_rows=100,
                            progress=False)
    assert isinstance(m, Manifest)
    assert_same(read_with_streambatch(m), want, "re-converted")


def test_columns_subset_and_order(tmp_path: Path) -> None:
    src, want = _write_npz(tmp_path)
    m = streambatch.convert(src, tmp_path / "ds", columns=["y", "img", "id"], unit_rows=100, progress=False)
    assert isinstance(m, Manifest)
    assert [c.name for c in m.columns] == ["y", "img", "id"]
    assert_same(read_with_streambatch(m), {k: want[k] for k in ("y", "img", "id")}, "subset")
    assert set(m.stats) == {"y", "img", "id"}


def _with_unsupported(d: Path, fmt: str) -> Path:
    """An input of format ``fmt`` with numeric ``id`` and ``y`` and an unsupported column ``bad``
    (objects, complex numbers, times of day or JSON objects: what each format can hold; strings
    are supported in the Arrow-based formats)."""
    n = 50
    ids, ys = np.arange(n, dtype=np.int64), np.arange(n, dtype=np.int64) % 3
    words = np.array([f"w{i}" for i in range(n)], dtype=object)
    if fmt == "npy":
        (d / "cols").mkdir()
        np.save(d / "cols" / "id.npy", ids)
        np.save(d / "cols" / "y.npy", ys)
        np.save(d / "cols" / "bad.npy", words, allow_pickle=True)
        return d / "cols"
    if fmt == "npz":
        np.savez(d / "a.npz", id=ids, y=ys, bad=np.arange(n) * 1j)
        return d / "a.npz"
    if fmt == "hdf5":
        with h5py.File(d / "a.h5", "w") as f:
            f.create_dataset("id", data=ids)
            f.create_dataset("y", data=ys)
            f.create_dataset("bad", data=np.arange(n) * 1j)
        return d / "a.h5"
    if fmt == "zarr":
        g = zarr.open_group(str(d / "in.zarr"), mode="w")
        for k, v in {"id": ids, "y": ys, "bad": np.arange(n) * 1j}.items():
            g.create_array(k, shape=v.shape, dtype=v.dtype)[:] = v
        return d / "in.zarr"
    table = pa.table({"id": ids, "bad": pa.array((ids * 1000).astype(np.int32), pa.time32("ms")), "y": ys})
    if fmt == "parquet":
        pq.write_table(table, d / "a.parquet")
        return d / "a.parquet"
    if fmt == "arrow":
        feather.write_feather(table, d / "a.feather")
        return d / "a.feather"
    if fmt == "csv":
        (d / "a.csv").write_text("id,bad,y\n" + "".join(f"{i},12:00:{i:02d},{i % 3}\n" for i in range(n)))
        return d / "a.csv"
    (d / "a.jsonl").write_text("".join(json.dumps({"id": i, "bad": {"w": i}, "y": i % 3}) + "\n" for i in range(n)))
    return d / "a.jsonl"


@pytest.mark.parametrize("fmt", ["npy", "npz", "hdf5", "zarr", "parquet", "arrow", "csv", "jsonl"])
def test_columns_leave_out_an_unsupported_column(tmp_path: Path, fmt: str) -> None:
    """--columns naming the numeric columns converts an input that also holds strings, objects
    or complex numbers; without it the unsupported column is named; an unknown name is an error."""
    src = _with_unsupported(tmp_path, fmt)
    with pytest.raises(InputError, match="bad"):
        streambatch.convert(src, tmp_path / "all", progress=False)
    assert not (tmp_path / "all").exists()
    m = streambatch.convert(src, tmp_path / "ds", columns=["y", "id"], label="y", progress=False)
    assert isinstance(m, Manifest)
    got = read_with_streambatch(m)
    assert [c.name for c in m.columns] == ["y", "id"]
    np.testing.assert_array_equal(got["id"], np.arange(50))
    np.testing.assert_array_equal(got["y"], np.arange(50) % 3)
    with pytest.raises(InputError, match=r"no column\(s\) \['nope'\]"):
        streambatch.convert(src, tmp_path / "x", columns=["id", "nope"], progress=False)


def test_source_format_override(tmp_path: Path) -> None:
    src, want = _write_csv(tmp_path)
    renamed = src.rename(tmp_path / "data.txt")
    with pytest.raises(InputError, match="data.txt"):
        detect_format(renamed)
    m = streambatch.convert(renamed, tmp_path / "ds", source_format="csv", unit_rows=100, progress=False)
    assert isinstance(m, Manifest)
    assert_same(read_with_streambatch(m), want, "--from csv")


def test_folder_of_mixed_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mix").mkdir()
    np.save(tmp_path / "mix" / "a.npy", np.zeros(3))
    pq.write_table(pa.table({"b": [1, 2, 3]}), tmp_path / "mix" / "b.parquet")
    with pytest.raises(InputError, match="mix.*--from"):
        open_source(tmp_path / "mix")


def _numeric_data(rows: int = ROWS) -> Data:
    """_binary_data without the bool column (Parquet's BOOLEAN is pyarrow's to decode)."""
    return {k: v for k, v in _binary_data(rows).items() if k != "flag"}


def _pq_streambatch(d: Path, data: Data) -> Path:
    np.savez(d / "src.npz", **data)
    streambatch.convert(d / "src.npz", d / "sb.pq", format="parquet", unit_rows=UNIT, progress=False)
    return d / "sb.pq"


def _pq_pyarrow(d: Path, data: Data, *, nullable: bool, compression: str = "none") -> Path:
    arrays = {k: pa.array(v) if v.ndim == 1 else pa.FixedSizeListArray.from_arrays(
        pa.array(v.reshape(-1)), math.prod(v.shape[1:])) for k, v in data.items()}
    fields = [pa.field(k, a.type if nullable or a.type.num_fields == 0 else
                       pa.list_(pa.field("element", a.type.value_type, nullable=False), a.type.list_size),
                       nullable=nullable) for k, a in arrays.items()]
    table = pa.table(arrays).cast(pa.schema(fields))
    pq.write_table(table, d / "pa.parquet", row_group_size=150, compression=compression, use_dictionary=False)
    return d / "pa.parquet"


def _spy_found(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[bool]:
    """Wrap ``module.name``; the list records, per call, whether it returned something (not None)."""
    found: list[bool] = []
    real = getattr(module, name)

    def spy(*args: Any) -> Any:
        got = real(*args)
        found.append(got is not None)
        return got

    monkeypatch.setattr(module, name, spy)
    return found


@pytest.mark.parametrize("variant", ["streambatch", "pyarrow-required", "pyarrow-nullable", "pyarrow-snappy",
                                     "pyarrow-null"])
def test_parquet_row_groups_read_by_pyarrow(tmp_path: Path, variant: str) -> None:
    """Parquet inputs are decoded by pyarrow: streambatch's own files without their manifest
    (FixedSizeBinary tensors, dtype and shape from the field metadata), pyarrow's with required or
    nullable lists, compressed; a null is still the error naming its row."""
    data = _numeric_data()
    if variant.startswith("pyarrow"):  # a plain FixedSizeList carries no shape: rows come back flat
        data = {k: v.reshape(len(v), -1) if v.ndim > 2 else v for k, v in data.items()}
    shapes = {k: v.shape[1:] for k, v in data.items()}
    if variant == "streambatch":  # the files alone: with their manifest the dataset's reader reads them
        path = _pq_streambatch(tmp_path, data)
        (path / "_streambatch.json").unlink()
    elif variant == "pyarrow-null":
        data = {"id": data["id"], "f64": data["f64"]}
        table = pa.table({"id": pa.array(data["id"]), "f64": pa.array(data["f64"], mask=data["id"] == 700)})
        pq.write_table(table, tmp_path / "pa.parquet", row_group_size=150, compression="none")
        path = tmp_path / "pa.parquet"
    else:
        path = _pq_pyarrow(tmp_path, data, nullable=variant != "pyarrow-required",
                           compression="snappy" if variant == "pyarrow-snappy" else "none")
    if variant == "pyarrow-null":
        with pytest.raises(InputError, match=r"column 'f64': missing value at row 700"):
            streambatch.convert(path, tmp_path / "out.zarr", unit_rows=UNIT, progress=False)
        assert not (tmp_path / "out.zarr").exists()
        return
    m = streambatch.convert(path, tmp_path / "out.zarr", unit_rows=UNIT, progress=False)
    assert isinstance(m, Manifest)
    got = read_with_streambatch(m)
    for k, v in data.items():
        assert got[k].dtype == v.dtype and got[k].shape[1:] == shapes[k], k
        np.testing.assert_array_equal(got[k], v, err_msg=k)


@pytest.mark.parametrize("meta", ["float32 [2]", "uint8 [2, 4]", "float32 [3]", "complex64 [1]", "none"])
def test_a_fixed_size_binary_column_is_a_tensor_by_its_streambatch_metadata(tmp_path: Path, meta: str) -> None:
    """A FixedSizeBinary column with ``streambatch.dtype`` and ``streambatch.shape`` metadata (how
    streambatch's Parquet files hold tensors) converts to that tensor column; metadata that does not
    make the field's width, or none, is a one-line InputError naming the column."""
    raw = np.arange(50 * 8, dtype=np.uint8)
    dtype, _, shape = meta.partition(" ")
    field_meta = {"streambatch.dtype": dtype, "streambatch.shape": shape} if meta != "none" else None
    field = pa.field("t", pa.binary(8), nullable=False, metadata=field_meta)
    arr = pa.FixedSizeBinaryArray.from_buffers(pa.binary(8), 50, [None, pa.py_buffer(raw)])
    pq.write_table(pa.Table.from_arrays([arr], schema=pa.schema([field])), tmp_path / "t.parquet")
    if meta in ("float32 [3]", "complex64 [1]", "none"):
        what = "unsupported type" if meta == "none" else r"does not make rows of 8 bytes"
        with pytest.raises(InputError, match=rf"t\.parquet: column 't': .*{what}"):
            streambatch.convert(tmp_path / "t.parquet", tmp_path / "out", progress=False)
        return
    m = streambatch.convert(tmp_path / "t.parquet", tmp_path / "out", progress=False)
    assert isinstance(m, Manifest)
    want = raw.view(dtype).reshape(50, *json.loads(shape))
    got = read_with_streambatch(m)["t"]
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_parquet_folder_with_a_column_of_another_type_is_refused(tmp_path: Path) -> None:
    """Files of one folder must agree on types too: an int32 column read as time32 in the next
    file was silently taken as integers by the in-place reader (review)."""
    (tmp_path / "f").mkdir()
    pq.write_table(pa.table({"t": pa.array([1, 2, 3], pa.int32())}), tmp_path / "f" / "a.parquet")
    pq.write_table(pa.table({"t": pa.array([10, 20, 30], pa.int32()).cast(pa.time32("s"))}),
                   tmp_path / "f" / "b.parquet")
    with pytest.raises(InputError, match=r"b\.parquet: column 't' is time32\[ms\], a\.parquet has int32"):
        streambatch.convert(tmp_path / "f", tmp_path / "out.zarr", progress=False)
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize("kind", ["npy", "parquet", "parquet-in-place", "csv"])
def test_row_ranges_are_slices_of_the_whole(tmp_path: Path, kind: str) -> None:
    """``pieces(start=, stop=)`` yields exactly those rows, in pieces of at most ``max_rows``:
    .npy and Parquet skip to them (random access: row groups of two files, one larger than a
    piece; or streambatch's own files, read in place), other formats read past the rows before them."""
    n = 1000
    ids = np.arange(n, dtype=np.int64) * 3
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    if kind == "npy":
        path = tmp_path / "npy"
        path.mkdir()
        np.save(path / "id.npy", ids)
        np.save(path / "x.npy", x)
    elif kind == "parquet":
        path = tmp_path / "pq"
        path.mkdir()
        table = pa.table({"id": ids, "x": pa.FixedSizeListArray.from_arrays(x.reshape(-1), 3)})
        pq.write_table(table.slice(0, 400), path / "a.parquet", row_group_size=77)
        pq.write_table(table.slice(400), path / "b.parquet", row_group_size=500)
    elif kind == "parquet-in-place":
        (tmp_path / "cols").mkdir()  # convert refuses a target inside its input folder
        np.save(tmp_path / "cols" / "id.npy", ids)
        np.save(tmp_path / "cols" / "x.npy", x)
        path = tmp_path / "own"
        streambatch.convert(tmp_path / "cols", path, format="parquet", unit_rows=77, shard_bytes=77 * 20 * 5, progress=False)
        assert len(list(path.glob("*.parquet"))) == 3
    else:
        path = tmp_path / "t.csv"
        pd.DataFrame({"id": ids, "x": x[:, 0]}).to_csv(path, index=False)
        x = x[:, :1].reshape(-1)
    source = open_source(path)
    assert source.random_access == (kind != "csv")
    for lo, hi in [(0, n), (5, 6), (76, 78), (300, 999), (399, 401), (450, 451), (999, 1000), (650, 2000)]:
        pieces = list(source.pieces(128, ("id", "x"), lo, hi))
        assert all(0 < len(p["id"]) <= 128 for p in pieces), (lo, hi)
        np.testing.assert_array_equal(np.concatenate([p["id"] for p in pieces]), ids[lo:hi])
        np.testing.assert_array_equal(np.concatenate([p["x"] for p in pieces]), x[lo:hi])


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_streambatch_dataset_is_read_through_its_manifest(tmp_path: Path, fmt: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A dataset folder with its manifest is read by streambatch's reader (units straight into
    place, every checksum checked): converting it to another layout keeps every value; a damaged
    unit is a DataError naming it and nothing is written; without a valid manifest the folder is
    read as plain Zarr or Parquet (a folder of Arrow files is refused)."""
    from streambatch import sources
    from streambatch.errors import DataError
    from streambatch.sources import dataset
    from streambatch.storage import read_all

    data = _numeric_data()
    np.savez(tmp_path / "src.npz", **data)
    ds = tmp_path / "ds"
    made = streambatch.convert(tmp_path / "src.npz", ds, format=fmt, unit_rows=UNIT, shard_bytes=4 * UNIT * 100,
                               progress=False)
    assert isinstance(made, Manifest) and len(made.files) >= 2
    opened = _spy_found(monkeypatch, dataset, "_open_dataset")
    for other in FORMATS:
        out = streambatch.convert(ds, tmp_path / f"to-{other}", format=other, unit_rows=UNIT // 3 + 1,
                                  shard_bytes=3 * UNIT * 100, threads=2, progress=False)
        assert isinstance(out, Manifest) and out.fingerprint != made.fingerprint
        got = read_all(out, verify=True)
        for k, v in data.items():
            np.testing.assert_array_equal(got[k], v, err_msg=k)
        for k in data:
            for key in ("mean", "std", "min", "max"):
                np.testing.assert_allclose(out.stats[k][key], made.stats[k][key], rtol=1e-12)
    assert opened == [True] * len(FORMATS)

    unit = 5
    path, off, _ = column_range(made, unit, "f64")
    flip_byte(path, off + 7)
    with pytest.raises(DataError, match=r"unit 5\b"):
        streambatch.convert(ds, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.sbtmp-*"))

    (ds / "_streambatch.json").write_text("{")  # no valid manifest: the files alone
    opened.clear()
    if fmt == "arrow":  # a folder of Arrow files is an input only as a dataset
        with pytest.raises(InputError, match="no valid manifest"):
            open_source(ds, columns=("id",))
    else:
        assert isinstance(open_source(ds, columns=("id",)), sources.Source)
    assert opened == [False]
